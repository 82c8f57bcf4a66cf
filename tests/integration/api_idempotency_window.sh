# The README's and openapi.json's Idempotency-Key window, end to end: with a
# retention far shorter than the window (--keep-failed-s 1), a cancelled
# composition made with a key outlives its retention, so the client's retry
# gets the same composition back (Idempotent-Replayed), never a second one;
# one made without a key is purged as before (the purge did run). Judged in
# Postgres and by the API's answers.
source "$CF_TESTS_DIR/lib/testlib.sh"
source "$CF_TESTS_DIR/lib/apinode.sh"
api_setup
sql() { psql "$API_DB" -qAtX -c "$1"; }
api_node_start main --no-render --keep-failed-s 1 --purge-interval-ms 200
API_KEY=$(api_key idem) || exit 1
api_media "$API_WORK/a.mp4" 1
comp=$(api_comp_json "$API_WORK/a.mp4" keyed)

api_curl -X POST -H 'Content-Type: application/json' -H 'Idempotency-Key: retry-me' -d "$comp" \
    "$API_URL/api/v1/compositions"
expect_status 202 "create with a key"
keyed=$(jq -r .id <<<"$body")
api_curl -X POST -H 'Content-Type: application/json' -d "$(api_comp_json "$API_WORK/a.mp4" plain)" \
    "$API_URL/api/v1/compositions"
expect_status 202 "create without a key"
plain=$(jq -r .id <<<"$body")
for id in "$keyed" "$plain"; do
    api_curl -X DELETE "$API_URL/api/v1/compositions/$id"
    [[ $status == 200 || $status == 202 ]] || fail "cancel $id: HTTP $status: $body"
done
# The keyless one goes one second after its cancel: then the purge has had
# its chance at the keyed one too.
for ((i = 0; i < 300; i++)); do
    [[ $(sql "SELECT count(*) FROM compositions WHERE id = '$plain'") == 0 ]] && break
    sleep 0.1
done
[[ $(sql "SELECT count(*) FROM compositions WHERE id = '$plain'") == 0 ]] || fail "the purge never ran"
sleep 1
[[ $(sql "SELECT status FROM compositions WHERE id = '$keyed'") == cancelled ]] \
    || fail "the composition with a 24 h idempotency key was purged after its 1 s retention"
# The client retries its request: the same composition.
api_curl -X POST -H 'Content-Type: application/json' -H 'Idempotency-Key: retry-me' -d "$comp" \
    "$API_URL/api/v1/compositions"
expect_status 202 "retry with the key"
[[ $(jq -r .id <<<"$body") == "$keyed" ]] || fail "the retry made another composition: $body"
grep -qi '^Idempotent-Replayed: true' <<<"$headers" || fail "no Idempotent-Replayed header: $headers"
[[ $(sql "SELECT count(*) FROM compositions") == 1 ]] || fail "a second composition exists"
api_node_stop main
echo "api_idempotency_window: ok"
