#define _GNU_SOURCE
/* Unit tests for lib/model/cf_plan.c: the frame math. Frame counts are checked
 * against values worked out by hand from ceil((end - start) * fps). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_comp.h"
#include "cf_plan.h"
#include "cf_testutil.h"

static cf_comp_t *s_comp(const char *json)
{
    cf_comp_errors_t errors = {0};
    cf_comp_t *comp = cf_comp_parse(json, strlen(json), &errors);
    if (!comp) {
        char *joined = cf_comp_errors_join(&errors);
        print_error("composition rejected: %s\n", joined);
        free(joined);
        fail();
    }
    cf_comp_errors_free(&errors);
    return comp;
}

static cf_plan_t *s_plan(const char *json, const cf_plan_source_t *sources)
{
    cf_comp_t *comp = s_comp(json);
    char err[256] = "";
    cf_plan_t *plan = cf_plan_new(comp, sources, CF_ENCODER_CPU, err, sizeof err);
    if (!plan) {
        print_error("plan failed: %s\n", err);
        fail();
    }
    cf_comp_destroy(&comp);
    return plan;
}

/* Invariants every plan must hold: clips tile the timeline, segments tile it,
 * parts tile each segment and stay inside their clip, audio tiles too. */
static void s_check_invariants(const cf_plan_t *plan)
{
    int64_t frame = 0, sample = 0;
    for (int i = 0; i < plan->clip_count; i++) {
        assert_int_equal(plan->clips[i].first_frame, frame);
        assert_true(plan->clips[i].frames >= 1);
        assert_int_equal(plan->clips[i].first_sample, sample);
        frame += plan->clips[i].frames;
        sample += plan->clips[i].samples;
    }
    assert_int_equal(frame, plan->total_frames);
    assert_int_equal(sample, plan->total_samples);
    assert_int_equal(plan->segment_frames % plan->output.gop_frames, 0);

    frame = 0;
    for (int s = 0; s < plan->segment_count; s++) {
        const cf_plan_segment_t *seg = &plan->segments[s];
        assert_int_equal(seg->index, s);
        assert_int_equal(seg->first_frame, frame);
        if (s + 1 < plan->segment_count)
            assert_int_equal(seg->frames, plan->segment_frames);
        else
            assert_true(seg->frames >= 1 && seg->frames <= plan->segment_frames);
        int64_t in_seg = 0;
        for (int p = 0; p < seg->part_count; p++) {
            const cf_plan_part_t *part = &seg->parts[p];
            const cf_plan_clip_t *clip = &plan->clips[part->clip];
            assert_int_equal(clip->first_frame + part->clip_frame, frame + in_seg);
            assert_true(part->frames >= 1);
            assert_true(part->clip_frame + part->frames <= clip->frames);
            in_seg += part->frames;
        }
        assert_int_equal(in_seg, seg->frames);
        frame += seg->frames;
    }
    assert_int_equal(frame, plan->total_frames);
}

static void test_frames_for(void **state)
{
    /* whole seconds */
    assert_int_equal(cf_plan_frames_for(1000000, 30, 1), 30);
    assert_int_equal(cf_plan_frames_for(10000000, 25, 1), 250);
    /* trims between frames: 0.99 s at 30 fps is 29.7 frames -> 30 */
    assert_int_equal(cf_plan_frames_for(990000, 30, 1), 30);
    /* exactly on a frame boundary: 0.5 s at 30 fps is 15 frames, not 16 */
    assert_int_equal(cf_plan_frames_for(500000, 30, 1), 15);
    /* 29.97: 10 s is 299.7 frames -> 300; 1000 frames last 33.3666... s */
    assert_int_equal(cf_plan_frames_for(10000000, 30000, 1001), 300);
    assert_int_equal(cf_plan_frames_for(33366666, 30000, 1001), 1000);
    assert_int_equal(cf_plan_frames_for(33366667, 30000, 1001), 1001);
    /* 1001 s at 29.97 is 30000 frames exactly */
    assert_int_equal(cf_plan_frames_for(1001000000, 30000, 1001), 30000);
    /* 23.976: 1 s is 23.976 frames -> 24; 41.708333 ms is one frame */
    assert_int_equal(cf_plan_frames_for(1000000, 24000, 1001), 24);
    assert_int_equal(cf_plan_frames_for(41708, 24000, 1001), 1);
    assert_int_equal(cf_plan_frames_for(41709, 24000, 1001), 2);
    /* very short clips still show one frame; empty ones none */
    assert_int_equal(cf_plan_frames_for(1, 30, 1), 1);
    assert_int_equal(cf_plan_frames_for(0, 30, 1), 0);
    /* 4 hours at 120 fps does not overflow */
    assert_int_equal(cf_plan_frames_for(14400LL * 1000000, 120, 1), 1728000);
}

static void test_sample_at(void **state)
{
    assert_int_equal(cf_plan_sample_at(30, 30, 1), 48000);
    assert_int_equal(cf_plan_sample_at(1, 25, 1), 1920);
    /* 29.97: 1601.6 samples per frame, rounded to nearest */
    assert_int_equal(cf_plan_sample_at(1, 30000, 1001), 1602);
    assert_int_equal(cf_plan_sample_at(2, 30000, 1001), 3203);
    assert_int_equal(cf_plan_sample_at(5, 30000, 1001), 8008);
    /* 23.976: 2002 samples per frame exactly */
    assert_int_equal(cf_plan_sample_at(3, 24000, 1001), 6006);
}

static void test_ntsc_timeline(void **state)
{
    /* 29.97 output; trims that fall between frames; a clip shorter than a
     * segment; a clip shorter than one frame. */
    static const cf_plan_source_t sources[] = {
        {20000000, true}, {5000000, false}, {3000000, true}, {8000000, true}};
    cf_plan_t *plan = s_plan("{\"clips\": ["
                             "{\"source\": \"file:///a\", \"start\": 1.01, \"end\": 13.337},"
                             "{\"source\": \"file:///b\", \"start\": 0.5, \"end\": 1.7},"
                             "{\"source\": \"file:///c\", \"start\": 2.0, \"end\": 2.01},"
                             "{\"source\": \"file:///d\", \"start\": 0.333}],"
                             "\"output\": {\"fps\": 29.97}, \"segment_seconds\": 4}",
                             sources);
    s_check_invariants(plan);
    /* 12.327 s * 29.97002997 = 369.44 -> 370 */
    assert_int_equal(plan->clips[0].frames, 370);
    /* 1.2 s -> 35.96 -> 36 */
    assert_int_equal(plan->clips[1].frames, 36);
    assert_int_equal(plan->clips[1].first_frame, 370);
    assert_false(plan->clips[1].has_audio);
    /* 10 ms -> 0.2997 -> 1 */
    assert_int_equal(plan->clips[2].frames, 1);
    /* end omitted: to the end of the source, 7.667 s -> 229.78 -> 230 */
    assert_int_equal(plan->clips[3].end_us, 8000000);
    assert_int_equal(plan->clips[3].frames, 230);
    assert_int_equal(plan->total_frames, 637);
    assert_int_equal(plan->total_samples, 1020219); /* round(637 * 1601.6) = 1020219.2 */
    /* 4 s at 29.97 -> GOP and segment of 120 frames */
    assert_int_equal(plan->output.gop_frames, 120);
    assert_int_equal(plan->segment_frames, 120);
    assert_int_equal(plan->segment_count, 6); /* 5 x 120 + 37 */
    assert_int_equal(plan->segments[5].frames, 37);
    /* segment 3 spans clips 0, 1, 2 and 3: frames 360..479 */
    const cf_plan_segment_t *seg = &plan->segments[3];
    assert_int_equal(seg->part_count, 4);
    assert_int_equal(seg->parts[0].clip, 0);
    assert_int_equal(seg->parts[0].clip_frame, 360);
    assert_int_equal(seg->parts[0].frames, 10);
    assert_int_equal(seg->parts[1].clip, 1);
    assert_int_equal(seg->parts[1].frames, 36);
    assert_int_equal(seg->parts[2].clip, 2);
    assert_int_equal(seg->parts[2].frames, 1);
    assert_int_equal(seg->parts[3].clip, 3);
    assert_int_equal(seg->parts[3].clip_frame, 0);
    assert_int_equal(seg->parts[3].frames, 73);
    assert_int_equal(plan->output.encoder, CF_ENCODER_CPU);
    cf_plan_destroy(&plan);
    assert_null(plan);
}

static void test_film_and_gop(void **state)
{
    static const cf_plan_source_t sources[] = {{65000000, true}};
    /* 23.976, 30 s segments: GOP capped at 10 s (240 frames), segment 3 GOPs */
    cf_plan_t *plan = s_plan("{\"clips\": [{\"source\": \"file:///a\", \"start\": 0.02}],"
                             " \"output\": {\"fps\": 23.976}, \"segment_seconds\": 30}",
                             sources);
    s_check_invariants(plan);
    assert_int_equal(plan->output.fps_num, 24000);
    assert_int_equal(plan->output.fps_den, 1001);
    assert_int_equal(plan->output.gop_frames, 240);
    assert_int_equal(plan->segment_frames, 720);
    /* 64.98 s * 23.976 = 1557.96 -> 1558 */
    assert_int_equal(plan->total_frames, 1558);
    assert_int_equal(plan->segment_count, 3);
    /* 2002 samples per frame exactly */
    assert_int_equal(plan->total_samples, 1558 * 2002);
    cf_plan_destroy(&plan);

    /* default 10 s at 30 fps: one GOP of 300 frames per segment */
    plan = s_plan("{\"clips\": [{\"source\": \"file:///a\"}], \"output\": {\"fps\": 30}}", sources);
    s_check_invariants(plan);
    assert_int_equal(plan->output.gop_frames, 300);
    assert_int_equal(plan->segment_frames, 300);
    assert_int_equal(plan->total_frames, 1950);
    assert_int_equal(plan->segment_count, 7);
    cf_plan_destroy(&plan);
}

static void test_many_short_clips(void **state)
{
    /* 40 clips of 37 ms each at 25 fps (0.925 frames -> 1 frame each) plus
     * clips starting between frames; every frame is accounted for. */
    char json[8192] = "{\"clips\": [";
    cf_plan_source_t sources[40];
    for (int i = 0; i < 40; i++) {
        char clip[128];
        snprintf(clip, sizeof clip,
                 "%s{\"source\": \"file:///s%d\", \"start\": %.3f, \"end\": %.3f}", i ? "," : "", i,
                 0.013 * i, 0.013 * i + 0.037);
        strcat(json, clip);
        sources[i] = (cf_plan_source_t){1000000, i % 2 == 0};
    }
    strcat(json, "], \"output\": {\"fps\": 25}, \"segment_seconds\": 1}");
    cf_plan_t *plan = s_plan(json, sources);
    s_check_invariants(plan);
    assert_int_equal(plan->total_frames, 40);
    assert_int_equal(plan->segment_count, 2);
    assert_int_equal(plan->segments[0].part_count, 25);
    assert_int_equal(plan->total_samples, 40 * 1920);
    cf_plan_destroy(&plan);
}

static void test_range_errors(void **state)
{
    char err[256];
    cf_plan_source_t sources[] = {{4000000, true}, {4000000, true}};
    cf_comp_t *comp = s_comp("{\"clips\": [{\"source\": \"file:///a\"},"
                             " {\"source\": \"file:///b\", \"start\": 1, \"end\": 4.5}]}");
    assert_null(cf_plan_new(comp, sources, CF_ENCODER_CPU, err, sizeof err));
    assert_string_equal(err, "clips[1].end: past the end of the source (4.000 s)");
    cf_comp_destroy(&comp);

    comp = s_comp("{\"clips\": [{\"source\": \"file:///a\", \"start\": 4.0}]}");
    assert_null(cf_plan_new(comp, sources, CF_ENCODER_CPU, err, sizeof err));
    assert_string_equal(err, "clips[0].start: past the end of the source (4.000 s)");
    cf_comp_destroy(&comp);

    sources[0].duration_us = 0;
    comp = s_comp("{\"clips\": [{\"source\": \"file:///a\"}]}");
    assert_null(cf_plan_new(comp, sources, CF_ENCODER_CPU, err, sizeof err));
    assert_string_equal(err, "clips[0].source: has no video frames");
    cf_comp_destroy(&comp);

    /* A trim that ends within 1 ms of the source's end is the end. */
    sources[0].duration_us = 3999500;
    comp = s_comp("{\"clips\": [{\"source\": \"file:///a\", \"end\": 4.0}]}");
    cf_plan_t *plan = cf_plan_new(comp, sources, CF_ENCODER_CPU, err, sizeof err);
    assert_non_null(plan);
    assert_int_equal(plan->total_frames, 120);
    cf_plan_destroy(&plan);
    cf_comp_destroy(&comp);
}

static void test_encoder_and_order(void **state)
{
    static const cf_plan_source_t sources[] = {{25000000, true}};
    cf_comp_t *comp = s_comp("{\"clips\": [{\"source\": \"file:///a\"}], \"output\": {\"encoder\": "
                             "\"auto\"}, \"segment_seconds\": 10}");
    char err[256];
    cf_plan_t *plan = cf_plan_new(comp, sources, CF_ENCODER_GPU, err, sizeof err);
    assert_int_equal(plan->output.encoder, CF_ENCODER_GPU);
    /* 750 frames: 300, 300, 150 */
    assert_int_equal(plan->segment_count, 3);
    int order[3];
    cf_plan_dispatch_order(plan, order);
    assert_int_equal(order[0], 0);
    assert_int_equal(order[1], 1);
    assert_int_equal(order[2], 2);
    cf_plan_destroy(&plan);
    cf_comp_destroy(&comp);

    comp = s_comp("{\"clips\": [{\"source\": \"file:///a\"}], \"output\": {\"encoder\": \"cpu\"}}");
    plan = cf_plan_new(comp, sources, CF_ENCODER_GPU, err, sizeof err);
    assert_int_equal(plan->output.encoder, CF_ENCODER_CPU);
    cf_plan_destroy(&plan);
    cf_comp_destroy(&comp);
}

static void test_json_round_trip(void **state)
{
    static const cf_plan_source_t sources[] = {
        {20000000, true}, {5000000, false}, {3000000, true}, {8000000, true}};
    cf_plan_t *plan = s_plan("{\"clips\": ["
                             "{\"source\": \"file:///a\", \"start\": 1.01, \"end\": 13.337},"
                             "{\"source\": \"https://h/b.mov\", \"start\": 0.5, \"end\": 1.7},"
                             "{\"source\": \"file:///c\", \"start\": 2.0, \"end\": 2.01},"
                             "{\"source\": \"file:///d\", \"start\": 0.333}],"
                             "\"output\": {\"fps\": 29.97, \"container\": \"mkv\"},"
                             " \"segment_seconds\": 4}",
                             sources);
    char *json = cf_plan_to_json(plan);
    assert_non_null(json);
    char err[256];
    cf_plan_t *back = cf_plan_from_json(json, strlen(json), err, sizeof err);
    if (!back)
        fail_msg("%s", err);
    s_check_invariants(back);
    assert_int_equal(back->total_frames, 637);
    assert_int_equal(back->segment_count, 6);
    assert_string_equal(back->clips[1].source, "https://h/b.mov");
    assert_false(back->clips[1].has_audio);
    assert_int_equal(back->output.container, CF_CONTAINER_MKV);
    assert_int_equal(back->output.fps_num, 30000);
    assert_int_equal(back->segments[3].part_count, 4);
    char *again = cf_plan_to_json(back);
    assert_string_equal(json, again);

    /* Tampered plans are refused with a reason. */
    static const struct {
        const char *from, *to, *why;
    } edits[] = {
        {"\"frames\":370", "\"frames\":371",
         "plan: clips[0]: frames or samples do not match its trim"},
        {"\"encoder\":\"cpu\"", "\"encoder\":\"auto\"", "plan: output.encoder: must be cpu or gpu"},
        {"\"total_samples\":1020219", "\"total_samples\":1020218",
         "plan: totals do not match the clips"},
        {"\"version\":1", "\"version\":2", "plan: version: out of range"},
        {"\"width\":1280", "\"width\":\"1280\"", "plan: output.width: must be an integer"},
        {"\"segment_frames\":120", "\"segment_frames\":119",
         "plan: output: inconsistent size, rate, GOP or segment length"},
        {"\"clip_frame\":360", "\"clip_frame\":359", "plan: segments[3]: does not match the clips"},
        {"\"has_audio\":false", "\"has_audio\":0", "plan: clips[1].has_audio: must be a boolean"},
    };
    for (size_t i = 0; i < sizeof edits / sizeof edits[0]; i++) {
        char *pos = strstr(json, edits[i].from);
        if (!pos)
            fail_msg("edit %zu: '%s' not in %s", i, edits[i].from, json);
        char *bad = NULL;
        assert_true(asprintf(&bad, "%.*s%s%s", (int)(pos - json), json, edits[i].to,
                             pos + strlen(edits[i].from)) > 0);
        assert_null(cf_plan_from_json(bad, strlen(bad), err, sizeof err));
        if (strcmp(err, edits[i].why))
            fail_msg("edit %zu: got '%s', expected '%s'", i, err, edits[i].why);
        free(bad);
    }
    assert_null(cf_plan_from_json("[", 1, err, sizeof err));
    free(json);
    free(again);
    cf_plan_destroy(&back);
    cf_plan_destroy(&plan);
}

/* The compact form (what a task carries) leaves the segments out; reading
 * it back derives the same segments as the full form, its size does not
 * grow with the timeline, and a tampered compact plan is still refused. */
static void test_json_compact(void **state)
{
    (void)state;
    static const cf_plan_source_t sources[] = {{3600000000LL, true}, {2000000, true}};
    cf_plan_t *plan = s_plan("{\"clips\": [{\"source\": \"file:///long\"},"
                             "{\"source\": \"file:///tail\", \"start\": 0.25}],"
                             "\"output\": {\"fps\": 30}, \"segment_seconds\": 1}",
                             sources);
    assert_true(plan->segment_count > 3600);
    char *full = cf_plan_to_json(plan);
    char *compact = cf_plan_to_json_compact(plan);
    assert_non_null(full);
    assert_non_null(compact);
    assert_null(strstr(compact, "\"segments\""));
    assert_true(strlen(compact) < 1024); /* an hour in 1 s segments: the full one is ~300 KB */
    assert_true(strlen(full) > 100 * strlen(compact));
    char err[256];
    cf_plan_t *back = cf_plan_from_json(compact, strlen(compact), err, sizeof err);
    if (!back)
        fail_msg("%s", err);
    s_check_invariants(back);
    char *again = cf_plan_to_json(back);
    assert_string_equal(full, again); /* the same segments, to the part */
    char *pos = strstr(compact, "\"total_frames\":");
    assert_non_null(pos);
    char *bad = NULL;
    assert_true(asprintf(&bad, "%.*s\"total_frames\":1%s", (int)(pos - compact), compact,
                         pos + strlen("\"total_frames\":")) > 0);
    assert_null(cf_plan_from_json(bad, strlen(bad), err, sizeof err));
    assert_string_equal(err, "plan: totals do not match the clips");
    free(bad);
    free(again);
    free(full);
    free(compact);
    cf_plan_destroy(&back);
    cf_plan_destroy(&plan);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_frames_for),        cmocka_unit_test(test_sample_at),
        cmocka_unit_test(test_ntsc_timeline),     cmocka_unit_test(test_film_and_gop),
        cmocka_unit_test(test_many_short_clips),  cmocka_unit_test(test_range_errors),
        cmocka_unit_test(test_encoder_and_order), cmocka_unit_test(test_json_round_trip),
        cmocka_unit_test(test_json_compact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
