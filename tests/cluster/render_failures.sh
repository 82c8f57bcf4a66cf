# Must show (issue 13): losing work mid-render.
#   - cancel mid-render: every node stops within 2 s, no temp files anywhere,
#     status cancelled;
#   - kill -9 of a worker mid-render: the composition completes with the
#     exact frame count; what survivors finished is not encoded again (the
#     dead node's results went with it and are encoded again);
#   - kill -9 of the coordinator mid-render: a new coordinator resumes from
#     Postgres and the composition completes; segments done on live nodes
#     before the kill are not encoded again.
source "$CF_TESTS_DIR/cluster/lib.bash"

# The network first: its directory (removed on exit) holds the media.
CFNET_API=1 cfnet_net 3 || exit $?
CL_MEDIA=$CFNET_DIR/media
cl_media long.mp4 "testsrc2=size=640x360:rate=25" 24

common=("${CL_TIMING[@]}" --media-root "$CL_MEDIA" --no-calibrate --slots 1)
for i in 1 2 3; do CFNET_API=1 cfnet_start "$i" "${common[@]}"; done
cfnet_wait 30 all_ready 1 2 3 || cl_fail "nodes did not start"
cfnet_wait 15 all_see 2 1 2 3 || cl_fail "the nodes did not find each other"
cfnet_wait 10 one_coordinator 1 2 3 || cl_fail "no coordinator"

spec=$(jq -nc --arg m "$CL_MEDIA" '{segment_seconds: 1,
    clips: [{source: "file://\($m)/long.mp4"}],
    output: {width: 640, height: 360, fps: 25, preset: "balanced"}}')
want=600

# done_count I ID: segments done.
done_count() { cl_get "$1" "$2" segments | jq -r '[.items[] | select(.kind == "segment" and .status == "done")] | length'; }
# busy_on ID NODE_ID: tasks of ID encoding on NODE_ID.
encoding_on() {
    cl_get 1 "$1" segments | jq -r --arg n "$2" '[.items[] | select(.status == "encoding" and .node_id == $n)] | length'
}
# leftovers: task scratch or unfinished blobs on any node.
leftovers() {
    local i
    for i in 1 2 3; do
        find "$CFNET_DIR/h$i/data/work" "$CFNET_DIR/h$i/data/blobs/tmp" -mindepth 1 -maxdepth 1 2>/dev/null
    done
}
# children: encoder processes of our nodes.
children() {
    local i p n=0
    for i in 1 2 3; do
        p=$(cfnet_pid "$i")
        [[ -n $p ]] && kill -0 "$p" 2>/dev/null && n=$((n + $(pgrep -P "$p" | wc -l)))
    done
    echo "$n"
}

# ---------------------------------------------------------------- cancel
id=$(cl_submit 1 "$spec")
cfnet_wait 60 bash -c "(( \$(curl -s $(cl_api 1)/api/v1/compositions/$id/segments | jq '[.items[] | select(.status == \"encoding\")] | length') >= 2 ))" ||
    cl_fail "never encoding on 2 nodes: $(cl_get 1 "$id" segments)"
curl -sS -X DELETE "$(cl_api 2)/api/v1/compositions/$id" >/dev/null
t0=$(cfnet_now_ms)
while (($(cfnet_now_ms) - t0 < 2000)) && { (($(children) > 0)) || [[ -n $(leftovers) ]]; }; do sleep 0.05; done
stopped=$(($(cfnet_now_ms) - t0))
(($(children) == 0)) || cl_fail "$(children) encoder(s) still running 2 s after the cancel"
[[ -z $(leftovers) ]] || cl_fail "files left 2 s after the cancel: $(leftovers)"
[[ $(cl_get 3 "$id" | jq -r .status) == cancelled ]] || cl_fail "not cancelled: $(cl_get 3 "$id")"
echo "cancel: every node stopped in $stopped ms, nothing left"

# ---------------------------------------------------------------- kill -9 a worker
coord=$(coordinators 1 2 3)
victim=1
[[ $victim == "$coord" ]] && victim=2
victim_id=$(node_id "$victim")
id=$(cl_submit "$coord" "$spec")
cfnet_wait 120 bash -c "(( \$(curl -s $(cl_api "$coord")/api/v1/compositions/$id/segments | jq --arg n $victim_id '[.items[] | select(.status == \"encoding\" and .node_id == \$n)] | length') >= 1 && \$(curl -s $(cl_api "$coord")/api/v1/compositions/$id/segments | jq '[.items[] | select(.kind == \"segment\" and .status == \"done\")] | length') >= 3 ))" ||
    cl_fail "the worker never encoded while others were done: $(cl_get "$coord" "$id" segments)"
before=$(cl_get "$coord" "$id" segments)
cfnet_kill "$victim" KILL
echo "killed worker node $victim (${victim_id:0:8}) with $(jq '[.items[] | select(.kind == "segment" and .status == "done")] | length' <<<"$before") segments done"
cl_wait_status "$coord" "$id" completed 300
after=$(cl_get "$coord" "$id" segments)
# Survivors' results stand: same blob, same attempt count.
kept=$(jq -r --arg v "$victim_id" '.items[] | select(.kind == "segment" and .status == "done" and .node_id != $v) | "\(.index) \(.blob_hash) \(.attempts)"' <<<"$before")
while read -r idx hash attempts; do
    [[ -z $idx ]] && continue
    now=$(jq -r --argjson i "$idx" '.items[] | select(.kind == "segment" and .index == $i) | "\(.blob_hash) \(.attempts)"' <<<"$after")
    [[ $now == "$hash $attempts" ]] || cl_fail "segment $idx, done before the kill, was encoded again ($hash $attempts -> $now)"
done <<<"$kept"
curl -sS -o "$CL_MEDIA/w.mp4" "$(cl_api "$coord")/api/v1/compositions/$id/output"
[[ $(cl_frames "$CL_MEDIA/w.mp4") == "$want" ]] || cl_fail "$(cl_frames "$CL_MEDIA/w.mp4") frames after a worker died, planned $want"
echo "worker kill: completed with $want frames, $(wc -l <<<"$kept") finished segments kept"
CFNET_API=1 cfnet_start "$victim" "${common[@]}"
cfnet_wait 30 all_see 2 1 2 3 || cl_fail "node $victim did not come back"

# ---------------------------------------------------------------- kill -9 the coordinator
coord=$(coordinators 1 2 3)
other=1
[[ $other == "$coord" ]] && other=2
id=$(cl_submit "$other" "$spec")
cfnet_wait 120 bash -c "(( \$(curl -s $(cl_api "$other")/api/v1/compositions/$id/segments | jq '[.items[] | select(.kind == \"segment\" and .status == \"done\")] | length') >= 4 ))" ||
    cl_fail "no progress before the coordinator kill"
before=$(cl_get "$other" "$id" segments)
coord_id=$(node_id "$coord")
cfnet_kill "$coord" KILL
echo "killed coordinator node $coord (${coord_id:0:8})"
survivors=()
for i in 1 2 3; do [[ $i != "$coord" ]] && survivors+=("$i"); done
cl_wait_status "$other" "$id" completed 300
after=$(cl_get "$other" "$id" segments)
kept=$(jq -r --arg v "$coord_id" '.items[] | select(.kind == "segment" and .status == "done" and .node_id != $v) | "\(.index) \(.blob_hash) \(.attempts)"' <<<"$before")
while read -r idx hash attempts; do
    [[ -z $idx ]] && continue
    now=$(jq -r --argjson i "$idx" '.items[] | select(.kind == "segment" and .index == $i) | "\(.blob_hash) \(.attempts)"' <<<"$after")
    [[ $now == "$hash $attempts" ]] || cl_fail "segment $idx, done before the coordinator died, was encoded again ($hash $attempts -> $now)"
done <<<"$kept"
new_epoch=$(jq -r '[.items[].epoch] | max' <<<"$after")
old_epoch=$(jq -r '[.items[].epoch] | max' <<<"$before")
((new_epoch > old_epoch)) || cl_fail "no task was assigned by a newer epoch ($old_epoch -> $new_epoch)"
curl -sS -o "$CL_MEDIA/c.mp4" "$(cl_api "$other")/api/v1/compositions/$id/output"
[[ $(cl_frames "$CL_MEDIA/c.mp4") == "$want" ]] || cl_fail "$(cl_frames "$CL_MEDIA/c.mp4") frames after the coordinator died"
echo "coordinator kill: completed at epoch $new_epoch with $want frames, $(wc -l <<<"$kept") finished segments kept"
echo "ok: cancel, worker kill, coordinator kill"
