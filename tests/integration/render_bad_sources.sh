# Sources clipfarm render cannot use fail in the probe, before anything is
# encoded: exit 1, one line on stderr naming the clip and what is wrong with
# it (not a segment or the audio task: those messages start "segment N:" or
# "audio:"), no output file. Each bad source is the second clip, after a good
# one. An audio track without packets is not a problem: the clip is silent.
source "$CF_TESTS_DIR/lib/testlib.sh"
source "$CF_TESTS_DIR/lib/mediatest.sh"

outfmt='{"width": 320, "height": 240, "fps": 30, "preset": "fast"}'
v=(-f lavfi -i testsrc2=size=320x240:rate=30:duration=1)
a=(-f lavfi -i sine=sample_rate=48000:duration=1)
gen "$dir/good.mkv" "${v[@]}" "${a[@]}" -c:v libx264 -preset ultrafast -c:a flac

# bad NAME WANT: renders good + NAME, expects the failure WANT (ERE) for
# clips[1].
bad() {
    local name=$1 want=$2
    printf '{"clips": [%s, %s], "output": %s}\n' "$(clip "$dir/good.mkv")" \
        "$(clip "$dir/$name")" "$outfmt" >"$dir/bad.json"
    rm -f "$dir/bad.mp4"
    expect_exit 1 "$CF_BIN" render "$dir/bad.json" -o "$dir/bad.mp4" --progress none
    expect_one_line "$err" "^clipfarm render: clips\[1\]\.source: file://$dir/$name: $want"
    [[ ! -e $dir/bad.mp4 ]] || fail "$name: an output file was written"
    compgen -G "$dir/bad.mp4.part*" >/dev/null && fail "$name: a partial output was left"
    echo "$name: $err"
}

# Codecs libav does not know: the Matroska codec IDs patched in place (same
# length, so the file stays valid).
sed 's|V_MPEG4/ISO/AVC|V_MPEG4/ISO/AVX|' "$dir/good.mkv" >"$dir/unknown-video.mkv"
sed 's|A_FLAC|A_FLAX|' "$dir/good.mkv" >"$dir/unknown-audio.mkv"
same "$(vprop "$dir/unknown-video.mkv" codec_name)" unknown "patched video codec"
same "$(aprop "$dir/unknown-audio.mkv" codec_name)" unknown "patched audio codec"
bad unknown-video.mkv "unsupported video codec"
bad unknown-audio.mkv "unsupported audio codec"

# Every packet garbage (the noise bitstream filter rewrites every byte):
# H.264 in MP4, MJPEG in Matroska, and FLAC audio beside good video.
gen "$dir/garbage.mp4" "${v[@]}" -c:v libx264 -preset ultrafast -bsf:v noise=amount=1
gen "$dir/garbage-mjpeg.mkv" "${v[@]}" -c:v mjpeg -bsf:v noise=amount=1
gen "$dir/garbage-audio.mkv" "${v[@]}" "${a[@]}" -c:v libx264 -preset ultrafast -c:a flac \
    -bsf:a noise=amount=1
for f in garbage.mp4 garbage-mjpeg.mkv; do
    n=$(ffmpeg -v quiet -i "$dir/$f" -map 0:v:0 -f framemd5 - | grep -vc '^#')
    same "$n" 0 "frames the ffmpeg CLI decodes from $f"
done
bad garbage.mp4 "no decodable video frames \(30 h264 packets, none decoded\)"
bad garbage-mjpeg.mkv "no decodable video frames \(30 mjpeg packets, none decoded\)"
bad garbage-audio.mkv "no decodable audio frames \([0-9]+ flac packets, none decoded\)"

# A video stream with zero frames beside audio (the trim filter lets none
# through): Matroska and MPEG-TS keep the empty track.
for ext in mkv ts; do
    gen "$dir/no-frames.$ext" "${v[@]}" "${a[@]}" -vf trim=start=100 -c:v libx264 \
        -preset ultrafast -c:a aac
    same "$(vprop "$dir/no-frames.$ext" codec_name)" h264 "no-frames.$ext video stream"
    bad "no-frames.$ext" "its video stream has no frames"
done

# An audio track with no packets is a silent clip, not an error.
gen "$dir/no-audio-frames.mkv" "${v[@]}" "${a[@]}" -af atrim=start=100 -c:v libx264 \
    -preset ultrafast -c:a flac
same "$(aprop "$dir/no-audio-frames.mkv" codec_name)" flac "empty audio track"
render empty-audio "[$(clip "$dir/good.mkv"), $(clip "$dir/no-audio-frames.mkv")]" "$outfmt"
same "$(frames "$dir/empty-audio.mp4")" 60 "good + empty audio track: frames"
echo "render_bad_sources: ok"
