# clipfarm render deinterlaces interlaced sources (top and bottom field
# first, flagged by the stream or only by its frames) with bwdif and leaves
# progressive sources untouched. Judged by ffmpeg's idet on the output, frame
# counts, and PSNR against the ffmpeg CLI running bwdif itself.
source "$CF_TESTS_DIR/lib/testlib.sh"
source "$CF_TESTS_DIR/lib/mediatest.sh"

# idet_interlaced FILE: frames idet's single-frame detection calls TFF or BFF.
idet_interlaced() {
    ffmpeg -v info -i "$1" -vf idet -f null - 2>&1 | grep 'Single frame detection' | tail -1 \
        | awk '{print $(NF-6) + $(NF-4)}'
}

# 1080i50 (50 fields/s as 25 interlaced frames), top and bottom field first.
for order in tff bff; do
    [[ $order == tff ]] && top=1 field=interleave_top || top=0 field=interleave_bottom
    gen "$dir/$order.mp4" -f lavfi -i testsrc2=size=1920x1080:rate=50:duration=2 \
        -vf "tinterlace=$field,setfield=$order" -c:v libx264 -preset ultrafast \
        -flags +ildct+ilme -top "$top" -x264-params "$order=1"
    src=$(idet_interlaced "$dir/$order.mp4")
    at_least "$src" 45 "$order source: interlaced frames idet finds"
    render "$order-25p" "[$(clip "$dir/$order.mp4")]" \
        '{"width": 1920, "height": 1080, "fps": 25, "preset": "fast"}'
    same "$(frames "$dir/$order-25p.mp4")" 50 "$order 25p frames"
    same "$(vprop "$dir/$order-25p.mp4" field_order)" progressive "$order 25p field order"
    got=$(idet_interlaced "$dir/$order-25p.mp4")
    gen "$dir/$order-ref.mkv" -i "$dir/$order.mp4" -vf "bwdif=mode=send_frame" -c:v ffv1
    ref=$(idet_interlaced "$dir/$order-ref.mkv")
    p=$(psnr "$dir/$order-25p.mp4" "$dir/$order-ref.mkv")
    echo "$order: source $src/50 frames interlaced; 25p output $got/50 (ffmpeg bwdif $ref/50), PSNR vs ffmpeg bwdif $p dB"
    at_most "$got" 5 "$order 25p output: interlaced frames idet finds"
    at_most "$got" "$((ref + 1))" "$order 25p output against ffmpeg's bwdif"
    at_least "$p" 38 "$order 25p PSNR against ffmpeg's bwdif"
    # Sensitivity: the interlaced source itself is far from the reference.
    at_most "$(psnr "$dir/$order.mp4" "$dir/$order-ref.mkv")" "$((${p%.*} - 3))" \
        "$order source against the deinterlaced reference"
done

# At the field rate (50p) a frame per field.
render tff-50p "[$(clip "$dir/tff.mp4")]" '{"width": 1920, "height": 1080, "fps": 50, "preset": "fast"}'
same "$(frames "$dir/tff-50p.mp4")" 100 "tff 50p frames"
got=$(idet_interlaced "$dir/tff-50p.mp4")
gen "$dir/tff-ref50.mkv" -i "$dir/tff.mp4" -vf "bwdif=mode=send_field" -c:v ffv1
p=$(psnr "$dir/tff-50p.mp4" "$dir/tff-ref50.mkv")
echo "tff 50p: $got/100 interlaced, PSNR vs ffmpeg bwdif send_field $p dB"
at_most "$got" 10 "tff 50p output: interlaced frames idet finds"
at_least "$p" 38 "tff 50p PSNR against ffmpeg's bwdif"

# PAL SD in Matroska, FFV1: the container says interlaced (top or bottom
# first), the frames themselves do not; scaled into 720p.
for fo in tt bb; do
    [[ $fo == tt ]] && field=interleave_top set=tff || field=interleave_bottom set=bff
    gen "$dir/sd-$fo.mkv" -f lavfi -i testsrc2=size=720x576:rate=50:duration=2 \
        -vf "tinterlace=$field,setfield=$set" -c:v ffv1 -field_order "$fo"
    same "$(vprop "$dir/sd-$fo.mkv" field_order)" "$fo" "sd-$fo source field order"
    render "sd-$fo" "[$(clip "$dir/sd-$fo.mkv")]" \
        '{"width": 1280, "height": 720, "fps": 25, "preset": "fast"}'
    same "$(frames "$dir/sd-$fo.mp4")" 50 "sd-$fo frames"
    src=$(idet_interlaced "$dir/sd-$fo.mkv")
    got=$(idet_interlaced "$dir/sd-$fo.mp4")
    echo "sd ffv1 in mkv, field order $fo: source $src/50 interlaced, output $got/50"
    at_least "$src" 45 "sd-$fo source: interlaced frames idet finds"
    at_most "$got" 5 "sd-$fo output: interlaced frames idet finds"
done

# Progressive sources are untouched: losslessly re-encoded at the same size
# and rate, every frame equals the source's.
gen "$dir/prog-src.mp4" -f lavfi -i testsrc2=size=1280x720:rate=25:duration=1 -c:v libx264 \
    -preset ultrafast -colorspace bt709 -color_primaries bt709 -color_trc bt709 -color_range tv
render prog "[$(clip "$dir/prog-src.mp4")]" \
    '{"width": 1280, "height": 720, "fps": 25, "preset": "fast", "crf": 0}'
same "$(frames "$dir/prog.mp4")" 25 "progressive frames"
same "$(vmd5 "$dir/prog.mp4")" "$(vmd5 "$dir/prog-src.mp4")" "progressive frames' MD5s"
echo "progressive 720p25: 25 frames, each identical to the source's"
echo "render_interlace: ok"
