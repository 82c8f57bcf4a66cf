# clipfarm render's audio: every source becomes 48 kHz stereo AAC; 5.1 and
# 7.1 are down-mixed with ITU-R BS.775 coefficients (centre and surrounds at
# -3 dB, LFE dropped: what libswresample and the ffmpeg CLI's -ac 2 do),
# mono goes to both channels at -3 dB, 8 to 96 kHz are resampled; audio that
# starts later or earlier than its video keeps its offset, and a clip whose
# audio is shorter than its video is padded with silence up to the next
# clip. Judged with ffmpeg/ffprobe only (tests/lib/avjudge.py): white flash
# frames found by signalstats, 1 kHz beep onsets found in the decoded PCM.
source "$CF_TESTS_DIR/lib/testlib.sh"
source "$CF_TESTS_DIR/lib/mediatest.sh"
command -v python3 >/dev/null || fail "python3 is not installed"

judge() { python3 "$CF_TESTS_DIR/lib/avjudge.py" "$@" || fail "avjudge $* failed"; }
fps=30
frame_ms=33.3
outfmt='{"width": 320, "height": 240, "fps": 30, "preset": "fast"}'

# --------------------------------------------------------------- A/V sync

# sync_source OUT LAYOUT RATE OFFSET AUDIO_S CODEC EVENT...: 2 s of 30 fps
# black video with a white frame at each EVENT (s, a multiple of 1/30), and
# audio in LAYOUT at RATE Hz that starts OFFSET s after the video (negative:
# before it) and lasts AUDIO_S s, holding a 100 ms 1 kHz beep (amplitude 0.5)
# at each EVENT on the video's clock over a quiet 440 Hz tone (amplitude
# 0.03, -33.5 dB RMS) that shows where the audio is. Beep and tone are in
# the front left and right channels (the centre for mono).
sync_source() {
    local out=$1 layout=$2 rate=$3 off=$4 audio_s=$5 codec=$6
    shift 6
    local enable="" beep="" e ch expr exprs="" vin=() ain=()
    for e in "$@"; do
        enable+="${enable:++}eq(n\\,$(awk -v e="$e" -v f=$fps 'BEGIN { printf "%d", e * f + 0.5 }'))"
        beep+="${beep:++}between(t,$(awk -v e="$e" -v o="$off" 'BEGIN { print e - o }'),$(awk -v e="$e" -v o="$off" 'BEGIN { print e - o + 0.1 }'))"
    done
    expr="($beep)*0.5*sin(2*PI*1000*t)+0.03*sin(2*PI*440*t)"
    local n
    n=$(ffprobe -v error -f lavfi -i "anullsrc=cl=$layout" -show_entries stream=channels \
        -of csv=p=0)
    for ((ch = 0; ch < n; ch++)); do
        if ((ch < 2)); then exprs+="${exprs:+|}$expr"; else exprs+="|0"; fi
    done
    vin=(-f lavfi -i "color=c=black:s=320x240:r=$fps,drawbox=c=white:t=fill:enable='$enable'")
    ain=(-f lavfi -i "aevalsrc='$exprs':s=$rate:c=$layout:d=$audio_s")
    if awk -v o="$off" 'BEGIN { exit !(o >= 0) }'; then
        gen "$out" "${vin[@]}" -itsoffset "$off" "${ain[@]}" -map 0:v -map 1:a -frames:v 60 \
            -c:v libx264 -preset ultrafast -c:a "$codec"
    else
        gen "$out" -itsoffset "${off#-}" "${vin[@]}" "${ain[@]}" -map 0:v -map 1:a -frames:v 60 \
            -c:v libx264 -preset ultrafast -c:a "$codec"
    fi
}

# Six clips, every layout, rate and offset at once; events 0.2 s and 1.2 s
# into each clip (the first one 6 frames after each join).
sync_source "$dir/s-a.mp4" stereo 48000 0 2 aac 0.2 1.2
sync_source "$dir/s-b.mkv" 5.1 44100 0.1 1.9 aac 0.2 1.2          # audio 0.1 s late
sync_source "$dir/s-c.mkv" mono 8000 -0.2 2.2 pcm_s16le 0.2 1.2   # 0.2 s early
sync_source "$dir/s-d.mkv" 7.1 96000 0 2 flac 0.7 1.7             # trimmed 0.5-2.0
sync_source "$dir/s-e.mp4" stereo 22050 0 1.5 aac 0.2 1.2         # audio ends at 1.5
sync_source "$dir/s-f.mov" stereo 32000 0 2 pcm_s24le 0.2 1.2
# Each source's own offset (beep - flash, ms, per event), which the output
# must keep: the ffmpeg CLI places -itsoffset audio to its own rounding.
declare -A src_off
for f in s-a.mp4 s-b.mkv s-c.mkv s-d.mkv s-e.mp4 s-f.mov; do
    same "$(frames "$dir/$f")" 60 "$f frames"
    read -ra fl <<<"$(judge flashes "$dir/$f")"
    read -ra be <<<"$(judge beeps "$dir/$f")"
    same "${#fl[@]}/${#be[@]}" 2/2 "$f flashes/beeps"
    for k in 0 1; do
        src_off[$f$k]=$(awk -v b="${be[k]}" -v f="${fl[k]}" 'BEGIN { printf "%.1f", (b - f) * 1000 }')
    done
done
same "$(aprop "$dir/s-b.mkv" channels)" 6 "s-b channels"
same "$(aprop "$dir/s-d.mkv" channels)" 8 "s-d channels"
render sync "[$(clip "$dir/s-a.mp4"), $(clip "$dir/s-b.mkv"), $(clip "$dir/s-c.mkv"),
    $(clip "$dir/s-d.mkv" 0.5 2.0), $(clip "$dir/s-e.mp4"), $(clip "$dir/s-f.mov")]" "$outfmt"
o=$dir/sync.mp4
same "$(aprop "$o" codec_name)" aac "output audio codec"
same "$(aprop "$o" sample_rate)" 48000 "output sample rate"
same "$(aprop "$o" channels)" 2 "output channels"
same "$(frames "$o")" 345 "output frames (2+2+2+1.5+2+2 s)"

starts=(0 2 4 6 7.5 9.5)
names=(a b c d e f)
files=(s-a.mp4 s-b.mkv s-c.mkv s-d.mkv s-e.mp4 s-f.mov)
read -ra flash <<<"$(judge flashes "$o")"
read -ra beep <<<"$(judge beeps "$o")"
same "${#flash[@]}" 12 "flashes found (${flash[*]})"
same "${#beep[@]}" 12 "beep onsets found (${beep[*]})"
report="" jumps=""
for ((i = 0; i < 12; i++)); do
    c=$((i / 2))
    want=$(awk -v s="${starts[c]}" -v k=$((i % 2)) 'BEGIN { printf "%.6f", s + 0.2 + k }')
    d=$(awk -v f="${flash[i]}" -v w="$want" 'BEGIN { d = (f - w) * 1000; printf "%.1f", d < 0 ? -d : d }')
    at_most "$d" 1 "clip ${names[c]}: flash at ${flash[i]} s, expected $want s"
    off=$(awk -v b="${beep[i]}" -v f="${flash[i]}" 'BEGIN { printf "%.1f", (b - f) * 1000 }')
    at_most "${off#-}" "$frame_ms" "clip ${names[c]}: beep at ${beep[i]} s, flash at ${flash[i]} s"
    want=${src_off[${files[c]}$((i % 2))]}
    d=$(awk -v o="$off" -v w="$want" 'BEGIN { d = o - w; printf "%.1f", d < 0 ? -d : d }')
    at_most "$d" 2 "clip ${names[c]}: offset ${off} ms, the source's ${want} ms"
    report+=" ${names[c]}$((i % 2)):${off}ms(source ${want})"
done
echo "sync (beep - flash, per clip: 0.2 s after its join and 1.2 s in):$report"

# Where each clip's audio is: the late clip is silent for its first 0.1 s,
# then its tone; the short clip's audio ends 1.5 s in and the rest up to
# the next clip is silence (the next clip's beep did not come early: above).
lv() { judge levels "$o" "$1" "$2" | awk '{ print ($1 > $2 ? $1 : $2) }'; }
quiet=$(lv 2.005 2.085)
echo "late audio: before it starts $quiet dB"
at_most "$quiet" -60 "clip b before its audio starts (2.00-2.09 s)"
tone=$(lv 2.5 3.1)
echo "late audio: tone $tone dB (source -33.5 dB)"
at_least "$tone" -34.5 "clip b's tone"
at_most "$tone" -32.5 "clip b's tone"
tone=$(lv 8.85 8.98)
pad=$(lv 9.03 9.48)
echo "short audio: tone until it ends $tone dB, padding to the next clip $pad dB"
at_least "$tone" -34.5 "clip e's tone before its audio ends"
at_most "$pad" -60 "clip e's padding (9.03-9.48 s)"

# No sample dropped or repeated inside a clip: between the beeps, a step
# between two samples of the quiet tone is at most 0.0017 (0.03 * 2 pi * 440
# / 48000, plus AAC noise); a dropped or inserted piece makes one up to 0.06.
# Matroska's millisecond timestamps (clip b: 44.1 kHz AAC) are up to 22
# samples off at every frame.
for ((c = 0; c < 6; c++)); do
    for w in "0.32 1.18" "1.32 1.42"; do
        read -r t0 t1 <<<"$w"
        j=$(judge jump "$o" "$(awk -v s="${starts[c]}" -v t="$t0" 'BEGIN { print s + t }')" \
            "$(awk -v s="${starts[c]}" -v t="$t1" 'BEGIN { print s + t }')")
        at_most "$j" 0.005 "clip ${names[c]}: largest sample step ${t0}-${t1} s into it"
        jumps+=" ${names[c]}:$j"
    done
done
echo "largest sample steps between beeps (clean tone 0.0017):$jumps"

# The whole audio track lasts as long as the video.
adur=$(ffprobe -v error -select_streams a:0 -show_entries stream=duration -of csv=p=0 "$o")
vdur=$(ffprobe -v error -select_streams v:0 -show_entries stream=duration -of csv=p=0 "$o")
d=$(awk -v a="$adur" -v v="$vdur" 'BEGIN { d = (a - v) * 1000; printf "%.1f", d < 0 ? -d : d }')
echo "durations: audio $adur s, video $vdur s"
at_most "$d" 25 "audio duration against video"

# A hole in a source's audio (timestamps jump 0.4 s: aselect without
# asetpts): silence in the hole, and the beep after it still on its flash.
gen "$dir/hole.mkv" -f lavfi -i "color=c=black:s=320x240:r=$fps,drawbox=c=white:t=fill:enable='eq(n\,45)'" \
    -f lavfi -i "aevalsrc='between(t,1.5,1.6)*0.5*sin(2*PI*1000*t)+0.03*sin(2*PI*440*t)':s=44100:d=2" \
    -map 0:v -map 1:a -frames:v 60 -af "aselect='not(between(t,0.8,1.2))'" -c:v libx264 \
    -preset ultrafast -c:a aac
render hole "[$(clip "$dir/hole.mkv")]" "$outfmt"
o=$dir/hole.mp4
read -ra fl <<<"$(judge flashes "$o")"
read -ra be <<<"$(judge beeps "$o")"
same "${#fl[@]}/${#be[@]}" 1/1 "hole: flashes/beeps"
off=$(awk -v b="${be[0]}" -v f="${fl[0]}" 'BEGIN { printf "%.1f", (b - f) * 1000 }')
hole=$(lv 0.85 1.15)
tone=$(lv 0.3 0.7)
echo "hole: beep - flash ${off} ms after it; in the hole $hole dB, before it $tone dB"
at_most "${off#-}" 2 "hole: beep - flash"
at_most "$hole" -60 "hole: silence in it"
at_least "$tone" -37.5 "hole: the (mono, -3 dB) tone before it"

# ------------------------------------------------------- layouts and rates

# tone_source OUT LAYOUT RATE CODEC EXPR...: 1 s of video and audio whose
# channels are the EXPRs in LAYOUT's order; "T" is a 1 kHz tone of amplitude
# 0.5 (-9.03 dB RMS), "0" silence.
tone_source() {
    local out=$1 layout=$2 rate=$3 codec=$4 exprs="" e
    shift 4
    for e in "$@"; do
        [[ $e == T ]] && e="0.5*sin(2*PI*1000*t)"
        exprs+="${exprs:+|}$e"
    done
    gen "$out" -f lavfi -i "color=c=gray:s=320x240:r=$fps" \
        -f lavfi -i "aevalsrc='$exprs':s=$rate:c=$layout:d=1" -map 0:v -map 1:a -frames:v 30 \
        -c:v libx264 -preset ultrafast -c:a "$codec"
}

# Channel content: each case a clip, LEFT and RIGHT the expected output
# levels relative to the tone (dB; "-" silent). ITU-R BS.775: a centre or a
# surround channel goes to the front pair at -3.01 dB (0.7071), LFE is left
# out; mono is the centre. All channels at once (a quieter tone Q, 0.2,
# -7.96 dB below T, so that the sum stays under full scale: the matrix is
# not normalised and louder sums clip, as with the ffmpeg CLI): 5.1 is
# 1 + 2 * 0.7071 times Q (-0.30 dB against T), 7.1 1 + 3 * 0.7071 (+1.93 dB).
q="0.2*sin(2*PI*1000*t)"
cases=(
    "stereo-l stereo T 0 : 0 -"
    "mono mono T : -3.01 -3.01"
    "51-c 5.1 0 0 T 0 0 0 : -3.01 -3.01"
    "51-lfe 5.1 0 0 0 T 0 0 : - -"
    "51-bl 5.1 0 0 0 0 T 0 : -3.01 -"
    "51side-sr 5.1(side) 0 0 0 0 0 T : - -3.01"
    "71-c 7.1 0 0 T 0 0 0 0 0 : -3.01 -3.01"
    "71-lfe 7.1 0 0 0 T 0 0 0 0 : - -"
    "71-bl 7.1 0 0 0 0 T 0 0 0 : -3.01 -"
    "71-sr 7.1 0 0 0 0 0 0 0 T : - -3.01"
    "51-all 5.1 $q $q $q $q $q $q : -0.30 -0.30"
    "71-all 7.1 $q $q $q $q $q $q $q $q : 1.93 1.93"
)
clips=""
for c in "${cases[@]}"; do
    read -ra w <<<"$c"
    name=${w[0]} layout=${w[1]}
    chans=()
    for ((k = 2; k < ${#w[@]}; k++)); do
        [[ ${w[k]} == : ]] && break
        chans+=("${w[k]}")
    done
    tone_source "$dir/l-$name.mkv" "$layout" 48000 pcm_s16le "${chans[@]}"
    clips+="${clips:+, }$(clip "$dir/l-$name.mkv")"
done
render layouts "[$clips]" "$outfmt"
o=$dir/layouts.mp4
tone_db=-9.03
for ((i = 0; i < ${#cases[@]}; i++)); do
    read -ra w <<<"${cases[i]}"
    name=${w[0]} want_l=${w[-2]} want_r=${w[-1]}
    read -r l r <<<"$(judge levels "$o" "$i.2" "$i.8")"
    # The same down-mix by the ffmpeg CLI (libswresample's default matrix,
    # as -ac 2 asks for), without an encoder in the way.
    gen "$dir/l-$name-ref.wav" -i "$dir/l-$name.mkv" -map 0:a -ac 2 -c:a pcm_f32le
    read -r rl rr <<<"$(judge levels "$dir/l-$name-ref.wav" 0.2 0.8)"
    for side in l r; do
        got=${!side} want=want_$side ref=r$side
        want=${!want} ref=${!ref}
        if [[ $want == - ]]; then
            at_most "$got" -70 "$name $side (silent)"
            at_most "$ref" -70 "$name $side, the ffmpeg CLI's down-mix (silent)"
        else
            exp=$(awk -v t=$tone_db -v w="$want" 'BEGIN { print t + w }')
            d=$(awk -v g="$got" -v e="$exp" 'BEGIN { d = g - e; printf "%.2f", d < 0 ? -d : d }')
            at_most "$d" 0.3 "$name $side: $got dB, expected $exp dB"
            d=$(awk -v g="$got" -v e="$ref" 'BEGIN { d = g - e; printf "%.2f", d < 0 ? -d : d }')
            at_most "$d" 0.3 "$name $side: $got dB, the ffmpeg CLI's down-mix $ref dB"
        fi
    done
    echo "$name: L $l dB R $r dB (ffmpeg -ac 2: $rl / $rr; tone $tone_db dB)"
done
# Mono: both channels the same signal.
d=$(judge diff "$o" 1.2 1.8)
echo "mono: L - R $d dB"
at_most "$d" -60 "mono L - R"

# Rates from 8 to 96 kHz, one clip each, into 48 kHz: level, pitch,
# continuity, and the timeline's length.
rates=(8000 11025 16000 22050 32000 44100 88200 96000)
clips=""
for r in "${rates[@]}"; do
    codec=flac
    ((r <= 16000)) && codec=pcm_s16le
    tone_source "$dir/r-$r.mkv" stereo "$r" "$codec" T T
    clips+="${clips:+, }$(clip "$dir/r-$r.mkv")"
done
# And lossy ones in MP4: AAC at 8 kHz (its lowest common rate) and 96 kHz.
tone_source "$dir/r-aac8.mp4" stereo 8000 aac T T
tone_source "$dir/r-aac96.mp4" stereo 96000 aac T T
clips+=", $(clip "$dir/r-aac8.mp4"), $(clip "$dir/r-aac96.mp4")"
rates+=(aac8000 aac96000)
render rates "[$clips]" "$outfmt"
o=$dir/rates.mp4
same "$(aprop "$o" sample_rate)" 48000 "rates: output sample rate"
same "$(frames "$o")" $((30 * ${#rates[@]})) "rates: output frames"
for ((i = 0; i < ${#rates[@]}; i++)); do
    read -r l r <<<"$(judge levels "$o" "$i.2" "$i.8")"
    f=$(judge freq "$o" "$i.2" "$i.8")
    j=$(judge jump "$o" "$i.2" "$i.8")
    echo "${rates[i]} Hz: L $l dB R $r dB, $f Hz, largest step $j"
    for v in "$l" "$r"; do
        d=$(awk -v g="$v" -v e=$tone_db 'BEGIN { d = g - e; printf "%.2f", d < 0 ? -d : d }')
        at_most "$d" 0.5 "${rates[i]} Hz level $v dB"
    done
    at_least "$f" 999 "${rates[i]} Hz pitch"
    at_most "$f" 1001 "${rates[i]} Hz pitch"
    at_most "$j" 0.08 "${rates[i]} Hz: largest sample step (a clean 1 kHz tone: 0.065)"
done
adur=$(ffprobe -v error -select_streams a:0 -show_entries stream=duration -of csv=p=0 "$o")
echo "rates: audio $adur s for ${#rates[@]} clips of 1 s"
d=$(awk -v a="$adur" -v n=${#rates[@]} 'BEGIN { d = (a - n) * 1000; printf "%.1f", d < 0 ? -d : d }')
at_most "$d" 25 "rates: audio duration"

echo "render_audio: ok"
