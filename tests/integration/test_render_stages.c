/* The render stages (prepare, encode segment, encode audio, assemble)
 * driven one by one in this process, as a cluster runs them on several
 * nodes, and judged by ffprobe: every piece is a blob with its planned
 * frames, a plan handed to "another node" fetches only what its segments
 * use, the stitched output holds the planned frames whether written to a
 * path or into a store, and a failure names the source as given. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cf_blob.h"
#include "cf_comp.h"
#include "cf_render_stages.h"
#include "cf_testutil.h"

static char *s_dir;
static char s_a[600], s_b[600];

static int s_setup(void **state)
{
    (void)state;
    s_dir = cf_test_mkdtemp("cf-render-stages");
    snprintf(s_a, sizeof s_a, "%s/a.mp4", s_dir);
    snprintf(s_b, sizeof s_b, "%s/b.mp4", s_dir);
    cf_test_proc_t p = cf_test_runl(
        "ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=3",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=3", "-c:v", "libx264",
        "-preset", "ultrafast", "-g", "25", "-c:a", "aac", "-shortest", s_a, (char *)NULL);
    cf_test_expect_success(&p, "ffmpeg a.mp4");
    cf_test_proc_free(&p);
    p = cf_test_runl("ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                     "smptebars=size=320x240:rate=25:duration=2", "-c:v", "libx264", "-preset",
                     "ultrafast", "-g", "25", s_b, (char *)NULL);
    cf_test_expect_success(&p, "ffmpeg b.mp4");
    cf_test_proc_free(&p);
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    cf_test_rmtree(s_dir);
    free(s_dir);
    return 0;
}

/* a [0.5, 2.5) then b whole, 1 s segments at 25 fps: 50 + 50 frames. */
static cf_comp_t *s_comp(const char *b_source)
{
    char json[2048];
    snprintf(json, sizeof json,
             "{\"clips\": [{\"source\": \"file://%s\", \"start\": 0.5, \"end\": 2.5},"
             " {\"source\": \"%s\"}], \"segment_seconds\": 1,"
             " \"output\": {\"width\": 320, \"height\": 240, \"fps\": 25,"
             " \"preset\": \"fast\"}}",
             s_a, b_source);
    cf_comp_errors_t errors = {0};
    cf_comp_t *comp = cf_comp_parse(json, strlen(json), &errors);
    if (!comp) {
        char *joined = cf_comp_errors_join(&errors);
        fail_msg("composition: %s", joined ? joined : "?");
    }
    cf_comp_errors_free(&errors);
    return comp;
}

static char *s_b_url(void)
{
    char *url = NULL;
    assert_true(asprintf(&url, "file://%s", s_b) > 0);
    return url;
}

/* Entries in DIR other than . and .. */
static int s_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

static long s_probe_frames(const char *path)
{
    cf_test_proc_t p = cf_test_runl("ffprobe", "-v", "error", "-select_streams", "v:0",
                                    "-count_packets", "-show_entries", "stream=nb_read_packets",
                                    "-of", "csv=p=0", path, (char *)NULL);
    cf_test_expect_success(&p, "ffprobe frames");
    long n = atol(p.out);
    cf_test_proc_free(&p);
    return n;
}

static cf_blob_store_t *s_store(const char *name)
{
    char dir[700], err[256];
    snprintf(dir, sizeof dir, "%s/%s", s_dir, name);
    cf_blob_store_t *store = cf_blob_store_new(dir, err, sizeof err);
    if (!store)
        fail_msg("store: %s", err);
    return store;
}

static void test_stages_one_by_one(void **state)
{
    (void)state;
    char *b_url = s_b_url();
    cf_comp_t *comp = s_comp(b_url);
    cf_render_opts_t opts = {.work_parent = s_dir};
    char err[1024] = "";
    cf_render_job_t *job = cf_render_prepare(comp, &opts, err, sizeof err);
    if (!job)
        fail_msg("prepare: %s", err);
    const cf_plan_t *plan = cf_render_job_plan(job);
    assert_int_equal(plan->total_frames, 100);
    assert_int_equal(plan->segment_count, 4);
    assert_int_equal(cf_render_job_source_pixels(job), 320 * 240);
    assert_string_equal(cf_render_job_encoder(job), "libx264");

    cf_blob_store_t *store = s_store("pieces");
    cf_render_piece_t pieces[4], audio;
    for (int s = 0; s < plan->segment_count; s++) {
        atomic_int_fast64_t frames = 0;
        cf_media_ctl_t ctl = {.frames_done = &frames, .threads = 1};
        if (cf_render_encode_segment(job, s, store, &ctl, &pieces[s], err, sizeof err) < 0)
            fail_msg("segment %d: %s", s, err);
        assert_int_equal(pieces[s].frames, plan->segments[s].frames);
        assert_int_equal(atomic_load(&frames), plan->segments[s].frames);
        /* A blob: its name is the hash of its bytes, its size recorded. */
        char path[1024], hex[CF_BLOB_HEX_SIZE];
        uint64_t size = 0;
        assert_int_equal(cf_blob_path(store, pieces[s].blob, path, sizeof path, err, sizeof err),
                         0);
        assert_int_equal(cf_blob_hash_file(path, hex, &size, err, sizeof err), 0);
        assert_string_equal(hex, pieces[s].blob);
        assert_int_equal(size, pieces[s].bytes);
        assert_int_equal(s_probe_frames(path), plan->segments[s].frames);
    }
    assert_int_equal(cf_render_encode_audio(job, store, NULL, &audio, err, sizeof err), 0);
    assert_int_equal(audio.frames, plan->total_samples);
    assert_int_equal(plan->total_samples, 4 * 48000);
    /* Nothing is left on its way in. */
    char tmp[800];
    snprintf(tmp, sizeof tmp, "%s/pieces/tmp", s_dir);
    assert_int_equal(s_entries(tmp), 0);

    /* Assembled to a path and into a store: the same bytes. */
    char out[700];
    snprintf(out, sizeof out, "%s/out.mp4", s_dir);
    cf_render_piece_t to_path, to_store;
    if (cf_render_assemble(plan, store, pieces, &audio, NULL, out, NULL, &to_path, err,
                           sizeof err) < 0)
        fail_msg("assemble: %s", err);
    assert_int_equal(to_path.frames, 100);
    assert_int_equal(s_probe_frames(out), 100);
    cf_blob_store_t *outputs = s_store("outputs");
    assert_int_equal(cf_render_assemble(plan, store, pieces, &audio, NULL, NULL, outputs, &to_store,
                                        err, sizeof err),
                     0);
    assert_string_equal(to_path.blob, to_store.blob);
    assert_int_equal(to_path.bytes, to_store.bytes);
    char out_blob[1024];
    assert_int_equal(
        cf_blob_path(outputs, to_store.blob, out_blob, sizeof out_blob, err, sizeof err), 0);
    assert_int_equal(s_probe_frames(out_blob), 100);

    /* A piece whose blob does not hold what was recorded is refused. */
    cf_render_piece_t wrong[4];
    memcpy(wrong, pieces, sizeof wrong);
    wrong[2].bytes += 1;
    assert_int_equal(
        cf_render_assemble(plan, store, wrong, &audio, NULL, NULL, outputs, NULL, err, sizeof err),
        -1);
    assert_non_null(strstr(err, "segment 2"));

    cf_blob_store_destroy(&outputs);
    cf_blob_store_destroy(&store);
    cf_render_job_destroy(&job);
    assert_null(job);
    cf_comp_destroy(&comp);
    free(b_url);
}

/* A node given segment 0 of a plan made elsewhere (JSON, as it travels)
 * fetches only clip a: b's source is gone and it still works; the segment
 * that needs b is refused with a clear error. */
static void test_job_for_plan_fetches_only_what_it_needs(void **state)
{
    (void)state;
    char copy[700];
    snprintf(copy, sizeof copy, "%s/b-copy.mp4", s_dir);
    cf_test_proc_t p = cf_test_runl("cp", s_b, copy, (char *)NULL);
    cf_test_expect_success(&p, "cp");
    cf_test_proc_free(&p);
    char b_url[800];
    snprintf(b_url, sizeof b_url, "file://%s", copy);
    cf_comp_t *comp = s_comp(b_url);
    cf_render_opts_t opts = {.work_parent = s_dir};
    char err[1024] = "";
    cf_render_job_t *planner = cf_render_prepare(comp, &opts, err, sizeof err);
    assert_non_null(planner);
    char *json = cf_plan_to_json(cf_render_job_plan(planner));
    assert_non_null(json);
    cf_render_job_destroy(&planner);
    assert_int_equal(unlink(copy), 0);

    cf_plan_t *plan = cf_plan_from_json(json, strlen(json), err, sizeof err);
    assert_non_null(plan);
    int only[] = {0};
    cf_render_job_t *worker = cf_render_job_for_plan(&plan, only, 1, false, &opts, err, sizeof err);
    if (!worker)
        fail_msg("job for plan: %s", err);
    assert_null(plan);
    cf_blob_store_t *store = s_store("worker-pieces");
    cf_render_piece_t piece;
    assert_int_equal(cf_render_encode_segment(worker, 0, store, NULL, &piece, err, sizeof err), 0);
    assert_int_equal(piece.frames, 25);
    /* Segment 2 is b's: not fetched for this job. */
    assert_int_equal(cf_render_encode_segment(worker, 2, store, NULL, &piece, err, sizeof err), -1);
    assert_non_null(strstr(err, "was not fetched"));
    cf_render_job_destroy(&worker);

    /* Asking for b's segment fetches b, which is gone: the error names the
     * source as the composition gave it. */
    plan = cf_plan_from_json(json, strlen(json), err, sizeof err);
    int needs_b[] = {3};
    worker = cf_render_job_for_plan(&plan, needs_b, 1, false, &opts, err, sizeof err);
    assert_null(worker);
    assert_non_null(strstr(err, "clips[1].source"));
    assert_non_null(strstr(err, b_url));
    /* An index outside the plan is an error, not a crash. */
    plan = cf_plan_from_json(json, strlen(json), err, sizeof err);
    int bad[] = {9};
    assert_null(cf_render_job_for_plan(&plan, bad, 1, false, &opts, err, sizeof err));
    assert_non_null(strstr(err, "not in the plan"));
    cf_blob_store_destroy(&store);
    free(json);
    cf_comp_destroy(&comp);
}

/* A cancelled encode fails with "cancelled" and leaves no file behind. */
static void test_cancelled_segment_leaves_nothing(void **state)
{
    (void)state;
    char *b_url = s_b_url();
    cf_comp_t *comp = s_comp(b_url);
    cf_render_opts_t opts = {.work_parent = s_dir};
    char err[1024] = "";
    cf_render_job_t *job = cf_render_prepare(comp, &opts, err, sizeof err);
    assert_non_null(job);
    cf_blob_store_t *store = s_store("cancel-pieces");
    atomic_bool cancel = true;
    cf_media_ctl_t ctl = {.cancel = &cancel};
    cf_render_piece_t piece;
    assert_int_equal(cf_render_encode_segment(job, 1, store, &ctl, &piece, err, sizeof err), -1);
    assert_non_null(strstr(err, "cancelled"));
    char tmp[800];
    snprintf(tmp, sizeof tmp, "%s/cancel-pieces/tmp", s_dir);
    assert_int_equal(s_entries(tmp), 0);
    cf_blob_store_destroy(&store);
    cf_render_job_destroy(&job);
    cf_comp_destroy(&comp);
    free(b_url);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stages_one_by_one),
        cmocka_unit_test(test_job_for_plan_fetches_only_what_it_needs),
        cmocka_unit_test(test_cancelled_segment_leaves_nothing),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
