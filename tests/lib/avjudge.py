#!/usr/bin/env python3
"""Judges a rendered file's audio and video with ffmpeg/ffprobe only (never
with clipfarm's code), for the audio shell tests.

  avjudge.py levels FILE T0 T1      per-channel RMS in dBFS over [T0, T1) s
  avjudge.py diff FILE T0 T1        RMS of (channel 0 - channel 1), dBFS
  avjudge.py freq FILE T0 T1        channel 0's frequency (zero crossings), Hz
  avjudge.py jump FILE T0 T1        the largest step between two consecutive
                                    samples of any channel (a click, a gap or
                                    a dropped piece shows as a large one)
  avjudge.py flashes FILE           start times (s) of runs of bright frames
  avjudge.py beeps FILE [THRESH]    onset times (s) of sounds louder than
                                    THRESH (peak amplitude, default 0.2)
                                    after at least 50 ms below it

Times are in the file's own timeline: video frames at their presentation
timestamps, audio samples counted from the first decoded audio frame's
timestamp (ffprobe), so an offset between the streams is measured, not
hidden. Audio is decoded at the file's own rate and channel layout.
"""
import array
import math
import subprocess
import sys


def _run(args):
    return subprocess.run(args, check=True, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL).stdout


def _audio_info(path):
    out = _run(["ffprobe", "-v", "error", "-select_streams", "a:0",
                "-show_entries", "stream=sample_rate,channels", "-of",
                "csv=p=0", path]).decode().split()[0].split(",")
    rate, channels = int(out[0]), int(out[1])
    first = _run(["ffprobe", "-v", "error", "-select_streams", "a:0",
                  "-read_intervals", "%+#1", "-show_entries", "frame=pts_time",
                  "-of", "csv=p=0", path]).decode().split()
    return rate, channels, float(first[0]) if first else 0.0


def _audio(path):
    """(rate, channels, t0, samples): interleaved float samples from t0."""
    rate, channels, t0 = _audio_info(path)
    raw = _run(["ffmpeg", "-v", "error", "-copyts", "-i", path, "-map", "0:a:0",
                "-f", "f32le", "-c:a", "pcm_f32le", "-"])
    samples = array.array("f")
    samples.frombytes(raw[:len(raw) - len(raw) % 4])
    if sys.byteorder != "little":
        samples.byteswap()
    return rate, channels, t0, samples


def _window(rate, channels, t0, samples, start, end):
    a = max(0, int(round((start - t0) * rate)))
    b = min(len(samples) // channels, int(round((end - t0) * rate)))
    return a, max(a, b)


def _db(power):
    return -200.0 if power <= 1e-20 else 10 * math.log10(power)


def levels(path, start, end):
    rate, ch, t0, s = _audio(path)
    a, b = _window(rate, ch, t0, s, start, end)
    out = []
    for c in range(ch):
        n = b - a
        p = sum(s[i * ch + c] ** 2 for i in range(a, b)) / n if n else 0
        out.append("%.2f" % _db(p))
    print(" ".join(out))


def diff(path, start, end):
    rate, ch, t0, s = _audio(path)
    a, b = _window(rate, ch, t0, s, start, end)
    n = b - a
    p = sum((s[i * ch] - s[i * ch + 1]) ** 2 for i in range(a, b)) / n if n else 0
    print("%.2f" % _db(p))


def freq(path, start, end):
    rate, ch, t0, s = _audio(path)
    a, b = _window(rate, ch, t0, s, start, end)
    ups = [i for i in range(a + 1, b) if s[(i - 1) * ch] < 0 <= s[i * ch]]
    if len(ups) < 2:
        print("0")
        return
    print("%.1f" % ((len(ups) - 1) * rate / (ups[-1] - ups[0])))


def jump(path, start, end):
    rate, ch, t0, s = _audio(path)
    a, b = _window(rate, ch, t0, s, start, end)
    print("%.4f" % max((abs(s[i * ch + c] - s[(i - 1) * ch + c])
                        for i in range(a + 1, b) for c in range(ch)), default=0))


def flashes(path):
    out = _run(["ffmpeg", "-v", "error", "-copyts", "-i", path, "-map", "0:v:0", "-vf",
                "signalstats,metadata=print:key=lavfi.signalstats.YAVG:file=-",
                "-f", "null", "-"]).decode()
    times, t, bright = [], None, False
    for line in out.splitlines():
        if line.startswith("frame:"):
            t = float(line.split("pts_time:")[1].split()[0])
        elif "YAVG=" in line:
            now = float(line.split("=")[1]) > 128
            if now and not bright:
                times.append(t)
            bright = now
    print(" ".join("%.6f" % x for x in times))


def beeps(path, thresh):
    rate, ch, t0, s = _audio(path)
    quiet_needed = int(0.05 * rate)
    quiet, times = quiet_needed, []
    for i in range(len(s) // ch):
        loud = max(abs(s[i * ch + c]) for c in range(ch)) > thresh
        if loud:
            if quiet >= quiet_needed:
                times.append(t0 + i / rate)
            quiet = 0
        else:
            quiet += 1
    print(" ".join("%.6f" % x for x in times))


def main(argv):
    cmd, path = argv[1], argv[2]
    if cmd == "levels":
        levels(path, float(argv[3]), float(argv[4]))
    elif cmd == "diff":
        diff(path, float(argv[3]), float(argv[4]))
    elif cmd == "freq":
        freq(path, float(argv[3]), float(argv[4]))
    elif cmd == "jump":
        jump(path, float(argv[3]), float(argv[4]))
    elif cmd == "flashes":
        flashes(path)
    elif cmd == "beeps":
        beeps(path, float(argv[3]) if len(argv) > 3 else 0.2)
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main(sys.argv)
