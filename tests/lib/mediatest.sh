# Helpers for the shell tests that render real-world-like sources with
# clipfarm and judge the output with ffprobe and ffmpeg only (never with
# clipfarm's own code). Source it after testlib.sh; it makes $dir (removed on
# exit) and fails when ffmpeg or ffprobe is missing.
command -v ffmpeg >/dev/null || fail "ffmpeg is not installed"
command -v ffprobe >/dev/null || fail "ffprobe is not installed"
command -v jq >/dev/null || fail "jq is not installed"

dir=$(mktemp -d "${TMPDIR:-/tmp}/cf-media.XXXXXX")
trap 'rm -rf "$dir"' EXIT

# gen OUT ARGS...: ffmpeg with ARGS writing OUT (quiet, overwrite).
gen() {
    local out=$1
    shift
    ffmpeg -v error -y "$@" "$out" || fail "ffmpeg could not make $out"
}

# render NAME CLIPS_JSON OUTPUT_JSON: writes $dir/NAME.json with the clips
# array and output object given, renders it to $dir/NAME.mp4 (or .mkv when
# the output asks for it), fails on error. Leaves stdout in $out.
render() {
    local name=$1 clips=$2 output=$3 ext=mp4
    [[ $output == *'"mkv"'* ]] && ext=mkv
    printf '{"title": "%s", "clips": %s, "output": %s}\n' "$name" "$clips" "$output" \
        >"$dir/$name.json"
    expect_exit 0 "$CF_BIN" render "$dir/$name.json" -o "$dir/$name.$ext" --progress none
}

# clip PATH [START END]: one clip of the clips array.
clip() {
    if (($# == 3)); then
        printf '{"source": "file://%s", "start": %s, "end": %s}' "$1" "$2" "$3"
    else
        printf '{"source": "file://%s"}' "$1"
    fi
}

# frames FILE: the number of decoded video frames (ffprobe -count_frames).
frames() {
    ffprobe -v error -count_frames -select_streams v:0 -show_entries stream=nb_read_frames \
        -of csv=p=0 "$1" | grep -m1 .
}

# vmd5 FILE: one MD5 per decoded video frame, one a line.
vmd5() {
    ffmpeg -v error -i "$1" -map 0:v:0 -f framemd5 - | grep -v '^#' | awk -F, '{print $NF}'
}

# vprop FILE KEY: a property of the first video stream (width, pix_fmt,
# color_space, color_transfer, color_primaries, color_range, ...).
vprop() {
    ffprobe -v error -select_streams v:0 -show_entries "stream=$2" -of csv=p=0 "$1" | grep -m1 .
}

# aprop FILE KEY: a property of the first audio stream.
aprop() {
    ffprobe -v error -select_streams a:0 -show_entries "stream=$2" -of csv=p=0 "$1" | grep -m1 .
}

# crop FILE: the picture's shape as WxH, from cropdetect over every frame
# (what is not black: the letterbox or pillarbox bars are).
crop() {
    ffmpeg -v info -i "$1" -vf cropdetect=limit=24:round=2:reset=0 -f null - 2>&1 \
        | grep -o 'crop=[0-9]*:[0-9]*' | tail -1 | sed 's/crop=//; s/:/x/'
}

# psnr A B: average PSNR (dB) of A's video against B's, frame by frame.
psnr() {
    local v
    v=$(ffmpeg -v info -i "$1" -i "$2" -lavfi \
        '[0:v]settb=1/1000,setpts=N[a];[1:v]settb=1/1000,setpts=N[b];[a][b]psnr' -f null - 2>&1 \
        | grep -o 'average:[0-9.inf]*' | tail -1 | cut -d: -f2)
    [[ $v == inf ]] && v=99
    echo "${v:-0}"
}

# at_least VALUE MIN WHAT: fails unless VALUE >= MIN (decimals allowed).
at_least() {
    awk -v v="$1" -v m="$2" 'BEGIN { exit !(v + 0 >= m + 0) }' || fail "$3: $1 < $2"
}

# at_most VALUE MAX WHAT: fails unless VALUE <= MAX.
at_most() {
    awk -v v="$1" -v m="$2" 'BEGIN { exit !(v + 0 <= m + 0) }' || fail "$3: $1 > $2"
}

# same A B WHAT: fails unless A equals B.
same() {
    [[ $1 == "$2" ]] || fail "$3: got '$1', expected '$2'"
}

# set_matrix FILE A B C D: writes the 2x2 part of the first track's display
# matrix (tkhd) of the MP4 FILE in place, as a phone or camera would: A B C D
# are -1, 0 or 1 (A=0 B=1 C=-1 D=0 is "rotate 90 degrees clockwise"). ffmpeg
# 5's command line can only write rotations, not flips, so the box is
# patched by hand.
set_matrix() {
    local file=$1 off hex="" v
    off=$(grep -obUa tkhd "$file" | head -1 | cut -d: -f1)
    [[ -n $off ]] || fail "$file has no tkhd box"
    # tkhd version 0: the matrix is 44 bytes after the box type.
    [[ $(od -An -tx1 -j $((off + 4)) -N1 "$file" | tr -d ' ') == 00 ]] || fail "tkhd is not v0"
    for v in "$2" "$3" 0 "$4" "$5" 0 0 0; do
        case $v in
            1) hex+='\x00\x01\x00\x00' ;;
            -1) hex+='\xff\xff\x00\x00' ;;
            0) hex+='\x00\x00\x00\x00' ;;
        esac
    done
    hex+='\x40\x00\x00\x00'
    # shellcheck disable=SC2059
    printf "$hex" | dd of="$file" bs=1 seek=$((off + 44)) conv=notrunc status=none \
        || fail "cannot patch $file"
}
