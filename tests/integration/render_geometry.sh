# clipfarm render with phone rotation (display matrix: 90, 180, 270, flips)
# and non-square pixels (SAR wider and narrower than 1): the picture keeps its
# display shape and orientation. Judged by cropdetect (the shape inside the
# black bars) and by PSNR against the ffmpeg CLI applying the same geometry
# (its own autorotation, or the filters spelled out).
source "$CF_TESTS_DIR/lib/testlib.sh"
source "$CF_TESTS_DIR/lib/mediatest.sh"

# Tagged BT.709 so that no colour conversion differs from the references.
tags=(-colorspace bt709 -color_primaries bt709 -color_trc bt709 -color_range tv)
o640='{"width": 640, "height": 360, "fps": 30, "preset": "fast", "crf": 0}'
pad640="pad=640:360:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1,format=yuv420p"

gen "$dir/plain.mp4" -f lavfi -i testsrc2=size=640x360:rate=30:duration=1 -c:v libx264 \
    -preset ultrafast "${tags[@]}"

# name, matrix (a b c d), expected shape, the filters that show it upright
cases=(
    "rot90   0 1 -1 0  202x360 transpose=clock,scale=202:360"
    "rot180 -1 0 0 -1  640x360 hflip,vflip"
    "rot270  0 -1 1 0  202x360 transpose=cclock,scale=202:360"
    "hflip  -1 0 0 1   640x360 hflip"
    "vflip   1 0 0 -1  640x360 vflip"
    "rot90f  0 1 1 0   202x360 transpose=cclock_flip,scale=202:360"
)
for c in "${cases[@]}"; do
    read -r name a b cc d shape chain <<<"$c"
    cp "$dir/plain.mp4" "$dir/$name-src.mp4"
    set_matrix "$dir/$name-src.mp4" "$a" "$b" "$cc" "$d"
    render "$name" "[$(clip "$dir/$name-src.mp4")]" "$o640"
    same "$(frames "$dir/$name.mp4")" 30 "$name frames"
    same "$(crop "$dir/$name.mp4")" "$shape" "$name shape"
    gen "$dir/$name-ref.mkv" -noautorotate -i "$dir/$name-src.mp4" -vf "$chain,$pad640" -c:v ffv1
    p=$(psnr "$dir/$name.mp4" "$dir/$name-ref.mkv")
    echo "$name: shape $shape, PSNR vs explicit filters $p dB"
    at_least "$p" 45 "$name PSNR against the upright reference"
done
# The ffmpeg CLI's own autorotation agrees for the rotations (it ignores
# flips in this FFmpeg version).
for name in rot90 rot180 rot270; do
    [[ $name == rot180 ]] && scale=640:360 || scale=202:360
    gen "$dir/$name-cli.mkv" -i "$dir/$name-src.mp4" -vf "scale=$scale,$pad640" -c:v ffv1
    p=$(psnr "$dir/$name.mp4" "$dir/$name-cli.mkv")
    echo "$name: PSNR vs ffmpeg autorotate $p dB"
    at_least "$p" 45 "$name PSNR against ffmpeg's autorotation"
done
# Sensitivity: the sideways picture is far from the upright one.
gen "$dir/sideways.mkv" -noautorotate -i "$dir/rot90-src.mp4" \
    -vf "transpose=cclock,scale=202:360,$pad640" -c:v ffv1
p=$(psnr "$dir/rot90.mp4" "$dir/sideways.mkv")
at_most "$p" 25 "rot90 PSNR against the wrong orientation"

# The issue's case: a 1280x720 phone clip with a 90 degree matrix in a 16:9
# output comes out upright and pillarboxed.
gen "$dir/phone.mp4" -f lavfi -i testsrc2=size=1280x720:rate=30:duration=0.5 -c:v libx264 \
    -preset ultrafast "${tags[@]}"
set_matrix "$dir/phone.mp4" 0 1 -1 0
render phone "[$(clip "$dir/phone.mp4")]" '{"width": 1280, "height": 720, "fps": 30, "preset": "fast"}'
same "$(crop "$dir/phone.mp4")" 404x720 "phone shape"

# Pixel aspect: storage size WxH with SAR, expected shape in 1280x720.
sar_cases=(
    "pal43   720x576 16/15 960x720"
    "pal169  720x576 64/45 1280x720"
    "ntsc43  720x480 10/11 982x720"
    "hdv     480x360 4/3   1280x720"
    "narrow  320x240 1/2   480x720"
)
for c in "${sar_cases[@]}"; do
    read -r name size sar shape <<<"$c"
    gen "$dir/$name-src.mp4" -f lavfi -i "testsrc2=size=$size:rate=25:duration=0.6" \
        -vf "setsar=$sar" -c:v libx264 -preset ultrafast "${tags[@]}"
    same "$(vprop "$dir/$name-src.mp4" sample_aspect_ratio)" "${sar/\//:}" "$name source SAR"
    render "$name" "[$(clip "$dir/$name-src.mp4")]" \
        '{"width": 1280, "height": 720, "fps": 25, "preset": "fast", "crf": 0}'
    same "$(frames "$dir/$name.mp4")" 15 "$name frames"
    same "$(crop "$dir/$name.mp4")" "$shape" "$name shape"
    same "$(vprop "$dir/$name.mp4" sample_aspect_ratio)" 1:1 "$name output SAR"
    gen "$dir/$name-ref.mkv" -i "$dir/$name-src.mp4" \
        -vf "scale=${shape/x/:}:flags=bicubic,pad=1280:720:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1,format=yuv420p" \
        -c:v ffv1
    p=$(psnr "$dir/$name.mp4" "$dir/$name-ref.mkv")
    echo "$name: ${size} SAR $sar -> $shape, PSNR vs explicit scale $p dB"
    at_least "$p" 45 "$name PSNR"
done
echo "render_geometry: ok"
