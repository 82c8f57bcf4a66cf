/* clipfarm render on a 3-clip timeline, judged by ffprobe and ffmpeg.
 *
 * Sources (generated with lavfi): a 320x240 at 25 fps with a 600 Hz tone at
 * 48 kHz, b 160x90 at 30 fps with the tone at 44.1 kHz, c 200x200 at 29.97 fps
 * with no audio. Every trim falls between source frames. The output is
 * 192x108 at 30 fps in 1 s segments, so there are segment joins inside clips
 * as well as clip joins.
 *
 * The trims are multiples of 1/600 s and 600 Hz has a whole number of periods
 * in every 30 fps frame, so a correct render carries one continuous sine
 * across the join of a and b: any gap, click or misplaced sample shows. */
#define _GNU_SOURCE
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <dirent.h>

#include "cf_testutil.h"

#define TONE_HZ 600.0
#define RATE    48000
#define FPS     30

static char *s_dir;

static char *s_path(const char *name)
{
    char *path = NULL;
    assert_true(asprintf(&path, "%s/%s", s_dir, name) > 0);
    return path;
}

static int s_setup(void **state)
{
    cf_test_bin();
    s_dir = cf_test_mkdtemp("cf-render-timeline");
    char *a = s_path("a.mp4"), *b = s_path("b.mp4"), *c = s_path("c.mp4");
    cf_test_proc_t p;
    p = cf_test_runl("ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                     "testsrc2=size=320x240:rate=25:duration=4", "-f", "lavfi", "-i",
                     "sine=frequency=600:sample_rate=48000:duration=4", "-c:v", "libx264",
                     "-preset", "ultrafast", "-g", "25", "-c:a", "aac", "-shortest", a, NULL);
    cf_test_expect_success(&p, "ffmpeg a.mp4");
    cf_test_proc_free(&p);
    p = cf_test_runl("ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                     "testsrc2=size=160x90:rate=30:duration=4", "-f", "lavfi", "-i",
                     "sine=frequency=600:sample_rate=44100:duration=4", "-c:v", "libx264",
                     "-preset", "ultrafast", "-c:a", "aac", b, NULL);
    cf_test_expect_success(&p, "ffmpeg b.mp4");
    cf_test_proc_free(&p);
    p = cf_test_runl("ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                     "testsrc2=size=200x200:rate=30000/1001:duration=4", "-c:v", "libx264",
                     "-preset", "ultrafast", c, NULL);
    cf_test_expect_success(&p, "ffmpeg c.mp4");
    cf_test_proc_free(&p);
    free(a);
    free(b);
    free(c);
    return 0;
}

static int s_teardown(void **state)
{
    cf_test_rmtree(s_dir);
    free(s_dir);
    return 0;
}

/* The composition, with extra output members (e.g. "\"crf\": 0"). */
static char *s_write_comp(const char *name, const char *extra_output)
{
    char *path = s_path(name), *json = NULL;
    assert_true(asprintf(&json,
                         "{\"title\": \"timeline\", \"clips\": ["
                         "{\"source\": \"file://%s/a.mp4\", \"start\": 0.515, \"end\": 2.31},"
                         "{\"source\": \"file://%s/b.mp4\", \"start\": 1.025, \"end\": 3.0},"
                         "{\"source\": \"file://%s/c.mp4\", \"start\": 0.2, \"end\": 1.7}],"
                         " \"output\": {\"width\": 192, \"height\": 108, \"fps\": 30,"
                         " \"preset\": \"fast\"%s%s}, \"segment_seconds\": 1}",
                         s_dir, s_dir, s_dir, *extra_output ? ", " : "", extra_output) > 0);
    cf_test_write_file(path, json);
    free(json);
    return path;
}

/* The same timeline through ffmpeg's own filters: fps with start_time, trim
 * to the planned frame count, scale + pad, concat. */
static const char *s_reference_graph(void)
{
    static char graph[2048];
    /* The sources are untagged SD: BT.601, converted to the output's BT.709. */
    const char *chain =
        "scale=192:108:force_original_aspect_ratio=decrease:force_divisible_by=2:"
        "flags=bicubic,colorspace=ispace=bt470bg:irange=tv:iprimaries=bt709:"
        "itrc=bt709:space=bt709:range=tv:primaries=bt709:trc=bt709:"
        "format=yuv420p,pad=192:108:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1,format=yuv420p";
    snprintf(graph, sizeof graph,
             "[0:v]fps=30:start_time=0.515,trim=end_frame=54,setpts=PTS-STARTPTS,%s[v0];"
             "[1:v]fps=30:start_time=1.025,trim=end_frame=60,setpts=PTS-STARTPTS,%s[v1];"
             "[2:v]fps=30:start_time=0.2,trim=end_frame=45,setpts=PTS-STARTPTS,%s[v2];"
             "[v0][v1][v2]concat=n=3:v=1:a=0[v]",
             chain, chain, chain);
    return graph;
}

static cf_test_proc_t s_reference(const char *out, const char *codec_args)
{
    char *a = s_path("a.mp4"), *b = s_path("b.mp4"), *c = s_path("c.mp4");
    const char *argv[40] = {"ffmpeg",
                            "-v",
                            "error",
                            "-y",
                            "-i",
                            a,
                            "-i",
                            b,
                            "-i",
                            c,
                            "-filter_complex",
                            s_reference_graph(),
                            "-map",
                            "[v]"};
    int n = 14;
    char *copy = strdup(codec_args);
    for (char *tok = strtok(copy, " "); tok && n < 38; tok = strtok(NULL, " "))
        argv[n++] = tok;
    argv[n++] = out;
    argv[n] = NULL;
    cf_test_proc_t p = cf_test_run((char *const *)argv, NULL);
    free(copy);
    free(a);
    free(b);
    free(c);
    return p;
}

/* The last line of TEXT that starts with PREFIX, parsed as JSON. */
static json_t *s_last_json_line(const char *text, const char *prefix)
{
    const char *found = NULL;
    for (const char *line = text; line && *line;) {
        if (!strncmp(line, prefix, strlen(prefix)))
            found = line;
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    assert_non_null(found);
    size_t len = strcspn(found, "\n");
    json_error_t jerr;
    json_t *root = json_loadb(found, len, 0, &jerr);
    assert_non_null(root);
    return root;
}

static json_t *s_ffprobe_json(const char *path, const char *what)
{
    cf_test_proc_t p;
    if (!strcmp(what, "streams"))
        p = cf_test_runl("ffprobe", "-v", "error", "-count_frames", "-show_streams", "-of", "json",
                         path, NULL);
    else
        p = cf_test_runl("ffprobe", "-v", "error", "-select_streams", "v", "-show_entries",
                         "frame=key_frame", "-of", "json", path, NULL);
    cf_test_expect_success(&p, "ffprobe");
    json_error_t jerr;
    json_t *root = json_loads(p.out, 0, &jerr);
    assert_non_null(root);
    cf_test_proc_free(&p);
    return root;
}

static json_t *s_stream(json_t *probe, const char *type)
{
    size_t i;
    json_t *st;
    json_array_foreach(json_object_get(probe, "streams"), i, st)
    {
        if (!strcmp(json_string_value(json_object_get(st, "codec_type")), type))
            return st;
    }
    fail_msg("no %s stream", type);
    return NULL;
}

static double s_psnr(const char *a, const char *b)
{
    /* Frames are paired by index: the containers' time bases differ. */
    cf_test_proc_t p =
        cf_test_runl("ffmpeg", "-v", "info", "-nostats", "-i", a, "-i", b, "-lavfi",
                     "[0:v]settb=1/30,setpts=N[x];[1:v]settb=1/30,setpts=N[y];[x][y]psnr", "-f",
                     "null", "-", NULL);
    cf_test_expect_success(&p, "ffmpeg psnr");
    const char *avg = strstr(p.err, "average:");
    assert_non_null(avg);
    double v = strtod(avg + 8, NULL);
    cf_test_proc_free(&p);
    return v;
}

static int s_count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

static int s_count_matching(const char *dir, const char *needle)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, needle))
            n++;
    closedir(d);
    return n;
}

/* ------------------------------------------------------------------ audio */

typedef struct {
    short *left;
    long count;
    double amp; /* of the tone */
} s_pcm_t;

static s_pcm_t s_decode_audio(const char *path)
{
    char *raw = s_path("audio.raw");
    cf_test_proc_t p = cf_test_runl("ffmpeg", "-v", "error", "-y", "-i", path, "-map", "0:a", "-f",
                                    "s16le", "-acodec", "pcm_s16le", raw, NULL);
    cf_test_expect_success(&p, "ffmpeg decode audio");
    cf_test_proc_free(&p);
    FILE *f = fopen(raw, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    short *stereo = malloc((size_t)bytes);
    assert_int_equal(fread(stereo, 1, (size_t)bytes, f), (size_t)bytes);
    fclose(f);
    unlink(raw);
    free(raw);
    s_pcm_t pcm = {malloc(sizeof(short) * (size_t)(bytes / 4)), bytes / 4, 0};
    for (long i = 0; i < pcm.count; i++)
        pcm.left[i] = stereo[2 * i];
    free(stereo);
    return pcm;
}

static double s_rms(const s_pcm_t *pcm, long from, long len)
{
    double sum = 0;
    for (long i = from; i < from + len; i++)
        sum += (double)pcm->left[i] * pcm->left[i];
    return sqrt(sum / (double)len);
}

/* The tone of a clip trimmed at START_S and placed at timeline sample AT is
 * amp * sin(2 pi f (start * rate + m - at) / rate) at timeline sample m.
 * Returns the lag (in samples) that best matches 480 samples from FROM. */
static int s_best_lag(const s_pcm_t *pcm, double start_s, long at, long from)
{
    int best_lag = 0;
    double best = -1;
    for (int lag = -40; lag <= 40; lag++) {
        double err = 0;
        for (long m = from; m < from + 480; m++) {
            double want = pcm->amp * sin(2 * M_PI * TONE_HZ *
                                         (start_s * RATE + (double)(m + lag - at)) / RATE);
            err += (pcm->left[m] - want) * (pcm->left[m] - want);
        }
        if (best < 0 || err < best) {
            best = err;
            best_lag = lag;
        }
    }
    return best_lag;
}

/* No gap and no click within 480 samples of JOIN: each half period holds the
 * tone's energy, and no step is steeper than twice the tone's steepest. */
static void s_check_seamless(const s_pcm_t *pcm, long join, const char *what)
{
    double max_step = 2.0 * pcm->amp * 2 * M_PI * TONE_HZ / RATE;
    double want_rms = pcm->amp / sqrt(2.0);
    for (long i = join - 480; i < join + 480; i++) {
        double step = fabs((double)pcm->left[i + 1] - pcm->left[i]);
        if (step > max_step)
            fail_msg("%s: click at sample %ld (step %.0f > %.0f)", what, i, step, max_step);
    }
    for (long w = join - 480; w < join + 480; w += 40) {
        double rms = s_rms(pcm, w, 40);
        if (fabs(rms - want_rms) > 0.15 * want_rms)
            fail_msg("%s: level %.0f at samples %ld..%ld, tone is %.0f (gap?)", what, rms, w,
                     w + 40, want_rms);
    }
}

/* ------------------------------------------------------------------ tests */

static void test_three_clip_timeline(void **state)
{
    char *comp = s_write_comp("comp.json", "");
    char *out = s_path("out.mp4"), *work = s_path("work");
    assert_int_equal(mkdir(work, 0700), 0);
    cf_test_proc_t p = cf_test_runl(cf_test_bin(), "render", comp, "-o", out, "--progress", "json",
                                    "--work-dir", work, "--jobs", "2", NULL);
    cf_test_expect_success(&p, "clipfarm render");
    json_t *done = s_last_json_line(p.out, "{\"phase\":\"done\"");
    cf_test_proc_free(&p);

    /* Planned by hand: ceil(1.795 * 30) = 54, ceil(1.975 * 30) = 60,
     * 1.5 * 30 = 45 frames. */
    json_int_t frames = json_integer_value(json_object_get(done, "frames"));
    assert_int_equal(frames, 54 + 60 + 45);
    int gop = (int)json_integer_value(json_object_get(done, "gop_frames"));
    assert_int_equal(gop, 30);

    /* Nothing left behind: the workspace's parent is empty again and no
     * partial output sits beside the output. */
    assert_int_equal(s_count_entries(work), 0);
    assert_int_equal(s_count_matching(s_dir, ".part"), 0);

    /* Frame count, exactly. */
    json_t *probe = s_ffprobe_json(out, "streams");
    json_t *v = s_stream(probe, "video"), *a = s_stream(probe, "audio");
    assert_int_equal(atoll(json_string_value(json_object_get(v, "nb_read_frames"))), frames);
    assert_int_equal(json_integer_value(json_object_get(v, "width")), 192);
    assert_int_equal(atoi(json_string_value(json_object_get(a, "sample_rate"))), RATE);
    assert_int_equal(json_integer_value(json_object_get(a, "channels")), 2);

    /* Audio and video last the same within one frame. */
    double vdur = atof(json_string_value(json_object_get(v, "duration")));
    double adur = atof(json_string_value(json_object_get(a, "duration")));
    if (fabs(vdur - adur) > 1.0 / FPS || fabs(vdur - (double)frames / FPS) > 1e-3)
        fail_msg("durations: video %.4f s, audio %.4f s, %lld frames", vdur, adur,
                 (long long)frames);
    json_decref(probe);

    /* Keyframes exactly at every GOP start, so at every segment start. */
    json_t *kf = s_ffprobe_json(out, "frames");
    size_t i;
    json_t *fr;
    json_array_foreach(json_object_get(kf, "frames"), i, fr)
    {
        int key = (int)json_integer_value(json_object_get(fr, "key_frame"));
        if (key != (i % (size_t)gop == 0))
            fail_msg("frame %zu: key_frame=%d, expected %d", i, key, i % (size_t)gop == 0);
    }
    assert_int_equal(i, (size_t)frames);
    json_t *starts = json_object_get(done, "segment_starts");
    assert_int_equal(json_array_size(starts), 6);
    json_array_foreach(starts, i, fr)
    {
        assert_int_equal(json_integer_value(fr) % gop, 0);
        assert_int_equal(json_integer_value(fr), (json_int_t)i * 30);
    }
    json_decref(kf);

    /* The tone: aligned to the sample in each clip, seamless across the
     * segment joins (48000, 96000, 144000) and the a|b join (86400), and
     * silence from the c clip on (182400). */
    s_pcm_t pcm = s_decode_audio(out);
    if (labs(pcm.count - frames * RATE / FPS) > RATE / FPS)
        fail_msg("decoded %ld samples for %lld frames", pcm.count, (long long)frames);
    pcm.amp = s_rms(&pcm, 20000, 4800) * sqrt(2.0);
    assert_true(pcm.amp > 1000);
    static const struct {
        double start_s;
        long at, end;
    } tone[] = {{0.515, 0, 86400}, {1.025, 86400, 182400}};
    for (int c = 0; c < 2; c++) {
        long probes[] = {tone[c].at + 2000, (tone[c].at + tone[c].end) / 2, tone[c].end - 3000};
        for (int k = 0; k < 3; k++) {
            int lag = s_best_lag(&pcm, tone[c].start_s, tone[c].at, probes[k]);
            if (abs(lag) > 2)
                fail_msg("clip %d: tone at sample %ld is %d samples off", c, probes[k], lag);
        }
    }
    s_check_seamless(&pcm, 48000, "segment join 1");
    s_check_seamless(&pcm, 86400, "clip join a|b");
    s_check_seamless(&pcm, 96000, "segment join 2");
    s_check_seamless(&pcm, 144000, "segment join 3");
    double tone_rms = pcm.amp / sqrt(2.0);
    for (long w = 182400 - 1024 - 400; w < 182400 - 1024; w += 40)
        if (fabs(s_rms(&pcm, w, 40) - tone_rms) > 0.15 * tone_rms)
            fail_msg("tone fades before the silent clip at sample %ld", w);
    for (long w = 182400 + 1024; w < pcm.count - 40; w += 40)
        if (s_rms(&pcm, w, 40) > 0.02 * pcm.amp)
            fail_msg("clip c has no audio but sample %ld is not silent", w);
    free(pcm.left);

    /* Quality: PSNR against the exact timeline (lossless, through ffmpeg's
     * own filters) within 0.5 dB of an ffmpeg CLI encode with the same
     * preset, CRF and GOP. */
    char *lossless = s_path("lossless.mkv"), *ref = s_path("ref.mp4");
    p = s_reference(lossless, "-c:v ffv1");
    cf_test_expect_success(&p, "ffmpeg lossless reference");
    cf_test_proc_free(&p);
    p = s_reference(ref, "-c:v libx264 -preset ultrafast -crf 28 -x264-params "
                         "keyint=30:min-keyint=30:scenecut=0:open-gop=0:stitchable=1");
    cf_test_expect_success(&p, "ffmpeg reference encode");
    cf_test_proc_free(&p);
    double ours = s_psnr(out, lossless), theirs = s_psnr(ref, lossless);
    print_message("PSNR: clipfarm %.3f dB, ffmpeg CLI %.3f dB\n", ours, theirs);
    if (ours < 30 || fabs(ours - theirs) > 0.5)
        fail_msg("PSNR: clipfarm %.3f dB, ffmpeg CLI %.3f dB", ours, theirs);

    /* And frame-exact: encoded losslessly (CRF 0), every frame equals the
     * frame ffmpeg's fps/trim/scale/pad chain produces. */
    char *comp0 = s_write_comp("comp0.json", "\"crf\": 0");
    char *out0 = s_path("out0.mp4");
    p = cf_test_runl(cf_test_bin(), "render", comp0, "-o", out0, "--progress", "none", "--work-dir",
                     work, NULL);
    cf_test_expect_success(&p, "clipfarm render crf 0");
    cf_test_proc_free(&p);
    char *h_ours = cf_test_video_md5(out0, false), *h_ref = cf_test_video_md5(lossless, false);
    assert_int_equal(cf_test_count_lines(h_ours), frames);
    assert_string_equal(h_ours, h_ref);
    assert_int_equal(s_count_entries(work), 0);

    free(h_ours);
    free(h_ref);
    free(comp0);
    free(out0);
    free(lossless);
    free(ref);
    json_decref(done);
    free(comp);
    free(out);
    free(work);
}

/* The video stream's mean bitrate in kbit/s, from ffprobe's packet sizes
 * over FRAMES frames at FPS. */
static double s_video_kbps(const char *path, int frames)
{
    cf_test_proc_t p = cf_test_runl("ffprobe", "-v", "error", "-select_streams", "v:0",
                                    "-show_entries", "packet=size", "-of", "csv=p=0", path, NULL);
    cf_test_expect_success(&p, "ffprobe packet sizes");
    long long bytes = 0;
    for (char *line = strtok(p.out, "\n"); line; line = strtok(NULL, "\n"))
        bytes += atoll(line);
    cf_test_proc_free(&p);
    return (double)bytes * 8 / 1000 / ((double)frames / FPS);
}

/* Two-pass (video_bitrate) is for hitting a size: the mean bitrate must be
 * the target, within 15 %. */
static void s_expect_bitrate(const char *path, int frames, double target_kbps)
{
    double kbps = s_video_kbps(path, frames);
    print_message("%s: %.1f kbit/s for a %.0f kbit/s target\n", path, kbps, target_kbps);
    if (fabs(kbps - target_kbps) > 0.15 * target_kbps)
        fail_msg("%s: mean video bitrate %.1f kbit/s, target %.0f kbit/s", path, kbps, target_kbps);
}

/* HEVC in Matroska, two-pass bitrate mode: the other encoder paths still give
 * the planned frames and a joinable stream. */
static void test_hevc_mkv_two_pass(void **state)
{
    char *comp = s_write_comp("comp-hevc.json", "\"container\": \"mkv\", \"video_codec\": "
                                                "\"hevc\", \"video_bitrate\": \"300k\"");
    char *out = s_path("out.mkv");
    cf_test_proc_t p = cf_test_runl(cf_test_bin(), "render", comp, "-o", out, "--progress", "none",
                                    "-j", "2", NULL);
    cf_test_expect_success(&p, "clipfarm render hevc");
    assert_non_null(strstr(p.out, "rendered "));
    assert_non_null(strstr(p.out, "libx265"));
    cf_test_proc_free(&p);
    json_t *probe = s_ffprobe_json(out, "streams");
    json_t *v = s_stream(probe, "video");
    assert_string_equal(json_string_value(json_object_get(v, "codec_name")), "hevc");
    assert_int_equal(atoll(json_string_value(json_object_get(v, "nb_read_frames"))), 159);
    json_decref(probe);
    s_expect_bitrate(out, 159, 300);

    /* x264 two-pass: segments stay joinable (same parameter sets). */
    char *comp2 = s_write_comp("comp-2pass.json", "\"video_bitrate\": \"300k\"");
    char *out2 = s_path("out-2pass.mp4");
    p = cf_test_runl(cf_test_bin(), "render", comp2, "-o", out2, "--progress", "none", NULL);
    cf_test_expect_success(&p, "clipfarm render two-pass");
    cf_test_proc_free(&p);
    probe = s_ffprobe_json(out2, "streams");
    v = s_stream(probe, "video");
    assert_int_equal(atoll(json_string_value(json_object_get(v, "nb_read_frames"))), 159);
    json_decref(probe);
    s_expect_bitrate(out2, 159, 300);
    free(comp);
    free(out);
    free(comp2);
    free(out2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_three_clip_timeline),
        cmocka_unit_test(test_hevc_mkv_two_pass),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
