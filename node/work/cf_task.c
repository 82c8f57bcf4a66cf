/* cf_task, the parent's side: writes the task, starts the child, reads its
 * lines and turns its end (result line, exit status, signal) into one final
 * event. The child's side is cf_task_child.c.
 *
 * The task JSON (untrusted by the child, which checks every field):
 *   {"kind": "segment" | "audio" | "assemble",
 *    "plan": {...cf_plan_to_json, the task's sources as file:// URLs...},
 *    "given": [SOURCE | null, ...],   one per clip: what errors call it
 *    "segment": N,                    segment tasks
 *    "pieces": [{"blob": HEX, "bytes": N, "frames": N}, ...],  assemble
 *    "audio": {"blob": HEX, "bytes": N, "frames": N},          assemble
 *    "blob_dir": "/abs", "scratch": "/abs",
 *    "threads": N, "max_lookahead": N} */
#define _GNU_SOURCE
#include "cf_task.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cf_blob.h"
#include "cf_log.h"
#include "cf_workspace.h"

extern char **environ;

#define S_LINE_MAX      4096
#define S_LOG_LINES     50   /* of a child's own lines, passed on to the node's log */
#define S_EXIT_GRACE_MS 2000 /* after its result line or EOF, a child has this long to exit */

struct cf_task_t {
    pid_t pid;
    int out_fd;   /* the child's stdout and stderr */
    int pid_fd;   /* pidfd: readable once the child exits (-1: not supported) */
    int epoll_fd; /* both: what cf_task_fd hands out */
    char *scratch, *blob_dir;
    cf_task_limits_t limits;
    int64_t expected_frames; /* -1: unknown */
    char buf[S_LINE_MAX + 1];
    size_t len;
    bool overlong; /* dropping the rest of a line too long to keep */
    bool eof, finished, cancel_sent, kill_sent;
    bool saw_oom;                /* a line said an allocation failed */
    int64_t stall_ms;            /* a segment's watchdog (0: none) */
    int64_t stall_since_ms;      /* when the frame count last moved */
    bool stalled;                /* killed by the watchdog */
    int64_t kill_at_ms;          /* cancel: SIGKILL at this time (0: none) */
    int64_t exit_by_ms;          /* result seen or EOF: SIGKILL if still alive then (0: none) */
    int64_t progress;            /* latest count */
    bool progress_new;           /* not yet returned */
    char result[S_LINE_MAX + 1]; /* the done/error line ("" until one came) */
    char crash[128];             /* "SIGNO VMBYTES" from the child's crash handler */
    char sandbox[256];
    int log_lines;       /* lines that were not protocol, passed to the node's log */
    char sanitizer[256]; /* the first "...Sanitizer: ..." report line (test builds) */
};

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

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t cf_task_address_space_for(int64_t memory_budget)
{
    uint64_t as = memory_budget > 0 ? (uint64_t)memory_budget + (1ULL << 30) : 0;
    return as > CF_TASK_DEFAULT_ADDRESS_SPACE ? as : CF_TASK_DEFAULT_ADDRESS_SPACE;
}

/* Words libc, libav and the encoders use when an allocation fails
 * ("Cannot allocate memory", "x264 [error]: malloc of size 74304 failed"). */
static bool s_mentions_oom(const char *text)
{
    return strcasestr(text, "cannot allocate memory") || strcasestr(text, "out of memory") ||
           strstr(text, "ENOMEM") || strstr(text, "bad_alloc") ||
           (strcasestr(text, "alloc") && strcasestr(text, "fail"));
}

static cf_task_limits_t s_limits(const cf_task_limits_t *given)
{
    cf_task_limits_t l = given ? *given : (cf_task_limits_t){0};
    if (!l.address_space_bytes)
        l.address_space_bytes = CF_TASK_DEFAULT_ADDRESS_SPACE;
    if (!l.cpu_seconds)
        l.cpu_seconds = CF_TASK_DEFAULT_CPU_SECONDS;
    if (!l.open_files)
        l.open_files = CF_TASK_DEFAULT_OPEN_FILES;
    if (!l.file_bytes)
        l.file_bytes = CF_TASK_DEFAULT_FILE_BYTES;
    if (l.grace_ms <= 0)
        l.grace_ms = CF_TASK_DEFAULT_GRACE_MS;
    if (!l.stall_seconds)
        l.stall_seconds = CF_TASK_DEFAULT_STALL_SECONDS;
    return l;
}

/* ------------------------------------------------------------ task JSON */

static const char *const s_kinds[] = {"segment", "audio", "assemble"};

/* "file://" + PATH with '%' escaped (cf_fetch decodes %-escapes). */
static char *s_file_url(const char *path)
{
    size_t n = strlen(path), extra = 0;
    for (size_t i = 0; i < n; i++)
        extra += path[i] == '%' ? 2 : 0;
    char *url = malloc(7 + n + extra + 1), *o = url;
    if (!url)
        return NULL;
    memcpy(o, "file://", 7);
    o += 7;
    for (size_t i = 0; i < n; i++) {
        if (path[i] == '%') {
            memcpy(o, "%25", 3);
            o += 3;
        } else {
            *o++ = path[i];
        }
    }
    *o = '\0';
    return url;
}

static json_t *s_piece_json(const cf_render_piece_t *piece)
{
    return json_pack("{s:s, s:I, s:I}", "blob", piece->blob, "bytes", (json_int_t)piece->bytes,
                     "frames", (json_int_t)piece->frames);
}

char *cf_task_spec_to_json(const cf_task_spec_t *spec, const char *scratch, char *err,
                           size_t errlen)
{
    const cf_plan_t *plan = spec->plan;
    char *text = NULL, *plan_text = NULL;
    json_t *root = NULL, *given = NULL;
    cf_plan_t local = {0};
    char **urls = NULL;
    if (!plan || !spec->blob_dir || !scratch || (unsigned)spec->kind > CF_TASK_ASSEMBLE) {
        snprintf(err, errlen, "task: a plan, a blob directory and a scratch directory are needed");
        return NULL;
    }
    if (spec->kind == CF_TASK_ASSEMBLE && (!spec->pieces || !spec->audio)) {
        snprintf(err, errlen, "task: an assembly needs its pieces and audio");
        return NULL;
    }
    /* A shallow copy of the plan whose clips name the local files. */
    local = *plan;
    local.clips = calloc((size_t)plan->clip_count + 1, sizeof *local.clips);
    urls = calloc((size_t)plan->clip_count + 1, sizeof *urls);
    given = json_array();
    if (!local.clips || !urls || !given)
        goto oom;
    for (int i = 0; i < plan->clip_count; i++) {
        local.clips[i] = plan->clips[i];
        const char *path = spec->local_paths ? spec->local_paths[i] : NULL;
        if (path) {
            if (!(urls[i] = s_file_url(path)))
                goto oom;
            local.clips[i].source = urls[i];
        }
        if (json_array_append_new(given, path ? json_string(plan->clips[i].source) : json_null()) <
            0)
            goto oom;
    }
    json_error_t jerr;
    if (!(plan_text = cf_plan_to_json(&local)) || !(root = json_object()))
        goto oom;
    int set = json_object_set_new(root, "given", given); /* takes GIVEN either way */
    given = NULL;
    if (set < 0 || json_object_set_new(root, "kind", json_string(s_kinds[spec->kind])) < 0 ||
        json_object_set_new(root, "plan", json_loads(plan_text, 0, &jerr)) < 0 ||
        json_object_set_new(root, "blob_dir", json_string(spec->blob_dir)) < 0 ||
        json_object_set_new(root, "scratch", json_string(scratch)) < 0 ||
        json_object_set_new(root, "threads", json_integer(spec->threads)) < 0 ||
        json_object_set_new(root, "max_lookahead", json_integer(spec->max_lookahead)) < 0)
        goto oom;
    if (spec->kind == CF_TASK_SEGMENT &&
        json_object_set_new(root, "segment", json_integer(spec->segment)) < 0)
        goto oom;
    if (spec->kind == CF_TASK_ASSEMBLE) {
        json_t *pieces = json_array();
        if (json_object_set_new(root, "pieces", pieces) < 0 ||
            json_object_set_new(root, "audio", s_piece_json(spec->audio)) < 0)
            goto oom;
        for (int s = 0; s < plan->segment_count; s++)
            if (json_array_append_new(pieces, s_piece_json(&spec->pieces[s])) < 0)
                goto oom;
    }
    if (!(text = json_dumps(root, JSON_COMPACT)))
        goto oom;
    goto end;
oom:
    snprintf(err, errlen, "task: out of memory");
end:
    for (int i = 0; urls && i < plan->clip_count; i++)
        free(urls[i]);
    free(urls);
    free(local.clips);
    free(plan_text);
    json_decref(given);
    json_decref(root);
    return text;
}

/* ------------------------------------------------------------ spawning */

/* The child's environment: only what libc, libav and the sanitizers read.
 * The node's own settings (CF_*: database and Redis URLs, the cluster
 * secret's file, S3 credentials in AWS_*) stay with the node. */
static bool s_env_passed(const char *entry)
{
    static const char *const names[] = {"PATH=",
                                        "LANG=",
                                        "LANGUAGE=",
                                        "TZ=",
                                        "ASAN_OPTIONS=",
                                        "UBSAN_OPTIONS=",
                                        "LSAN_OPTIONS=",
                                        "TSAN_OPTIONS=",
                                        "LD_LIBRARY_PATH=",
                                        NULL};
    if (!strncmp(entry, "LC_", 3))
        return true;
    for (const char *const *n = names; *n; n++)
        if (!strncmp(entry, *n, strlen(*n)))
            return true;
    return false;
}

static char **s_child_env(void)
{
    size_t n = 0;
    for (char **e = environ; e && *e; e++)
        n++;
    char **env = calloc(n + 1, sizeof *env);
    if (!env)
        return NULL;
    size_t k = 0;
    for (char **e = environ; e && *e; e++)
        if (s_env_passed(*e))
            env[k++] = *e;
    return env;
}

static void s_u64(char *out, size_t outlen, uint64_t v)
{
    if (v == CF_TASK_UNLIMITED)
        snprintf(out, outlen, "unlimited");
    else
        snprintf(out, outlen, "%" PRIu64, v);
}

/* Removes what a child may have left: BLOB_DIR/tmp/task-PID-* (its copy of a
 * result on its way into a store on another file system) and SCRATCH. */
static void s_remove_leftovers(cf_task_t *task, pid_t pid)
{
    if (task->scratch && cf_workspace_rmtree(task->scratch) < 0 && errno != ENOENT)
        cf_log_warn("task", "cannot remove %s: %s", task->scratch, strerror(errno));
    if (!task->blob_dir || pid <= 0)
        return;
    char tmp[4096], prefix[64];
    s_path(tmp, sizeof tmp, "%s/tmp", task->blob_dir);
    int n = snprintf(prefix, sizeof prefix, "task-%d-", (int)pid);
    DIR *d = opendir(tmp);
    for (struct dirent *e; d && (e = readdir(d));)
        if (!strncmp(e->d_name, prefix, (size_t)n))
            unlinkat(dirfd(d), e->d_name, 0);
    if (d)
        closedir(d);
}

static void s_task_free(cf_task_t *task)
{
    if (task->out_fd >= 0)
        close(task->out_fd);
    if (task->pid_fd >= 0)
        close(task->pid_fd);
    if (task->epoll_fd >= 0)
        close(task->epoll_fd);
    free(task->scratch);
    free(task->blob_dir);
    free(task);
}

cf_task_t *cf_task_start_json(const char *binary, const char *task_json, const char *scratch,
                              const char *blob_dir, const cf_task_limits_t *limits, char *err,
                              size_t errlen)
{
    cf_task_t *task = calloc(1, sizeof *task);
    char **env = s_child_env();
    int pipe_fds[2] = {-1, -1}, in_fd = -1, rc = -1;
    char in_path[4096] = "";
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    bool actions_made = false, attr_made = false;
    if (!task || !env) {
        snprintf(err, errlen, "task: out of memory");
        goto end;
    }
    task->out_fd = task->pid_fd = task->epoll_fd = -1;
    task->expected_frames = -1;
    task->limits = s_limits(limits);
    task->stall_since_ms = s_now_ms();
    if ((scratch && !(task->scratch = strdup(scratch))) ||
        (blob_dir && !(task->blob_dir = strdup(blob_dir)))) {
        snprintf(err, errlen, "task: out of memory");
        goto end;
    }
    if (!binary)
        binary = "/proc/self/exe";

    /* The task goes to the child's stdin from a file: writing it cannot
     * block the caller or raise SIGPIPE, whatever its size. The file is
     * unlinked at once; the open descriptor is what the child reads. */
    char dir_buf[4096];
    const char *dir = scratch;
    if (!dir) {
        const char *t = getenv("TMPDIR");
        s_path(dir_buf, sizeof dir_buf, "%s", t && *t ? t : "/tmp");
        dir = dir_buf;
    }
    s_path(in_path, sizeof in_path, "%s/task-XXXXXX.json", dir);
    in_fd = mkostemps(in_path, 5, O_CLOEXEC);
    if (in_fd < 0) {
        snprintf(err, errlen, "task: cannot write the task file: %s", strerror(errno));
        in_path[0] = '\0';
        goto end;
    }
    unlink(in_path);
    size_t len = strlen(task_json);
    for (size_t off = 0; off < len;) {
        ssize_t w = write(in_fd, task_json + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            snprintf(err, errlen, "task: cannot write the task file: %s", strerror(errno));
            goto end;
        }
        off += (size_t)w;
    }
    if (lseek(in_fd, 0, SEEK_SET) < 0 || pipe2(pipe_fds, O_CLOEXEC) < 0) {
        snprintf(err, errlen, "task: %s", strerror(errno));
        goto end;
    }

    char as[32], cpu[32], nofile[32], fsize[32], parent[32];
    s_u64(as, sizeof as, task->limits.address_space_bytes);
    s_u64(cpu, sizeof cpu, task->limits.cpu_seconds);
    s_u64(nofile, sizeof nofile, task->limits.open_files);
    s_u64(fsize, sizeof fsize, task->limits.file_bytes);
    snprintf(parent, sizeof parent, "%d", (int)getpid());
    char *argv[] = {
        (char *)binary, "task", "--as",     as,
        "--cpu",        cpu,    "--nofile", nofile,
        "--fsize",      fsize,  "--net",    task->limits.share_network ? "share" : "isolate",
        "--parent",     parent, NULL};

    if ((rc = posix_spawn_file_actions_init(&actions)) != 0)
        goto spawn_failed;
    actions_made = true;
    if ((rc = posix_spawnattr_init(&attr)) != 0)
        goto spawn_failed;
    attr_made = true;
    /* stdin the task, stdout and stderr the pipe, nothing else: the node's
     * sockets, database connections and files stay in the node. */
    if ((rc = posix_spawn_file_actions_adddup2(&actions, in_fd, 0)) != 0 ||
        (rc = posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 1)) != 0 ||
        (rc = posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 2)) != 0 ||
        (rc = posix_spawn_file_actions_addclosefrom_np(&actions, 3)) != 0)
        goto spawn_failed;
    /* Default dispositions (the node ignores SIGPIPE, which exec would keep)
     * and an empty mask; its own process group. */
    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    if ((rc = posix_spawnattr_setsigdefault(&attr, &all)) != 0 ||
        (rc = posix_spawnattr_setsigmask(&attr, &none)) != 0 ||
        (rc = posix_spawnattr_setpgroup(&attr, 0)) != 0 ||
        (rc = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK |
                                                  POSIX_SPAWN_SETPGROUP)) != 0)
        goto spawn_failed;
    pid_t pid;
    if ((rc = posix_spawn(&pid, binary, &actions, &attr, argv, env)) != 0)
        goto spawn_failed;
    task->pid = pid;
    close(pipe_fds[1]);
    pipe_fds[1] = -1;
    task->out_fd = pipe_fds[0];
    pipe_fds[0] = -1;
    fcntl(task->out_fd, F_SETFL, fcntl(task->out_fd, F_GETFL) | O_NONBLOCK);
#ifdef SYS_pidfd_open
    task->pid_fd = (int)syscall(SYS_pidfd_open, pid, 0);
#endif
    task->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN};
    if (task->epoll_fd >= 0) {
        ev.data.fd = task->out_fd;
        epoll_ctl(task->epoll_fd, EPOLL_CTL_ADD, task->out_fd, &ev);
        if (task->pid_fd >= 0) {
            ev.data.fd = task->pid_fd;
            epoll_ctl(task->epoll_fd, EPOLL_CTL_ADD, task->pid_fd, &ev);
        }
    }
    rc = 0;
    goto end;
spawn_failed:
    snprintf(err, errlen, "task: cannot start %s: %s", binary, strerror(rc));
    rc = -1;
end:
    if (actions_made)
        posix_spawn_file_actions_destroy(&actions);
    if (attr_made)
        posix_spawnattr_destroy(&attr);
    if (in_fd >= 0)
        close(in_fd);
    if (pipe_fds[0] >= 0)
        close(pipe_fds[0]);
    if (pipe_fds[1] >= 0)
        close(pipe_fds[1]);
    free(env);
    if (rc < 0 && task) {
        s_remove_leftovers(task, 0);
        s_task_free(task);
        task = NULL;
    }
    return task;
}

cf_task_t *cf_task_start(const char *binary, const cf_task_spec_t *spec,
                         const cf_task_limits_t *limits, char *err, size_t errlen)
{
    const char *parent = spec->work_parent;
    if (!parent || !*parent)
        parent = getenv("TMPDIR");
    char scratch[4096];
    s_path(scratch, sizeof scratch, "%s/clipfarm-task.XXXXXX", parent && *parent ? parent : "/tmp");
    if (!mkdtemp(scratch)) {
        snprintf(err, errlen, "task: cannot create a scratch directory: %s", strerror(errno));
        return NULL;
    }
    char *json = cf_task_spec_to_json(spec, scratch, err, errlen);
    cf_task_t *task =
        json ? cf_task_start_json(binary, json, scratch, spec->blob_dir, limits, err, errlen)
             : NULL;
    free(json);
    if (!task) {
        cf_workspace_rmtree(scratch);
        return NULL;
    }
    const cf_plan_t *plan = spec->plan;
    if (spec->kind == CF_TASK_SEGMENT && spec->segment >= 0 &&
        spec->segment < plan->segment_count) {
        task->expected_frames = plan->segments[spec->segment].frames;
        if (task->limits.stall_seconds > 0)
            task->stall_ms = (int64_t)task->limits.stall_seconds * 1000;
    } else if (spec->kind == CF_TASK_AUDIO)
        task->expected_frames = plan->total_samples;
    else if (spec->kind == CF_TASK_ASSEMBLE)
        task->expected_frames = plan->total_frames;
    return task;
}

/* ------------------------------------------------------------ reading */

int cf_task_fd(const cf_task_t *task)
{
    return task->epoll_fd >= 0 ? task->epoll_fd : task->out_fd;
}

pid_t cf_task_pid(const cf_task_t *task)
{
    return task->finished ? 0 : task->pid;
}

const char *cf_task_sandbox(const cf_task_t *task)
{
    return task->sandbox;
}

bool cf_task_finished(const cf_task_t *task)
{
    return task->finished;
}

int cf_task_timeout_ms(const cf_task_t *task)
{
    if (task->finished)
        return -1;
    int64_t at = 0;
    if (task->kill_at_ms && !task->kill_sent)
        at = task->kill_at_ms;
    if (task->exit_by_ms && (!at || task->exit_by_ms < at))
        at = task->exit_by_ms;
    int64_t stall_at = task->stall_ms ? task->stall_since_ms + task->stall_ms : 0;
    if (stall_at && (!at || stall_at < at))
        at = stall_at;
    /* Without a pidfd nothing tells the caller the child has exited. */
    if (task->pid_fd < 0 && task->eof)
        return 10;
    if (!at)
        return -1;
    int64_t left = at - s_now_ms();
    return left < 0 ? 0 : left > 60000 ? 60000 : (int)left;
}

void cf_task_cancel(cf_task_t *task)
{
    if (!task || task->finished || task->cancel_sent)
        return;
    task->cancel_sent = true;
    kill(task->pid, SIGTERM);
    task->kill_at_ms = s_now_ms() + task->limits.grace_ms;
}

static void s_kill(cf_task_t *task)
{
    if (!task->kill_sent) {
        kill(task->pid, SIGKILL);
        task->kill_sent = true;
    }
}

/* One line from the child (NUL-terminated, no newline). */
static void s_line(cf_task_t *task, char *line)
{
    if (!strncmp(line, "progress ", 9)) {
        char *end;
        long long frames = strtoll(line + 9, &end, 10);
        if (end != line + 9 && !*end && frames >= 0) {
            if (frames > task->progress)
                task->stall_since_ms = s_now_ms();
            task->progress = frames;
            task->progress_new = true;
        }
        return;
    }
    if ((!strncmp(line, "done ", 5) || !strncmp(line, "error ", 6)) && !task->result[0]) {
        snprintf(task->result, sizeof task->result, "%s", line);
        task->exit_by_ms = s_now_ms() + S_EXIT_GRACE_MS;
        return;
    }
    if (!strncmp(line, "crash ", 6)) {
        snprintf(task->crash, sizeof task->crash, "%s", line + 6);
        return;
    }
    if (!strncmp(line, "sandbox ", 8) && !task->sandbox[0]) {
        snprintf(task->sandbox, sizeof task->sandbox, "%s", line + 8);
        return;
    }
    /* Anything else is the child's log (warnings and errors) or a library
     * talking: the node's log gets it (operators only: it may name local
     * paths), up to a limit, so a noisy decoder cannot flood it. */
    task->saw_oom = task->saw_oom || s_mentions_oom(line);
    const char *report = strstr(line, "Sanitizer: ");
    if (report && !task->sanitizer[0]) {
        while (report > line && report[-1] != ' ' && report[-1] != '=')
            report--;
        snprintf(task->sanitizer, sizeof task->sanitizer, "%s", report);
    }
    if (task->log_lines < S_LOG_LINES)
        cf_log_warn("task", "pid %d: %s", (int)task->pid, line);
    else if (task->log_lines == S_LOG_LINES)
        cf_log_warn("task", "pid %d: more lines not shown", (int)task->pid);
    task->log_lines++;
}

/* Reads what is waiting without blocking; sets eof at the end of it. */
static void s_drain(cf_task_t *task)
{
    while (!task->eof) {
        ssize_t n = read(task->out_fd, task->buf + task->len, S_LINE_MAX - task->len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return; /* EAGAIN: nothing more now */
        if (n == 0) {
            task->eof = true;
            if (task->epoll_fd >= 0)
                epoll_ctl(task->epoll_fd, EPOLL_CTL_DEL, task->out_fd, NULL);
            if (!task->exit_by_ms)
                task->exit_by_ms = s_now_ms() + S_EXIT_GRACE_MS;
        }
        task->len += (size_t)n;
        task->buf[task->len] = '\0';
        char *start = task->buf, *nl;
        while ((nl = memchr(start, '\n', task->len - (size_t)(start - task->buf)))) {
            *nl = '\0';
            if (!task->overlong)
                s_line(task, start);
            task->overlong = false;
            start = nl + 1;
        }
        size_t rest = task->len - (size_t)(start - task->buf);
        memmove(task->buf, start, rest);
        task->len = rest;
        if (task->len == S_LINE_MAX || (task->eof && task->len)) {
            /* A line this long is no protocol line: keep its start as a
             * log line, drop the rest up to its newline. */
            task->buf[task->len] = '\0';
            if (!task->overlong)
                s_line(task, task->buf);
            task->overlong = !task->eof;
            task->len = 0;
        }
    }
}

static const char *s_signal_name(int sig, char *buf, size_t buflen)
{
    const char *abbrev = sigabbrev_np(sig);
    if (abbrev)
        snprintf(buf, buflen, "SIG%s", abbrev);
    else
        snprintf(buf, buflen, "signal %d", sig);
    return buf;
}

/* Parses "done HEX BYTES FRAMES SECONDS" and checks the blob is there. */
static int s_parse_done(cf_task_t *task, const char *line, cf_render_piece_t *piece, char *err,
                        size_t errlen)
{
    char hex[CF_BLOB_HEX_SIZE + 1];
    unsigned long long bytes;
    long long frames;
    double seconds;
    char extra;
    memset(piece, 0, sizeof *piece);
    if (sscanf(line, "done %64s %llu %lld %lf %c", hex, &bytes, &frames, &seconds, &extra) != 4 ||
        cf_blob_parse_ref(hex, piece->blob) < 0 || frames < 0 || !(seconds >= 0)) {
        snprintf(err, errlen, "the encoder process reported a malformed result");
        return -1;
    }
    piece->bytes = bytes;
    piece->frames = frames;
    piece->seconds = seconds;
    if (task->expected_frames >= 0 && frames != task->expected_frames) {
        snprintf(err, errlen, "the encoder process reported %lld frames, %lld planned", frames,
                 (long long)task->expected_frames);
        return -1;
    }
    if (task->blob_dir) {
        char rel[CF_BLOB_HEX_SIZE * 2 + 8], path[4096 + sizeof rel];
        struct stat st;
        cf_blob_relpath(piece->blob, rel, sizeof rel);
        s_path(path, sizeof path, "%s/%s", task->blob_dir, rel);
        if (stat(path, &st) < 0 || (uint64_t)st.st_size != piece->bytes) {
            snprintf(err, errlen, "the encoder process reported blob:%s, which is not in the store",
                     piece->blob);
            return -1;
        }
    }
    return 0;
}

/* The final event, from the exit STATUS, its resource use and what the
 * child said last. */
static void s_final(cf_task_t *task, int status, const struct rusage *ru, cf_task_event_t *ev)
{
    char sig[32];
    memset(ev, 0, sizeof *ev);
    ev->type = CF_TASK_FAILED;
    ev->frames = task->progress;
    uint64_t as_mib = task->limits.address_space_bytes >> 20;
    double cpu = (double)ru->ru_utime.tv_sec + (double)ru->ru_stime.tv_sec +
                 ((double)ru->ru_utime.tv_usec + (double)ru->ru_stime.tv_usec) / 1e6;
    bool done_line = !strncmp(task->result, "done ", 5);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0 && done_line) {
        if (s_parse_done(task, task->result, &ev->piece, ev->error, sizeof ev->error) == 0) {
            ev->type = CF_TASK_DONE;
            ev->frames = ev->piece.frames;
        }
    } else if (task->cancel_sent) {
        ev->cancelled = true;
        snprintf(ev->error, sizeof ev->error, "cancelled");
    } else if (task->stalled) {
        snprintf(ev->error, sizeof ev->error,
                 "the encoder process made no progress for %d s and was killed",
                 task->limits.stall_seconds);
    } else if (WIFEXITED(status) && !strncmp(task->result, "error ", 6)) {
        const char *said = task->result + 6;
        /* An allocation refused under the limit fails in whatever library
         * asked ("cannot open the libx264 encoder: Generic error in an
         * external library"); the log lines tell what it was. */
        bool limited = task->limits.address_space_bytes != CF_TASK_UNLIMITED &&
                       !strstr(task->sandbox, "as=unenforced");
        if (limited && (task->saw_oom || s_mentions_oom(said)))
            snprintf(ev->error, sizeof ev->error,
                     "the encoder process exceeded its memory limit (%llu MiB): %s",
                     (unsigned long long)as_mib, said);
        else
            snprintf(ev->error, sizeof ev->error, "%s", said);
    } else if (WIFEXITED(status) && task->sanitizer[0]) {
        /* A sanitizer build catches the crash itself and exits. */
        if (strstr(task->sanitizer, "Sanitizer: SEGV"))
            snprintf(ev->error, sizeof ev->error, "the encoder process was killed by SIGSEGV");
        else
            snprintf(ev->error, sizeof ev->error, "the encoder process failed: %s",
                     task->sanitizer);
    } else if (WIFEXITED(status)) {
        snprintf(ev->error, sizeof ev->error, "the encoder process exited with status %d %s",
                 WEXITSTATUS(status), done_line ? "after its result" : "without a result");
    } else if (WIFSIGNALED(status)) {
        int s = WTERMSIG(status);
        unsigned long long vm = 0;
        char crash_sig[32] = "";
        bool near_limit = sscanf(task->crash, "%31s %llu", crash_sig, &vm) == 2 &&
                          task->limits.address_space_bytes != CF_TASK_UNLIMITED &&
                          vm >= task->limits.address_space_bytes / 10 * 9;
        if (s == SIGXCPU || (s == SIGKILL && cpu >= (double)task->limits.cpu_seconds))
            snprintf(ev->error, sizeof ev->error,
                     "the encoder process exceeded its CPU time limit (%llu s)",
                     (unsigned long long)task->limits.cpu_seconds);
        else if (s == SIGXFSZ)
            snprintf(ev->error, sizeof ev->error,
                     "the encoder process exceeded its file size limit (%llu MiB)",
                     (unsigned long long)(task->limits.file_bytes >> 20));
        else if (near_limit)
            snprintf(ev->error, sizeof ev->error,
                     "the encoder process exceeded its memory limit (%llu MiB) and was killed by "
                     "%s",
                     (unsigned long long)as_mib, s_signal_name(s, sig, sizeof sig));
        else
            snprintf(ev->error, sizeof ev->error, "the encoder process was killed by %s",
                     s_signal_name(s, sig, sizeof sig));
    }
}

/* Reaps the child when it has exited (or, without a pidfd, after EOF,
 * waiting for it). Returns true with STATUS and RU filled. */
static bool s_reap(cf_task_t *task, int *status, struct rusage *ru)
{
    memset(ru, 0, sizeof *ru);
    pid_t r = wait4(task->pid, status, WNOHANG, ru);
    if (r == task->pid)
        return true;
    if (r < 0 && errno == ECHILD) {
        /* Someone else reaped it (a SIGCHLD handler set to SIG_IGN). */
        *status = 0;
        snprintf(task->result, sizeof task->result, "error the encoder process vanished");
        return true;
    }
    int64_t now = s_now_ms();
    if (task->stall_ms && !task->result[0] && now >= task->stall_since_ms + task->stall_ms)
        task->stalled = true;
    if ((task->kill_at_ms && now >= task->kill_at_ms) ||
        (task->exit_by_ms && now >= task->exit_by_ms) || task->stalled) {
        s_kill(task);
        return wait4(task->pid, status, 0, ru) == task->pid;
    }
    return false;
}

cf_task_event_type_t cf_task_read(cf_task_t *task, cf_task_event_t *ev)
{
    memset(ev, 0, sizeof *ev);
    if (task->finished)
        return CF_TASK_NONE;
    s_drain(task);
    int status = 0;
    struct rusage ru;
    if (s_reap(task, &status, &ru)) {
        s_drain(task); /* what it wrote just before it went */
        s_final(task, status, &ru, ev);
        task->finished = true;
        s_remove_leftovers(task, task->pid);
        return ev->type;
    }
    if (task->progress_new) {
        task->progress_new = false;
        ev->type = CF_TASK_PROGRESS;
        ev->frames = task->progress;
    }
    return ev->type;
}

int cf_task_sweep(const char *work_parent)
{
    DIR *d = opendir(work_parent);
    int removed = 0;
    for (struct dirent *e; d && (e = readdir(d));) {
        char path[4096];
        if (strncmp(e->d_name, "clipfarm-task.", 14) ||
            s_path(path, sizeof path, "%s/%s", work_parent, e->d_name) < 0)
            continue;
        if (cf_workspace_rmtree(path) == 0)
            removed++;
    }
    if (d)
        closedir(d);
    return removed;
}

void cf_task_destroy(cf_task_t **task_p)
{
    if (!task_p || !*task_p)
        return;
    cf_task_t *task = *task_p;
    if (!task->finished) {
        s_kill(task);
        int status;
        while (waitpid(task->pid, &status, 0) < 0 && errno == EINTR)
            ;
        s_remove_leftovers(task, task->pid);
    }
    s_task_free(task);
    *task_p = NULL;
}
