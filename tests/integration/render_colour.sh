# clipfarm render converts colour to its BT.709 limited-range 8-bit output and
# tags it: HDR (PQ, HLG) BT.2020 tone-mapped to SDR, 10-bit to 8-bit, BT.601
# SD and full-range (JPEG) sources converted, and odd pixel formats (4:2:2,
# 4:4:4, RGB, alpha flattened on black, odd sizes). Judged by ffprobe's colour
# tags and by PSNR against the ffmpeg CLI doing each conversion explicitly,
# with a filter clipfarm does not use for it (zscale) where it can.
source "$CF_TESTS_DIR/lib/testlib.sh"
source "$CF_TESTS_DIR/lib/mediatest.sh"

o640='{"width": 640, "height": 360, "fps": 25, "preset": "fast", "crf": 0}'

# tagged FILE WHAT: the output is 8-bit 4:2:0 tagged BT.709 limited.
tagged() {
    same "$(vprop "$1" pix_fmt)" yuv420p "$2 pix_fmt"
    same "$(vprop "$1" color_space)" bt709 "$2 matrix"
    same "$(vprop "$1" color_transfer)" bt709 "$2 transfer"
    same "$(vprop "$1" color_primaries)" bt709 "$2 primaries"
    same "$(vprop "$1" color_range)" tv "$2 range"
}

# HDR: colour bars made PQ or HLG BT.2020 10-bit.
for t in smpte2084 arib-std-b67; do
    gen "$dir/hdr-$t.mkv" -f lavfi -i smptehdbars=size=640x360:rate=25:duration=0.4 \
        -vf "format=yuv444p,zscale=tin=709:min=709:pin=709:rin=tv:t=$t:m=2020_ncl:p=2020:r=tv:npl=100,format=yuv420p10le" \
        -c:v ffv1 -color_primaries bt2020 -color_trc "$t" -colorspace bt2020nc -color_range tv
    same "$(vprop "$dir/hdr-$t.mkv" color_transfer)" "$t" "$t source transfer"
    render "hdr-$t-out" "[$(clip "$dir/hdr-$t.mkv")]" "$o640"
    same "$(frames "$dir/hdr-$t-out.mp4")" 10 "$t frames"
    tagged "$dir/hdr-$t-out.mp4" "$t"
    gen "$dir/hdr-$t-ref.mkv" -i "$dir/hdr-$t.mkv" -vf \
        "zscale=t=linear:npl=100,format=gbrpf32le,zscale=p=bt709,tonemap=tonemap=hable:desat=0,zscale=t=bt709:m=bt709:r=tv,format=yuv420p" \
        -c:v ffv1
    p=$(psnr "$dir/hdr-$t-out.mp4" "$dir/hdr-$t-ref.mkv")
    raw=$(psnr "$dir/hdr-$t-out.mp4" "$dir/hdr-$t.mkv")
    echo "$t: PSNR vs ffmpeg zscale+tonemap $p dB (vs the untouched HDR source $raw dB)"
    at_least "$p" 45 "$t PSNR against the tone-mapped reference"
    at_most "$raw" 30 "$t PSNR against the HDR source"
done

# BT.601 SD colour bars (tagged, and untagged) into an HD output.
for tag in tagged untagged; do
    args=()
    [[ $tag == tagged ]] && args=(-colorspace bt470bg -color_primaries bt470bg -color_trc bt709 -color_range tv)
    gen "$dir/sd-$tag.mp4" -f lavfi -i smptebars=size=720x576:rate=25:duration=0.4 \
        -c:v libx264 -preset ultrafast -qp 0 -pix_fmt yuv420p "${args[@]}"
    render "sd-$tag-out" "[$(clip "$dir/sd-$tag.mp4")]" \
        '{"width": 1280, "height": 720, "fps": 25, "preset": "fast", "crf": 0}'
    tagged "$dir/sd-$tag-out.mp4" "sd-$tag"
    gen "$dir/sd-$tag-ref.mkv" -i "$dir/sd-$tag.mp4" -vf \
        "scale=900:720:flags=bicubic,zscale=matrixin=470bg:rangein=limited:matrix=709:range=limited,format=yuv420p,pad=1280:720:(ow-iw)/2:(oh-ih)/2:color=black" \
        -c:v ffv1
    gen "$dir/sd-$tag-kept.mkv" -i "$dir/sd-$tag.mp4" -vf \
        "scale=900:720:flags=bicubic,pad=1280:720:(ow-iw)/2:(oh-ih)/2:color=black" -c:v ffv1
    p=$(psnr "$dir/sd-$tag-out.mp4" "$dir/sd-$tag-ref.mkv")
    k=$(psnr "$dir/sd-$tag-out.mp4" "$dir/sd-$tag-kept.mkv")
    echo "BT.601 bars ($tag): PSNR vs zscale 601->709 $p dB (vs unconverted $k dB)"
    at_least "$p" 38 "sd-$tag PSNR against zscale's BT.601 to BT.709"
    at_most "$k" "$((${p%.*} - 5))" "sd-$tag PSNR against the unconverted bars"
done

# Full-range (JPEG) sources: MJPEG yuvj422p, and H.264 tagged full range.
gen "$dir/jpeg.mkv" -f lavfi -i smptebars=size=640x360:rate=25:duration=0.4 -c:v mjpeg -q:v 1 \
    -pix_fmt yuvj422p
gen "$dir/full.mp4" -f lavfi -i smptebars=size=640x360:rate=25:duration=0.4 -c:v libx264 \
    -preset ultrafast -qp 0 -pix_fmt yuv420p -color_range pc -colorspace bt470bg
for src in jpeg.mkv full.mp4; do
    name=${src%.*}
    render "$name-out" "[$(clip "$dir/$src")]" "$o640"
    tagged "$dir/$name-out.mp4" "$name"
    gen "$dir/$name-ref.mkv" -i "$dir/$src" -vf \
        "zscale=matrixin=470bg:rangein=full:matrix=709:range=limited,format=yuv420p" -c:v ffv1
    gen "$dir/$name-kept.mkv" -i "$dir/$src" -vf \
        "zscale=matrixin=470bg:rangein=full:matrix=470bg:range=full,format=yuv420p" -c:v ffv1
    p=$(psnr "$dir/$name-out.mp4" "$dir/$name-ref.mkv")
    k=$(psnr "$dir/$name-out.mp4" "$dir/$name-kept.mkv")
    echo "full-range $src: PSNR vs zscale full->limited 601->709 $p dB (vs unconverted $k dB)"
    at_least "$p" 38 "$name PSNR against the limited-range reference"
    at_most "$k" "$((${p%.*} - 5))" "$name PSNR against the full-range frames"
done

# 10-bit SDR BT.709 to 8 bits.
gen "$dir/ten.mkv" -f lavfi -i testsrc2=size=640x360:rate=25:duration=0.4 -pix_fmt yuv420p10le \
    -c:v ffv1 -colorspace bt709 -color_primaries bt709 -color_trc bt709 -color_range tv
render ten-out "[$(clip "$dir/ten.mkv")]" "$o640"
tagged "$dir/ten-out.mp4" "10-bit"
gen "$dir/ten-ref.mkv" -i "$dir/ten.mkv" -vf format=yuv420p -c:v ffv1
p=$(psnr "$dir/ten-out.mp4" "$dir/ten-ref.mkv")
echo "10-bit BT.709: PSNR vs ffmpeg format=yuv420p $p dB"
at_least "$p" 45 "10-bit PSNR"

# Odd frames: 4:2:2, 4:4:4 and RGB sources, an odd size; each tagged and
# within PSNR of the ffmpeg CLI scaling it (BT.709 tagged: no matrix change).
t709=(-colorspace bt709 -color_primaries bt709 -color_trc bt709 -color_range tv)
for fmt in yuv422p yuv444p gbrp rgb24 yuv420p; do
    size=640x360 scale=640:360
    [[ $fmt == yuv420p ]] && size=321x241 scale=480:360
    [[ $fmt == rgb24 ]] && codec=(-c:v libx264rgb -qp 0) || codec=(-c:v ffv1)
    gen "$dir/fmt-$fmt.mkv" -f lavfi -i "testsrc2=size=$size:rate=25:duration=0.4" \
        -pix_fmt "$fmt" "${codec[@]}" "${t709[@]}"
    render "fmt-$fmt-out" "[$(clip "$dir/fmt-$fmt.mkv")]" "$o640"
    same "$(frames "$dir/fmt-$fmt-out.mp4")" 10 "$fmt frames"
    tagged "$dir/fmt-$fmt-out.mp4" "$fmt"
    gen "$dir/fmt-$fmt-ref.mkv" -i "$dir/fmt-$fmt.mkv" -vf \
        "scale=$scale:flags=bicubic:out_color_matrix=bt709,format=yuv420p,pad=640:360:(ow-iw)/2:(oh-ih)/2:color=black" -c:v ffv1
    p=$(psnr "$dir/fmt-$fmt-out.mp4" "$dir/fmt-$fmt-ref.mkv")
    echo "$fmt $size: 10 frames, PSNR vs ffmpeg scale $p dB"
    at_least "$p" 38 "$fmt PSNR"
done
[[ $(crop "$dir/fmt-yuv420p-out.mp4") == 480x360 ]] || fail "321x241 shape: $(crop "$dir/fmt-yuv420p-out.mp4")"

# Alpha: a fully transparent red picture is black; a half transparent one is
# half as bright as the opaque one (flattened on black).
for a in 00 80 ff; do
    gen "$dir/alpha-$a.mkv" -f lavfi -i "color=c=0xff0000$a:size=320x240:rate=25:duration=0.4,format=yuva420p" \
        -c:v ffv1 "${t709[@]}"
    render "alpha-$a-out" "[$(clip "$dir/alpha-$a.mkv")]" '{"width": 320, "height": 240, "fps": 25, "preset": "fast", "crf": 0}'
done
luma() {
    ffmpeg -v error -i "$1" -vf signalstats,metadata=print:file=- -frames:v 1 -f null - \
        | grep -o 'YAVG=[0-9.]*' | head -1 | cut -d= -f2
}
y0=$(luma "$dir/alpha-00-out.mp4") y80=$(luma "$dir/alpha-80-out.mp4") yff=$(luma "$dir/alpha-ff-out.mp4")
echo "alpha on black: luma transparent $y0, half $y80, opaque $yff"
at_most "$y0" 17 "transparent picture luma"
at_least "$y80" "$(awk -v a="$yff" 'BEGIN { print 16 + (a - 16) * 0.4 }')" "half-transparent luma"
at_most "$y80" "$(awk -v a="$yff" 'BEGIN { print 16 + (a - 16) * 0.6 }')" "half-transparent luma"
echo "render_colour: ok"
