# Claims on the compositions a node renders whole (--render-mode local;
# issue 12; the cluster's own answers are in tests/cluster/render_failures.sh),
# with real nodes,
# judged in Postgres and Redis (psql, redis-cli), not by the nodes' word:
#   1. a take whose answer is lost (tests/lib/flaky_proxy.py between the
#      node and Postgres swallows it, then refuses connections for longer
#      than the node's pool waits) ends completed: the retry with the same
#      claim token recognises the take (it used to be refused, leaving the
#      composition processing with nobody on it, for ever);
#   2. a node killed (SIGKILL) mid-render: its claim expires unrenewed, the
#      other node (coordinator once the dead node's lease ran out) requeues
#      it and renders it to completion;
#   3. a graceful stop (SIGTERM) mid-render hands the composition back:
#      queued at once, with an event saying why, on the intake list; the
#      node's next start completes it.
source "$CF_TESTS_DIR/lib/testlib.sh"
source "$CF_TESTS_DIR/lib/apinode.sh"
command -v python3 >/dev/null || fail "python3 is not installed"
api_setup
DIRECT_DB=$API_DB
P=$API_PREFIX
redis_host_port=${CF_TEST_REDIS_URL#redis://}
redis_host_port=${redis_host_port%%/*}
rcli() { redis-cli -h "${redis_host_port%:*}" -p "${redis_host_port##*:}" -n "${CF_TEST_REDIS_URL##*/}" "$@"; }
sql() { psql "$DIRECT_DB" -qAtX -c "$1"; }

# wait_sql SECONDS SQL WANT: until SQL answers WANT, else fail.
wait_sql() {
    local deadline=$((SECONDS + $1)) got
    while ((SECONDS < deadline)); do
        got=$(sql "$2")
        [[ $got == "$3" ]] && return 0
        sleep 0.1
    done
    fail "after $1 s, '$2' answered '$got', expected '$3'"
}

API_KEY=$(api_key claims) || exit 1
api_media "$API_WORK/short.mp4" 1
# Long enough to be caught mid-render: 20 s, slow preset, one encoder thread
# (about 6 s to render here; the bounds below leave room for sanitizers).
ffmpeg -v error -f lavfi -i testsrc2=size=320x180:rate=30:duration=20 \
    -f lavfi -i sine=frequency=440:sample_rate=48000:duration=20 \
    -c:v libx264 -preset ultrafast -c:a aac -shortest "$API_WORK/long.mp4" || fail "ffmpeg source"
long_json() {
    printf '{"title":"%s","clips":[{"source":"file://%s"}],"output":{"width":320,"height":180,"fps":30,"preset":"high"},"segment_seconds":2}' \
        "$1" "$API_WORK/long.mp4"
}
submit() {
    api_curl -X POST -H 'Content-Type: application/json' -d "$2" "$1/api/v1/compositions"
    expect_status 202 "create"
    jq -r .id <<<"$body"
}
# wait_encoding ID: until ID renders (encoding, some progress).
wait_encoding() {
    wait_sql 120 "SELECT stage = 'encoding' AND progress > 0.05 FROM compositions WHERE id = '$1'" t
}
# The planning events of ID: who took it, in order.
takers() {
    sql "SELECT string_agg(payload->>'by', ',' ORDER BY id) FROM events WHERE composition_id = '$1'
         AND type = 'status' AND payload->>'to' = 'planning'"
}

# ---------------------------------------------------------------- 1. lost answer
pg_port=${DIRECT_DB#*@*:}
pg_port=${pg_port%%/*}
# The take's Bind message: the transition statement with "planning" as a
# parameter (length 8), not its Parse (whose SQL only quotes the word).
python3 "$CF_TESTS_DIR/lib/flaky_proxy.py" tcp "$pg_port" "$API_WORK/proxy.log" "$API_WORK/proxy.port" \
    --match 'composition_transition\x00' --match '\x00\x00\x00\x08planning' \
    --hold-ms 500 --down-ms 8000 &
proxy_pid=$!
trap 'rc=$?; kill $proxy_pid 2>/dev/null; (exit $rc); api_cleanup' EXIT
for ((i = 0; i < 100; i++)); do [[ -s $API_WORK/proxy.port ]] && break; sleep 0.05; done
[[ -s $API_WORK/proxy.port ]] || fail "the proxy did not start"
API_DB=${DIRECT_DB/:$pg_port\//:$(cat "$API_WORK/proxy.port")/}
api_node_start lost --render-mode local --render-jobs 1
API_DB=$DIRECT_DB
id=$(submit "$API_URL" "$(api_comp_json "$API_WORK/short.mp4" lost-answer)") || exit 1
wait_sql 300 "SELECT status FROM compositions WHERE id = '$id'" completed
grep -q "swallowed the server's answer" "$API_WORK/proxy.log" || fail "the take's answer was never lost: $(cat "$API_WORK/proxy.log")"
grep -q "refused a connection" "$API_WORK/proxy.log" || fail "Postgres never looked away: $(cat "$API_WORK/proxy.log")"
# Taken once: the retry recognised the lost take, it did not take it again.
[[ $(sql "SELECT attempts FROM compositions WHERE id = '$id'") == 1 ]] || fail "taken more than once"
[[ $(takers "$id" | tr ',' '\n' | wc -l) == 1 ]] || fail "planning events: $(takers "$id")"
grep -q "cannot connect to Postgres" "$API_WORK/lost/log" || fail "the node never lost the database"
api_node_stop lost
kill "$proxy_pid" 2>/dev/null
echo "1. lost take answer: completed, taken once"

# ---------------------------------------------------------------- 2. node killed
flags=(--render-mode local --render-jobs 1 --claim-ttl-ms 2000 --lease-ttl 2 --reap-interval-ms 200 --no-calibrate)
api_node_start a "${flags[@]}"
A=$API_URL
id=$(submit "$A" "$(long_json killed)") || exit 1
wait_encoding "$id"
owner=$(sql "SELECT claimed_by FROM compositions WHERE id = '$id'")
[[ -n $owner ]] || fail "a rendering composition without a claim"
api_node_start b "${flags[@]}"
# b is not the coordinator while a lives: it leaves claims to a.
for ((i = 0; i < 100; i++)); do
    grep -q "not the coordinator" "$API_WORK/b/log" && break
    sleep 0.1
done
grep -q "not the coordinator" "$API_WORK/b/log" || fail "b never settled as a follower: $(tail "$API_WORK/b/log")"
[[ $(sql "SELECT status FROM compositions WHERE id = '$id'") == processing ]] \
    || fail "a finished the render before it could be killed (make the source longer)"
kill -9 "${API_PIDS[a]}"
wait "${API_PIDS[a]}" 2>/dev/null
unset "API_PIDS[a]"
wait_sql 300 "SELECT status FROM compositions WHERE id = '$id'" completed
sweeper=$(sql "SELECT payload->>'by' FROM events WHERE composition_id = '$id' AND type = 'status'
               AND payload->>'reason' = 'claim_expired' AND payload->>'owner' = '$owner'")
[[ -n $sweeper && $sweeper != "$owner" ]] || fail "no expiry of $owner's claim by another node (sweeper '$sweeper')"
location=$(sql "SELECT output_location FROM compositions WHERE id = '$id'")
[[ $location == "clipfarm://$sweeper/"* ]] || fail "completed by '$location', not by the surviving node $sweeper"
[[ $(takers "$id") == "$owner-0,$sweeper-0" ]] || fail "taken by $(takers "$id"), expected $owner-0 then $sweeper-0"
[[ $(sql "SELECT attempts FROM compositions WHERE id = '$id'") == 2 ]] || fail "not exactly two attempts"
grep -q "coordinator: expiring claims" "$API_WORK/b/log" || fail "b never became the coordinator"
echo "2. node killed mid-render: completed by the other node"

# ---------------------------------------------------------------- 3. graceful stop
B=$API_URL_b
api_curl "$B/api/v1/cluster"
b_id=$(jq -r .node_id <<<"$body")
[[ -n $b_id && $b_id != null ]] || fail "no node id for b"
id=$(submit "$B" "$(long_json stopped)") || exit 1
wait_encoding "$id"
api_node_stop b
# Handed back at once: queued, unclaimed, the reason recorded, on the queue.
[[ $(sql "SELECT status || ' ' || coalesce(claimed_by, '-') || ' ' || progress FROM compositions WHERE id = '$id'") == "queued - 0" ]] \
    || fail "after SIGTERM: $(sql "SELECT status, stage, claimed_by FROM compositions WHERE id = '$id'")"
[[ $(sql "SELECT payload->>'from' || ' ' || (payload->>'reason') FROM events WHERE composition_id = '$id'
          AND type = 'status' ORDER BY id DESC LIMIT 1") == "encoding node_stopped" ]] \
    || fail "no hand-back event: $(sql "SELECT payload FROM events WHERE composition_id = '$id' AND type = 'status'")"
rcli LRANGE "${P}q:default" 0 -1 | grep -q "^d:$id:" || fail "not on the intake list: $(rcli LRANGE "${P}q:default" 0 -1)"
# b's own processing lists (a's, killed in 2., are the reaper's until its
# heartbeat key expires).
for list in $(rcli --scan --pattern "${P}q:proc:${b_id}-*"); do
    [[ $(rcli LLEN "$list") == 0 ]] || fail "$list still holds $(rcli LRANGE "$list" 0 -1)"
done
api_node_start b "${flags[@]}"
wait_sql 300 "SELECT status FROM compositions WHERE id = '$id'" completed
[[ $(sql "SELECT attempts FROM compositions WHERE id = '$id'") == 2 ]] || fail "not exactly two attempts"
api_node_stop b
echo "3. graceful stop mid-render: handed back, completed on the next start"
echo "worker_claims: ok"
