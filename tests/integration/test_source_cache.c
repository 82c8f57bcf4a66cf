/* The node-wide source cache (lib/net/cf_source_cache.c) through
 * cf_fetch_source, against a real HTTP origin on 127.0.0.1
 * (tests/lib/validating_http.py: ETag / Last-Modified, conditional
 * requests, a log of every request with its status and body bytes) and,
 * when tests/run provides it, a real S3 server (s3rver).
 *
 * What it shows: a second fetch is one conditional request answered 304
 * with no body; a changed source is downloaded again while the old file
 * stays for the render that holds it; a source without validator is shared
 * only while held; the bound evicts the least recently used entry and
 * never a pinned one; four threads asking at once cause one download; a
 * cancelled waiter leaves, a cancelled leader's waiter asks again; failures
 * are not cached; the index survives a restart (LRU order included) and an
 * open removes partial and orphaned files; S3 sources revalidate by HEAD. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cf_fetch.h"
#include "cf_s3.h"
#include "cf_source_cache.h"
#include "cf_testutil.h"

static char *s_dir, *s_www, *s_log;
static pid_t s_server = -1;
static int s_port;

static char *s_path(const char *dir, const char *name)
{
    char *path = NULL;
    assert_true(asprintf(&path, "%s/%s", dir, name) > 0);
    return path;
}

static void s_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Writes SIZE bytes made from SEED into the origin's file NAME. */
static void s_origin_file(const char *name, size_t size, unsigned seed)
{
    char *path = s_path(s_www, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    for (size_t i = 0; i < size; i++)
        fputc((int)((i * 131 + seed * 7919) % 251), f);
    assert_int_equal(fclose(f), 0);
    free(path);
}

static char *s_read(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = malloc((size_t)n + 1);
    assert_non_null(data);
    assert_int_equal(fread(data, 1, (size_t)n, f), (size_t)n);
    data[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return data;
}

/* True when the file at PATH holds exactly the origin's file NAME. */
static bool s_same_as_origin(const char *path, const char *name)
{
    char *origin = s_path(s_www, name);
    size_t a_len = 0, b_len = 0;
    char *a = s_read(path, &a_len), *b = s_read(origin, &b_len);
    bool same = a && b && a_len == b_len && !memcmp(a, b, a_len);
    free(a);
    free(b);
    free(origin);
    return same;
}

static bool s_exists(const char *path)
{
    return access(path, F_OK) == 0;
}

/* Requests the origin logged for PATH ("/etag/a.bin") with STATUS (0: any)
 * and COND ("inm", "ims", "-"; NULL: any); the body bytes they carried are
 * added to *bytes when not NULL. */
static int s_requests(const char *path, int status, const char *cond, unsigned long long *bytes)
{
    size_t len;
    char *log = s_read(s_log, &len);
    if (!log)
        return 0;
    int n = 0;
    char *save = NULL;
    for (char *line = strtok_r(log, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char method[16], got_path[1024], got_cond[8];
        int got_status;
        unsigned long long got_bytes;
        if (sscanf(line, "%15s %1023s %d %7s %llu", method, got_path, &got_status, got_cond,
                   &got_bytes) != 5)
            continue;
        if (strcmp(got_path, path) || (status && got_status != status) ||
            (cond && strcmp(cond, got_cond)))
            continue;
        n++;
        if (bytes)
            *bytes += got_bytes;
    }
    free(log);
    return n;
}

static char *s_url(const char *path)
{
    char *url = NULL;
    assert_true(asprintf(&url, "http://127.0.0.1:%d%s", s_port, path) > 0);
    return url;
}

static cf_source_cache_t *s_cache(const char *name, uint64_t max_bytes)
{
    char *dir = s_path(s_dir, name);
    char err[512] = "";
    cf_source_cache_t *cache = cf_source_cache_new(dir, max_bytes, err, sizeof err);
    if (!cache)
        fail_msg("cf_source_cache_new %s: %s", dir, err);
    free(dir);
    return cache;
}

/* cf_fetch_source of the origin's PATH through CACHE; fails the test on
 * error. Returns the local path (caller frees) and the pin in *pin. */
static char *s_fetch(cf_source_cache_t *cache, const char *path, cf_source_pin_t **pin)
{
    char *url = s_url(path), *local = NULL, err[1024] = "";
    cf_fetch_opts_t opts = {.cache = cache};
    if (cf_fetch_source(url, &opts, &local, pin, err, sizeof err) < 0)
        fail_msg("fetch %s: %s", url, err);
    assert_non_null(*pin);
    free(url);
    return local;
}

static cf_source_cache_stats_t s_stats(cf_source_cache_t *cache)
{
    cf_source_cache_stats_t st;
    cf_source_cache_stats(cache, &st);
    return st;
}

static int s_setup(void **state)
{
    (void)state;
    s_dir = cf_test_mkdtemp("cf-source-cache");
    s_www = s_path(s_dir, "www");
    s_log = s_path(s_dir, "origin.log");
    assert_int_equal(mkdir(s_www, 0755), 0);
    char *portfile = s_path(s_dir, "origin.port");
    char *script = NULL;
    const char *tests = getenv("CF_TESTS_DIR");
    assert_true(asprintf(&script, "%s/lib/validating_http.py", tests ? tests : "tests") > 0);
    s_server = fork();
    assert_true(s_server >= 0);
    if (s_server == 0) {
        execlp("python3", "python3", script, s_www, s_log, portfile, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200 && !s_port; i++) {
        size_t len;
        char *text = s_read(portfile, &len);
        if (text)
            s_port = atoi(text);
        free(text);
        if (!s_port)
            s_sleep_ms(50);
    }
    assert_true(s_port > 0);
    free(portfile);
    free(script);
    return 0;
}

static int s_teardown(void **state)
{
    (void)state;
    if (s_server > 0) {
        kill(s_server, SIGTERM);
        waitpid(s_server, NULL, 0);
    }
    cf_test_rmtree(s_dir);
    free(s_dir);
    free(s_www);
    free(s_log);
    return 0;
}

/* A second fetch is one conditional request (If-None-Match) answered 304
 * without a body, and gives the same file. */
static void test_revalidate_etag(void **state)
{
    (void)state;
    s_origin_file("a.bin", 200000, 1);
    cf_source_cache_t *cache = s_cache("c-etag", 0);
    cf_source_pin_t *pin = NULL;
    char *first = s_fetch(cache, "/etag/a.bin", &pin);
    assert_true(s_same_as_origin(first, "a.bin"));
    cf_source_pin_release(&pin);
    assert_null(pin);
    cf_source_pin_release(&pin); /* safe on NULL */

    char *second = s_fetch(cache, "/etag/a.bin", &pin);
    assert_string_equal(first, second);
    assert_true(s_same_as_origin(second, "a.bin"));
    unsigned long long bytes = 0;
    assert_int_equal(s_requests("/etag/a.bin", 0, NULL, NULL), 2);
    assert_int_equal(s_requests("/etag/a.bin", 200, "-", &bytes), 1);
    assert_int_equal(bytes, 200000);
    bytes = 0;
    assert_int_equal(s_requests("/etag/a.bin", 304, "inm", &bytes), 1);
    assert_int_equal(bytes, 0);
    cf_source_cache_stats_t st = s_stats(cache);
    assert_int_equal(st.misses, 1);
    assert_int_equal(st.hits, 1);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.bytes, 200000);
    assert_int_equal(st.max_bytes, CF_SOURCE_CACHE_DEFAULT_BYTES);
    /* The cached file keeps the URL's extension (demuxers probe by name). */
    assert_non_null(strstr(second, ".bin"));

    /* A cap below the cached size refuses the entry, as a download would. */
    char *url = s_url("/etag/a.bin"), *local = NULL, err[512] = "";
    cf_source_pin_t *small_pin = NULL;
    cf_fetch_opts_t opts = {.cache = cache, .max_bytes = 1000};
    assert_int_equal(cf_fetch_source(url, &opts, &local, &small_pin, err, sizeof err), -1);
    assert_null(small_pin);
    assert_non_null(strstr(err, "larger than 1000 bytes"));
    free(url);

    cf_source_pin_release(&pin);
    cf_source_cache_destroy(&cache);
    assert_null(cache);
    cf_source_cache_destroy(&cache); /* safe on NULL */
    free(first);
    free(second);
}

/* Last-Modified alone: If-Modified-Since, 304. */
static void test_revalidate_last_modified(void **state)
{
    (void)state;
    s_origin_file("b.bin", 50000, 2);
    cf_source_cache_t *cache = s_cache("c-lm", 0);
    cf_source_pin_t *pin = NULL;
    char *first = s_fetch(cache, "/lm/b.bin", &pin);
    cf_source_pin_release(&pin);
    char *second = s_fetch(cache, "/lm/b.bin", &pin);
    assert_string_equal(first, second);
    assert_int_equal(s_requests("/lm/b.bin", 200, "-", NULL), 1);
    assert_int_equal(s_requests("/lm/b.bin", 304, "ims", NULL), 1);
    assert_int_equal(s_stats(cache).hits, 1);
    cf_source_pin_release(&pin);
    cf_source_cache_destroy(&cache);
    free(first);
    free(second);
}

/* A changed source: a new download under a new entry; the old file stays
 * intact for the render that holds it and goes with its last pin. */
static void test_changed_source(void **state)
{
    (void)state;
    s_origin_file("c.bin", 30000, 3);
    cf_source_cache_t *cache = s_cache("c-changed", 0);
    cf_source_pin_t *old_pin = NULL, *new_pin = NULL;
    char *old_path = s_fetch(cache, "/etag/c.bin", &old_pin);
    char *old_copy = s_path(s_dir, "c-old.bin");
    {
        size_t len;
        char *data = s_read(old_path, &len);
        FILE *f = fopen(old_copy, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(data, 1, len, f), len);
        fclose(f);
        free(data);
    }
    s_origin_file("c.bin", 40000, 4);
    char *new_path = s_fetch(cache, "/etag/c.bin", &new_pin);
    assert_string_not_equal(old_path, new_path);
    assert_true(s_same_as_origin(new_path, "c.bin"));
    assert_int_equal(s_requests("/etag/c.bin", 200, "inm", NULL), 1);
    /* The render holding the old version still reads the old bytes. */
    size_t a_len, b_len;
    char *a = s_read(old_path, &a_len), *b = s_read(old_copy, &b_len);
    assert_non_null(a);
    assert_int_equal(a_len, b_len);
    assert_memory_equal(a, b, a_len);
    free(a);
    free(b);
    assert_int_equal(s_stats(cache).entries, 2);
    cf_source_pin_release(&old_pin);
    assert_false(s_exists(old_path));
    cf_source_cache_stats_t st = s_stats(cache);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.bytes, 40000);
    assert_int_equal(st.misses, 2);
    assert_int_equal(st.evictions, 0); /* replaced, not evicted */

    /* The new version revalidates as usual. */
    cf_source_pin_release(&new_pin);
    char *again = s_fetch(cache, "/etag/c.bin", &new_pin);
    assert_string_equal(again, new_path);
    assert_int_equal(s_requests("/etag/c.bin", 304, "inm", NULL), 1);
    cf_source_pin_release(&new_pin);
    cf_source_cache_destroy(&cache);
    free(old_path);
    free(new_path);
    free(old_copy);
    free(again);
}

/* No validator: shared while held (no request), removed with the last pin,
 * downloaded again by the next render. */
static void test_no_validator(void **state)
{
    (void)state;
    s_origin_file("d.bin", 20000, 5);
    cf_source_cache_t *cache = s_cache("c-plain", 0);
    cf_source_pin_t *p1 = NULL, *p2 = NULL;
    char *first = s_fetch(cache, "/plain/d.bin", &p1);
    char *second = s_fetch(cache, "/plain/d.bin", &p2);
    assert_string_equal(first, second);
    assert_int_equal(s_requests("/plain/d.bin", 0, NULL, NULL), 1);
    cf_source_pin_release(&p1);
    assert_true(s_exists(first));
    cf_source_pin_release(&p2);
    assert_false(s_exists(first));
    assert_int_equal(s_stats(cache).entries, 0);
    char *third = s_fetch(cache, "/plain/d.bin", &p1);
    assert_true(s_same_as_origin(third, "d.bin"));
    assert_int_equal(s_requests("/plain/d.bin", 200, "-", NULL), 2);
    cf_source_pin_release(&p1);
    cf_source_cache_destroy(&cache);
    free(first);
    free(second);
    free(third);
}

/* Over the bound, the least recently used unpinned entry goes; a pinned
 * one stays even when it is the oldest. */
static void test_lru_eviction_keeps_pinned(void **state)
{
    (void)state;
    s_origin_file("e1.bin", 100000, 6);
    s_origin_file("e2.bin", 100000, 7);
    s_origin_file("e3.bin", 100000, 8);
    cf_source_cache_t *cache = s_cache("c-lru", 250000);
    cf_source_pin_t *pa = NULL, *pb = NULL, *pc = NULL;
    char *a = s_fetch(cache, "/etag/e1.bin", &pa); /* oldest, held */
    char *b = s_fetch(cache, "/etag/e2.bin", &pb);
    cf_source_pin_release(&pb);
    char *c = s_fetch(cache, "/etag/e3.bin", &pc);
    assert_true(s_exists(a));
    assert_false(s_exists(b));
    assert_true(s_exists(c));
    cf_source_cache_stats_t st = s_stats(cache);
    assert_int_equal(st.evictions, 1);
    assert_int_equal(st.entries, 2);
    assert_int_equal(st.bytes, 200000);
    assert_true(s_same_as_origin(a, "e1.bin"));

    /* Everything pinned: the cache may exceed its bound, evicts nothing,
     * and comes back under it as pins go. */
    char *b2 = s_fetch(cache, "/etag/e2.bin", &pb);
    st = s_stats(cache);
    assert_int_equal(st.entries, 3);
    assert_int_equal(st.bytes, 300000);
    assert_int_equal(st.evictions, 1);
    /* e1, used longest ago, goes as soon as it is released. */
    cf_source_pin_release(&pa);
    st = s_stats(cache);
    assert_int_equal(st.entries, 2);
    assert_int_equal(st.bytes, 200000);
    assert_int_equal(st.evictions, 2);
    assert_false(s_exists(a));
    assert_true(s_exists(c));
    assert_true(s_exists(b2));
    cf_source_pin_release(&pc);
    cf_source_pin_release(&pb);
    assert_int_equal(s_stats(cache).entries, 2); /* within the bound: kept */
    cf_source_cache_destroy(&cache);
    free(a);
    free(b);
    free(c);
    free(b2);
}

typedef struct {
    cf_source_cache_t *cache;
    const char *url;
    pthread_barrier_t *barrier;
    atomic_bool cancel;
    long delay_ms;
    int rc;
    char *path;
    cf_source_pin_t *pin;
    char err[1024];
} s_fetcher_t;

static void s_fetcher_init(s_fetcher_t *f, cf_source_cache_t *cache, const char *url, long delay_ms)
{
    memset(f, 0, sizeof *f);
    f->cache = cache;
    f->url = url;
    f->delay_ms = delay_ms;
    atomic_init(&f->cancel, false);
}

static void *s_fetcher(void *arg)
{
    s_fetcher_t *f = arg;
    if (f->barrier)
        pthread_barrier_wait(f->barrier);
    if (f->delay_ms)
        s_sleep_ms(f->delay_ms);
    cf_fetch_opts_t opts = {.cache = f->cache, .cancel = &f->cancel};
    f->rc = cf_fetch_source(f->url, &opts, &f->path, &f->pin, f->err, sizeof f->err);
    return NULL;
}

/* Four threads asking for one URL at once: one download, one file. */
static void test_concurrent_one_download(void **state)
{
    (void)state;
    s_origin_file("f.bin", 300000, 9);
    cf_source_cache_t *cache = s_cache("c-concurrent", 0);
    char *url = s_url("/slow/f.bin?ms=1500");
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, 4);
    s_fetcher_t f[4];
    pthread_t threads[4];
    for (int i = 0; i < 4; i++) {
        s_fetcher_init(&f[i], cache, url, 0);
        f[i].barrier = &barrier;
        assert_int_equal(pthread_create(&threads[i], NULL, s_fetcher, &f[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(threads[i], NULL);
    pthread_barrier_destroy(&barrier);
    for (int i = 0; i < 4; i++) {
        if (f[i].rc != 0)
            fail_msg("thread %d: %s", i, f[i].err);
        assert_string_equal(f[i].path, f[0].path);
        assert_non_null(f[i].pin);
    }
    assert_true(s_same_as_origin(f[0].path, "f.bin"));
    assert_int_equal(s_requests("/slow/f.bin?ms=1500", 200, NULL, NULL), 1);
    assert_int_equal(s_requests("/slow/f.bin?ms=1500", 0, NULL, NULL), 1);
    cf_source_cache_stats_t st = s_stats(cache);
    assert_int_equal(st.misses, 1);
    assert_int_equal(st.hits, 3);
    assert_int_equal(st.entries, 1);
    for (int i = 0; i < 4; i++) {
        cf_source_pin_release(&f[i].pin);
        free(f[i].path);
    }
    assert_int_equal(s_stats(cache).entries, 1); /* kept: it has a validator */
    cf_source_cache_destroy(&cache);
    free(url);
}

/* A request waiting for another's download stops when cancelled; when the
 * downloading request is the one cancelled, its waiter asks again itself. */
static void test_cancel_while_shared(void **state)
{
    (void)state;
    s_origin_file("g.bin", 10000, 10);
    cf_source_cache_t *cache = s_cache("c-cancel", 0);

    /* The waiter is cancelled: it leaves; the download completes. */
    char *url = s_url("/slow/g.bin?ms=3000");
    s_fetcher_t lead, wait;
    s_fetcher_init(&lead, cache, url, 0);
    s_fetcher_init(&wait, cache, url, 300);
    pthread_t t1, t2;
    assert_int_equal(pthread_create(&t1, NULL, s_fetcher, &lead), 0);
    assert_int_equal(pthread_create(&t2, NULL, s_fetcher, &wait), 0);
    s_sleep_ms(800);
    atomic_store(&wait.cancel, true);
    pthread_join(t2, NULL);
    assert_int_equal(wait.rc, -1);
    assert_null(wait.pin);
    assert_non_null(strstr(wait.err, "cancelled"));
    pthread_join(t1, NULL);
    if (lead.rc != 0)
        fail_msg("leader: %s", lead.err);
    assert_true(s_same_as_origin(lead.path, "g.bin"));
    cf_source_pin_release(&lead.pin);
    free(lead.path);
    free(url);

    /* The downloader is cancelled: the waiter downloads itself. */
    s_origin_file("h.bin", 10000, 11);
    url = s_url("/slow/h.bin?ms=2000");
    s_fetcher_init(&lead, cache, url, 0);
    s_fetcher_init(&wait, cache, url, 300);
    assert_int_equal(pthread_create(&t1, NULL, s_fetcher, &lead), 0);
    assert_int_equal(pthread_create(&t2, NULL, s_fetcher, &wait), 0);
    s_sleep_ms(800);
    atomic_store(&lead.cancel, true);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    assert_int_equal(lead.rc, -1);
    assert_non_null(strstr(lead.err, "cancelled"));
    if (wait.rc != 0)
        fail_msg("waiter: %s", wait.err);
    assert_true(s_same_as_origin(wait.path, "h.bin"));
    cf_source_pin_release(&wait.pin);
    free(wait.path);
    free(url);
    cf_source_cache_stats_t st = s_stats(cache);
    assert_int_equal(st.entries, 2);
    cf_source_cache_destroy(&cache);
}

/* A failure is not remembered; neither is a source the policy refuses. */
static void test_failures_not_cached(void **state)
{
    (void)state;
    cf_source_cache_t *cache = s_cache("c-fail", 0);
    char *url = s_url("/etag/later.bin"), *local = NULL, err[1024] = "";
    cf_source_pin_t *pin = NULL;
    cf_fetch_opts_t opts = {.cache = cache};
    assert_int_equal(cf_fetch_source(url, &opts, &local, &pin, err, sizeof err), -1);
    assert_null(local);
    assert_null(pin);
    assert_non_null(strstr(err, "HTTP 404"));
    assert_non_null(strstr(err, url));
    assert_int_equal(s_stats(cache).entries, 0);
    s_origin_file("later.bin", 1234, 12);
    local = s_fetch(cache, "/etag/later.bin", &pin);
    assert_true(s_same_as_origin(local, "later.bin"));
    cf_source_pin_release(&pin);
    free(local);
    local = NULL;

    /* The address policy applies to cached fetches as to any: loopback is
     * refused by a restricted policy, and nothing is cached. */
    s_origin_file("policy.bin", 1000, 13);
    cf_source_policy_t *policy = cf_source_policy_new();
    assert_non_null(policy);
    char *purl = s_url("/etag/policy.bin");
    opts.policy = policy;
    assert_int_equal(cf_fetch_source(purl, &opts, &local, &pin, err, sizeof err), -1);
    assert_non_null(strstr(err, "source address not allowed"));
    assert_int_equal(s_requests("/etag/policy.bin", 0, NULL, NULL), 0);
    /* Nor may a cached entry be revalidated around the policy. */
    assert_int_equal(cf_fetch_source(url, &opts, &local, &pin, err, sizeof err), -1);
    assert_non_null(strstr(err, "source address not allowed"));
    assert_null(pin);
    cf_source_policy_destroy(&policy);
    assert_int_equal(s_stats(cache).entries, 1);
    cf_source_cache_destroy(&cache);
    free(url);
    free(purl);
}

/* Entries, sizes and LRU order survive destroy + new on the same
 * directory; the first fetch after it is a 304. */
static void test_restart_keeps_entries(void **state)
{
    (void)state;
    s_origin_file("r1.bin", 60000, 14);
    s_origin_file("r2.bin", 70000, 15);
    cf_source_cache_t *cache = s_cache("c-restart", 0);
    cf_source_pin_t *pin = NULL;
    char *r1 = s_fetch(cache, "/etag/r1.bin", &pin);
    cf_source_pin_release(&pin);
    char *r2 = s_fetch(cache, "/lm/r2.bin", &pin);
    cf_source_pin_release(&pin);
    s_sleep_ms(20);
    char *r1b = s_fetch(cache, "/etag/r1.bin", &pin); /* r1 is now the newer use */
    cf_source_pin_release(&pin);
    assert_string_equal(r1, r1b);
    cf_source_cache_destroy(&cache);

    /* A second process on the directory is refused while one holds it. */
    cache = s_cache("c-restart", 0);
    char *dir = s_path(s_dir, "c-restart"), err[512] = "";
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        cf_source_cache_t *other = cf_source_cache_new(dir, 0, err, sizeof err);
        _exit(other == NULL && strstr(err, "in use") ? 0 : 1);
    }
    int status = 0;
    waitpid(child, &status, 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    cf_source_cache_stats_t st = s_stats(cache);
    assert_int_equal(st.entries, 2);
    assert_int_equal(st.bytes, 130000);
    char *again = s_fetch(cache, "/etag/r1.bin", &pin);
    assert_string_equal(again, r1);
    assert_int_equal(s_requests("/etag/r1.bin", 200, NULL, NULL), 1);
    assert_int_equal(s_requests("/etag/r1.bin", 304, "inm", NULL), 2);
    cf_source_pin_release(&pin);
    cf_source_cache_destroy(&cache);

    /* Reopened with room for one: the least recently used (r2) goes. */
    cache = s_cache("c-restart", 65000);
    st = s_stats(cache);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.bytes, 60000);
    assert_int_equal(st.evictions, 1);
    assert_true(s_exists(r1));
    assert_false(s_exists(r2));
    cf_source_cache_destroy(&cache);
    free(r1);
    free(r1b);
    free(r2);
    free(again);
    free(dir);
}

static int s_count_files(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* An open removes partial downloads, files no meta file vouches for and
 * entries whose file was damaged; it leaves foreign files alone. */
static void test_open_cleans_up(void **state)
{
    (void)state;
    s_origin_file("p1.bin", 5000, 16);
    s_origin_file("p2.bin", 6000, 17);
    cf_source_cache_t *cache = s_cache("c-clean", 0);
    cf_source_pin_t *pin = NULL;
    char *p1 = s_fetch(cache, "/etag/p1.bin", &pin);
    cf_source_pin_release(&pin);
    char *p2 = s_fetch(cache, "/etag/p2.bin", &pin);
    cf_source_pin_release(&pin);
    cf_source_cache_destroy(&cache);

    char *dir = s_path(s_dir, "c-clean");
    const char *ours = "0123456789abcdef0123456789abcdef-0123456789abcdef";
    char *part = NULL, *orphan = NULL, *meta_tmp = NULL, *foreign = s_path(dir, "README");
    assert_true(asprintf(&part, "%s/%s.mp4.part", dir, ours) > 0);
    assert_true(asprintf(&orphan, "%s/%s.mp4", dir, ours) > 0);
    assert_true(asprintf(&meta_tmp, "%s/%s.meta.tmp", dir, ours) > 0);
    cf_test_write_file(part, "half a download");
    cf_test_write_file(orphan, "a file without its meta");
    cf_test_write_file(meta_tmp, "clipfarm-source-cache 1\n");
    cf_test_write_file(foreign, "not ours");
    assert_int_equal(truncate(p2, 100), 0); /* damaged: size differs from its meta */

    cache = s_cache("c-clean", 0);
    assert_false(s_exists(part));
    assert_false(s_exists(orphan));
    assert_false(s_exists(meta_tmp));
    assert_false(s_exists(p2));
    assert_true(s_exists(foreign));
    assert_true(s_exists(p1));
    cf_source_cache_stats_t st = s_stats(cache);
    assert_int_equal(st.entries, 1);
    assert_int_equal(st.bytes, 5000);
    /* p1's file and meta, the lock, the foreign file. */
    assert_int_equal(s_count_files(dir), 4);
    /* The damaged one is simply downloaded again. */
    char *p2b = s_fetch(cache, "/etag/p2.bin", &pin);
    assert_true(s_same_as_origin(p2b, "p2.bin"));
    assert_int_equal(s_requests("/etag/p2.bin", 200, "-", NULL), 2);
    cf_source_pin_release(&pin);
    cf_source_cache_destroy(&cache);
    free(p1);
    free(p2);
    free(p2b);
    free(dir);
    free(part);
    free(orphan);
    free(meta_tmp);
    free(foreign);
}

/* A pin outlives its cache's destroy (the index is freed with the last). */
static void test_pin_outlives_destroy(void **state)
{
    (void)state;
    s_origin_file("z.bin", 1000, 18);
    cf_source_cache_t *cache = s_cache("c-late", 0);
    cf_source_pin_t *pin = NULL;
    char *path = s_fetch(cache, "/plain/z.bin", &pin);
    cf_source_cache_destroy(&cache);
    assert_true(s_same_as_origin(path, "z.bin"));
    cf_source_pin_release(&pin);
    assert_false(s_exists(path)); /* no validator: gone with its last pin */
    free(path);
}

static int s_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    socklen_t len = sizeof addr;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&addr, &len), 0);
    close(fd);
    return ntohs(addr.sin_port);
}

/* s3:// sources: a HEAD gives the ETag; the same ETag is a hit without a
 * GET, a new object version a new download. Needs s3rver (tests/run). */
static void test_s3_revalidate(void **state)
{
    (void)state;
    const char *s3rver = getenv("CF_S3RVER");
    if (!s3rver || !*s3rver) {
        fprintf(stderr, "CF_S3RVER is not set (tests/run installs s3rver)\n");
        skip();
    }
    char *data = s_path(s_dir, "s3data");
    assert_int_equal(mkdir(data, 0755), 0);
    int port = s_free_port();
    char port_text[16];
    snprintf(port_text, sizeof port_text, "%d", port);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);
        dup2(null, 1);
        dup2(null, 2);
        execl(s3rver, s3rver, "-d", data, "-a", "127.0.0.1", "-p", port_text, "-s",
              "--configure-bucket", "sources", (char *)NULL);
        _exit(127);
    }
    setenv("AWS_ACCESS_KEY_ID", "S3RVER", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "S3RVER", 1);
    cf_s3_options_t so;
    cf_s3_options_default(&so);
    char endpoint[64], err[1024] = "", code[64];
    snprintf(endpoint, sizeof endpoint, "http://127.0.0.1:%d", port);
    so.endpoint = endpoint;
    so.path_style = true;
    cf_s3_t *s3 = cf_s3_new(&so, err, sizeof err);
    assert_non_null(s3);
    s_origin_file("s3.bin", 70000, 19);
    char *src = s_path(s_www, "s3.bin");
    int rc = -1;
    for (int i = 0; i < 100 && rc < 0; i++) { /* until s3rver listens */
        rc = cf_s3_upload(s3, NULL, "sources", "in/clip.bin", src, NULL, code, err, sizeof err);
        if (rc < 0)
            s_sleep_ms(100);
    }
    if (rc < 0)
        fail_msg("upload to s3rver: %s", err);

    cf_source_cache_t *cache = s_cache("c-s3", 0);
    cf_fetch_opts_t opts = {.cache = cache, .s3 = s3};
    char *first = NULL, *second = NULL, *third = NULL;
    cf_source_pin_t *pin = NULL, *old_pin = NULL;
    const char *url = "s3://sources/in/clip.bin";
    assert_int_equal(cf_fetch_source(url, &opts, &first, &old_pin, err, sizeof err), 0);
    assert_true(s_same_as_origin(first, "s3.bin"));
    assert_int_equal(cf_fetch_source(url, &opts, &second, &pin, err, sizeof err), 0);
    assert_string_equal(first, second);
    cf_source_cache_stats_t st = s_stats(cache);
    assert_int_equal(st.misses, 1);
    assert_int_equal(st.hits, 1);
    cf_source_pin_release(&pin);

    /* A new version: downloaded again; the held old file is untouched. */
    s_origin_file("s3.bin", 80000, 20);
    assert_int_equal(
        cf_s3_upload(s3, NULL, "sources", "in/clip.bin", src, NULL, code, err, sizeof err), 0);
    if (cf_fetch_source(url, &opts, &third, &pin, err, sizeof err) < 0)
        fail_msg("fetch after change: %s", err);
    assert_string_not_equal(first, third);
    assert_true(s_same_as_origin(third, "s3.bin"));
    assert_true(s_exists(first));
    cf_source_pin_release(&old_pin);
    assert_false(s_exists(first));
    st = s_stats(cache);
    assert_int_equal(st.misses, 2);
    assert_int_equal(st.entries, 1);
    cf_source_pin_release(&pin);

    /* A missing key still names S3's error (the HEAD's 404 falls back to a
     * GET that says which), and nothing is cached. */
    char *missing = NULL;
    assert_int_equal(
        cf_fetch_source("s3://sources/nothing-here.bin", &opts, &missing, &pin, err, sizeof err),
        -1);
    assert_non_null(strstr(err, "NoSuchKey"));
    assert_int_equal(s_stats(cache).entries, 1);

    cf_source_cache_destroy(&cache);
    cf_s3_destroy(&s3);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    free(first);
    free(second);
    free(third);
    free(src);
    free(data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_revalidate_etag),
        cmocka_unit_test(test_revalidate_last_modified),
        cmocka_unit_test(test_changed_source),
        cmocka_unit_test(test_no_validator),
        cmocka_unit_test(test_lru_eviction_keeps_pinned),
        cmocka_unit_test(test_concurrent_one_download),
        cmocka_unit_test(test_cancel_while_shared),
        cmocka_unit_test(test_failures_not_cached),
        cmocka_unit_test(test_restart_keeps_entries),
        cmocka_unit_test(test_open_cleans_up),
        cmocka_unit_test(test_pin_outlives_destroy),
        cmocka_unit_test(test_s3_revalidate),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
