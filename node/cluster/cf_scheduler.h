/* cf_scheduler: which node runs which task, one round at a time, as a pure
 * function. The coordinator gathers the round's state (live nodes, their
 * encoders, speeds, free slots and queued work; the tasks waiting to run) and
 * cf_schedule answers with assignments and, for every task it could not
 * place, a reason the API can show. No I/O, no clock, no globals: the same
 * input always gives the same result, whatever order the arrays are in.
 *
 * The rules, in the order they apply:
 *
 * Tasks. SEGMENT encodes FRAMES frames with ENCODER (fixed when the
 * composition was planned: "libx264", "h264_nvenc", ...). AUDIO encodes the
 * whole timeline's audio (ENCODER ignored: every node can); it counts as
 * FRAMES / CF_SCHED_LIGHT_WORK_DIVISOR frames of work. ASSEMBLE stitches a
 * composition (bitstream copy; ENCODER ignored) and counts the same.
 *
 * Capability. A segment goes only to a node offering its exact encoder. When
 * no live node offers it the task is unplaced with the reason
 * "waiting for a node with ENCODER".
 *
 * Legal nodes. A node is considered only when it is alive, has an id, has a
 * free slot (each assignment takes one; a node with none gets nothing more
 * this round) and is not in the task's EXCLUDED list (the caller lists a node
 * that failed 3 segments of the composition, or where this task just failed).
 *
 * Order. Tasks are placed by effective priority: the class (high 2, default
 * 1, low 0; out of range counts as low; a zeroed task is CF_PRIORITY_HIGH)
 * plus one per age_step_s seconds waited, uncapped, so a low task that has
 * waited long enough passes fresh high ones. Within it ASSEMBLE first (it can
 * only finish a composition), then the most work first, then the higher
 * class, the longer wait, the composition id and the index.
 *
 * Node choice. Among the legal nodes, the earliest estimated finish:
 *     est_s = (queued_frames + task work) / fps
 * where fps is the node's measured rate for the segment's encoder (for AUDIO
 * and ASSEMBLE: its fastest CPU encoder's). An fps that is missing, zero,
 * negative or not finite is unknown and replaced by
 * default_fps_per_core * cores. Ties go to the node id that sorts first. Each
 * assignment adds its work to the node's queued frames for later tasks.
 *
 * GPU nodes. A node offering a GPU encoder (cf_sched_encoder_is_gpu) takes
 * CPU work (a CPU segment, audio) only when it would otherwise be idle: when
 * no GPU segment of this round could go to it, it competes for CPU work like
 * any node; otherwise it gets CPU work only after every other task has been
 * placed, on the slots the GPU work left, for tasks that found no other node.
 *
 * Assembly. ASSEMBLE goes to the first node of PREFERRED (the caller lists
 * the nodes holding the composition's segment bytes, most first) that is
 * alive, not excluded and has a free slot; with assemble_may_exceed_slots it
 * goes to the first alive, non-excluded one even without a free slot (the
 * slot count is then left at zero). When a listed holder is alive but full
 * the task waits ("waiting for a free slot on ID"); when none is alive (or
 * the list is empty) it goes to any legal node by earliest finish, which
 * pulls the segments it needs.
 *
 * Garbage in (NULL arrays, negative counts, NaN, a node without an id) is
 * read as "nothing there", never a crash. */
#ifndef CF_SCHEDULER_H
#define CF_SCHEDULER_H

#include <stdbool.h>
#include <stdint.h>

#include "cf_state.h" /* cf_priority_t, cf_task_kind_t */

/* Seconds of waiting that raise a task one priority class, by default. */
#define CF_SCHED_AGE_STEP_S 60.0
/* Frames/s per core assumed for an encoder whose speed is unknown. */
#define CF_SCHED_DEFAULT_FPS_PER_CORE 30.0
/* AUDIO and ASSEMBLE count as frames / this of work. */
#define CF_SCHED_LIGHT_WORK_DIVISOR 20.0
#define CF_SCHED_REASON_LEN         128

/* One node as the coordinator sees it this round. FPS is the rate at which
 * the node works through its queue with that encoder, all its slots busy
 * (from calibration's one-thread figure: fps * min(slots, cores), or a
 * measured figure); QUEUED_FRAMES is the work already assigned to it and not
 * yet done, in frames (audio and assembly as their light work). */
typedef struct {
    const char *id;              /* NULL: the node gets nothing */
    const char *const *encoders; /* encoder_count names (NULL: none) */
    const double *fps;           /* parallel to encoders; NULL: all unknown */
    int encoder_count;
    int cores;            /* < 1 counts as 1 */
    int free_slots;       /* slots it can take this round */
    double queued_frames; /* < 0 or NaN counts as 0 */
    bool alive;
} cf_sched_node_t;

/* One task waiting to run. Arrays are borrowed for the call only. */
typedef struct {
    const char *composition; /* id, for the order only */
    int index;               /* segment index, for the order only */
    cf_task_kind_t kind;
    const char *encoder; /* SEGMENT: the exact encoder */
    int64_t frames;      /* SEGMENT: its frames; AUDIO/ASSEMBLE: the timeline's */
    cf_priority_t priority;
    double waiting_s;            /* since it became runnable */
    const char *const *excluded; /* node ids that must not get it */
    int excluded_count;
    const char *const *preferred; /* ASSEMBLE: the segments' holders */
    int preferred_count;
} cf_sched_task_t;

typedef struct {
    const cf_sched_node_t *nodes;
    int node_count;
    const cf_sched_task_t *tasks;
    int task_count;
    double age_step_s;           /* <= 0 or NaN: CF_SCHED_AGE_STEP_S */
    double default_fps_per_core; /* <= 0 or NaN: CF_SCHED_DEFAULT_FPS_PER_CORE */
    bool assemble_may_exceed_slots;
} cf_sched_input_t;

typedef struct {
    int task;            /* index into tasks */
    int node;            /* index into nodes */
    double est_finish_s; /* estimated seconds until the node finishes it */
} cf_sched_assignment_t;

typedef struct {
    int task;
    char reason[CF_SCHED_REASON_LEN]; /* "waiting for a node with libx265" */
} cf_sched_unplaced_t;

typedef struct {
    cf_sched_assignment_t *assignments; /* in the order they were made */
    int assignment_count;
    cf_sched_unplaced_t *unplaced; /* in the order tasks were considered */
    int unplaced_count;
} cf_sched_result_t;

/* Schedules one round of IN (not modified or kept). Every task ends up in
 * exactly one of the result's two lists. Returns the result (one malloc'ed
 * block, the caller's: free it with cf_sched_result_destroy), or NULL when IN
 * is NULL or memory runs out. */
cf_sched_result_t *cf_schedule(const cf_sched_input_t *in);

void cf_sched_result_destroy(cf_sched_result_t **self_p);

/* True for the hardware encoders: names ending in _nvenc, _qsv, _vaapi, _amf
 * or _videotoolbox. */
bool cf_sched_encoder_is_gpu(const char *encoder);

#endif
