/* cf_scheduler: one scheduling round as a pure function (see cf_scheduler.h
 * for the rules). Two passes over the tasks in priority order: the first
 * keeps CPU work off GPU nodes that some GPU segment of the round could use,
 * the second lets what is still waiting onto whatever slots are left. */
#include "cf_scheduler.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    double queued; /* frames, this round's assignments included */
    int free;      /* slots left this round */
    bool usable;   /* alive and named */
    bool gpu;      /* offers a GPU encoder */
    bool gpu_busy; /* some GPU segment of this round could go to it */
} s_node_t;

/* A task's place in the order, everything the comparison needs. */
typedef struct {
    double urgency; /* class + whole age steps waited */
    double work;    /* frames of work */
    double waiting_s;
    const char *composition;
    int kind_rank; /* 0 for ASSEMBLE, 1 for the others */
    int class_;    /* 2 high, 1 default, 0 low */
    int index;
    int pos; /* into in->tasks */
} s_key_t;

typedef struct {
    const cf_sched_input_t *in;
    int node_count;
    int task_count;
    double default_fps_per_core;
    s_node_t *nodes;
    s_key_t *keys;
    bool *placed;     /* per task */
    int *full_holder; /* per task: an ASSEMBLE's alive but full holder, or -1 */
    cf_sched_result_t *res;
} s_round_t;

static const char *s_str(const char *text)
{
    return text ? text : "";
}

static bool s_known(double value)
{
    return isfinite(value) && value > 0;
}

bool cf_sched_encoder_is_gpu(const char *encoder)
{
    static const char *const suffixes[] = {"_nvenc", "_qsv", "_vaapi", "_amf", "_videotoolbox"};
    size_t len = strlen(s_str(encoder));
    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
        size_t slen = strlen(suffixes[i]);
        if (len > slen && strcmp(encoder + len - slen, suffixes[i]) == 0)
            return true;
    }
    return false;
}

static bool s_is_excluded(const cf_sched_task_t *task, const char *node_id)
{
    for (int i = 0; task->excluded && i < task->excluded_count; i++)
        if (task->excluded[i] && strcmp(task->excluded[i], node_id) == 0)
            return true;
    return false;
}

/* Index of ENCODER among NODE's encoders, or -1. */
static int s_encoder_at(const cf_sched_node_t *node, const char *encoder)
{
    for (int i = 0; node->encoders && i < node->encoder_count; i++)
        if (node->encoders[i] && strcmp(node->encoders[i], encoder) == 0)
            return i;
    return -1;
}

static double s_default_fps(const s_round_t *round, const cf_sched_node_t *node)
{
    return round->default_fps_per_core * (node->cores > 1 ? node->cores : 1);
}

static double s_encoder_fps(const s_round_t *round, const cf_sched_node_t *node, int at)
{
    if (node->fps && s_known(node->fps[at]))
        return node->fps[at];
    return s_default_fps(round, node);
}

/* The rate of AUDIO and ASSEMBLE: the node's fastest known CPU encoder. */
static double s_cpu_fps(const s_round_t *round, const cf_sched_node_t *node)
{
    double best = 0;
    for (int i = 0; node->encoders && node->fps && i < node->encoder_count; i++)
        if (node->encoders[i] && !cf_sched_encoder_is_gpu(node->encoders[i]) &&
            s_known(node->fps[i]) && node->fps[i] > best)
            best = node->fps[i];
    return best > 0 ? best : s_default_fps(round, node);
}

static bool s_is_gpu_task(const cf_sched_task_t *task)
{
    return task->kind == CF_TASK_SEGMENT && cf_sched_encoder_is_gpu(task->encoder);
}

/* Seconds until a node at FPS clears QUEUED frames and then WORK; never NaN. */
static double s_finish(double queued, double work, double fps)
{
    double est = (queued + work) / fps;
    return isnan(est) ? INFINITY : est;
}

static double s_work(const cf_sched_task_t *task)
{
    double frames = task->frames > 0 ? (double)task->frames : 0;
    return task->kind == CF_TASK_SEGMENT ? frames : frames / CF_SCHED_LIGHT_WORK_DIVISOR;
}

/* Estimated finish of TASK on node N, or -1 when N may not take it. CPU work
 * goes to a GPU node that GPU work wants only when ALLOW_BUSY_GPU. */
static double s_estimate(const s_round_t *round, const cf_sched_task_t *task, int n,
                         bool allow_busy_gpu)
{
    const cf_sched_node_t *node = &round->in->nodes[n];
    const s_node_t *state = &round->nodes[n];
    if (!state->usable || state->free <= 0 || s_is_excluded(task, node->id))
        return -1;
    if (state->gpu && state->gpu_busy && !allow_busy_gpu && !s_is_gpu_task(task))
        return -1;
    double fps;
    if (task->kind == CF_TASK_SEGMENT) {
        int at = s_encoder_at(node, task->encoder);
        if (at < 0)
            return -1;
        fps = s_encoder_fps(round, node, at);
    } else {
        fps = s_cpu_fps(round, node);
    }
    return s_finish(state->queued, s_work(task), fps);
}

static void s_assign(s_round_t *round, int t, int n, double est)
{
    cf_sched_assignment_t *a = &round->res->assignments[round->res->assignment_count++];
    a->task = t;
    a->node = n;
    a->est_finish_s = est;
    round->placed[t] = true;
    round->nodes[n].queued += s_work(&round->in->tasks[t]);
    if (round->nodes[n].free > 0)
        round->nodes[n].free--;
}

/* Places task T on its legal node with the earliest finish; false when it has
 * none. */
static bool s_place_earliest(s_round_t *round, int t, bool allow_busy_gpu)
{
    const cf_sched_task_t *task = &round->in->tasks[t];
    int best = -1;
    double best_est = 0;
    for (int n = 0; n < round->node_count; n++) {
        double est = s_estimate(round, task, n, allow_busy_gpu);
        if (est < 0)
            continue;
        if (best < 0 || est < best_est ||
            (est == best_est && strcmp(round->in->nodes[n].id, round->in->nodes[best].id) < 0)) {
            best = n;
            best_est = est;
        }
    }
    if (best >= 0)
        s_assign(round, t, best, best_est);
    return best >= 0;
}

/* The first usable node called ID, or -1. */
static int s_node_named(const s_round_t *round, const char *id)
{
    for (int n = 0; id && n < round->node_count; n++)
        if (round->nodes[n].usable && strcmp(round->in->nodes[n].id, id) == 0)
            return n;
    return -1;
}

static void s_place_assemble(s_round_t *round, int t, bool allow_busy_gpu)
{
    const cf_sched_task_t *task = &round->in->tasks[t];
    round->full_holder[t] = -1;
    for (int i = 0; task->preferred && i < task->preferred_count; i++) {
        int n = s_node_named(round, task->preferred[i]);
        if (n < 0 || s_is_excluded(task, round->in->nodes[n].id))
            continue;
        if (round->nodes[n].free > 0 || round->in->assemble_may_exceed_slots) {
            s_assign(round, t, n,
                     s_finish(round->nodes[n].queued, s_work(task),
                              s_cpu_fps(round, &round->in->nodes[n])));
            return;
        }
        if (round->full_holder[t] < 0)
            round->full_holder[t] = n;
    }
    if (round->full_holder[t] < 0)
        s_place_earliest(round, t, allow_busy_gpu);
}

static void s_place(s_round_t *round, int t, bool allow_busy_gpu)
{
    const cf_sched_task_t *task = &round->in->tasks[t];
    if (task->kind == CF_TASK_ASSEMBLE)
        s_place_assemble(round, t, allow_busy_gpu);
    else if (task->kind == CF_TASK_AUDIO ||
             (task->kind == CF_TASK_SEGMENT && task->encoder && task->encoder[0]))
        s_place_earliest(round, t, allow_busy_gpu);
}

/* Why task T found no node, from the state the round ended in. */
static void s_explain(const s_round_t *round, int t, char *reason, size_t len)
{
    const cf_sched_task_t *task = &round->in->tasks[t];
    bool segment = task->kind == CF_TASK_SEGMENT;
    if (!segment && task->kind != CF_TASK_AUDIO && task->kind != CF_TASK_ASSEMBLE) {
        snprintf(reason, len, "unknown task kind");
        return;
    }
    if (segment && !(task->encoder && task->encoder[0])) {
        snprintf(reason, len, "segment has no encoder");
        return;
    }
    if (task->kind == CF_TASK_ASSEMBLE && round->full_holder[t] >= 0) {
        snprintf(reason, len, "waiting for a free slot on %s",
                 round->in->nodes[round->full_holder[t]].id);
        return;
    }
    int capable = 0, allowed = 0;
    for (int n = 0; n < round->node_count; n++) {
        const cf_sched_node_t *node = &round->in->nodes[n];
        if (!round->nodes[n].usable || (segment && s_encoder_at(node, task->encoder) < 0))
            continue;
        capable++;
        allowed += !s_is_excluded(task, node->id);
    }
    if (segment && capable == 0)
        snprintf(reason, len, "waiting for a node with %s", task->encoder);
    else if (segment && allowed == 0)
        snprintf(reason, len, "every node with %s is excluded from this task", task->encoder);
    else if (segment)
        snprintf(reason, len, "waiting for a free slot on a node with %s", task->encoder);
    else if (capable == 0)
        snprintf(reason, len, "waiting for a live node");
    else if (allowed == 0)
        snprintf(reason, len, "every live node is excluded from this task");
    else
        snprintf(reason, len, "waiting for a free slot");
}

static int s_cmp_double_desc(double a, double b)
{
    return a > b ? -1 : a < b ? 1 : 0;
}

static int s_key_cmp(const void *pa, const void *pb)
{
    const s_key_t *a = pa, *b = pb;
    int c;
    if ((c = s_cmp_double_desc(a->urgency, b->urgency)) != 0)
        return c;
    if (a->kind_rank != b->kind_rank)
        return a->kind_rank - b->kind_rank;
    if ((c = s_cmp_double_desc(a->work, b->work)) != 0)
        return c;
    if (a->class_ != b->class_)
        return b->class_ - a->class_;
    if ((c = s_cmp_double_desc(a->waiting_s, b->waiting_s)) != 0)
        return c;
    if ((c = strcmp(s_str(a->composition), s_str(b->composition))) != 0)
        return c;
    if (a->index != b->index)
        return a->index < b->index ? -1 : 1;
    return a->pos - b->pos;
}

static size_t s_align(size_t size)
{
    return (size + 15) & ~(size_t)15;
}

/* One block: the result, its two lists, then the round's scratch. */
static cf_sched_result_t *s_result_new(s_round_t *round)
{
    size_t tasks = (size_t)round->task_count, nodes = (size_t)round->node_count;
    size_t sizes[] = {s_align(sizeof(cf_sched_result_t)),
                      s_align(tasks * sizeof(cf_sched_assignment_t)),
                      s_align(tasks * sizeof(cf_sched_unplaced_t)),
                      s_align(nodes * sizeof(s_node_t)),
                      s_align(tasks * sizeof(s_key_t)),
                      s_align(tasks * sizeof(int)),
                      s_align(tasks * sizeof(bool))};
    size_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        total += sizes[i];
    char *block = calloc(1, total);
    if (!block)
        return NULL;
    char *at = block;
    round->res = (cf_sched_result_t *)at;
    round->res->assignments = (cf_sched_assignment_t *)(at += sizes[0]);
    round->res->unplaced = (cf_sched_unplaced_t *)(at += sizes[1]);
    round->nodes = (s_node_t *)(at += sizes[2]);
    round->keys = (s_key_t *)(at += sizes[3]);
    round->full_holder = (int *)(at += sizes[4]);
    round->placed = (bool *)(at += sizes[5]);
    return round->res;
}

static void s_prepare(s_round_t *round)
{
    const cf_sched_input_t *in = round->in;
    double age_step_s = s_known(in->age_step_s) ? in->age_step_s : CF_SCHED_AGE_STEP_S;
    for (int n = 0; n < round->node_count; n++) {
        const cf_sched_node_t *node = &in->nodes[n];
        s_node_t *state = &round->nodes[n];
        state->usable = node->alive && node->id;
        state->free = node->free_slots > 0 ? node->free_slots : 0;
        state->queued = node->queued_frames > 0 ? node->queued_frames : 0;
        for (int i = 0; node->encoders && i < node->encoder_count; i++)
            state->gpu = state->gpu || cf_sched_encoder_is_gpu(node->encoders[i]);
    }
    for (int t = 0; t < round->task_count; t++) {
        const cf_sched_task_t *task = &in->tasks[t];
        int priority = (int)task->priority;
        s_key_t *key = &round->keys[t];
        key->class_ = priority >= CF_PRIORITY_HIGH && priority < CF_PRIORITY_COUNT
                          ? CF_PRIORITY_LOW - priority
                          : 0;
        key->waiting_s = task->waiting_s > 0 ? task->waiting_s : 0;
        key->urgency = key->class_ + floor(key->waiting_s / age_step_s);
        key->kind_rank = task->kind == CF_TASK_ASSEMBLE ? 0 : 1;
        key->work = s_work(task);
        key->composition = task->composition;
        key->index = task->index;
        key->pos = t;
        round->full_holder[t] = -1;
        if (!s_is_gpu_task(task))
            continue;
        for (int n = 0; n < round->node_count; n++)
            if (round->nodes[n].usable && round->nodes[n].free > 0 &&
                s_encoder_at(&in->nodes[n], task->encoder) >= 0 &&
                !s_is_excluded(task, in->nodes[n].id))
                round->nodes[n].gpu_busy = true;
    }
    qsort(round->keys, (size_t)round->task_count, sizeof(s_key_t), s_key_cmp);
}

cf_sched_result_t *cf_schedule(const cf_sched_input_t *in)
{
    if (!in)
        return NULL;
    s_round_t round = {.in = in};
    round.node_count = in->nodes && in->node_count > 0 ? in->node_count : 0;
    round.task_count = in->tasks && in->task_count > 0 ? in->task_count : 0;
    round.default_fps_per_core = s_known(in->default_fps_per_core) ? in->default_fps_per_core
                                                                   : CF_SCHED_DEFAULT_FPS_PER_CORE;
    if (!s_result_new(&round))
        return NULL;
    s_prepare(&round);
    for (int pass = 0; pass < 2; pass++)
        for (int k = 0; k < round.task_count; k++)
            if (!round.placed[round.keys[k].pos])
                s_place(&round, round.keys[k].pos, pass == 1);
    for (int k = 0; k < round.task_count; k++) {
        int t = round.keys[k].pos;
        if (round.placed[t])
            continue;
        cf_sched_unplaced_t *u = &round.res->unplaced[round.res->unplaced_count++];
        u->task = t;
        s_explain(&round, t, u->reason, sizeof u->reason);
    }
    return round.res;
}

void cf_sched_result_destroy(cf_sched_result_t **self_p)
{
    if (self_p && *self_p) {
        free(*self_p);
        *self_p = NULL;
    }
}
