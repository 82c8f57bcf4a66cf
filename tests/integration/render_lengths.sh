# clipfarm render gives exactly the frames a clip's video stream has: an
# untrimmed clip at the output's rate is its frames, whatever the container
# says (an audio stream starting earlier or later, MP4, Matroska, MPEG-TS,
# B-frames with negative DTS, open GOPs), and very short clips (1-3 frames)
# work. Judged by ffprobe -count_frames.
source "$CF_TESTS_DIR/lib/testlib.sh"
source "$CF_TESTS_DIR/lib/mediatest.sh"

outfmt='{"width": 320, "height": 240, "fps": 30, "preset": "fast"}'
v=(-f lavfi -i testsrc2=size=320x240:rate=30)
a=(-f lavfi -i sine=frequency=1000:sample_rate=48000)

# The issue's case: 150 frames, the audio starting one frame before the
# video (the container starts at the audio).
for ext in mp4 mkv ts; do
    gen "$dir/early.$ext" -itsoffset 0.0333 "${v[@]}" "${a[@]}" -frames:v 150 -t 5.2 \
        -c:v libx264 -preset ultrafast -c:a aac
    same "$(frames "$dir/early.$ext")" 150 "early.$ext source frames"
    render "early-$ext" "[$(clip "$dir/early.$ext")]" "$outfmt"
    same "$(frames "$dir/early-$ext.mp4")" 150 "early.$ext rendered frames"
    # Audio that starts later than the video, and audio longer than it.
    gen "$dir/late.$ext" "${v[@]}" -itsoffset 0.25 "${a[@]}" -frames:v 150 -t 6 \
        -c:v libx264 -preset ultrafast -c:a aac
    render "late-$ext" "[$(clip "$dir/late.$ext")]" "$outfmt"
    same "$(frames "$dir/late-$ext.mp4")" 150 "late.$ext rendered frames"
    echo "$ext: 150-frame sources with audio earlier and later: 150 frames each"
done

# B-frames (negative DTS in MP4 without an edit list), and an open-GOP
# MPEG-TS cut so that it starts on a non-keyframe.
gen "$dir/bframes.mp4" "${v[@]}" -frames:v 90 -c:v libx264 -preset medium -bf 8 \
    -use_editlist 0
render bframes-out "[$(clip "$dir/bframes.mp4")]" "$outfmt"
same "$(frames "$dir/bframes.mp4")" 90 "bframes source frames"
same "$(frames "$dir/bframes-out.mp4")" 90 "bframes rendered"
gen "$dir/opengop.ts" "${v[@]}" -frames:v 120 -c:v libx264 -preset fast -bf 3 \
    -x264-params open-gop=1:keyint=30:min-keyint=30:scenecut=0
# Cut at 1.5 s without re-encoding: the first frame is not a keyframe.
gen "$dir/cut.ts" -ss 1.5 -i "$dir/opengop.ts" -c copy
want=$(frames "$dir/cut.ts")
render cut "[$(clip "$dir/cut.ts")]" "$outfmt"
got=$(frames "$dir/cut.mp4")
echo "open-GOP cut: $want decodable frames, rendered $got"
# The undecodable leading frames are not part of the clip; at most the
# frames before the first keyframe are shown as that keyframe.
at_least "$got" "$want" "open-GOP cut rendered frames"
at_most "$got" "$((want + 30))" "open-GOP cut rendered frames"

# Very short clips: 1, 2 and 3 frames, alone and in one timeline.
for n in 1 2 3; do
    gen "$dir/short$n.mp4" "${v[@]}" -frames:v "$n" -c:v libx264 -preset ultrafast
    render "short$n-out" "[$(clip "$dir/short$n.mp4")]" "$outfmt"
    same "$(frames "$dir/short$n-out.mp4")" "$n" "short$n frames"
done
render shorts "[$(clip "$dir/short1.mp4"), $(clip "$dir/short2.mp4"), $(clip "$dir/short3.mp4")]" \
    '{"width": 320, "height": 240, "fps": 30, "preset": "fast"}'
same "$(frames "$dir/shorts.mp4")" 6 "1+2+3 frame timeline"
echo "render_lengths: ok"
