# clipfarm render: the progress bar and JSON lines, and Ctrl-C (SIGINT)
# stopping a render cleanly: exit 1 with "cancelled", no output, no
# temporary files left.
source "$CF_TESTS_DIR/lib/testlib.sh"
command -v ffmpeg >/dev/null || fail "ffmpeg is not installed"

dir=$(mktemp -d "${TMPDIR:-/tmp}/cf-render-cancel.XXXXXX")
pid=
cleanup() {
    [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
mkdir "$dir/work"

ffmpeg -v error -f lavfi -i testsrc2=size=320x180:rate=30:duration=60 \
    -f lavfi -i sine=frequency=440:sample_rate=48000:duration=60 \
    -c:v libx264 -preset ultrafast -c:a aac -shortest "$dir/src.mp4" || fail "ffmpeg source"

# 1. A short render with the bar forced on (stderr is not a terminal here).
cat >"$dir/short.json" <<EOF
{"clips": [{"source": "file://$dir/src.mp4", "start": 0.5, "end": 2.5}],
 "output": {"width": 160, "height": 90, "fps": 30, "preset": "fast"}, "segment_seconds": 1}
EOF
expect_exit 0 "$CF_BIN" render "$dir/short.json" -o "$dir/short.mp4" --progress bar \
    --work-dir "$dir/work"
[[ $err == *$'\r'"encode  ["*"] 100%  60/60 frames"*"fps  ETA "* ]] || fail "no progress bar in: $err"
[[ $out == "rendered $dir/short.mp4: 60 frames (2.000 s at 30/1 fps), 2 segments, libx264,"* ]] \
    || fail "summary: $out"

# 2. JSON lines: one object per update, the last one "done" with the plan.
expect_exit 0 "$CF_BIN" render "$dir/short.json" -o "$dir/short2.mp4" --progress json \
    --work-dir "$dir/work"
first=$(head -1 <<<"$out")
last=$(tail -1 <<<"$out")
[[ $first == '{"phase":"encode","done":0,"total":60,'* ]] || fail "first JSON line: $first"
[[ $last == '{"phase":"done","ok":true,"frames":60,"samples":96000,"fps":"30/1","segments":2,'* ]] \
    || fail "last JSON line: $last"
[[ $last == *'"segment_starts":[0,30]}' ]] || fail "segment starts: $last"
[[ -z $err ]] || fail "stderr not empty: $err"

# 3. Ctrl-C in the middle of encoding.
cat >"$dir/long.json" <<EOF
{"clips": [{"source": "file://$dir/src.mp4"}],
 "output": {"width": 320, "height": 180, "fps": 30, "preset": "high"}, "segment_seconds": 2}
EOF
"$CF_BIN" render "$dir/long.json" -o "$dir/long.mp4" --progress json --jobs 2 \
    --work-dir "$dir/work" >"$dir/progress.log" 2>"$dir/stderr.log" &
pid=$!
for ((i = 0; i < 300; i++)); do
    grep -q '"phase":"encode","done":[1-9]' "$dir/progress.log" && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
done
grep -q '"phase":"encode","done":[1-9]' "$dir/progress.log" || fail "encoding never started"
[[ -n $(ls "$dir/work") ]] || fail "no workspace while rendering"
kill -INT "$pid"
wait "$pid"
rc=$?
pid=
[[ $rc == 1 ]] || fail "exit $rc after SIGINT, expected 1"
expect_one_line "$(cat "$dir/stderr.log")" '^clipfarm render: cancelled$'
[[ ! -e $dir/long.mp4 ]] || fail "output written despite the cancel"
[[ -z $(ls "$dir/work") ]] || fail "workspace left behind: $(ls -R "$dir/work")"
[[ -z $(ls "$dir" | grep -F .part) ]] || fail "partial output left behind"
grep -q '"phase":"done","ok":false' "$dir/progress.log" || fail "no final JSON line"
echo "ok"
