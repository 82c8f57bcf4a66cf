/* cf_task: one render stage (a segment, the audio, or the assembly) run in
 * a child process of its own, the same binary started as `clipfarm task`,
 * so that a decoder crash or a runaway allocation on a hostile or broken
 * source fails that task, never the node, its API or its coordinator role.
 * One process per encode is what kept HandBrake's queue alive.
 *
 * The parent (the node's executor) fetches the sources itself, into its
 * node-wide source cache, and hands the child local paths only: the child
 * needs no network, no database, no credentials.
 *
 * How parent and child talk:
 *   argv     clipfarm task --as BYTES --cpu SECONDS --nofile N --fsize BYTES
 *                          --net isolate|share --parent PID
 *            (the limits, applied before anything else is read)
 *   stdin    the task, JSON (cf_task_spec_to_json), from a file in the
 *            task's scratch directory that the parent unlinks once the
 *            child runs
 *   stdout   one line at a time, stderr merged in (log lines and anything a
 *            library prints; the parent keeps the last few for errors):
 *              sandbox net=isolated caps=dropped as=4096MiB ...  (once)
 *              progress FRAMES                       (every 250 ms; audio
 *                                                     and assembly count none)
 *              done BLOB_HEX BYTES FRAMES SECONDS     (the last line)
 *              error MESSAGE                          (the last line)
 *              crash SIGNO VMBYTES                    (from its crash handler)
 *   exit     0 after done, 1 after error; a signal is reported by the
 *            parent ("the encoder process was killed by SIGSEGV").
 *
 * What the child is confined to (cf_task_child_main):
 *   - rlimits: address space (RLIMIT_AS; not under ASan/TSan, whose shadow
 *     memory needs terabytes of it), CPU seconds (SIGXCPU, then SIGKILL 5 s
 *     later), open files, file size, no core dumps;
 *   - PR_SET_NO_NEW_PRIVS; PR_SET_PDEATHSIG(SIGKILL), so it dies with the
 *     parent (with the thread that started it, in fact: keep tasks on the
 *     thread that lives as long as they do);
 *   - every inherited fd but 0, 1 and 2 closed (the spawn closes them, and
 *     the child closes them again in case the spawn could not);
 *   - an environment of only PATH, locale, TZ and sanitizer options (the
 *     node's CF_* settings, database URLs and S3 credentials stay behind);
 *   - a network namespace of its own, so no network at all (as root; as
 *     another user through a user namespace when the kernel allows; where
 *     neither works the child runs on the host's network and says so in its
 *     sandbox line);
 *   - as root, after unsharing, every capability dropped (effective,
 *     permitted, inheritable, ambient and the bounding set);
 *   - its own process group, so a terminal's Ctrl-C reaches the node only;
 *   - sources: only file:// paths are accepted for the clips the task uses,
 *     no blob resolver, no S3 client, no HTTP.
 * What it is NOT confined to: the file system (it runs as the node's user
 * and can read what the node reads and write where the node writes; no
 * chroot, Landlock or seccomp filter yet), and the number of processes or
 * threads it may start (RLIMIT_NPROC counts the whole user).
 *
 * Everything the child writes lives in the task's scratch directory (which
 * the parent creates under spec->work_parent and removes when the task
 * ends, whichever way it ends) until its result, complete and hashed, is
 * renamed into the blob store: a child killed at any point leaves nothing
 * behind (on another file system than the store's, the result is copied
 * through BLOB_DIR/tmp/task-PID-* and the parent removes that too). The
 * child never opens the node's blob store as a cf_blob_store_t:
 * cf_blob_store_new empties its tmp directory, which holds the node's own
 * unfinished uploads. */
#ifndef CF_TASK_H
#define CF_TASK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cf_plan.h"
#include "cf_state.h"
#include "cf_render_stages.h"

/* cf_task_kind_t (lib/model/cf_state.h): CF_TASK_SEGMENT (one segment of
 * the plan), CF_TASK_AUDIO (the whole timeline's audio), CF_TASK_ASSEMBLE
 * (the segments and the audio, stitched). */

/* What a task does. Everything is borrowed for the duration of the call. */
typedef struct {
    cf_task_kind_t kind;
    const cf_plan_t *plan; /* the plan, sources as the composition gave them */
    /* plan->clip_count entries (may be NULL when the plan's sources already
     * are file:// paths): the local file of each clip the task uses, NULL
     * for the others. The child is given file:// URLs of these, and error
     * messages name the clip's source as the plan had it. */
    const char *const *local_paths;
    int segment;          /* CF_TASK_SEGMENT */
    const char *blob_dir; /* the node's blob store: where the result goes */
    /* CF_TASK_ASSEMBLE: plan->segment_count pieces and the audio, each a
     * blob already in BLOB_DIR of the size recorded. */
    const cf_render_piece_t *pieces;
    const cf_render_piece_t *audio;
    int threads;       /* encoder threads (0: libav's choice) */
    int max_lookahead; /* as cf_media_ctl_t.max_lookahead */
    /* Where the task's scratch directory is made (NULL: $TMPDIR or /tmp);
     * best on the blob store's file system, so that results are renamed
     * into it rather than copied. */
    const char *work_parent;
} cf_task_spec_t;

#define CF_TASK_DEFAULT_ADDRESS_SPACE (4ULL << 30)
#define CF_TASK_DEFAULT_CPU_SECONDS   (4 * 3600)
#define CF_TASK_DEFAULT_OPEN_FILES    256
#define CF_TASK_DEFAULT_FILE_BYTES    (64ULL << 30)
#define CF_TASK_DEFAULT_GRACE_MS      1000
#define CF_TASK_DEFAULT_STALL_SECONDS 600
#define CF_TASK_UNLIMITED             UINT64_MAX

/* The child's limits. 0 in any field means its default. */
typedef struct {
    uint64_t address_space_bytes; /* RLIMIT_AS (CF_TASK_UNLIMITED: none) */
    uint64_t cpu_seconds;         /* RLIMIT_CPU, all threads together */
    uint64_t open_files;          /* RLIMIT_NOFILE */
    uint64_t file_bytes;          /* RLIMIT_FSIZE: the largest file it may write */
    bool share_network;           /* true: do not try a network namespace */
    int grace_ms;                 /* cancel: SIGTERM, then SIGKILL after this */
    /* A segment task whose frame count has not moved for this long is
     * killed: a decoder that hangs without spinning never meets the CPU
     * limit. 0: CF_TASK_DEFAULT_STALL_SECONDS; < 0: never. (Audio and
     * assembly report no frames and are not watched.) */
    int stall_seconds;
} cf_task_limits_t;

/* A child's address space for a memory budget: the budget plus what the
 * binary, libav's libraries, thread stacks and malloc's arenas reserve
 * (about 1 GiB of address space a render never touches), at least
 * CF_TASK_DEFAULT_ADDRESS_SPACE. BUDGET <= 0: the default. */
uint64_t cf_task_address_space_for(int64_t memory_budget);

/* Writes SPEC as the child's task description (the JSON documented in
 * cf_task.c), with SCRATCH as its scratch directory. Returns a string the
 * caller frees, or NULL with a reason in err. */
char *cf_task_spec_to_json(const cf_task_spec_t *spec, const char *scratch, char *err,
                           size_t errlen);

typedef struct cf_task_t cf_task_t;

typedef enum {
    CF_TASK_NONE = 0, /* nothing new yet */
    CF_TASK_PROGRESS, /* frames done so far (ev->frames) */
    CF_TASK_DONE,     /* the result is in the blob store (ev->piece); final */
    CF_TASK_FAILED,   /* ev->error says why; final */
} cf_task_event_type_t;

typedef struct {
    cf_task_event_type_t type;
    int64_t frames;          /* PROGRESS: frames (audio: none) done so far */
    cf_render_piece_t piece; /* DONE: the blob, its size, frames, wall time of the stage */
    bool cancelled;          /* FAILED after cf_task_cancel */
    char error[1024];        /* FAILED: one line, no local paths */
} cf_task_event_t;

/* Starts SPEC in a child process of BINARY (NULL: /proc/self/exe, this
 * program; a test binary passes the clipfarm it tests) under LIMITS (NULL:
 * the defaults). Makes the task's scratch directory under
 * spec->work_parent. Returns the task, or NULL with a reason in err
 * (nothing left behind). Never blocks on the child. */
cf_task_t *cf_task_start(const char *binary, const cf_task_spec_t *spec,
                         const cf_task_limits_t *limits, char *err, size_t errlen);

/* Starts a child with TASK_JSON as written (for tests that hand it
 * something broken). SCRATCH (may be NULL) is a directory the task takes
 * over: removed when the task ends. BLOB_DIR (may be NULL) is where
 * leftovers task-PID-* are removed from BLOB_DIR/tmp. */
cf_task_t *cf_task_start_json(const char *binary, const char *task_json, const char *scratch,
                              const char *blob_dir, const cf_task_limits_t *limits, char *err,
                              size_t errlen);

/* The fd that becomes readable when the child has written something or
 * exited: put it in a zmq_pollitem_t's .fd (or poll(2)). */
int cf_task_fd(const cf_task_t *task);

/* How long the caller may wait (ms) before calling cf_task_read even if
 * the fd stays quiet: a cancelled child that ignores SIGTERM is killed, a
 * child that reported its result but does not exit is killed, on a
 * cf_task_read call. -1: no deadline pending. */
int cf_task_timeout_ms(const cf_task_t *task);

/* Reads what the child wrote, without blocking. Fills EV and returns its
 * type: CF_TASK_NONE (nothing new), CF_TASK_PROGRESS (the latest count
 * when several lines arrived), or once, as the last event, CF_TASK_DONE or
 * CF_TASK_FAILED; by then the child is reaped and the scratch directory
 * removed. Afterwards it returns CF_TASK_NONE. A result is checked before
 * it is believed: a DONE names a blob that exists in the store with the
 * size reported. */
cf_task_event_type_t cf_task_read(cf_task_t *task, cf_task_event_t *ev);

/* Asks the child to stop (SIGTERM: the encode stops within a frame, the
 * child removes its files and reports "cancelled"); SIGKILL after the grace
 * (on the next cf_task_read after it, see cf_task_timeout_ms). Never
 * blocks. The final event is CF_TASK_FAILED with cancelled set, or
 * CF_TASK_DONE when the child had finished before the cancel reached it
 * (its blob is then in the store: the caller decides what to do with it). */
void cf_task_cancel(cf_task_t *task);

/* True once the final event was returned. */
bool cf_task_finished(const cf_task_t *task);

/* The child's pid (0 once reaped) and its sandbox line ("net=isolated
 * caps=dropped as=4096MiB ..."; "" until it arrives). */
pid_t cf_task_pid(const cf_task_t *task);
const char *cf_task_sandbox(const cf_task_t *task);

/* Kills a child that is still running (SIGKILL: the caller gave up on it),
 * reaps it, removes the scratch directory and frees the task; safe on NULL;
 * NULLs the caller's pointer. Blocks only for the reap of a killed
 * process. */
void cf_task_destroy(cf_task_t **task_p);

/* Removes the scratch directories (clipfarm-task.*) that tasks of a node
 * that died (kill -9: its children die with it, PR_SET_PDEATHSIG) left in
 * WORK_PARENT. Call it at start-up, before any task runs. Returns how many
 * it removed. */
int cf_task_sweep(const char *work_parent);

/* The child: `clipfarm task` (node/cli/cmd_task.c). Returns the exit
 * code. */
int cf_task_child_main(int argc, char **argv);

#endif
