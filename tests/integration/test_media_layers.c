/* The media engine's three layers used separately, as a cluster will:
 * composition -> plan -> plan as JSON (what a coordinator hands out) ->
 * each segment encoded on its own, in reverse order, from the JSON plan ->
 * audio -> stitch. The result must be bit-identical, packet for packet and
 * in both streams, to what cf_render produces in one go: segments do not
 * depend on where or when they were encoded. And judged by ffmpeg, not by
 * the engine: the frames and samples the plan promised are in the file. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cf_comp.h"
#include "cf_media.h"
#include "cf_plan.h"
#include "cf_render.h"
#include "cf_testutil.h"

static char *s_dir;

static char *s_path(const char *name)
{
    char *path = NULL;
    assert_true(asprintf(&path, "%s/%s", s_dir, name) > 0);
    return path;
}

static void s_ffmpeg(const char *lavfi_video, const char *lavfi_audio, const char *out)
{
    char *argv[24];
    int n = 0;
    argv[n++] = "ffmpeg";
    argv[n++] = "-v";
    argv[n++] = "error";
    argv[n++] = "-f";
    argv[n++] = "lavfi";
    argv[n++] = (char *)lavfi_video;
    if (lavfi_audio) {
        argv[n++] = "-f";
        argv[n++] = "lavfi";
        argv[n++] = (char *)lavfi_audio;
        argv[n++] = "-c:a";
        argv[n++] = "aac";
        argv[n++] = "-shortest";
    }
    argv[n++] = "-c:v";
    argv[n++] = "libx264";
    argv[n++] = "-preset";
    argv[n++] = "ultrafast";
    argv[n++] = (char *)out;
    argv[n] = NULL;
    /* "-i" before each lavfi source */
    char *with_i[32];
    int m = 0;
    for (int i = 0; i < n; i++) {
        with_i[m++] = argv[i];
        if (!strcmp(argv[i], "lavfi"))
            with_i[m++] = "-i";
    }
    with_i[m] = NULL;
    cf_test_proc_t p = cf_test_run(with_i, NULL);
    if (p.status != 0)
        fail_msg("ffmpeg: %s", p.err);
    cf_test_proc_free(&p);
}

/* One MD5 per audio packet of PATH (ffmpeg's framemd5 on a stream copy). */
static char *s_audio_packet_md5(const char *path)
{
    cf_test_proc_t p = cf_test_runl("ffmpeg", "-v", "error", "-i", path, "-map", "0:a", "-c",
                                    "copy", "-f", "framemd5", "-", NULL);
    cf_test_expect_success(&p, "ffmpeg framemd5 audio");
    free(p.err);
    return p.out;
}

/* Decoded video frames and audio samples (per channel) of PATH, counted by
 * ffprobe and ffmpeg. */
static void s_count_media(const char *path, long long *frames, long long *samples)
{
    cf_test_proc_t p =
        cf_test_runl("ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
                     "-show_entries", "stream=nb_read_frames", "-of", "csv=p=0", path, NULL);
    cf_test_expect_success(&p, "ffprobe frames");
    *frames = atoll(p.out);
    cf_test_proc_free(&p);
    char *pcm = NULL;
    assert_true(asprintf(&pcm, "%s.pcm", path) > 0);
    p = cf_test_runl("ffmpeg", "-v", "error", "-y", "-i", path, "-map", "0:a", "-ac", "1", "-f",
                     "s16le", pcm, NULL);
    cf_test_expect_success(&p, "ffmpeg decode audio");
    cf_test_proc_free(&p);
    FILE *f = fopen(pcm, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *samples = ftell(f) / 2;
    fclose(f);
    unlink(pcm);
    free(pcm);
}

static int s_setup(void **state)
{
    s_dir = cf_test_mkdtemp("cf-media-layers");
    char *a = s_path("a.mp4"), *b = s_path("b.mkv");
    s_ffmpeg("testsrc2=size=240x180:rate=24:duration=3", "sine=frequency=500:duration=3", a);
    s_ffmpeg("testsrc=size=176x144:rate=30000/1001:duration=3", NULL, b);
    free(a);
    free(b);
    return 0;
}

static int s_teardown(void **state)
{
    cf_test_rmtree(s_dir);
    free(s_dir);
    return 0;
}

static void test_segments_anywhere(void **state)
{
    char *json = NULL;
    assert_true(asprintf(&json,
                         "{\"clips\": [{\"source\": \"file://%s/a.mp4\", \"start\": 0.3, "
                         "\"end\": 2.7}, {\"source\": \"file://%s/b.mkv\", \"start\": 0.45}],"
                         " \"output\": {\"width\": 160, \"height\": 90, \"fps\": 25, "
                         "\"preset\": \"fast\"}, \"segment_seconds\": 1}",
                         s_dir, s_dir) > 0);
    cf_comp_errors_t errors = {0};
    cf_comp_t *comp = cf_comp_parse(json, strlen(json), &errors);
    assert_non_null(comp);

    /* One go. */
    char *whole = s_path("whole.mp4"), err[1024];
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    cf_render_opts_t opts = {.jobs = cpus > 0 ? (int)cpus : 1, .memory_budget = -1};
    cf_render_result_t result;
    if (cf_render_run(comp, whole, &opts, &result, err, sizeof err) < 0)
        fail_msg("cf_render_run: %s", err);
    assert_int_equal(result.plan->total_frames, 60 + 64); /* 2.4 s and 2.55 s at 25 fps */

    /* Layer by layer: probe, plan, through JSON. */
    const char *local[2];
    char *paths[2] = {s_path("a.mp4"), s_path("b.mkv")};
    cf_plan_source_t sources[2];
    for (int i = 0; i < 2; i++) {
        cf_media_info_t info;
        if (cf_media_probe(paths[i], &info, err, sizeof err) < 0)
            fail_msg("probe: %s", err);
        sources[i] = (cf_plan_source_t){info.duration_us, info.has_audio};
        local[i] = paths[i];
    }
    assert_true(sources[0].has_audio);
    assert_false(sources[1].has_audio);
    cf_plan_t *made = cf_plan_new(comp, sources, CF_ENCODER_CPU, err, sizeof err);
    assert_non_null(made);
    char *plan_json = cf_plan_to_json(made);
    cf_plan_t *plan = cf_plan_from_json(plan_json, strlen(plan_json), err, sizeof err);
    if (!plan)
        fail_msg("cf_plan_from_json: %s", err);
    assert_int_equal(plan->segment_count, result.plan->segment_count);
    assert_int_equal(plan->segment_count, 5);

    /* Segments in reverse order, each knowing only its own clips. */
    char **segs = calloc((size_t)plan->segment_count, sizeof(char *));
    cf_media_ctl_t ctl = {.threads = 1, .work_dir = s_dir};
    for (int s = plan->segment_count - 1; s >= 0; s--) {
        const char *only[2] = {NULL, NULL};
        for (int p = 0; p < plan->segments[s].part_count; p++)
            only[plan->segments[s].parts[p].clip] = local[plan->segments[s].parts[p].clip];
        assert_true(asprintf(&segs[s], "%s/seg%d.mp4", s_dir, s) > 0);
        if (cf_media_encode_segment(plan, s, only, segs[s], &ctl, err, sizeof err) < 0)
            fail_msg("segment %d: %s", s, err);
    }
    char *audio = s_path("audio.m4a"), *joined = s_path("joined.mp4");
    if (cf_media_encode_audio(plan, local, audio, &ctl, err, sizeof err) < 0)
        fail_msg("audio: %s", err);
    if (cf_media_stitch(plan, (const char *const *)segs, audio, joined, &ctl, err, sizeof err) < 0)
        fail_msg("stitch: %s", err);

    char *h_whole = cf_test_video_md5(whole, true), *h_joined = cf_test_video_md5(joined, true);
    assert_int_equal(cf_test_count_lines(h_whole), 124);
    assert_string_equal(h_whole, h_joined);
    char *a_whole = s_audio_packet_md5(whole), *a_joined = s_audio_packet_md5(joined);
    assert_true(cf_test_count_lines(a_whole) > 10);
    assert_string_equal(a_whole, a_joined);
    free(a_whole);
    free(a_joined);
    long long frames = 0, samples = 0;
    s_count_media(joined, &frames, &samples);
    print_message("ffmpeg: %lld frames, %lld samples; plan: %lld frames, %lld samples\n", frames,
                  samples, (long long)plan->total_frames, (long long)plan->total_samples);
    assert_int_equal(frames, plan->total_frames);
    /* AAC codes 1024-sample frames: the last one is padded, and ffmpeg
     * decodes the padding too (the file does not trim its end), so up to
     * one frame more, never fewer. */
    if (samples < plan->total_samples || samples >= plan->total_samples + 1024)
        fail_msg("ffmpeg decodes %lld samples, the plan has %lld", samples,
                 (long long)plan->total_samples);

    /* A segment from another plan's settings does not join. */
    cf_plan_t *other = cf_plan_from_json(plan_json, strlen(plan_json), err, sizeof err);
    other->output.preset = CF_PRESET_BALANCED; /* High profile, not Baseline */
    char *odd = s_path("odd.mp4");
    if (cf_media_encode_segment(other, 2, local, odd, &ctl, err, sizeof err) < 0)
        fail_msg("segment: %s", err);
    free(segs[2]);
    segs[2] = odd;
    char *bad = s_path("bad.mp4");
    assert_int_equal(
        cf_media_stitch(plan, (const char *const *)segs, audio, bad, &ctl, err, sizeof err), -1);
    assert_string_equal(err, "stitch: segment 2 was encoded with other parameters than segment 0 "
                             "and cannot be joined by copy");

    for (int s = 0; s < plan->segment_count; s++)
        free(segs[s]);
    free(segs);
    free(bad);
    free(h_whole);
    free(h_joined);
    free(audio);
    free(joined);
    free(plan_json);
    free(whole);
    free(json);
    free(paths[0]);
    free(paths[1]);
    cf_plan_destroy(&other);
    cf_plan_destroy(&plan);
    cf_plan_destroy(&made);
    cf_render_result_clear(&result);
    cf_comp_destroy(&comp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_segments_anywhere),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
