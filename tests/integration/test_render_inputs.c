/* clipfarm render with broken inputs: each gives exit code 1 and one clear
 * line, never a crash, and leaves no temporary files and no output behind.
 * HTTP sources are served by a civetweb server on 127.0.0.1 inside this test
 * (a file it has, and a 404); the unreachable URL is a closed local port. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <civetweb.h>
#include <dirent.h>
#include <stdbool.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cf_testutil.h"

static char *s_dir, *s_www, *s_work;
static struct mg_context *s_http;
static int s_http_port, s_closed_port;

static char *s_path(const char *dir, const char *name)
{
    char *path = NULL;
    assert_true(asprintf(&path, "%s/%s", dir, name) > 0);
    return path;
}

/* Copies the first FRACTION of SRC to DST. */
static void s_truncate_copy(const char *src, const char *dst, double fraction)
{
    FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
    assert_non_null(in);
    assert_non_null(out);
    fseek(in, 0, SEEK_END);
    long keep = (long)((double)ftell(in) * fraction);
    fseek(in, 0, SEEK_SET);
    char buf[65536];
    while (keep > 0) {
        size_t n = fread(buf, 1, keep < (long)sizeof buf ? (size_t)keep : sizeof buf, in);
        assert_true(n > 0);
        assert_int_equal(fwrite(buf, 1, n, out), n);
        keep -= (long)n;
    }
    fclose(in);
    assert_int_equal(fclose(out), 0);
}

static int s_closed_local_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    socklen_t len = sizeof addr;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&addr, &len), 0);
    close(fd); /* bound, never listened on, now closed: connections are refused */
    return ntohs(addr.sin_port);
}

static int s_setup(void **state)
{
    cf_test_bin();
    s_dir = cf_test_mkdtemp("cf-render-inputs");
    s_www = s_path(s_dir, "www");
    s_work = s_path(s_dir, "work");
    assert_int_equal(mkdir(s_www, 0755), 0);
    assert_int_equal(mkdir(s_work, 0700), 0);
    char *good = s_path(s_www, "good.mp4"), *fast = s_path(s_dir, "faststart.mp4");
    char *audio = s_path(s_dir, "audio.m4a");
    cf_test_proc_t p;
    p = cf_test_runl("ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                     "testsrc2=size=160x90:rate=25:duration=2", "-f", "lavfi", "-i",
                     "sine=frequency=440:sample_rate=48000:duration=2", "-c:v", "libx264",
                     "-preset", "ultrafast", "-c:a", "aac", "-shortest", good, NULL);
    cf_test_expect_success(&p, "ffmpeg good.mp4");
    cf_test_proc_free(&p);
    p = cf_test_runl("ffmpeg", "-v", "error", "-i", good, "-c", "copy", "-movflags", "+faststart",
                     fast, NULL);
    cf_test_expect_success(&p, "ffmpeg faststart.mp4");
    cf_test_proc_free(&p);
    p = cf_test_runl("ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                     "sine=frequency=440:sample_rate=48000:duration=2", "-c:a", "aac", audio, NULL);
    cf_test_expect_success(&p, "ffmpeg audio.m4a");
    cf_test_proc_free(&p);

    /* Two ways to cut a file short: the index (moov) lost from the end, and
     * the index kept up front but half the media data lost. */
    char *cut = s_path(s_dir, "truncated.mp4"), *cut_fast = s_path(s_dir, "truncated-data.mp4");
    s_truncate_copy(good, cut, 0.5);
    s_truncate_copy(fast, cut_fast, 0.5);

    mg_init_library(0);
    const char *options[] = {
        "listening_ports", "127.0.0.1:0", "document_root", s_www, "num_threads", "2", NULL};
    struct mg_callbacks callbacks = {0};
    s_http = mg_start(&callbacks, NULL, options);
    assert_non_null(s_http);
    struct mg_server_port ports[2];
    assert_true(mg_get_server_ports(s_http, 2, ports) >= 1);
    s_http_port = ports[0].port;
    s_closed_port = s_closed_local_port();
    free(good);
    free(fast);
    free(audio);
    free(cut);
    free(cut_fast);
    return 0;
}

static int s_teardown(void **state)
{
    if (s_http)
        mg_stop(s_http);
    mg_exit_library();
    cf_test_rmtree(s_dir);
    free(s_dir);
    free(s_www);
    free(s_work);
    return 0;
}

static int s_entries(const char *dir, const char *needle)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
            (!needle || strstr(e->d_name, needle)))
            n++;
    closedir(d);
    return n;
}

/* Renders one clip of SOURCE (with extra clip members, e.g. "\"end\": 9")
 * and returns the result. Checks that no temporary file is left over. */
static cf_test_proc_t s_render(const char *source, const char *clip_extra, const char *output_extra,
                               const char *out_name)
{
    char *comp = s_path(s_dir, "comp.json"), *json = NULL, *out = s_path(s_dir, out_name);
    assert_true(asprintf(&json,
                         "{\"clips\": [{\"source\": \"%s\"%s%s}], \"output\": {\"width\": 160, "
                         "\"height\": 90, \"fps\": 25, \"preset\": \"fast\"%s%s}}",
                         source, *clip_extra ? ", " : "", clip_extra, *output_extra ? ", " : "",
                         output_extra) > 0);
    cf_test_write_file(comp, json);
    cf_test_proc_t p = cf_test_runl(cf_test_bin(), "render", comp, "-o", out, "--progress", "none",
                                    "--work-dir", s_work, NULL);
    if (s_entries(s_work, NULL) != 0)
        fail_msg("temporary files left in %s after: %s", s_work, json);
    if (s_entries(s_dir, ".part") != 0)
        fail_msg("partial output left beside %s", out);
    free(comp);
    free(json);
    free(out);
    return p;
}

/* A failed render: exit 1, no output, and one stderr line holding WANT. */
static void s_expect_failure(const char *source, const char *clip_extra, const char *want)
{
    char *out = s_path(s_dir, "failed.mp4");
    cf_test_proc_t p = s_render(source, clip_extra, "", "failed.mp4");
    if (p.status != 1 || cf_test_count_lines(p.err) != 1 || !strstr(p.err, want) ||
        strncmp(p.err, "clipfarm render: ", 17))
        fail_msg("source %s: exit %d, stderr:\n%s\nexpected exit 1 and one line with: %s", source,
                 p.status, p.err, want);
    assert_int_equal(access(out, F_OK), -1);
    cf_test_proc_free(&p);
    free(out);
}

static void test_missing_and_damaged_files(void **state)
{
    char src[4096], want[4200];
    snprintf(src, sizeof src, "file://%s/nonexistent.mp4", s_dir);
    snprintf(want, sizeof want, "clips[0].source: %s: No such file or directory", src);
    s_expect_failure(src, "", want);

    snprintf(src, sizeof src, "file://%s/truncated.mp4", s_dir);
    /* Errors name the source as the composition gave it. */
    snprintf(want, sizeof want, "clips[0].source: file://%s/truncated.mp4: cannot open: ", s_dir);
    s_expect_failure(src, "", want);

    snprintf(src, sizeof src, "file://%s/truncated-data.mp4", s_dir);
    s_expect_failure(src, "", "(truncated or damaged file?)");

    snprintf(src, sizeof src, "file://%s/audio.m4a", s_dir);
    snprintf(want, sizeof want, "clips[0].source: file://%s/audio.m4a: no video stream", s_dir);
    s_expect_failure(src, "", want);

    snprintf(src, sizeof src, "file://%s/www", s_dir);
    s_expect_failure(src, "", "not a regular file");
}

static void test_ranges_past_the_end(void **state)
{
    char src[4096];
    snprintf(src, sizeof src, "file://%s/www/good.mp4", s_dir);
    s_expect_failure(src, "\"start\": 1.0, \"end\": 2.5",
                     "clips[0].end: past the end of the source (2.000 s)");
    s_expect_failure(src, "\"start\": 2.0", "clips[0].start: past the end of the source (2.000 s)");
}

static void test_http_sources(void **state)
{
    char src[256], want[512];
    snprintf(src, sizeof src, "http://127.0.0.1:%d/missing.mp4", s_http_port);
    snprintf(want, sizeof want, "clips[0].source: %s: HTTP 404", src);
    s_expect_failure(src, "", want);

    snprintf(src, sizeof src, "http://127.0.0.1:%d/good.mp4", s_closed_port);
    snprintf(want, sizeof want, "clips[0].source: %s: cannot fetch: ", src);
    s_expect_failure(src, "", want);

    /* The same file served for real: fetched into the workspace, rendered,
     * and the downloaded copy removed with the workspace. */
    snprintf(src, sizeof src, "http://127.0.0.1:%d/good.mp4", s_http_port);
    cf_test_proc_t p = s_render(src, "\"start\": 0.5", "", "from-http.mp4");
    cf_test_expect_success(&p, "render from http");
    assert_non_null(strstr(p.out, "rendered "));
    assert_non_null(strstr(p.out, ": 38 frames")); /* ceil(1.5 * 25) = 38 */
    cf_test_proc_free(&p);
}

static void test_blob_without_store(void **state)
{
    s_expect_failure("blob:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff", "",
                     "no blob store here");
}

/* Whether NVENC works here, asked of the ffmpeg program (not of the code
 * under test): one frame through h264_nvenc. */
static bool s_ffmpeg_has_nvenc(void)
{
    cf_test_proc_t p =
        cf_test_runl("ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=size=256x256:rate=25",
                     "-frames:v", "1", "-c:v", "h264_nvenc", "-f", "null", "-", (char *)NULL);
    bool ok = p.status == 0;
    cf_test_proc_free(&p);
    return ok;
}

/* Whether the H.264 stream in PATH carries x264's version SEI ("x264 -
 * core"), which libx264 writes and NVENC does not: who encoded it, judged
 * from the file. */
static bool s_encoded_by_x264(const char *path)
{
    cf_test_proc_t p = cf_test_runl("grep", "-c", "x264 - core", "-a", path, (char *)NULL);
    bool found = p.status == 0;
    cf_test_proc_free(&p);
    return found;
}

static void test_gpu_encoder(void **state)
{
    char src[4096];
    snprintf(src, sizeof src, "file://%s/www/good.mp4", s_dir);
    char *gpu_out = s_path(s_dir, "gpu.mp4"), *auto_out = s_path(s_dir, "auto.mp4");
    if (s_ffmpeg_has_nvenc()) {
        /* A machine with NVENC: the gpu encoder renders, and not with x264. */
        cf_test_proc_t p = s_render(src, "", "\"encoder\": \"gpu\"", "gpu.mp4");
        cf_test_expect_success(&p, "render with NVENC");
        assert_non_null(strstr(p.out, "h264_nvenc"));
        assert_false(s_encoded_by_x264(gpu_out));
        cf_test_proc_free(&p);
        free(gpu_out);
        free(auto_out);
        return;
    }
    cf_test_proc_t p = s_render(src, "", "\"encoder\": \"gpu\"", "gpu.mp4");
    if (p.status != 1 || cf_test_count_lines(p.err) != 1 ||
        !strstr(p.err, "clipfarm render: output.encoder gpu: no NVENC encoder can be opened ("))
        fail_msg("gpu without NVENC: exit %d, stderr: %s", p.status, p.err);
    cf_test_proc_free(&p);
    /* "auto" falls back to the CPU: libx264 wrote the file. */
    p = s_render(src, "", "\"encoder\": \"auto\"", "auto.mp4");
    cf_test_expect_success(&p, "render with encoder auto");
    assert_non_null(strstr(p.out, "libx264"));
    assert_true(s_encoded_by_x264(auto_out));
    cf_test_proc_free(&p);
    free(gpu_out);
    free(auto_out);
}

static void test_invalid_composition(void **state)
{
    char *comp = s_path(s_dir, "bad.json"), *out = s_path(s_dir, "bad.mp4");
    cf_test_write_file(comp, "{\"clips\": [{\"source\": \"ftp://x/a.mp4\", \"start\": 2, "
                             "\"end\": 1}], \"output\": {\"fps\": 0}}");
    cf_test_proc_t p = cf_test_runl(cf_test_bin(), "render", comp, "-o", out, NULL);
    assert_int_equal(p.status, 2);
    assert_string_equal(
        p.err, "clipfarm render: clips[0].source: unsupported source (use file://, http://, "
               "https://, s3:// or blob:)\n"
               "clipfarm render: clips[0].end: must be greater than start (2.0)\n"
               "clipfarm render: output.fps: must be between 1 and 120\n");
    cf_test_proc_free(&p);
    p = cf_test_runl(cf_test_bin(), "render", comp, NULL);
    assert_int_equal(p.status, 2);
    assert_non_null(strstr(p.err, "missing -o OUT"));
    cf_test_proc_free(&p);
    p = cf_test_runl(cf_test_bin(), "render", comp, "-o", out, "--progress", "loud", NULL);
    assert_int_equal(p.status, 2);
    assert_int_equal(cf_test_count_lines(p.err), 1);
    cf_test_proc_free(&p);
    assert_int_equal(access(out, F_OK), -1);
    free(comp);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_missing_and_damaged_files),
        cmocka_unit_test(test_ranges_past_the_end),
        cmocka_unit_test(test_http_sources),
        cmocka_unit_test(test_blob_without_store),
        cmocka_unit_test(test_gpu_encoder),
        cmocka_unit_test(test_invalid_composition),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
