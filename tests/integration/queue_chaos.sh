# 4 producers and 4 consumers move 3,000 compositions through the full state
# machine while, mid-run, Redis is flushed (FLUSHALL), Redis is restarted
# (losing everything), and Postgres is restarted. Every accepted composition
# must still complete, each exactly once. The flush must really have lost a
# backlog (counted and flushed in one atomic step), and reconciles started by
# the loss (periodic reconcile is off) must have pushed back at least that
# many; the pool must have reconnected.
# Uses its own private servers: it restarts them.
source "$CF_TESTS_DIR/lib/testlib.sh"
source "$CF_TESTS_DIR/lib/servers.sh"
cf_require_env CF_TEST_DATABASE_URL

helper=$CF_BUILD_DIR/tests/integration_test_queue
[[ -x $helper ]] || fail "missing $helper (build the tests)"
work=$(mktemp -d)
chmod 755 "$work"
# tests/run exports the shared servers' ports: start ours on fresh ones.
unset CF_PG_PORT CF_REDIS_PORT
wl_pid=""
cleanup() {
    [[ -n $wl_pid ]] && kill "$wl_pid" 2>/dev/null
    cf_redis_stop
    cf_pg_stop
    rm -rf "$work"
}
trap cleanup EXIT

cf_pg_start "$work/pg" >/dev/null || fail "cannot start the private Postgres"
cf_redis_start "$work/redis" || fail "cannot start the private Redis"
"$CF_BIN" migrate --database-url "$CF_PG_URL" >/dev/null || fail "migrate failed"

n=3000
# Producers at 500/s, consumers a little slower (8 ms of work each): a backlog
# builds up in Redis, so the flush and the restart really lose queued items.
"$helper" workload --db "$CF_PG_URL" --redis "$CF_REDIS_URL_PRIVATE" --count "$n" \
    --producers 4 --consumers 4 --rate 500 --work-ms 8 --full --ttl-ms 3000 --timeout-s 200 \
    --reconcile-every-ms 0 \
    --status-file "$work/status" >"$work/out" 2>"$work/err" &
wl_pid=$!

# wait_for FIELD MIN [SECONDS]: until the workload's status file shows
# FIELD >= MIN (within 90 s unless told).
wait_for() {
    local deadline=$((SECONDS + ${3:-90})) value
    while ((SECONDS < deadline)); do
        value=$(sed -n "s/.*$1=\([0-9]*\).*/\1/p" "$work/status" 2>/dev/null)
        [[ -n $value ]] && ((value >= $2)) && return 0
        kill -0 "$wl_pid" 2>/dev/null || fail "workload ended early: $(cat "$work/out" "$work/err")"
        sleep 0.05
    done
    fail "timed out waiting for $1 >= $2: $(cat "$work/status")"
}

wait_for created $((n / 5))
# What reconciles pushed so far (the first pass, at start-up: no marker yet).
before=$(sed -n 's/.*reconciled_on_loss=\([0-9]*\).*/\1/p' "$work/status")
# Count the intake lists and flush in one script: Redis runs it atomically,
# so exactly $backlog queued items are lost.
backlog=$(redis-cli -p "$CF_REDIS_PORT" eval "local n = redis.call('LLEN','cf:q:high') +
    redis.call('LLEN','cf:q:default') + redis.call('LLEN','cf:q:low')
    redis.call('FLUSHALL') return n" 0)
[[ $backlog =~ ^[0-9]+$ ]] || fail "count and flush failed: $backlog"
echo "FLUSHALL with $backlog queued items in Redis ($(cat "$work/status"))"
((backlog > 0)) || fail "Redis held no backlog at FLUSHALL: the flush lost nothing"
# Repaired: only a reconcile can bring those items back (no periodic one
# runs), and it must push at least every one of them.
wait_for reconciled_on_loss $((before + backlog)) 30
echo "reconciled after the flush: $(cat "$work/status")"

wait_for created $((2 * n / 5))
echo "restarting Redis ($(cat "$work/status"))"
cf_redis_restart || fail "Redis restart failed"

wait_for created $((3 * n / 5))
echo "restarting Postgres ($(cat "$work/status"))"
cf_pg_restart || fail "Postgres restart failed"

wait "$wl_pid"
rc=$?
wl_pid=""
cat "$work/out"
((rc == 0)) || fail "workload failed (exit $rc): $(tail -20 "$work/err")"

# Checked in Postgres: nothing lost, nothing applied twice.
q() { cf_psql -c "$1" clipfarm; }
[[ $(q "SELECT count(*) FROM compositions") == "$n" ]] || fail "compositions: $(q "SELECT count(*) FROM compositions")"
[[ $(q "SELECT count(DISTINCT idempotency_key) FROM compositions") == "$n" ]] || fail "duplicate creations"
[[ $(q "SELECT count(*) FROM compositions WHERE status = 'completed' AND attempts = 1") == "$n" ]] \
    || fail "not all completed exactly once: $(q "SELECT status, attempts, count(*) FROM compositions GROUP BY 1, 2")"
for to in planning encoding assembling completed; do
    once=$(q "SELECT count(*) FROM (SELECT composition_id FROM events WHERE type = 'status'
              AND payload->>'to' = '$to' GROUP BY 1 HAVING count(*) = 1) s")
    [[ $once == "$n" ]] || fail "transition to $to applied once for $once of $n compositions"
done

# The restores really happened.
reconciled=$(sed -n 's/.*reconciled_on_loss=\([0-9]*\).*/\1/p' "$work/out")
discarded=$(sed -n 's/.*discarded=\([0-9]*\).*/\1/p' "$work/out")
retries=$(sed -n 's/.*db retries=\([0-9]*\).*/\1/p' "$work/out")
((reconciled >= before + backlog)) \
    || fail "reconciles after losses pushed $reconciled, fewer than $before at start + $backlog lost"
# Postgres' restart killed the pooled connections: the pool must have found
# them dead and replaced them.
((discarded > 0)) || fail "the pool never replaced a connection Postgres closed"
echo "queue_chaos: ok ($n compositions; reconcile restored $reconciled; pool discarded $discarded connections)"
