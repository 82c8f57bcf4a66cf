/* Unit tests for lib/model/cf_comp.c: a table of invalid compositions, each with
 * the exact problems expected, and the defaults of valid ones. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_comp.h"
#include "cf_testutil.h"

/* A valid clip and output to build invalid cases around. */
#define CLIP   "{\"source\": \"file:///media/a.mp4\", \"start\": 1.0, \"end\": 3.5}"
#define CLIPS  "\"clips\": [" CLIP "]"
#define OUT(x) "{" CLIPS ", \"output\": {" x "}}"

typedef struct {
    const char *json;
    const char *errors; /* every expected problem, joined with newlines */
} s_case_t;

static const s_case_t s_invalid[] = {
    /* syntax and shape */
    {"{\"clips\": [", "json: line 1, column 11: ']' expected near end of file"},
    {"[1, 2]", "composition: must be a JSON object"},
    {"{\"clips\": [" CLIP "], \"clips\": []}",
     "json: line 1, column 80: duplicate object key near '\"clips\"'"},
    {"{}", "clips: is required"},
    {"{\"clips\": {}}", "clips: must be an array"},
    {"{\"clips\": []}", "clips: must hold at least one clip"},
    {"{" CLIPS ", \"colour\": 1}", "colour: unknown field"},
    {"{\"clips\": [42]}", "clips[0]: must be an object"},
    /* clips */
    {"{\"clips\": [{\"start\": 1}]}", "clips[0].source: is required"},
    {"{\"clips\": [{\"source\": 7}]}", "clips[0].source: must be a string"},
    {"{\"clips\": [{\"source\": \"\"}]}", "clips[0].source: must not be empty"},
    {"{\"clips\": [{\"source\": \"ftp://h/a.mp4\"}]}",
     "clips[0].source: unsupported source (use file://, http://, https://, s3:// or blob:)"},
    {"{\"clips\": [{\"source\": \"/media/a.mp4\"}]}",
     "clips[0].source: unsupported source (use file://, http://, https://, s3:// or blob:)"},
    {"{\"clips\": [{\"source\": \"file://media/a.mp4\"}]}",
     "clips[0].source: file:// URL needs an absolute path (file:///dir/name)"},
    {"{\"clips\": [{\"source\": \"https:///a.mp4\"}]}", "clips[0].source: URL has no host"},
    {"{\"clips\": [{\"source\": \"blob:xyz\"}]}",
     "clips[0].source: blob: needs a blob's hash (64 lower-case hex digits)"},
    /* Refs the blob store can never hold are refused at submit. */
    {"{\"clips\": [{\"source\": \"blob:00112233445566778899aabbccddeeff\"}]}",
     "clips[0].source: blob: needs a blob's hash (64 lower-case hex digits)"},
    {"{\"clips\": [{\"source\": "
     "\"blob:00112233445566778899AABBCCDDEEFF00112233445566778899aabbccddeeff\"}]}",
     "clips[0].source: blob: needs a blob's hash (64 lower-case hex digits)"},
    {"{\"clips\": [{\"source\": \"file:///a\\nb\"}]}",
     "clips[0].source: contains control characters"},
    {"{\"clips\": [{\"source\": \"file:///a.mp4\", \"start\": \"2\"}]}",
     "clips[0].start: must be a number of seconds"},
    {"{\"clips\": [{\"source\": \"file:///a.mp4\", \"start\": -0.5}]}",
     "clips[0].start: must be >= 0"},
    {"{\"clips\": [{\"source\": \"file:///a.mp4\", \"end\": 90000}]}",
     "clips[0].end: must be at most 86400 seconds"},
    {"{\"clips\": [" CLIP ", " CLIP
     ", {\"source\": \"file:///c.mp4\", \"start\": 1.0, \"end\": 0.5}]}",
     "clips[2].end: must be greater than start (1.0)"},
    {"{\"clips\": [{\"source\": \"file:///a.mp4\", \"start\": 2.25, \"end\": 2.25}]}",
     "clips[0].end: must be greater than start (2.25)"},
    {"{\"clips\": [{\"source\": \"file:///a.mp4\", \"start\": 0, \"end\": 20000}]}",
     "clips[0].end: clip is longer than the limit of 14400 seconds"},
    {"{\"clips\": [{\"source\": \"file:///a.mp4\", \"end\": 8000}, {\"source\": \"file:///b.mp4\", "
     "\"end\": 8000}]}",
     "clips: total duration 16000.0 s exceeds the limit of 14400 seconds"},
    {"{\"clips\": [{\"source\": \"file:///a.mp4\", \"speed\": 2}]}",
     "clips[0].speed: unknown field"},
    /* top level */
    {"{" CLIPS ", \"title\": 5}", "title: must be a string"},
    {"{" CLIPS ", \"priority\": \"urgent\"}", "priority: must be one of high, default, low"},
    {"{" CLIPS ", \"segment_seconds\": 0.5}", "segment_seconds: must be between 1 and 600"},
    {"{" CLIPS ", \"segment_seconds\": \"10\"}", "segment_seconds: must be a number"},
    {"{" CLIPS ", \"output\": []}", "output: must be an object"},
    /* output */
    {OUT("\"width\": \"1280\""), "output.width: must be an integer"},
    {OUT("\"width\": 1280.5"), "output.width: must be an integer"},
    {OUT("\"width\": 8"), "output.width: must be between 16 and 3840"},
    {OUT("\"width\": 7680"), "output.width: must be between 16 and 3840"},
    {OUT("\"width\": 1279"), "output.width: must be even"},
    {OUT("\"height\": 4320"), "output.height: must be between 16 and 2160"},
    {OUT("\"height\": 721"), "output.height: must be even"},
    {OUT("\"fps\": 0"), "output.fps: must be between 1 and 120"},
    {OUT("\"fps\": 240"), "output.fps: must be between 1 and 120"},
    {OUT("\"fps\": \"fast\""), "output.fps: must be a number or a fraction like \"30000/1001\""},
    {OUT("\"fps\": \"30/0\""), "output.fps: must be a number or a fraction like \"30000/1001\""},
    {OUT("\"fps\": \"1/2\""), "output.fps: must be between 1 and 120"},
    {OUT("\"container\": \"avi\""), "output.container: must be one of mp4, mkv"},
    {OUT("\"video_codec\": \"vp9\""), "output.video_codec: must be one of h264, hevc"},
    {OUT("\"preset\": \"ultra\""), "output.preset: must be one of fast, balanced, high"},
    {OUT("\"encoder\": \"qsv\""), "output.encoder: must be one of auto, cpu, gpu"},
    {OUT("\"crf\": 52"), "output.crf: must be between 0 and 51"},
    {OUT("\"crf\": 23.5"), "output.crf: must be an integer"},
    {OUT("\"audio_bitrate\": \"loud\""), "output.audio_bitrate: must be a bitrate like \"192k\""},
    {OUT("\"audio_bitrate\": \"1M\""), "output.audio_bitrate: must be between 32k and 512k"},
    {OUT("\"video_bitrate\": \"-5M\""), "output.video_bitrate: must be a bitrate like \"5M\""},
    {OUT("\"video_bitrate\": \"500M\""), "output.video_bitrate: must be between 100k and 100M"},
    {OUT("\"video_bitrate\": \"5M\", \"crf\": 20"),
     "output.video_bitrate: cannot be combined with crf"},
    {OUT("\"bitrate\": 1"), "output.bitrate: unknown field"},
    /* several problems at once, in document order */
    {"{\"clips\": [{\"source\": \"\", \"start\": -1}, {\"source\": \"file:///b\", \"start\": 3, "
     "\"end\": 1}], \"output\": {\"width\": 17, \"fps\": 500, \"crf\": -1}, \"priority\": 1}",
     "priority: must be one of high, default, low\n"
     "clips[0].source: must not be empty\n"
     "clips[0].start: must be >= 0\n"
     "clips[1].end: must be greater than start (3.0)\n"
     "output.width: must be even\n"
     "output.fps: must be between 1 and 120\n"
     "output.crf: must be between 0 and 51"},
};

static void test_invalid_table(void **state)
{
    size_t n = sizeof s_invalid / sizeof s_invalid[0];
    assert_true(n >= 30);
    int failures = 0;
    for (size_t i = 0; i < n; i++) {
        cf_comp_errors_t errors = {0};
        cf_comp_t *comp = cf_comp_parse(s_invalid[i].json, strlen(s_invalid[i].json), &errors);
        char *joined = cf_comp_errors_join(&errors);
        if (comp || strcmp(joined, s_invalid[i].errors)) {
            print_error("case %zu: %s\n  expected: %s\n  got:      %s\n", i, s_invalid[i].json,
                        s_invalid[i].errors, comp ? "(accepted)" : joined);
            failures++;
        }
        cf_comp_destroy(&comp);
        free(joined);
        cf_comp_errors_free(&errors);
    }
    assert_int_equal(failures, 0);
}

static cf_comp_t *s_parse_ok(const char *json)
{
    cf_comp_errors_t errors = {0};
    cf_comp_t *comp = cf_comp_parse(json, strlen(json), &errors);
    if (!comp) {
        char *joined = cf_comp_errors_join(&errors);
        print_error("rejected %s: %s\n", json, joined);
        free(joined);
        fail();
    }
    cf_comp_errors_free(&errors);
    return comp;
}

static void test_defaults_and_example(void **state)
{
    cf_comp_t *comp = s_parse_ok(
        "{\"title\": \"promo\", \"priority\": \"default\","
        " \"clips\": [{\"source\": \"file:///media/a.mp4\", \"start\": 2.0, \"end\": 12.5},"
        "            {\"source\": \"https://example.com/b.mov\"}],"
        " \"output\": {\"width\": 1280, \"height\": 720, \"fps\": 30, \"container\": \"mp4\","
        "            \"video_codec\": \"h264\", \"preset\": \"balanced\", \"crf\": 23,"
        "            \"audio_bitrate\": \"192k\", \"encoder\": \"auto\"},"
        " \"segment_seconds\": 10}");
    assert_string_equal(comp->title, "promo");
    assert_int_equal(comp->clip_count, 2);
    assert_int_equal(comp->clips[0].start_us, 2000000);
    assert_int_equal(comp->clips[0].end_us, 12500000);
    assert_int_equal(comp->clips[1].start_us, 0);
    assert_int_equal(comp->clips[1].end_us, -1);
    assert_int_equal(comp->fps_num, 30);
    assert_int_equal(comp->fps_den, 1);
    assert_int_equal(comp->audio_bitrate, 192000);
    assert_true(comp->faststart);
    assert_int_equal(comp->encoder, CF_ENCODER_AUTO);
    cf_comp_destroy(&comp);
    assert_null(comp);

    /* Presets fill CRF, AAC bitrate and faststart. */
    comp = s_parse_ok("{\"clips\": [{\"source\": "
                      "\"blob:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"}],"
                      " \"output\": {\"preset\": \"fast\"}}");
    assert_int_equal(comp->crf, 28);
    assert_int_equal(comp->audio_bitrate, 128000);
    assert_false(comp->faststart);
    assert_int_equal(comp->width, 1280);
    assert_int_equal(comp->height, 720);
    cf_comp_destroy(&comp);
    comp = s_parse_ok("{\"clips\": [{\"source\": \"file:///a\"}], \"output\": {\"preset\": "
                      "\"high\", \"video_bitrate\": \"2.5M\", \"video_codec\": \"hevc\"}}");
    assert_int_equal(comp->crf, 18);
    assert_int_equal(comp->audio_bitrate, 256000);
    assert_int_equal(comp->video_bitrate, 2500000);
    assert_int_equal(comp->video_codec, CF_CODEC_HEVC);
    cf_comp_destroy(&comp);
    comp = s_parse_ok("{\"clips\": [{\"source\": \"file:///a\"}]}");
    assert_int_equal(comp->preset, CF_PRESET_BALANCED);
    assert_int_equal(comp->crf, 23);
    assert_true(comp->segment_seconds == 10);
    cf_comp_destroy(&comp);
    cf_comp_destroy(&comp); /* safe on NULL */
}

static void test_fps_forms(void **state)
{
    static const struct {
        const char *fps;
        int num, den;
    } cases[] = {
        {"30", 30, 1},
        {"29.97", 30000, 1001},
        {"23.976", 24000, 1001},
        {"59.94", 60000, 1001},
        {"25", 25, 1},
        {"\"30000/1001\"", 30000, 1001},
        {"\"60/2\"", 30, 1},
        {"\"29.97\"", 30000, 1001},
        {"12.5", 25, 2},
        {"119.88", 120000, 1001},
        {"1", 1, 1},
        {"120", 120, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char json[256];
        snprintf(json, sizeof json,
                 "{\"clips\": [{\"source\": \"file:///a\"}], \"output\": {\"fps\": %s}}",
                 cases[i].fps);
        cf_comp_t *comp = s_parse_ok(json);
        if (comp->fps_num != cases[i].num || comp->fps_den != cases[i].den) {
            print_error("fps %s: got %d/%d\n", cases[i].fps, comp->fps_num, comp->fps_den);
            fail();
        }
        cf_comp_destroy(&comp);
    }
}

static void test_round_trip(void **state)
{
    cf_comp_t *comp = s_parse_ok("{\"title\": \"t\", \"clips\": [{\"source\": \"file:///a\", "
                                 "\"start\": 0.5, \"end\": 1.25}], \"output\": {\"fps\": 29.97, "
                                 "\"container\": \"mkv\", \"preset\": \"fast\"}}");
    char *json = cf_comp_to_json(comp);
    assert_non_null(json);
    cf_comp_t *again = s_parse_ok(json);
    assert_int_equal(again->fps_num, 30000);
    assert_int_equal(again->fps_den, 1001);
    assert_int_equal(again->container, CF_CONTAINER_MKV);
    assert_int_equal(again->clips[0].start_us, 500000);
    assert_int_equal(again->clips[0].end_us, 1250000);
    assert_int_equal(again->crf, 28);
    free(json);
    cf_comp_destroy(&again);
    cf_comp_destroy(&comp);
}

static void test_load_missing_file(void **state)
{
    cf_comp_errors_t errors = {0};
    assert_null(cf_comp_load("/nonexistent/comp.json", &errors));
    assert_int_equal(errors.count, 1);
    assert_string_equal(errors.items[0],
                        "/nonexistent/comp.json: cannot read: No such file or directory");
    cf_comp_errors_free(&errors);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_invalid_table),     cmocka_unit_test(test_defaults_and_example),
        cmocka_unit_test(test_fps_forms),         cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_load_missing_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
