# README claims of `clipfarm render`, each judged outside the code under
# test:
#   - faststart for the balanced and high presets (the moov box before mdat,
#     read from the file's top-level boxes), not for fast;
#   - --max-memory bounds the encoders' memory (peak RSS measured by
#     /usr/bin/time: a small budget uses clearly less than a large one);
#   - https sources (a loopback TLS server with a certificate made here,
#     trusted through CF_CA_FILE; without it, verification refuses).
source "$CF_TESTS_DIR/lib/testlib.sh"
source "$CF_TESTS_DIR/lib/servers.sh"
for tool in ffmpeg ffprobe python3 openssl /usr/bin/time; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done
dir=$(mktemp -d "${TMPDIR:-/tmp}/cf-render-claims.XXXXXX")
tls_pid=
cleanup() {
    [[ -n $tls_pid ]] && kill "$tls_pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
mkdir "$dir/work" "$dir/www"

ffmpeg -v error -f lavfi -i testsrc2=size=640x360:rate=25:duration=2 \
    -f lavfi -i sine=frequency=440:sample_rate=48000:duration=2 \
    -c:v libx264 -preset ultrafast -g 25 -c:a aac -shortest "$dir/www/src.mp4" || fail "ffmpeg source"

# comp PATH SOURCE PRESET [W H]: a one-clip composition.
comp() {
    printf '{"clips": [{"source": "%s"}], "output": {"width": %d, "height": %d, "fps": 25, "preset": "%s"}, "segment_seconds": 1}\n' \
        "$2" "${4:-320}" "${5:-180}" "$3" >"$1"
}
frames() {
    ffprobe -v error -count_frames -select_streams v -show_entries stream=nb_read_frames -of csv=p=0 "$1"
}
# The order of the top-level boxes of an MP4 file, e.g. "ftyp moov mdat".
boxes() {
    python3 - "$1" <<'PY'
import struct, sys
names = []
with open(sys.argv[1], "rb") as f:
    while True:
        head = f.read(8)
        if len(head) < 8:
            break
        size, name = struct.unpack(">I4s", head)
        if size == 1:
            size = struct.unpack(">Q", f.read(8))[0] - 8
        elif size == 0:
            names.append(name.decode("latin-1"))
            break
        names.append(name.decode("latin-1"))
        f.seek(size - 8, 1)
print(" ".join(n for n in names if n in ("moov", "mdat")))
PY
}

# ---------------------------------------------------------------- faststart
for preset in fast balanced high; do
    comp "$dir/$preset.json" "file://$dir/www/src.mp4" "$preset"
    expect_exit 0 "$CF_BIN" render "$dir/$preset.json" -o "$dir/$preset.mp4" --progress none \
        --work-dir "$dir/work"
    order=$(boxes "$dir/$preset.mp4")
    case $preset in
        fast) [[ $order == "mdat moov" ]] || fail "fast: expected mdat before moov, got '$order'" ;;
        *) [[ $order == "moov mdat" ]] || fail "$preset: not faststart (boxes: '$order')" ;;
    esac
    [[ $(frames "$dir/$preset.mp4") == 50 ]] || fail "$preset: not 50 frames"
done

# ---------------------------------------------------------------- --max-memory
# 1280x720 with the high preset (long x264 lookahead), 2 segments on 2
# jobs: the default budget fits both with their full lookahead; 40 MB does
# not, so it must run fewer at once and shorten the lookahead.
comp "$dir/big.json" "file://$dir/www/src.mp4" high 1280 720
peak_kb() {
    /usr/bin/time -f '%M' -o "$dir/time.$1" "$CF_BIN" render "$dir/big.json" -o "$dir/big-$1.mp4" \
        --progress none --jobs 2 --max-memory "$1" --work-dir "$dir/work" >/dev/null 2>"$dir/err.$1" \
        || fail "render with --max-memory $1: $(cat "$dir/err.$1")"
    [[ $(frames "$dir/big-$1.mp4") == 50 ]] || fail "--max-memory $1: not 50 frames"
    tail -n 1 "$dir/time.$1"
}
large=$(peak_kb 4000)
small=$(peak_kb 40)
echo "peak RSS: $((large / 1024)) MB with --max-memory 4000, $((small / 1024)) MB with --max-memory 40"
((small * 10 < large * 8)) || fail "--max-memory 40 peaked at $small kB, not clearly below $large kB"

# ---------------------------------------------------------------- https
# A certificate for 127.0.0.1 made now; the server is openssl's own.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>"$dir/openssl.err" \
    || fail "openssl req: $(cat "$dir/openssl.err")"
for attempt in 1 2 3; do
    port=$(cf_free_port) || fail "no free port"
    (cd "$dir/www" && exec openssl s_server -quiet -WWW -accept "127.0.0.1:$port" \
        -cert "$dir/cert.pem" -key "$dir/key.pem") >"$dir/tls.log" 2>&1 &
    tls_pid=$!
    for ((i = 0; i < 100; i++)); do
        curl -sf --cacert "$dir/cert.pem" -o /dev/null "https://127.0.0.1:$port/src.mp4" && break 2
        kill -0 "$tls_pid" 2>/dev/null || break
        sleep 0.05
    done
    kill "$tls_pid" 2>/dev/null
    wait "$tls_pid" 2>/dev/null
    tls_pid=
done
[[ -n $tls_pid ]] || fail "the TLS test server did not start: $(cat "$dir/tls.log")"
comp "$dir/https.json" "https://127.0.0.1:$port/src.mp4" fast
# Not trusted: verification is on, the render fails naming the source.
expect_exit 1 env -u CF_CA_FILE "$CF_BIN" render "$dir/https.json" -o "$dir/untrusted.mp4" \
    --progress none --work-dir "$dir/work"
expect_one_line "$err" "^clipfarm render: clips\[0\]\.source: https://127\.0\.0\.1:$port/src\.mp4: .*(certificate|SSL)"
[[ ! -e $dir/untrusted.mp4 ]] || fail "output from an untrusted server"
# Trusted through CF_CA_FILE: fetched and rendered, frame for frame.
expect_exit 0 env CF_CA_FILE="$dir/cert.pem" "$CF_BIN" render "$dir/https.json" -o "$dir/https.mp4" \
    --progress none --work-dir "$dir/work"
[[ $(frames "$dir/https.mp4") == 50 ]] || fail "https source: not 50 frames"
cmp <(ffmpeg -v error -i "$dir/https.mp4" -map 0:v -f framemd5 -) \
    <(ffmpeg -v error -i "$dir/fast.mp4" -map 0:v -f framemd5 -) \
    || fail "the https render differs from the same render from file://"
[[ -z $(ls "$dir/work") ]] || fail "workspace left behind"
echo "render_claims: ok"
