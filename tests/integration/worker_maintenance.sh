# The node's own maintenance loop (node/work/cf_worker.c), not a copy of it in a
# test: with its intervals shortened by flags, a rendering node
#   - reaps: an item held by a dead consumer (planted with redis-cli: a
#     processing list, no heartbeat key) goes back to the queue and renders;
#   - repairs a loss: with its Redis keys deleted while a composition is
#     queued in Postgres only, it notices the loss and renders it;
#   - purges: a completed composition past --keep-completed-s leaves
#     Postgres, and its output file leaves the data dir;
#   - reconciles periodically: a composition queued in Postgres only (no
#     loss) renders within --reconcile-interval-ms, far below the 30 s
#     default;
#   - renders with two slots, each composition taken and rendered once.
# The compositions of the first phases are inserted with psql: they reach
# Postgres but never the renderer's queue. (A second node would be the
# coordinator while the renderer restarts, and only the coordinator
# reconciles.) Postgres and Redis are the judges (psql, redis-cli), not the
# node's API or logs.
source "$CF_TESTS_DIR/lib/testlib.sh"
source "$CF_TESTS_DIR/lib/apinode.sh"
api_setup
api_media "$API_WORK/a.mp4" 1

P=$API_PREFIX
redis_host_port=${CF_TEST_REDIS_URL#redis://}
redis_host_port=${redis_host_port%%/*}
redis_db=${CF_TEST_REDIS_URL##*/}
rcli() { redis-cli -h "${redis_host_port%:*}" -p "${redis_host_port##*:}" -n "$redis_db" "$@"; }
sql() { psql "$API_DB" -qAtX -c "$1"; }

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

API_KEY=$(api_key maint) || exit 1
# A queued composition in Postgres only; prints its id.
create() {
    sql "INSERT INTO compositions (title, spec, status) VALUES ('$1',
         '$(api_comp_json "$API_WORK/a.mp4" "$1")'::jsonb, 'queued') RETURNING id"
}

# ---------------------------------------------------------------- reaper, loss, purge
# No periodic reconcile in this phase (10 min): only the reaper or a
# detected loss can bring these compositions to the renderer.
api_node_start render --render-mode local --reap-interval-ms 200 --reconcile-interval-ms 600000 \
    --purge-interval-ms 300 --keep-completed-s 3 --keep-failed-s 3
# Its first reconcile (at start) has set the marker.
for ((i = 0; i < 100; i++)); do [[ $(rcli EXISTS "${P}q:reconciled") == 1 ]] && break; sleep 0.1; done
[[ $(rcli EXISTS "${P}q:reconciled") == 1 ]] || fail "the renderer never reconciled at start"

c1=$(create reaped) || exit 1
# A dead consumer holds it: its processing list, no heartbeat key.
rcli RPUSH "${P}q:proc:ghost" "d:$c1" >/dev/null
rcli SADD "${P}q:consumers" ghost >/dev/null
wait_sql 60 "SELECT status FROM compositions WHERE id = '$c1'" completed
[[ $(rcli LLEN "${P}q:proc:ghost") == 0 ]] || fail "the dead consumer still holds an item"
[[ $(rcli SISMEMBER "${P}q:consumers" ghost) == 0 ]] || fail "the dead consumer is still listed"
loc_c1=$(sql "SELECT output_location FROM compositions WHERE id = '$c1'")
[[ $loc_c1 == clipfarm://*/blobs/* ]] || fail "c1's output is not a blob of the node's store: $loc_c1"
out_c1=$API_WORK/render/data/${loc_c1#clipfarm://*/}
[[ -s $out_c1 ]] || fail "no output file for $c1"

c2=$(create lost) || exit 1
# Redis loses everything of this cluster (the test Redis is shared: only
# our prefix goes). c2 is queued in Postgres only: the loss must be noticed.
mapfile -t keys < <(rcli --scan --pattern "${P}q:*" | grep -v "^${P}api:")
((${#keys[@]} > 0)) || fail "no queue keys to lose"
rcli DEL "${keys[@]}" >/dev/null
wait_sql 60 "SELECT status FROM compositions WHERE id = '$c2'" completed

# Purged: 3 s after completing, c1's row and its file are gone.
wait_sql 60 "SELECT count(*) FROM compositions WHERE id = '$c1'" 0
for ((i = 0; i < 50; i++)); do [[ -e $out_c1 ]] || break; sleep 0.1; done
[[ ! -e $out_c1 ]] || fail "purged $c1 but left its output $out_c1"
api_node_stop render

# ---------------------------------------------------------------- periodic reconcile
api_node_start render --render-mode local --reconcile-interval-ms 500
for ((i = 0; i < 100; i++)); do [[ $(rcli EXISTS "${P}q:reconciled") == 1 ]] && break; sleep 0.1; done
c3=$(create periodic) || exit 1
# No loss (the marker stays), no push: only the periodic pass finds it. 20 s
# is well below the 30 s default, so an interval that is not applied fails.
wait_sql 20 "SELECT status FROM compositions WHERE id = '$c3'" completed
[[ $(rcli EXISTS "${P}q:reconciled") == 1 ]] || fail "the marker went away: that was a loss, not a period"
api_node_stop render

# ---------------------------------------------------------------- two slots, exactly once
# The node's own slots (not a test consumer) take 12 compositions pushed at
# once: each is taken once and rendered once, by both slots, at the same time.
api_node_start render --render-mode local --slots 2 --render-jobs 1
B=$API_URL
ids=()
for ((i = 0; i < 12; i++)); do
    api_curl -X POST -H 'Content-Type: application/json' \
        -d "$(api_comp_json "$API_WORK/a.mp4" "slot-$i")" "$B/api/v1/compositions"
    expect_status 202 "create slot-$i"
    ids+=("'$(jq -r .id <<<"$body")'")
done
in_list=$(IFS=,; echo "${ids[*]}")
wait_sql 120 "SELECT count(*) FROM compositions WHERE id IN ($in_list) AND status = 'completed'" 12
[[ $(sql "SELECT count(*) FROM compositions WHERE id IN ($in_list) AND attempts = 1") == 12 ]] \
    || fail "a composition was attempted more than once"
[[ $(sql "SELECT count(*) || '/' || count(DISTINCT composition_id) FROM events WHERE type = 'status'
          AND payload->>'to' = 'planning' AND composition_id IN ($in_list)") == 12/12 ]] \
    || fail "taken more or less than once each"
slots=$(sql "SELECT count(DISTINCT payload->>'by') FROM events WHERE type = 'status'
             AND payload->>'to' = 'planning' AND composition_id IN ($in_list)")
[[ $slots == 2 ]] || fail "$slots slot(s) took work, expected 2"
# Two renders overlapped in time: taken (planning) before the other completed.
overlaps=$(sql "WITH r AS (SELECT composition_id,
                  min(at) FILTER (WHERE payload->>'to' = 'planning') AS t0,
                  min(at) FILTER (WHERE payload->>'to' = 'completed') AS t1
                FROM events WHERE type = 'status' AND composition_id IN ($in_list) GROUP BY 1)
              SELECT count(*) FROM r a JOIN r b ON a.composition_id < b.composition_id
              WHERE a.t0 < b.t1 AND b.t0 < a.t1")
((overlaps > 0)) || fail "the two slots never rendered at the same time"
echo "two slots: $overlaps overlapping pairs of renders"
api_node_stop render
echo "worker_maintenance: ok"
