-- Claims (issue 12): who renders a processing composition, until when.
-- Forward-only.
--
-- Taking a composition (queued -> planning) records the claim: claimed_by
-- (the owner's node id), claim_op (the take's operation id: the claim's
-- token, which every later write of the owner names) and claim_expires_at
-- (judged by the database clock). The owner renews it while it works; a
-- claim that was not renewed in time is expired by the coordinator's sweep:
-- the composition goes back to queued (or fails after too many expiries),
-- recorded as a status event, and is taken again.
ALTER TABLE compositions
    ADD COLUMN claimed_by       text,
    ADD COLUMN claim_op         text,
    ADD COLUMN claim_expires_at timestamptz,
    -- Claims of this composition that expired (its renderer died or lost
    -- the database); the sweep fails it when they reach its limit.
    ADD COLUMN claim_expiries   integer NOT NULL DEFAULT 0;

-- Back to queued from every processing stage: an expired claim, or an owner
-- handing its work back (graceful stop).
INSERT INTO composition_transitions (from_state, to_state) VALUES
    ('planning', 'queued'), ('encoding', 'queued'), ('assembling', 'queued');

-- Leaving processing ends the claim, whoever writes (every status path:
-- the renderer, a cancel from the API, the sweep, a coordinator); a
-- composition handed back to queued starts over from progress 0.
CREATE FUNCTION cf_compositions_claim_end() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> 'processing' THEN
        NEW.claimed_by := NULL;
        NEW.claim_op := NULL;
        NEW.claim_expires_at := NULL;
        IF OLD.status = 'processing' AND NEW.status = 'queued' THEN
            NEW.progress := 0;
        END IF;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER compositions_claim_end BEFORE UPDATE OF status ON compositions
    FOR EACH ROW EXECUTE FUNCTION cf_compositions_claim_end();

-- Compositions taken before claims existed have no owner that renews: they
-- get a claim that expires five minutes from now (a node of the previous
-- version still rendering one has that long to finish it).
UPDATE compositions SET claim_expires_at = now() + interval '5 minutes'
    WHERE status = 'processing';

-- The sweep: processing compositions by claim expiry.
CREATE INDEX compositions_claim_expiry_idx ON compositions (claim_expires_at)
    WHERE status = 'processing';
