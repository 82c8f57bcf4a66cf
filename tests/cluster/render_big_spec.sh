# Must show (issue 13): a composition whose spec is larger than 64 KiB (the
# old ASSIGN spec field) renders on the cluster: each ASSIGN carries only
# its task's part of the plan, with the sources it uses.
source "$CF_TESTS_DIR/cluster/lib.bash"

# The network first: its directory (removed on exit) holds the media.
CFNET_API=1 cfnet_net 2 || exit $?
CL_MEDIA=$CFNET_DIR/media
cl_media s.mp4 "testsrc2=size=160x90:rate=25" 2
# 160 clips behind long paths (two 200-character directories each).
long=$(printf 'd%.0s' {1..200})
clips=()
for ((i = 0; i < 160; i++)); do
    dir="$CL_MEDIA/$long$i/$long"
    mkdir -p "$dir"
    ln -s "$CL_MEDIA/s.mp4" "$dir/clip$i.mp4"
    clips+=("$dir/clip$i.mp4")
done
spec=$(printf '%s\n' "${clips[@]}" | jq -Rsc 'split("\n")[:-1] | {segment_seconds: 2,
    clips: [.[] | {source: ("file://" + .), start: 0.4, end: 0.6}],
    output: {width: 160, height: 90, fps: 25, preset: "fast"}}')
bytes=${#spec}
((bytes > 65536)) || cl_fail "the spec is only $bytes bytes"

for i in 1 2; do
    CFNET_API=1 cfnet_start "$i" "${CL_TIMING[@]}" --media-root "$CL_MEDIA" --no-calibrate --slots 2
done
cfnet_wait 30 all_ready 1 2 || cl_fail "nodes did not start"
cfnet_wait 15 all_see 1 1 2 || cl_fail "the nodes did not find each other"
cfnet_wait 10 one_coordinator 1 2 || cl_fail "no coordinator"
id=$(cl_submit 1 "$spec")
cl_wait_status 1 "$id" completed 300
curl -sS -o "$CL_MEDIA/out.mp4" "$(cl_api 2)/api/v1/compositions/$id/output"
# 160 clips of 0.2 s at 25 fps: 5 frames each.
frames=$(cl_frames "$CL_MEDIA/out.mp4")
[[ $frames == 800 ]] || cl_fail "$frames frames, planned 800"
nodes=$(cl_get 1 "$id" segments | jq -r '[.items[] | select(.kind == "segment") | .node_id] | unique | length')
echo "ok: a $bytes-byte spec rendered in $(cl_get 1 "$id" segments | jq '[.items[] | select(.kind == "segment")] | length') segments on $nodes node(s)"
