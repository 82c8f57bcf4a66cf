# Must show (issue 13): 3 nodes render a multi-clip composition submitted to
# a node that is not the coordinator: the exact planned frame count,
# keyframes at every segment start, audio and video durations within one
# frame, segments encoded on at least 2 nodes, quality within 0.05 dB PSNR
# of `clipfarm render` on one machine (both measured against the same
# lossless reference), and the output downloaded through every node
# byte-identical. A rotated phone clip and an interlaced one (issue 14) are
# among the clips: the cluster runs the same stages as `clipfarm render`.
source "$CF_TESTS_DIR/cluster/lib.bash"

# The network first: its directory (removed on exit) holds the media.
CFNET_API=1 cfnet_net 3 || exit $?
CL_MEDIA=$CFNET_DIR/media
cl_media a.mp4 "testsrc2=size=640x360:rate=25" 8
cl_media b.mp4 "smptebars=size=640x360:rate=30" 4 none
# A phone clip: stored 640x360 with a 90 degree display matrix (shown 360x640).
cl_media rot-src.mp4 "testsrc=size=640x360:rate=25" 3
ffmpeg -v error -y -i "$CL_MEDIA/rot-src.mp4" -c copy -metadata:s:v:0 rotate=90 "$CL_MEDIA/rot.mp4" ||
    cl_fail "rotated clip"
# 1080i-style: interlaced, top field first.
ffmpeg -v error -y -f lavfi -i "testsrc2=size=640x360:rate=50:duration=3" \
    -vf "tinterlace=interleave_top,setfield=tff" -c:v libx264 -preset ultrafast -flags +ilme+ildct \
    -x264-params tff=1 "$CL_MEDIA/inter.mp4" || cl_fail "interlaced clip"

for i in 1 2 3; do
    CFNET_API=1 cfnet_start "$i" "${CL_TIMING[@]}" --media-root "$CL_MEDIA" --slots 2 --no-calibrate
done
cfnet_wait 30 all_ready 1 2 3 || cl_fail "nodes did not start"
cfnet_wait 15 all_see 2 1 2 3 || cl_fail "the nodes did not find each other"
cfnet_wait 10 one_coordinator 1 2 3 || cl_fail "no coordinator"
coord=$(coordinators 1 2 3)
target=1
[[ $target == "$coord" ]] && target=2
echo "coordinator: node $coord; submitting to node $target"

spec=$(jq -nc --arg m "$CL_MEDIA" '{
    title: "cluster",
    segment_seconds: 1,
    clips: [
        {source: "file://\($m)/a.mp4", start: 0.5, end: 6.5},
        {source: "file://\($m)/rot.mp4"},
        {source: "file://\($m)/b.mp4", end: 3},
        {source: "file://\($m)/inter.mp4"}
    ],
    output: {width: 640, height: 360, fps: 25, preset: "fast"}}')
id=$(cl_submit "$target" "$spec")
cl_wait_status "$target" "$id" completed 240

# ---------------------------------------------------------------- the work list
segs=$(cl_get "$coord" "$id" segments)
nodes=$(jq -r '[.items[] | select(.kind == "segment") | .node_id] | unique | length' <<<"$segs")
echo "segments: $(jq -r '[.items[] | select(.kind == "segment")] | length' <<<"$segs") on $nodes nodes"
jq -r '.items[] | "  \(.kind) \(.index): node \(.node_id[0:8]) \(.status) attempts \(.attempts) \(.encode_fps) fps"' <<<"$segs"
((nodes >= 2)) || cl_fail "segments were encoded on $nodes node(s), not at least 2"
[[ $(jq -r '[.items[] | select(.status != "done")] | length' <<<"$segs") == 0 ]] ||
    cl_fail "not every task is done: $segs"
[[ $(jq -r '[.items[] | select(.kind == "audio")] | length' <<<"$segs") == 1 ]] ||
    cl_fail "the audio is not one task"

# ---------------------------------------------------------------- the output
for i in 1 2 3; do
    curl -sS -o "$CL_MEDIA/out-$i.mp4" "$(cl_api "$i")/api/v1/compositions/$id/output" ||
        cl_fail "download through node $i"
done
sum=$(md5sum <"$CL_MEDIA/out-1.mp4")
for i in 2 3; do
    [[ $(md5sum <"$CL_MEDIA/out-$i.mp4") == "$sum" ]] || cl_fail "node $i serves other bytes"
done
out=$CL_MEDIA/out-1.mp4
# 6 s + 3 s + 3 s + 3 s at 25 fps.
want=$((150 + 75 + 75 + 75))
frames=$(cl_frames "$out")
[[ $frames == "$want" ]] || cl_fail "$frames frames, planned $want"
# A keyframe at every segment start (frame_start of each segment).
starts=$(jq -r '[.items[] | select(.kind == "segment") | .frame_start] | join(" ")' <<<"$segs")
keys=$(ffprobe -v error -select_streams v:0 -show_entries frame=key_frame -of json "$out" |
    jq -r '[.frames | to_entries[] | select(.value.key_frame == 1) | .key] | join(" ")')
for s in $starts; do
    [[ " $keys " == *" $s "* ]] || cl_fail "no keyframe at segment start $s (keyframes: $keys)"
done
vdur=$(ffprobe -v error -select_streams v:0 -show_entries stream=duration -of csv=p=0 "$out")
adur=$(ffprobe -v error -select_streams a:0 -show_entries stream=duration -of csv=p=0 "$out")
awk -v v="$vdur" -v a="$adur" 'BEGIN { d = v - a; if (d < 0) d = -d; exit !(d <= 0.04) }' ||
    cl_fail "video $vdur s and audio $adur s differ by more than a frame"

# ---------------------------------------------------------------- against one machine
# The same composition rendered by `clipfarm render` here, and a lossless
# reference of the same timeline (crf 0, the same engine): both outputs are
# judged against it by ffmpeg's psnr filter.
jq --arg m "$CL_MEDIA" '.' <<<"$spec" >"$CL_MEDIA/comp.json"
"$CF_BIN" render "$CL_MEDIA/comp.json" -o "$CL_MEDIA/single.mp4" >/dev/null 2>"$CL_MEDIA/single.err" ||
    cl_fail "clipfarm render: $(cat "$CL_MEDIA/single.err")"
jq '.output.crf = 0 | .output.preset = "fast"' "$CL_MEDIA/comp.json" >"$CL_MEDIA/ref.json"
"$CF_BIN" render "$CL_MEDIA/ref.json" -o "$CL_MEDIA/ref.mp4" >/dev/null 2>"$CL_MEDIA/ref.err" ||
    cl_fail "reference render: $(cat "$CL_MEDIA/ref.err")"
psnr() {
    ffmpeg -v info -i "$1" -i "$CL_MEDIA/ref.mp4" -lavfi "[0:v][1:v]psnr" -f null - 2>&1 |
        sed -n 's/.*PSNR.* average:\([0-9.]*\).*/\1/p' | tail -1
}
p_cluster=$(psnr "$out")
p_single=$(psnr "$CL_MEDIA/single.mp4")
echo "PSNR vs lossless reference: cluster $p_cluster dB, one machine $p_single dB"
[[ -n $p_cluster && -n $p_single ]] || cl_fail "no PSNR measured"
awk -v c="$p_cluster" -v s="$p_single" 'BEGIN { d = c - s; if (d < 0) d = -d; exit !(d <= 0.05) }' ||
    cl_fail "cluster PSNR $p_cluster dB is more than 0.05 dB from one machine's $p_single dB"

# ---------------------------------------------------------------- issue 14 in segments
# The rotated clip (output frames 150..224) is pillarboxed upright: a
# 360x640 picture fitted into 640x360 leaves black bars left and right.
crop=$(ffmpeg -v info -i "$out" -vf "select='between(n,160,220)',cropdetect=limit=24:round=2:reset=0" \
    -f null - 2>&1 | sed -n 's/.*crop=\([0-9]*:[0-9]*\):.*/\1/p' | tail -1)
w=${crop%%:*}
[[ -n $w ]] && ((w < 300)) || cl_fail "the rotated clip is not upright and pillarboxed (crop $crop)"
# The interlaced clip (frames 300..374) comes out progressive.
idet=$(ffmpeg -v info -i "$out" -vf "select='between(n,300,374)',idet" -f null - 2>&1 |
    sed -n 's/.*Multi frame detection: TFF: *\([0-9]*\) *BFF: *\([0-9]*\) *Progressive: *\([0-9]*\).*/\1 \2 \3/p' | tail -1)
read -r tff bff prog <<<"$idet"
[[ -n $prog ]] && ((tff + bff <= prog / 10)) || cl_fail "the interlaced clip kept its combing (idet: $idet)"
echo "rotated clip crop $crop; interlaced clip idet TFF/BFF/progressive $idet"

# Nothing was cancelled or lost, so every ASSIGN found the slot the work list
# said was free: a node refusing one ("no free slot") means a slot is freed
# later than the DONE that frees it in the coordinator's eyes.
refused=$(cat "$CFNET_DIR"/h[123]/err | grep -c 'rejected by .*no free slot')
((refused == 0)) || cl_fail "$refused ASSIGNs were refused for a slot the coordinator saw free"
echo "ok: $want frames on $nodes nodes, byte-identical through 3 nodes"
