/* cf_task, the child's side: `clipfarm task`. Confines itself (see
 * cf_task.h for what and what not), reads the task from stdin, trusting
 * none of it, runs the one stage it names and says how it went on stdout. */
#define _GNU_SOURCE
#include "cf_task.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <linux/capability.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "cf_blob.h"
#include "cf_json.h"
#include "cf_log.h"
#include "cf_source_policy.h"

/* ASan and TSan reserve terabytes of address space for their shadow
 * memory, and catch crashes themselves. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define S_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define S_SANITIZED 1
#endif
#endif
#ifndef S_SANITIZED
#define S_SANITIZED 0
#endif

#define S_MAX_TASK_BYTES (64u << 20)
#define S_PROGRESS_MS    250

static atomic_bool s_cancel;
static atomic_int_fast64_t s_frames;
static long s_page_size = 4096;

typedef struct {
    uint64_t as, cpu, nofile, fsize;
    bool share_net;
    long parent;
} s_args_t;

typedef struct {
    cf_task_kind_t kind;
    cf_plan_t *plan;
    char **given; /* per clip: the name errors use (NULL: the plan's) */
    int segment;
    char *blob_dir, *scratch;
    cf_render_piece_t *pieces, audio;
    int threads, max_lookahead;
} s_task_t;

/* snprintf for paths: -1 (and OUT empty, so that using it fails) when the
 * path does not fit. */
static int s_path(char *out, size_t outlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int s_path(char *out, size_t outlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, outlen, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= outlen) {
        out[0] = '\0';
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ output */

/* Protocol lines are written with one write(2) each (whole lines, however
 * the ticker thread and the main thread interleave) and without stdio,
 * which may need memory the limit no longer grants. */
static void s_say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void s_say(const char *fmt, ...)
{
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 2)
        n = (int)sizeof line - 2;
    for (int i = 0; i < n; i++)
        if (line[i] == '\n' || line[i] == '\r')
            line[i] = ' ';
    line[n++] = '\n';
    for (ssize_t off = 0; off < n;) {
        ssize_t w = write(STDOUT_FILENO, line + off, (size_t)(n - off));
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        off += w;
    }
}

static pthread_mutex_t s_ticker_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t s_ticker_wake;
static bool s_ticker_stop;

/* "progress N" every S_PROGRESS_MS until told to stop (at once: the
 * result line should not wait for a sleeping ticker). */
static void *s_ticker(void *arg)
{
    (void)arg;
    struct timespec at;
    clock_gettime(CLOCK_MONOTONIC, &at);
    pthread_mutex_lock(&s_ticker_lock);
    while (!s_ticker_stop) {
        s_say("progress %" PRIdFAST64, atomic_load(&s_frames));
        at.tv_nsec += S_PROGRESS_MS * 1000000L;
        if (at.tv_nsec >= 1000000000L) {
            at.tv_sec++;
            at.tv_nsec -= 1000000000L;
        }
        while (!s_ticker_stop &&
               pthread_cond_timedwait(&s_ticker_wake, &s_ticker_lock, &at) != ETIMEDOUT)
            ;
    }
    pthread_mutex_unlock(&s_ticker_lock);
    return NULL;
}

static bool s_ticker_start(pthread_t *thread)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&s_ticker_wake, &attr);
    pthread_condattr_destroy(&attr);
    return pthread_create(thread, NULL, s_ticker, NULL) == 0;
}

static void s_ticker_join(pthread_t thread)
{
    pthread_mutex_lock(&s_ticker_lock);
    s_ticker_stop = true;
    pthread_cond_signal(&s_ticker_wake);
    pthread_mutex_unlock(&s_ticker_lock);
    pthread_join(thread, NULL);
}

/* ------------------------------------------------------------ confinement */

static int s_parse_u64(const char *text, uint64_t *out)
{
    if (!strcmp(text, "unlimited")) {
        *out = CF_TASK_UNLIMITED;
        return 0;
    }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || *end || text[0] == '-')
        return -1;
    *out = v;
    return 0;
}

static int s_parse_args(int argc, char **argv, s_args_t *args, char *err, size_t errlen)
{
    *args = (s_args_t){CF_TASK_DEFAULT_ADDRESS_SPACE,
                       CF_TASK_DEFAULT_CPU_SECONDS,
                       CF_TASK_DEFAULT_OPEN_FILES,
                       CF_TASK_DEFAULT_FILE_BYTES,
                       false,
                       0};
    for (int i = 1; i < argc; i++) {
        const char *name = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t *slot = !strcmp(name, "--as")       ? &args->as
                         : !strcmp(name, "--cpu")    ? &args->cpu
                         : !strcmp(name, "--nofile") ? &args->nofile
                         : !strcmp(name, "--fsize")  ? &args->fsize
                                                     : NULL;
        if (!value) {
            snprintf(err, errlen, "%s: a value is needed", name);
            return -1;
        }
        i++;
        if (slot) {
            if (s_parse_u64(value, slot) < 0) {
                snprintf(err, errlen, "%s: not a number: %s", name, value);
                return -1;
            }
        } else if (!strcmp(name, "--net")) {
            if (strcmp(value, "share") && strcmp(value, "isolate")) {
                snprintf(err, errlen, "--net: share or isolate");
                return -1;
            }
            args->share_net = !strcmp(value, "share");
        } else if (!strcmp(name, "--parent")) {
            char *end;
            args->parent = strtol(value, &end, 10);
            if (*end || args->parent <= 0) {
                snprintf(err, errlen, "--parent: not a pid: %s", value);
                return -1;
            }
        } else {
            snprintf(err, errlen, "unknown option %s", name);
            return -1;
        }
    }
    return 0;
}

/* Every fd but 0, 1 and 2: the spawn closed them already, unless it could
 * not; a child started some other way must not keep the node's sockets. */
static void s_close_inherited(void)
{
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3U, ~0U, 0U) == 0)
        return;
#endif
    long max = sysconf(_SC_OPEN_MAX);
    for (long fd = 3; fd < (max > 0 && max < 65536 ? max : 65536); fd++)
        close((int)fd);
}

static int s_write_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, text, strlen(text));
    close(fd);
    return n == (ssize_t)strlen(text) ? 0 : -1;
}

/* A network namespace of its own: no interface but a loopback that is
 * down, so nothing can be reached. As root directly; as anyone else inside
 * a user namespace mapping only their own uid and gid (files it makes
 * still belong to them). */
static const char *s_isolate_network(void)
{
    if (unshare(CLONE_NEWNET) == 0)
        return "isolated";
    uid_t uid = getuid();
    gid_t gid = getgid();
    if (unshare(CLONE_NEWUSER | CLONE_NEWNET) < 0)
        return "shared (no namespace allowed)";
    char map[64];
    snprintf(map, sizeof map, "%u %u 1\n", (unsigned)uid, (unsigned)uid);
    if (s_write_file("/proc/self/uid_map", map) < 0)
        return "isolated (user namespace, uid unmapped)";
    s_write_file("/proc/self/setgroups", "deny");
    snprintf(map, sizeof map, "%u %u 1\n", (unsigned)gid, (unsigned)gid);
    s_write_file("/proc/self/gid_map", map);
    return "isolated (user namespace)";
}

/* Drops every capability (root's, or those a user namespace granted):
 * the ambient and bounding sets first, which needs CAP_SETPCAP, then the
 * effective, permitted and inheritable sets. */
static const char *s_drop_capabilities(void)
{
    struct __user_cap_header_struct head = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2] = {{0}};
    if (syscall(SYS_capget, &head, data) < 0)
        return "unknown";
    if (!data[0].permitted && !data[1].permitted)
        return "none";
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    for (int cap = 0; cap < 64; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno == EINVAL)
            break;
    memset(data, 0, sizeof data);
    return syscall(SYS_capset, &head, data) == 0 ? "dropped" : "kept (capset failed)";
}

static int s_limit(int resource, uint64_t soft, uint64_t hard)
{
    struct rlimit cur, want;
    if (getrlimit(resource, &cur) < 0)
        return -1;
    want.rlim_cur = soft == CF_TASK_UNLIMITED ? RLIM_INFINITY : (rlim_t)soft;
    want.rlim_max = hard == CF_TASK_UNLIMITED ? RLIM_INFINITY : (rlim_t)hard;
    /* Never above what we were given: an unprivileged process cannot. */
    if (cur.rlim_max != RLIM_INFINITY &&
        (want.rlim_max == RLIM_INFINITY || want.rlim_max > cur.rlim_max))
        want.rlim_max = cur.rlim_max;
    if (want.rlim_cur == RLIM_INFINITY || want.rlim_cur > want.rlim_max)
        want.rlim_cur = want.rlim_max;
    return setrlimit(resource, &want);
}

static void s_u64_text(char *out, size_t outlen, uint64_t v, int shift, const char *unit)
{
    if (v == CF_TASK_UNLIMITED)
        snprintf(out, outlen, "unlimited");
    else
        snprintf(out, outlen, "%" PRIu64 "%s", v >> shift, unit);
}

/* Async-signal-safe: "crash SIGNO VMBYTES" (the address space in use when
 * it died, so the parent can tell a runaway allocation from a bug), then
 * the signal again with its default action (SA_RESETHAND). */
static void s_on_crash(int sig)
{
    char buf[64], line[96];
    unsigned long long pages = 0;
    int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        for (ssize_t i = 0; i < n && buf[i] >= '0' && buf[i] <= '9'; i++)
            pages = pages * 10 + (unsigned long long)(buf[i] - '0');
    }
    unsigned long long values[2] = {(unsigned long long)sig,
                                    pages * (unsigned long long)s_page_size};
    size_t len = 0;
    memcpy(line, "crash ", 6);
    len = 6;
    for (int k = 0; k < 2; k++) {
        char digits[24];
        int d = 0;
        unsigned long long v = values[k];
        do {
            digits[d++] = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        while (d)
            line[len++] = digits[--d];
        line[len++] = k ? '\n' : ' ';
    }
    ssize_t ignored = write(STDOUT_FILENO, line, len);
    (void)ignored;
    raise(sig);
}

static void s_on_stop(int sig)
{
    (void)sig;
    atomic_store(&s_cancel, true);
}

static void s_signals(void)
{
    struct sigaction sa = {0};
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = s_on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL); /* the parent gone: writes fail, PDEATHSIG ends us */
    if (S_SANITIZED)
        return;
    static char alt[64 * 1024];
    stack_t ss = {.ss_sp = alt, .ss_size = sizeof alt};
    sigaltstack(&ss, NULL);
    sa.sa_handler = s_on_crash;
    sa.sa_flags = SA_RESETHAND | SA_ONSTACK;
    int crashes[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};
    for (size_t i = 0; i < sizeof crashes / sizeof crashes[0]; i++)
        sigaction(crashes[i], &sa, NULL);
}

/* Applies every restriction and says which held on a "sandbox" line. */
static void s_confine(const s_args_t *args)
{
    const char *net = args->share_net ? "shared (asked)" : s_isolate_network();
    const char *caps = s_drop_capabilities();
    bool nnp = prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0;
    s_limit(RLIMIT_CORE, 0, 0);
    s_limit(RLIMIT_NOFILE, args->nofile, args->nofile);
    s_limit(RLIMIT_FSIZE, args->fsize, args->fsize);
    s_limit(RLIMIT_CPU, args->cpu,
            args->cpu == CF_TASK_UNLIMITED ? CF_TASK_UNLIMITED : args->cpu + 5);
    char as[64], cpu[32];
    if (S_SANITIZED)
        snprintf(as, sizeof as, "unenforced (sanitizer)");
    else if (s_limit(RLIMIT_AS, args->as, args->as) < 0)
        snprintf(as, sizeof as, "unenforced (%s)", strerror(errno));
    else
        s_u64_text(as, sizeof as, args->as, 20, "MiB");
    s_u64_text(cpu, sizeof cpu, args->cpu, 0, "s");
    /* Each malloc arena reserves 64 MiB of address space; a few serve an
     * encoder's threads as well and keep the limit for real memory. */
    mallopt(M_ARENA_MAX, 4);
    s_say("sandbox net=%s caps=%s no_new_privs=%s as=%s cpu=%s nofile=%" PRIu64, net, caps,
          nnp ? "yes" : "no", as, cpu, args->nofile);
}

/* ------------------------------------------------------------ the task */

static char *s_read_stdin(size_t *len_p, char *err, size_t errlen)
{
    size_t cap = 64 * 1024, len = 0;
    char *text = malloc(cap + 1);
    while (text) {
        if (len == cap) {
            if (cap >= S_MAX_TASK_BYTES) {
                snprintf(err, errlen, "task: larger than %u MiB", S_MAX_TASK_BYTES >> 20);
                free(text);
                return NULL;
            }
            char *bigger = realloc(text, cap * 2 + 1);
            if (!bigger)
                break;
            text = bigger;
            cap *= 2;
        }
        ssize_t n = read(STDIN_FILENO, text + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errlen, "task: cannot read stdin: %s", strerror(errno));
            free(text);
            return NULL;
        }
        if (n == 0) {
            text[len] = '\0';
            *len_p = len;
            return text;
        }
        len += (size_t)n;
    }
    free(text);
    snprintf(err, errlen, "task: out of memory");
    return NULL;
}

static void s_task_clear(s_task_t *t)
{
    if (t->given && t->plan)
        for (int i = 0; i < t->plan->clip_count; i++)
            free(t->given[i]);
    free(t->given);
    cf_plan_destroy(&t->plan);
    free(t->blob_dir);
    free(t->scratch);
    free(t->pieces);
    memset(t, 0, sizeof *t);
}

/* An absolute path to an existing directory, copied. */
static int s_dir_field(json_t *root, const char *key, char **out, char *err, size_t errlen)
{
    const char *v = json_string_value(json_object_get(root, key));
    struct stat st;
    if (!v || v[0] != '/' || strlen(v) > 2048) {
        snprintf(err, errlen, "task.%s: an absolute path is needed", key);
        return -1;
    }
    if (stat(v, &st) < 0 || !S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "task.%s: not a directory", key);
        return -1;
    }
    if (!(*out = strdup(v))) {
        snprintf(err, errlen, "task: out of memory");
        return -1;
    }
    return 0;
}

static int s_int_field(json_t *root, const char *key, bool required, long long lo, long long hi,
                       long long *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(root, key);
    if (!v && !required)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        snprintf(err, errlen, "task.%s: an integer from %lld to %lld is needed", key, lo, hi);
        return -1;
    }
    *out = json_integer_value(v);
    return 0;
}

static int s_piece_field(json_t *v, const char *what, cf_render_piece_t *piece, char *err,
                         size_t errlen)
{
    json_t *blob = json_object_get(v, "blob"), *bytes = json_object_get(v, "bytes"),
           *frames = json_object_get(v, "frames");
    const char *hex = json_string_value(blob);
    memset(piece, 0, sizeof *piece);
    if (!json_is_object(v) || !hex || strlen(hex) != CF_BLOB_HEX_SIZE - 1 ||
        cf_blob_parse_ref(hex, piece->blob) < 0 || !json_is_integer(bytes) ||
        json_integer_value(bytes) < 0 ||
        (frames && (!json_is_integer(frames) || json_integer_value(frames) < 0))) {
        snprintf(err, errlen, "task.%s: {\"blob\": HEX, \"bytes\": N, \"frames\": N} is needed",
                 what);
        return -1;
    }
    piece->bytes = (uint64_t)json_integer_value(bytes);
    piece->frames = frames ? json_integer_value(frames) : 0;
    return 0;
}

/* Checks everything in ROOT and fills T. Returns 0 or -1 with a reason. */
static int s_task_parse(json_t *root, s_task_t *t, char *err, size_t errlen)
{
    static const char *const kinds[] = {"segment", "audio", "assemble"};
    memset(t, 0, sizeof *t);
    t->segment = -1;
    if (!json_is_object(root)) {
        snprintf(err, errlen, "task: a JSON object is needed");
        return -1;
    }
    const char *kind = json_string_value(json_object_get(root, "kind"));
    int k = 0;
    while (kind && k < 3 && strcmp(kind, kinds[k]))
        k++;
    if (!kind || k == 3) {
        snprintf(err, errlen, "task.kind: segment, audio or assemble");
        return -1;
    }
    t->kind = (cf_task_kind_t)k;
    json_t *jplan = json_object_get(root, "plan");
    char *plan_text = json_is_object(jplan) ? json_dumps(jplan, JSON_COMPACT) : NULL;
    char why[512];
    if (!plan_text) {
        snprintf(err, errlen, "task.plan: a plan object is needed");
        return -1;
    }
    t->plan = cf_plan_from_json(plan_text, strlen(plan_text), why, sizeof why);
    free(plan_text);
    if (!t->plan) {
        snprintf(err, errlen, "task.plan: %s", why);
        return -1;
    }
    const cf_plan_t *plan = t->plan;
    if (!(t->given = calloc((size_t)plan->clip_count + 1, sizeof *t->given))) {
        snprintf(err, errlen, "task: out of memory");
        return -1;
    }
    json_t *given = json_object_get(root, "given");
    if (given && (!json_is_array(given) || json_array_size(given) != (size_t)plan->clip_count)) {
        snprintf(err, errlen, "task.given: one entry per clip is needed");
        return -1;
    }
    for (int i = 0; given && i < plan->clip_count; i++) {
        json_t *g = json_array_get(given, (size_t)i);
        if (!json_is_null(g) && !json_is_string(g)) {
            snprintf(err, errlen, "task.given[%d]: a string or null is needed", i);
            return -1;
        }
        if (json_is_string(g) && !(t->given[i] = strdup(json_string_value(g)))) {
            snprintf(err, errlen, "task: out of memory");
            return -1;
        }
    }
    long long v = 0;
    if (s_dir_field(root, "blob_dir", &t->blob_dir, err, errlen) < 0 ||
        s_dir_field(root, "scratch", &t->scratch, err, errlen) < 0)
        return -1;
    if (s_int_field(root, "threads", false, 0, 256, &v, err, errlen) < 0)
        return -1;
    t->threads = (int)v;
    v = 0;
    if (s_int_field(root, "max_lookahead", false, -1, 1000, &v, err, errlen) < 0)
        return -1;
    t->max_lookahead = (int)v;
    if (t->kind == CF_TASK_SEGMENT) {
        if (s_int_field(root, "segment", true, 0, plan->segment_count - 1, &v, err, errlen) < 0)
            return -1;
        t->segment = (int)v;
    }
    if (t->kind == CF_TASK_ASSEMBLE) {
        json_t *pieces = json_object_get(root, "pieces");
        if (!json_is_array(pieces) || json_array_size(pieces) != (size_t)plan->segment_count) {
            snprintf(err, errlen, "task.pieces: one piece per segment (%d) is needed",
                     plan->segment_count);
            return -1;
        }
        if (!(t->pieces = calloc((size_t)plan->segment_count + 1, sizeof *t->pieces))) {
            snprintf(err, errlen, "task: out of memory");
            return -1;
        }
        for (int s = 0; s < plan->segment_count; s++) {
            char what[32];
            snprintf(what, sizeof what, "pieces[%d]", s);
            if (s_piece_field(json_array_get(pieces, (size_t)s), what, &t->pieces[s], err, errlen) <
                0)
                return -1;
        }
        if (s_piece_field(json_object_get(root, "audio"), "audio", &t->audio, err, errlen) < 0)
            return -1;
    }
    /* The node fetched every source the task uses: local files only. */
    for (int i = 0; i < plan->clip_count; i++) {
        bool used = t->kind == CF_TASK_AUDIO && plan->clips[i].has_audio;
        for (int p = 0; t->kind == CF_TASK_SEGMENT && p < plan->segments[t->segment].part_count;
             p++)
            used = used || plan->segments[t->segment].parts[p].clip == i;
        if (used && strncmp(plan->clips[i].source, "file:///", 8)) {
            snprintf(err, errlen, "clips[%d].source: not a local file (the node fetches it)", i);
            return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------ errors */

static void s_replace_all(char *text, size_t cap, const char *from, const char *to)
{
    size_t from_len = strlen(from), to_len = strlen(to);
    if (!from_len || !cap || to_len >= cap)
        return;
    for (char *hit = strstr(text, from); hit; hit = strstr(hit + to_len, from)) {
        size_t head = (size_t)(hit - text), tail = strlen(hit + from_len);
        if (head + to_len + tail >= cap)
            tail = cap - 1 - head - to_len;
        memmove(hit + to_len, hit + from_len, tail);
        memcpy(hit, to, to_len);
        text[head + to_len + tail] = '\0';
    }
}

/* Errors name sources as the composition gave them and never the node's
 * directories: a client reads them. */
static void s_scrub(const s_task_t *t, char *err, size_t errlen)
{
    for (int i = 0; t->plan && t->given && i < t->plan->clip_count; i++) {
        if (!t->given[i])
            continue;
        const char *url = t->plan->clips[i].source;
        char path[4096];
        s_replace_all(err, errlen, url, t->given[i]);
        if (!strncmp(url, "file://", 7) && cf_source_decode_file_url(url, path, sizeof path) == 0)
            s_replace_all(err, errlen, path, t->given[i]);
    }
    if (t->scratch)
        s_replace_all(err, errlen, t->scratch, "<scratch>");
    if (t->blob_dir)
        s_replace_all(err, errlen, t->blob_dir, "<blobs>");
}

/* ------------------------------------------------------------ stages */

/* Moves the blob HEX of the scratch store into the node's store at
 * BLOB_DIR: a rename on one file system (the blob appears whole or not at
 * all), else a copy to BLOB_DIR/tmp/task-PID-HEX, flushed, then renamed. */
static int s_publish(cf_blob_store_t *mine, const char *hex, const char *blob_dir, char *err,
                     size_t errlen)
{
    char from[4096], rel[160], to[4096], dir[4096], tmp[4096];
    if (cf_blob_path(mine, hex, from, sizeof from, err, errlen) < 0 ||
        cf_blob_relpath(hex, rel, sizeof rel) < 0)
        return -1;
    s_path(to, sizeof to, "%s/%s", blob_dir, rel);
    s_path(dir, sizeof dir, "%s/%.2s", blob_dir, hex);
    if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create a blob directory: %s", strerror(errno));
        return -1;
    }
    if (rename(from, to) == 0)
        return 0;
    if (errno != EXDEV) {
        snprintf(err, errlen, "cannot store the result: %s", strerror(errno));
        return -1;
    }
    s_path(tmp, sizeof tmp, "%s/tmp/task-%d-%s", blob_dir, (int)getpid(), hex);
    int in = open(from, O_RDONLY | O_CLOEXEC);
    int out = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    int rc = in >= 0 && out >= 0 ? 0 : -1;
    char buf[64 * 1024];
    for (ssize_t n; rc == 0 && (n = read(in, buf, sizeof buf)) != 0;) {
        if (n < 0 && errno == EINTR)
            continue;
        rc = n > 0 && write(out, buf, (size_t)n) == n ? 0 : -1;
    }
    if (rc == 0 && (fsync(out) < 0 || rename(tmp, to) < 0))
        rc = -1;
    if (rc < 0) {
        snprintf(err, errlen, "cannot store the result: %s", strerror(errno));
        unlink(tmp);
    }
    if (in >= 0)
        close(in);
    if (out >= 0)
        close(out);
    return rc;
}

/* A store in the scratch directory holding links to the pieces in the
 * node's store, for cf_render_assemble to read (opening the node's own
 * store would empty its tmp directory). */
static cf_blob_store_t *s_pieces_store(const s_task_t *t, char *err, size_t errlen)
{
    char dir[4096];
    s_path(dir, sizeof dir, "%s/in", t->scratch);
    cf_blob_store_t *store = cf_blob_store_new(dir, err, errlen);
    for (int s = 0; store && s <= t->plan->segment_count; s++) {
        const cf_render_piece_t *piece = s < t->plan->segment_count ? &t->pieces[s] : &t->audio;
        char rel[160], target[4096], link_path[4096], sub[4096];
        cf_blob_relpath(piece->blob, rel, sizeof rel);
        s_path(target, sizeof target, "%s/%s", t->blob_dir, rel);
        s_path(sub, sizeof sub, "%s/%.2s", dir, piece->blob);
        s_path(link_path, sizeof link_path, "%s/%s", dir, rel);
        if ((mkdir(sub, 0700) < 0 && errno != EEXIST) ||
            (symlink(target, link_path) < 0 && errno != EEXIST)) {
            snprintf(err, errlen, "cannot link the pieces: %s", strerror(errno));
            cf_blob_store_destroy(&store);
        }
    }
    return store;
}

static int s_run(const s_task_t *t, cf_render_piece_t *piece, char *err, size_t errlen)
{
    int rc = -1;
    char dir[4096];
    cf_render_job_t *job = NULL;
    cf_blob_store_t *mine = NULL, *pieces = NULL;
    cf_plan_t *plan = NULL;
    cf_media_ctl_t ctl = {.frames_done = &s_frames,
                          .cancel = &s_cancel,
                          .threads = t->threads,
                          .max_lookahead = t->max_lookahead};
    cf_render_opts_t opts = {.work_parent = t->scratch, .cancel = &s_cancel, .jobs = 1};
    s_path(dir, sizeof dir, "%s/blobs", t->scratch);
    if (!(mine = cf_blob_store_new(dir, err, errlen)))
        goto end;
    if (t->kind == CF_TASK_ASSEMBLE) {
        if (!(pieces = s_pieces_store(t, err, errlen)))
            goto end;
        if (cf_render_assemble(t->plan, pieces, t->pieces, &t->audio, &ctl, NULL, mine, piece, err,
                               errlen) < 0)
            goto end;
    } else {
        /* The job takes a plan of its own; T's stays for the errors. */
        char *text = cf_plan_to_json(t->plan);
        plan = text ? cf_plan_from_json(text, strlen(text), err, errlen) : NULL;
        free(text);
        if (!plan) {
            snprintf(err, errlen, "task: out of memory");
            goto end;
        }
        bool audio = t->kind == CF_TASK_AUDIO;
        job = cf_render_job_for_plan(&plan, &t->segment, audio ? 0 : 1, audio, &opts, err, errlen);
        if (!job)
            goto end;
        if ((audio ? cf_render_encode_audio(job, mine, &ctl, piece, err, errlen)
                   : cf_render_encode_segment(job, t->segment, mine, &ctl, piece, err, errlen)) < 0)
            goto end;
    }
    if (s_publish(mine, piece->blob, t->blob_dir, err, errlen) < 0)
        goto end;
    rc = 0;
end:
    cf_render_job_destroy(&job);
    cf_plan_destroy(&plan);
    cf_blob_store_destroy(&pieces);
    cf_blob_store_destroy(&mine);
    return rc;
}

int cf_task_child_main(int argc, char **argv)
{
    s_args_t args;
    char err[1024] = "";
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("clipfarm task: internal; runs one render stage for a node (a task on stdin)\n");
        return 0;
    }
    if (s_parse_args(argc, argv, &args, err, sizeof err) < 0) {
        s_say("error task: %s", err);
        return 2;
    }
    /* Die with the parent; if it is already gone, do nothing at all. */
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (args.parent && getppid() != (pid_t)args.parent)
        return 1;
    s_page_size = sysconf(_SC_PAGESIZE);
    s_close_inherited();
    s_signals();
    s_confine(&args);
    cf_log_configure(CF_LOG_WARN, false);

    s_task_t task = {0};
    cf_render_piece_t piece = {0};
    int rc = 1;
    pthread_t ticker;
    bool ticking = false;
    size_t len = 0;
    char *text = s_read_stdin(&len, err, sizeof err);
    json_error_t jerr;
    if (!text)
        goto end;
    json_t *root = cf_json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root) {
        snprintf(err, sizeof err, "task: not JSON (%s at %d:%d)", jerr.text, jerr.line,
                 jerr.column);
        goto end;
    }
    int parsed = s_task_parse(root, &task, err, sizeof err);
    json_decref(root);
    if (parsed < 0)
        goto end;
    ticking = s_ticker_start(&ticker);
    if (s_run(&task, &piece, err, sizeof err) < 0)
        goto end;
    rc = 0;
end:
    if (ticking)
        s_ticker_join(ticker);
    if (rc == 0) {
        s_say("done %s %" PRIu64 " %" PRId64 " %.3f", piece.blob, piece.bytes, piece.frames,
              piece.seconds);
    } else {
        s_scrub(&task, err, sizeof err);
        if (atomic_load(&s_cancel))
            s_say("error cancelled");
        else
            s_say("error %s", err[0] ? err : "failed");
    }
    s_task_clear(&task);
    return rc;
}
