# Must show (issue 13): capability routing with --encoders. A composition
# needing an encoder only one node offers goes entirely to it; one needing
# an encoder nobody offers waits, queued, with its reason in the API, and
# completes once a node offering it joins.
source "$CF_TESTS_DIR/cluster/lib.bash"

# The network first: its directory (removed on exit) holds the media.
CFNET_API=1 cfnet_net 3 || exit $?
CL_MEDIA=$CFNET_DIR/media
cl_media a.mp4 "testsrc2=size=320x240:rate=25" 6

common=("${CL_TIMING[@]}" --media-root "$CL_MEDIA" --no-calibrate --slots 2)
CFNET_API=1 cfnet_start 1 "${common[@]}" --encoders libx264
CFNET_API=1 cfnet_start 2 "${common[@]}" --encoders libx264,libx265
cfnet_wait 30 all_ready 1 2 || cl_fail "nodes did not start"
cfnet_wait 15 all_see 1 1 2 || cl_fail "the nodes did not find each other"
cfnet_wait 10 one_coordinator 1 2 || cl_fail "no coordinator"
[[ $(cfnet_jq 1 '[.capabilities.encoders[].name] | join(",")') == libx264 ]] ||
    cl_fail "node 1 offers more than --encoders: $(cfnet_jq 1 .capabilities.encoders)"

comp() {
    jq -nc --arg m "$CL_MEDIA" --arg codec "$1" '{segment_seconds: 1,
        clips: [{source: "file://\($m)/a.mp4"}],
        output: {width: 320, height: 240, fps: 25, preset: "fast", video_codec: $codec}}'
}
node2=$(node_id 2)

# HEVC: only node 2 has libx265, so every segment is node 2's.
id=$(cl_submit 1 "$(comp hevc)")
cl_wait_status 1 "$id" completed 180
others=$(cl_get 1 "$id" segments |
    jq -r --arg n "$node2" '[.items[] | select(.kind == "segment" and .node_id != $n)] | length')
[[ $others == 0 ]] || cl_fail "$others HEVC segment(s) went to a node without libx265"
codec=$(curl -sS "$(cl_api 1)/api/v1/compositions/$id/output" |
    ffprobe -v error -select_streams v:0 -show_entries stream=codec_name -of csv=p=0 -)
[[ $codec == hevc ]] || cl_fail "the output is $codec, not hevc"
echo "hevc: every segment on node 2 (${node2:0:8})"

# Node 2 leaves; HEVC now waits, queued, and says for what.
cfnet_kill 2 TERM
cfnet_wait 15 bash -c "[[ \$(jq -r '[.peers[] | select(.state == \"alive\")] | length' $(cfnet_status 1)) == 0 ]]" ||
    cl_fail "node 2 did not leave"
id2=$(cl_submit 1 "$(comp hevc)")
cfnet_wait 20 bash -c "[[ \$(curl -s $(cl_api 1)/api/v1/compositions/$id2 | jq -r .waiting) == 'waiting for a node with libx265' ]]" ||
    cl_fail "no waiting reason: $(cl_get 1 "$id2")"
[[ $(cl_get 1 "$id2" | jq -r .status) == queued ]] || cl_fail "it is not queued: $(cl_get 1 "$id2")"
# H.264 work is not held up behind it.
id3=$(cl_submit 1 "$(comp h264)")
cl_wait_status 1 "$id3" completed 120
[[ $(cl_get 1 "$id2" | jq -r .status) == queued ]] || cl_fail "the HEVC one moved without libx265"
echo "waiting: $(cl_get 1 "$id2" | jq -r .waiting); h264 went ahead"

# A node offering libx265 joins: it starts and completes there.
CFNET_API=1 cfnet_start 3 "${common[@]}" --encoders libx265
cl_wait_status 1 "$id2" completed 180
node3=$(node_id 3)
others=$(cl_get 1 "$id2" segments |
    jq -r --arg n "$node3" '[.items[] | select(.kind == "segment" and .node_id != $n)] | length')
[[ $others == 0 ]] || cl_fail "$others HEVC segment(s) not on the libx265 node"
[[ $(cl_get 1 "$id2" | jq -r '.waiting // empty') == "" ]] || cl_fail "the reason stayed after it started"
echo "ok: capability routing"
