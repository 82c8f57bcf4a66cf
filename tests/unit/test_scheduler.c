/* Unit tests for node/cluster/cf_scheduler.c: one scheduling round as a pure
 * function. Every expectation below is worked out by hand from the rules in
 * cf_scheduler.h; the simulations feed the scheduler's own assignments back
 * as queued work, the way the coordinator will. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_scheduler.h"
#include "cf_testutil.h"

static const char *const X264[] = {"libx264"};
static const char *const X264_X265[] = {"libx264", "libx265"};
static const char *const GPU_NODE[] = {"libx264", "h264_nvenc"};

static cf_sched_node_t s_node(const char *id, const char *const *encoders, const double *fps,
                              int encoder_count, int slots)
{
    return (cf_sched_node_t){.id = id,
                             .encoders = encoders,
                             .fps = fps,
                             .encoder_count = encoder_count,
                             .cores = 4,
                             .free_slots = slots,
                             .alive = true};
}

static cf_sched_task_t s_seg(const char *composition, int index, const char *encoder,
                             int64_t frames)
{
    return (cf_sched_task_t){.composition = composition,
                             .index = index,
                             .kind = CF_TASK_SEGMENT,
                             .encoder = encoder,
                             .frames = frames,
                             .priority = CF_PRIORITY_DEFAULT};
}

static cf_sched_task_t s_audio(const char *composition, int64_t frames)
{
    return (cf_sched_task_t){.composition = composition,
                             .kind = CF_TASK_AUDIO,
                             .frames = frames,
                             .priority = CF_PRIORITY_DEFAULT};
}

static cf_sched_result_t *s_run(const cf_sched_node_t *nodes, int node_count,
                                const cf_sched_task_t *tasks, int task_count)
{
    cf_sched_input_t in = {
        .nodes = nodes, .node_count = node_count, .tasks = tasks, .task_count = task_count};
    cf_sched_result_t *res = cf_schedule(&in);
    assert_non_null(res);
    assert_int_equal(res->assignment_count + res->unplaced_count, task_count);
    return res;
}

/* The id of the node task T went to, or NULL when it was not placed. */
static const char *s_node_of(const cf_sched_result_t *res, const cf_sched_node_t *nodes, int t)
{
    for (int i = 0; i < res->assignment_count; i++)
        if (res->assignments[i].task == t)
            return nodes[res->assignments[i].node].id;
    return NULL;
}

static double s_est_of(const cf_sched_result_t *res, int t)
{
    for (int i = 0; i < res->assignment_count; i++)
        if (res->assignments[i].task == t)
            return res->assignments[i].est_finish_s;
    fail_msg("task %d was not placed", t);
    return -1;
}

static const char *s_reason_of(const cf_sched_result_t *res, int t)
{
    for (int i = 0; i < res->unplaced_count; i++)
        if (res->unplaced[i].task == t)
            return res->unplaced[i].reason;
    return NULL;
}

#define assert_on(res, nodes, t, id) assert_string_equal(s_node_of(res, nodes, t), id)

static void test_capability_routing(void **state)
{
    cf_sched_node_t nodes[] = {s_node("a", X264, NULL, 1, 4), s_node("b", X264_X265, NULL, 2, 4),
                               s_node("c", X264, NULL, 1, 4)};
    cf_sched_task_t tasks[] = {s_seg("X", 0, "libx265", 100), s_seg("X", 1, "libx265", 100),
                               s_seg("X", 2, "libx265", 100), s_seg("Y", 0, "libx264", 100)};
    cf_sched_result_t *res = s_run(nodes, 3, tasks, 4);
    assert_on(res, nodes, 0, "b");
    assert_on(res, nodes, 1, "b");
    assert_on(res, nodes, 2, "b");
    /* a and c tie at 100 frames / (30 fps * 4 cores): the id decides */
    assert_on(res, nodes, 3, "a");
    assert_true(fabs(s_est_of(res, 3) - 100.0 / 120.0) < 1e-12);
    assert_true(fabs(s_est_of(res, 2) - 300.0 / 120.0) < 1e-12);
    cf_sched_result_destroy(&res);
    assert_null(res);

    /* Nobody alive offers libx265: the API's reason, word for word. */
    nodes[1].alive = false;
    res = s_run(nodes, 3, tasks, 4);
    assert_int_equal(res->assignment_count, 1);
    assert_on(res, nodes, 3, "a");
    for (int t = 0; t < 3; t++)
        assert_string_equal(s_reason_of(res, t), "waiting for a node with libx265");
    cf_sched_result_destroy(&res);

    /* Exact names: "libx264" does not match "libx264rgb" or "h264". */
    cf_sched_task_t other[] = {s_seg("Z", 0, "libx264rgb", 10), s_seg("Z", 1, "h264", 10)};
    res = s_run(nodes, 3, other, 2);
    assert_int_equal(res->assignment_count, 0);
    assert_string_equal(s_reason_of(res, 0), "waiting for a node with libx264rgb");
    assert_string_equal(s_reason_of(res, 1), "waiting for a node with h264");
    cf_sched_result_destroy(&res);
}

static void test_longest_first(void **state)
{
    const double fps[] = {100};
    cf_sched_node_t nodes[] = {s_node("a", X264, fps, 1, 3)};
    cf_sched_task_t tasks[] = {s_seg("X", 0, "libx264", 50), s_seg("X", 1, "libx264", 200),
                               s_seg("X", 2, "libx264", 100), s_seg("X", 3, "libx264", 10)};
    cf_sched_result_t *res = s_run(nodes, 1, tasks, 4);
    assert_int_equal(res->assignment_count, 3);
    assert_int_equal(res->assignments[0].task, 1);
    assert_int_equal(res->assignments[1].task, 2);
    assert_int_equal(res->assignments[2].task, 0);
    /* Each estimate counts the work queued before it. */
    assert_true(res->assignments[0].est_finish_s == 2.0);
    assert_true(res->assignments[1].est_finish_s == 3.0);
    assert_true(res->assignments[2].est_finish_s == 3.5);
    assert_int_equal(res->unplaced_count, 1);
    assert_int_equal(res->unplaced[0].task, 3);
    assert_string_equal(res->unplaced[0].reason, "waiting for a free slot on a node with libx264");
    cf_sched_result_destroy(&res);

    /* Equal lengths: the higher class, then the longer wait, then the
     * composition id, then the index. */
    cf_sched_task_t ties[] = {s_seg("B", 1, "libx264", 100), s_seg("B", 0, "libx264", 100),
                              s_seg("A", 5, "libx264", 100), s_seg("C", 0, "libx264", 100)};
    ties[3].waiting_s = 30; /* under one age step: same class, but older */
    nodes[0].free_slots = 4;
    res = s_run(nodes, 1, ties, 4);
    assert_int_equal(res->assignments[0].task, 3);
    assert_int_equal(res->assignments[1].task, 2);
    assert_int_equal(res->assignments[2].task, 1);
    assert_int_equal(res->assignments[3].task, 0);
    cf_sched_result_destroy(&res);
}

static void test_earliest_finish_uses_fps(void **state)
{
    const double fast[] = {100}, slow[] = {50};
    cf_sched_node_t nodes[] = {s_node("b", X264, slow, 1, 10), s_node("a", X264, fast, 1, 10)};
    cf_sched_task_t tasks[6];
    for (int i = 0; i < 6; i++)
        tasks[i] = s_seg("X", i, "libx264", 100);
    cf_sched_result_t *res = s_run(nodes, 2, tasks, 6);
    /* a finishes at 1,2,3,4 s, b at 2,4 s; ties at 2 s and 4 s go to "a". */
    const char *expect[] = {"a", "a", "b", "a", "a", "b"};
    const double est[] = {1, 2, 2, 3, 4, 4};
    for (int t = 0; t < 6; t++) {
        assert_on(res, nodes, t, expect[t]);
        assert_true(s_est_of(res, t) == est[t]);
    }
    cf_sched_result_destroy(&res);

    /* Work already queued counts: a has 500 frames (5 s) ahead of it. */
    nodes[1].queued_frames = 500;
    res = s_run(nodes, 2, tasks, 1);
    assert_on(res, nodes, 0, "b");
    assert_true(s_est_of(res, 0) == 2.0);
    cf_sched_result_destroy(&res);
}

/* Two nodes, one twice as fast; every node works through its queue in order
 * at its fps. Each time one finishes a task the scheduler runs again with the
 * remaining work as queued frames and the freed slots. */
static void test_fast_node_gets_twice_the_frames(void **state)
{
    enum { TASKS = 120, SLOTS = 2 };
    const double fps[2][1] = {{200}, {100}};
    cf_sched_node_t nodes[] = {s_node("fast", X264, fps[0], 1, SLOTS),
                               s_node("slow", X264, fps[1], 1, SLOTS)};
    cf_sched_task_t all[TASKS];
    int64_t total = 0;
    for (int i = 0; i < TASKS; i++) {
        all[i] = s_seg("X", i, "libx264", 40 + (i * 37) % 90);
        total += all[i].frames;
    }
    double queue[2][SLOTS]; /* frames left of each task on a node, FIFO */
    int depth[2] = {0, 0};
    int64_t frames_on[2] = {0, 0};
    bool done[TASKS] = {false};
    int placed = 0, rounds = 0;
    while (placed < TASKS || depth[0] || depth[1]) {
        assert_true(++rounds < 10 * TASKS);
        cf_sched_task_t pending[TASKS];
        int map[TASKS], count = 0;
        for (int i = 0; i < TASKS; i++)
            if (!done[i]) {
                map[count] = i;
                pending[count++] = all[i];
            }
        for (int n = 0; n < 2; n++) {
            nodes[n].free_slots = SLOTS - depth[n];
            nodes[n].queued_frames = 0;
            for (int d = 0; d < depth[n]; d++)
                nodes[n].queued_frames += queue[n][d];
        }
        cf_sched_result_t *res = s_run(nodes, 2, pending, count);
        for (int i = 0; i < res->assignment_count; i++) {
            int n = res->assignments[i].node, t = map[res->assignments[i].task];
            assert_true(depth[n] < SLOTS);
            queue[n][depth[n]++] = (double)all[t].frames;
            frames_on[n] += all[t].frames;
            done[t] = true;
            placed++;
        }
        cf_sched_result_destroy(&res);
        /* Advance to the next finish. */
        double dt = INFINITY;
        for (int n = 0; n < 2; n++)
            if (depth[n] && queue[n][0] / fps[n][0] < dt)
                dt = queue[n][0] / fps[n][0];
        for (int n = 0; n < 2; n++) {
            if (!depth[n])
                continue;
            queue[n][0] -= dt * fps[n][0];
            if (queue[n][0] < 1e-9) {
                memmove(queue[n], queue[n] + 1, sizeof(double) * (size_t)(--depth[n]));
            }
        }
    }
    assert_int_equal(frames_on[0] + frames_on[1], total);
    double ratio = (double)frames_on[0] / (double)frames_on[1];
    print_message("fast %lld frames, slow %lld frames, ratio %.3f\n", (long long)frames_on[0],
                  (long long)frames_on[1], ratio);
    assert_true(ratio > 1.8 && ratio < 2.2);
}

static void test_free_slots(void **state)
{
    cf_sched_node_t nodes[] = {s_node("a", X264, NULL, 1, 2), s_node("b", X264, NULL, 1, 0),
                               s_node("c", X264, NULL, 1, 5), s_node("d", X264, NULL, 1, -3)};
    nodes[2].alive = false;
    cf_sched_task_t tasks[5];
    for (int i = 0; i < 5; i++)
        tasks[i] = s_seg("X", i, "libx264", 100 - i);
    cf_sched_result_t *res = s_run(nodes, 4, tasks, 5);
    assert_int_equal(res->assignment_count, 2);
    assert_on(res, nodes, 0, "a");
    assert_on(res, nodes, 1, "a");
    for (int t = 2; t < 5; t++)
        assert_string_equal(s_reason_of(res, t), "waiting for a free slot on a node with libx264");
    cf_sched_result_destroy(&res);
}

static void test_gpu_node_takes_cpu_work_only_when_idle(void **state)
{
    const double gfps[] = {400, 1000}, cfps[] = {100};
    cf_sched_node_t nodes[] = {s_node("g", GPU_NODE, gfps, 2, 4), s_node("c", X264, cfps, 1, 2)};
    cf_sched_task_t tasks[] = {s_seg("N", 0, "h264_nvenc", 300), s_seg("C", 0, "libx264", 100),
                               s_seg("C", 1, "libx264", 100), s_seg("C", 2, "libx264", 100)};
    /* GPU work for g in this round: CPU work goes to c although g is
     * faster, and to g only for what c has no slot for. */
    cf_sched_result_t *res = s_run(nodes, 2, tasks, 4);
    assert_on(res, nodes, 0, "g");
    assert_on(res, nodes, 1, "c");
    assert_on(res, nodes, 2, "c");
    assert_on(res, nodes, 3, "g");
    assert_true(s_est_of(res, 3) == 400.0 / 400.0); /* behind the 300 GPU frames */
    cf_sched_result_destroy(&res);

    /* No GPU work: g is idle and competes on speed (0.25 s a task vs 1 s). */
    res = s_run(nodes, 2, tasks + 1, 3);
    for (int t = 0; t < 3; t++)
        assert_on(res, nodes, t, "g");
    cf_sched_result_destroy(&res);

    /* The GPU segment may not go to g (it failed there): g is idle. */
    const char *const not_g[] = {"g"};
    tasks[0].excluded = not_g;
    tasks[0].excluded_count = 1;
    res = s_run(nodes, 2, tasks, 4);
    assert_string_equal(s_reason_of(res, 0),
                        "every node with h264_nvenc is excluded from this task");
    for (int t = 1; t < 4; t++)
        assert_on(res, nodes, t, "g");
    cf_sched_result_destroy(&res);

    /* The GPU node is full: GPU work waits, CPU work stays on c. */
    tasks[0].excluded_count = 0;
    nodes[0].free_slots = 0;
    res = s_run(nodes, 2, tasks, 4);
    assert_string_equal(s_reason_of(res, 0), "waiting for a free slot on a node with h264_nvenc");
    assert_on(res, nodes, 1, "c");
    assert_on(res, nodes, 2, "c");
    assert_string_equal(s_reason_of(res, 3), "waiting for a free slot on a node with libx264");
    cf_sched_result_destroy(&res);

    /* Audio is CPU work too. */
    nodes[0].free_slots = 4;
    cf_sched_task_t audio[] = {tasks[0], s_audio("N", 2400)};
    res = s_run(nodes, 2, audio, 2);
    assert_on(res, nodes, 1, "c");
    assert_true(s_est_of(res, 1) == 120.0 / 100.0); /* 2400 / 20 frames at c's fps */
    cf_sched_result_destroy(&res);

    assert_true(cf_sched_encoder_is_gpu("hevc_nvenc"));
    assert_true(cf_sched_encoder_is_gpu("h264_qsv"));
    assert_true(cf_sched_encoder_is_gpu("h264_vaapi"));
    assert_false(cf_sched_encoder_is_gpu("libx264"));
    assert_false(cf_sched_encoder_is_gpu("_nvenc"));
    assert_false(cf_sched_encoder_is_gpu(NULL));
}

static void test_exclusions(void **state)
{
    const double fast[] = {1000}, slow[] = {10};
    cf_sched_node_t nodes[] = {s_node("a", X264, fast, 1, 4), s_node("b", X264, slow, 1, 4)};
    const char *const not_a[] = {"a"}, *const not_ab[] = {"b", "a"};
    cf_sched_task_t tasks[] = {s_seg("X", 0, "libx264", 100), s_seg("X", 1, "libx264", 100),
                               s_seg("X", 2, "libx264", 100), s_audio("X", 100)};
    tasks[1].excluded = not_a;
    tasks[1].excluded_count = 1;
    tasks[2].excluded = not_ab;
    tasks[2].excluded_count = 2;
    tasks[3].excluded = not_ab;
    tasks[3].excluded_count = 2;
    cf_sched_result_t *res = s_run(nodes, 2, tasks, 4);
    assert_on(res, nodes, 0, "a");
    assert_on(res, nodes, 1, "b");
    assert_string_equal(s_reason_of(res, 2), "every node with libx264 is excluded from this task");
    assert_string_equal(s_reason_of(res, 3), "every live node is excluded from this task");
    cf_sched_result_destroy(&res);
}

static void test_aging(void **state)
{
    cf_sched_node_t nodes[] = {s_node("a", X264, NULL, 1, 1)};
    cf_sched_task_t tasks[] = {s_seg("H", 0, "libx264", 100), s_seg("L", 0, "libx264", 100)};
    tasks[0].priority = CF_PRIORITY_HIGH;
    tasks[1].priority = CF_PRIORITY_LOW;
    /* low + 1 step < high; low + 2 steps ties the class and loses on it;
     * low + 3 steps passes. */
    const double waits[] = {0, 119, 120, 179.9, 180};
    const int winner[] = {0, 0, 0, 0, 1};
    for (int i = 0; i < 5; i++) {
        tasks[1].waiting_s = waits[i];
        cf_sched_result_t *res = s_run(nodes, 1, tasks, 2);
        assert_int_equal(res->assignments[0].task, winner[i]);
        cf_sched_result_destroy(&res);
    }
    /* Within a class the longest goes first. */
    tasks[1].waiting_s = 120;
    tasks[1].frames = 500;
    cf_sched_result_t *res = s_run(nodes, 1, tasks, 2);
    assert_int_equal(res->assignments[0].task, 1);
    cf_sched_result_destroy(&res);

    /* A steady stream of fresh high tasks, one slot, one task a round of
     * 30 s: the low one waits, and gets through once it has waited 180 s. */
    tasks[1].frames = 100;
    for (int round = 0; round < 10; round++) {
        tasks[1].waiting_s = 30.0 * round;
        tasks[0].index = round;
        res = s_run(nodes, 1, tasks, 2);
        assert_int_equal(res->assignments[0].task, round < 6 ? 0 : 1);
        cf_sched_result_destroy(&res);
        if (round >= 6) {
            assert_int_equal(round, 6);
            break;
        }
    }

    /* The step is a parameter: 10 s lets it past after 30 s. */
    tasks[1].waiting_s = 30;
    cf_sched_input_t in = {
        .nodes = nodes, .node_count = 1, .tasks = tasks, .task_count = 2, .age_step_s = 10};
    res = cf_schedule(&in);
    assert_int_equal(res->assignments[0].task, 1);
    cf_sched_result_destroy(&res);
    in.age_step_s = NAN; /* the default, 60 s */
    res = cf_schedule(&in);
    assert_int_equal(res->assignments[0].task, 0);
    cf_sched_result_destroy(&res);
}

static void test_audio_counts_light(void **state)
{
    const double fps[] = {100};
    cf_sched_node_t nodes[] = {s_node("a", X264, fps, 1, 1)};
    /* 2400 frames of audio count as 120: the 200-frame segment goes first. */
    cf_sched_task_t tasks[] = {s_audio("X", 2400), s_seg("X", 0, "libx264", 200)};
    cf_sched_result_t *res = s_run(nodes, 1, tasks, 2);
    assert_on(res, nodes, 1, "a");
    assert_string_equal(s_reason_of(res, 0), "waiting for a free slot");
    cf_sched_result_destroy(&res);
    nodes[0].alive = false;
    res = s_run(nodes, 1, tasks, 1);
    assert_string_equal(s_reason_of(res, 0), "waiting for a live node");
    cf_sched_result_destroy(&res);
}

static void test_assemble(void **state)
{
    cf_sched_node_t nodes[] = {s_node("a", X264, NULL, 1, 1), s_node("b", X264, NULL, 1, 1),
                               s_node("c", X264, NULL, 1, 1)};
    const char *const holders[] = {"b", "a"};
    cf_sched_task_t tasks[] = {{.composition = "X",
                                .kind = CF_TASK_ASSEMBLE,
                                .frames = 1000,
                                .preferred = holders,
                                .preferred_count = 2},
                               s_seg("Y", 0, "libx264", 5000)};
    /* The biggest holder gets it, although the longer segment ranks after
     * it and c would be as quick. */
    cf_sched_result_t *res = s_run(nodes, 3, tasks, 2);
    assert_on(res, nodes, 0, "b");
    assert_on(res, nodes, 1, "a");
    cf_sched_result_destroy(&res);

    /* Dead: the next-best holder. */
    nodes[1].alive = false;
    res = s_run(nodes, 3, tasks, 1);
    assert_on(res, nodes, 0, "a");
    cf_sched_result_destroy(&res);

    /* Alive but full: the next-best holder with a slot. */
    nodes[1].alive = true;
    nodes[1].free_slots = 0;
    res = s_run(nodes, 3, tasks, 1);
    assert_on(res, nodes, 0, "a");
    cf_sched_result_destroy(&res);

    /* Every holder full: it waits for the best one (c is not a holder). */
    nodes[0].free_slots = 0;
    res = s_run(nodes, 3, tasks, 2);
    assert_string_equal(s_reason_of(res, 0), "waiting for a free slot on b");
    assert_on(res, nodes, 1, "c");
    cf_sched_result_destroy(&res);

    /* Allowed to exceed: the best holder takes it anyway, and still has no
     * slot for anything else. */
    cf_sched_input_t in = {.nodes = nodes,
                           .node_count = 3,
                           .tasks = tasks,
                           .task_count = 2,
                           .assemble_may_exceed_slots = true};
    nodes[2].free_slots = 0;
    res = cf_schedule(&in);
    assert_on(res, nodes, 0, "b");
    assert_string_equal(s_reason_of(res, 1), "waiting for a free slot on a node with libx264");
    cf_sched_result_destroy(&res);

    /* Excluded from b: a. */
    const char *const not_b[] = {"b"};
    nodes[0].free_slots = 1;
    tasks[0].excluded = not_b;
    tasks[0].excluded_count = 1;
    res = s_run(nodes, 3, tasks, 1);
    assert_on(res, nodes, 0, "a");
    cf_sched_result_destroy(&res);

    /* No holder alive: any node, by earliest finish. */
    tasks[0].excluded_count = 0;
    nodes[0].alive = nodes[1].alive = false;
    nodes[2].free_slots = 1;
    res = s_run(nodes, 3, tasks, 1);
    assert_on(res, nodes, 0, "c");
    cf_sched_result_destroy(&res);
}

static void test_dead_nodes_get_nothing(void **state)
{
    const double fast[] = {10000};
    cf_sched_node_t nodes[] = {s_node("a", X264, fast, 1, 8), s_node("b", X264, NULL, 1, 8),
                               s_node(NULL, X264, fast, 1, 8)};
    nodes[0].alive = false;
    cf_sched_task_t tasks[4];
    for (int i = 0; i < 4; i++)
        tasks[i] = s_seg("X", i, "libx264", 100);
    cf_sched_result_t *res = s_run(nodes, 3, tasks, 4);
    for (int t = 0; t < 4; t++)
        assert_on(res, nodes, t, "b");
    cf_sched_result_destroy(&res);
    nodes[1].alive = false;
    res = s_run(nodes, 3, tasks, 4);
    assert_int_equal(res->assignment_count, 0);
    assert_string_equal(s_reason_of(res, 0), "waiting for a node with libx264");
    cf_sched_result_destroy(&res);
}

/* A small deterministic generator for the shuffles and the random rounds. */
static uint32_t s_rand(uint64_t *seed)
{
    *seed = *seed * 6364136223846793005ULL + 1442695040888963407ULL;
    return (uint32_t)(*seed >> 33);
}

static const char *const POOL[] = {"libx264", "libx265", "h264_nvenc", "hevc_qsv"};
static const char *const IDS[] = {"n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7"};

typedef struct {
    cf_sched_node_t nodes[8];
    const char *encoders[8][4];
    double fps[8][4];
    cf_sched_task_t tasks[40];
    const char *excluded[40][3];
    const char *preferred[40][3];
    int node_count, task_count;
} s_world_t;

/* Up to MAX_NODES nodes and MAX_TASKS tasks (exactly that many when EXACT),
 * with every kind of nonsense a caller could pass. */
static void s_random_world(s_world_t *w, uint64_t *seed, int max_nodes, int max_tasks, bool exact)
{
    memset(w, 0, sizeof *w);
    w->node_count = exact ? max_nodes : (int)(s_rand(seed) % (unsigned)(max_nodes + 1));
    w->task_count = exact ? max_tasks : (int)(s_rand(seed) % (unsigned)(max_tasks + 1));
    for (int n = 0; n < w->node_count; n++) {
        int count = (int)(s_rand(seed) % 4);
        for (int e = 0; e < count; e++) {
            w->encoders[n][e] = POOL[s_rand(seed) % 4];
            w->fps[n][e] = s_rand(seed) % 5 == 0 ? NAN : (double)(s_rand(seed) % 400) - 20;
        }
        w->nodes[n] = s_node(IDS[n], w->encoders[n], w->fps[n], count, (int)(s_rand(seed) % 4));
        w->nodes[n].alive = s_rand(seed) % 5 != 0;
        w->nodes[n].cores = (int)(s_rand(seed) % 9) - 1;
        w->nodes[n].queued_frames = (double)(s_rand(seed) % 1000);
    }
    for (int t = 0; t < w->task_count; t++) {
        cf_sched_task_t *task = &w->tasks[t];
        task->composition = IDS[s_rand(seed) % 3];
        task->index = t;
        task->kind = (cf_task_kind_t)(s_rand(seed) % 5 == 0 ? s_rand(seed) % 4 : CF_TASK_SEGMENT);
        task->encoder = POOL[s_rand(seed) % 4];
        task->frames = (int64_t)(s_rand(seed) % 500);
        task->priority = (cf_priority_t)(s_rand(seed) % 3);
        task->waiting_s = (double)(s_rand(seed) % 300);
        task->excluded_count = (int)(s_rand(seed) % 3);
        for (int i = 0; i < task->excluded_count; i++)
            w->excluded[t][i] = IDS[s_rand(seed) % 8];
        task->excluded = w->excluded[t];
        task->preferred_count = (int)(s_rand(seed) % 3);
        for (int i = 0; i < task->preferred_count; i++)
            w->preferred[t][i] = IDS[s_rand(seed) % 8];
        task->preferred = w->preferred[t];
    }
}

/* What happened to each task, by what it is rather than where it sits. */
static void s_outcome(const cf_sched_result_t *res, const cf_sched_node_t *nodes,
                      const int *task_of, char out[][CF_SCHED_REASON_LEN + 16])
{
    for (int i = 0; i < res->assignment_count; i++)
        snprintf(out[task_of[res->assignments[i].task]], CF_SCHED_REASON_LEN + 16, "on %s %.9g",
                 nodes[res->assignments[i].node].id, res->assignments[i].est_finish_s);
    for (int i = 0; i < res->unplaced_count; i++)
        snprintf(out[task_of[res->unplaced[i].task]], CF_SCHED_REASON_LEN + 16, "%s",
                 res->unplaced[i].reason);
}

static void test_deterministic_under_shuffles(void **state)
{
    uint64_t seed = 42;
    s_world_t w;
    s_random_world(&w, &seed, 8, 40, true);
    /* Nodes in identical pairs, so that ties are common and only the ids can
     * break them. */
    for (int n = 0; n < 8; n++) {
        w.nodes[n] = (cf_sched_node_t){.id = IDS[n],
                                       .encoders = w.encoders[n],
                                       .fps = w.fps[n & ~1],
                                       .encoder_count = (n / 2) % 4 + 1,
                                       .cores = n / 2 + 1,
                                       .free_slots = 3,
                                       .alive = n != 5};
        for (int e = 0; e < 4; e++)
            w.encoders[n][e] = POOL[(n / 2 + e) % 4];
    }
    /* Coarse lengths and waits, so that tasks tie up to their index too. */
    for (int t = 0; t < 40; t++) {
        w.tasks[t].frames = 100 * (1 + t % 3);
        w.tasks[t].waiting_s = 30.0 * (t % 2);
        w.tasks[t].composition = IDS[t % 4 == 0];
        w.tasks[t].priority = t % 5 ? CF_PRIORITY_DEFAULT : CF_PRIORITY_LOW;
    }
    static char first[40][CF_SCHED_REASON_LEN + 16], again[40][CF_SCHED_REASON_LEN + 16];
    int identity[40];
    for (int t = 0; t < 40; t++)
        identity[t] = t;
    cf_sched_result_t *res = s_run(w.nodes, 8, w.tasks, 40);
    assert_true(res->assignment_count > 5 && res->unplaced_count > 0);
    s_outcome(res, w.nodes, identity, first);
    cf_sched_result_destroy(&res);
    for (int round = 0; round < 25; round++) {
        cf_sched_node_t nodes[8];
        cf_sched_task_t tasks[40];
        int node_perm[8], task_of[40];
        for (int i = 0; i < 8; i++)
            node_perm[i] = i;
        for (int i = 0; i < 40; i++)
            task_of[i] = i;
        for (int i = 7; i > 0; i--) {
            int j = (int)(s_rand(&seed) % (unsigned)(i + 1)), tmp = node_perm[i];
            node_perm[i] = node_perm[j];
            node_perm[j] = tmp;
        }
        for (int i = 39; i > 0; i--) {
            int j = (int)(s_rand(&seed) % (unsigned)(i + 1)), tmp = task_of[i];
            task_of[i] = task_of[j];
            task_of[j] = tmp;
        }
        for (int i = 0; i < 8; i++)
            nodes[i] = w.nodes[node_perm[i]];
        for (int i = 0; i < 40; i++)
            tasks[i] = w.tasks[task_of[i]];
        res = s_run(nodes, 8, tasks, 40);
        memset(again, 0, sizeof again);
        s_outcome(res, nodes, task_of, again);
        cf_sched_result_destroy(&res);
        for (int t = 0; t < 40; t++)
            assert_string_equal(again[t], first[t]);
    }
}

static void test_garbage_inputs(void **state)
{
    assert_null(cf_schedule(NULL));
    cf_sched_input_t empty = {0};
    cf_sched_result_t *res = cf_schedule(&empty);
    assert_non_null(res);
    assert_int_equal(res->assignment_count, 0);
    assert_int_equal(res->unplaced_count, 0);
    cf_sched_result_destroy(&res);
    cf_sched_result_destroy(&res); /* safe on NULL */
    cf_sched_result_destroy(NULL);

    /* Counts without arrays, and negative counts. */
    cf_sched_input_t hollow = {.node_count = 5, .task_count = 5};
    res = cf_schedule(&hollow);
    assert_int_equal(res->assignment_count + res->unplaced_count, 0);
    cf_sched_result_destroy(&res);

    /* Tasks but no nodes. */
    cf_sched_task_t one[] = {s_seg("X", 0, "libx264", 10)};
    cf_sched_input_t lonely = {.tasks = one, .task_count = 1, .node_count = -4};
    res = cf_schedule(&lonely);
    assert_string_equal(res->unplaced[0].reason, "waiting for a node with libx264");
    cf_sched_result_destroy(&res);

    /* Bad speeds are unknown: 30 fps a core; cores below 1 count as 1. */
    const double bad[] = {NAN, -5, INFINITY};
    const char *const three[] = {"libx264", "libx265", "h264_nvenc"};
    cf_sched_node_t nodes[] = {s_node("a", three, bad, 3, 9), s_node("b", NULL, NULL, 3, 9),
                               s_node("c", three, NULL, 3, 9)};
    nodes[0].cores = 2;
    nodes[0].queued_frames = NAN;
    nodes[2].cores = -7;
    nodes[2].queued_frames = -100;
    cf_sched_task_t tasks[] = {s_seg("X", 0, "libx264", 600), s_seg("X", 1, "libx265", -50),
                               s_seg("X", 2, NULL, 10),       s_seg(NULL, 3, "", 10),
                               s_seg("X", 4, "libx264", 10),  s_seg("X", 5, "libx264", 10)};
    tasks[4].kind = (cf_task_kind_t)7;
    tasks[5].priority = (cf_priority_t)99;
    tasks[5].waiting_s = NAN;
    tasks[5].excluded_count = 3; /* but no list */
    tasks[0].preferred_count = 2;
    res = s_run(nodes, 3, tasks, 6);
    assert_on(res, nodes, 0, "a");
    assert_true(s_est_of(res, 0) == 600.0 / 60.0);
    assert_on(res, nodes, 1, "c"); /* 0 frames: 0 s on a cores=1 c, vs 10 s behind a's 600 */
    assert_true(s_est_of(res, 1) == 0.0);
    assert_string_equal(s_reason_of(res, 2), "segment has no encoder");
    assert_string_equal(s_reason_of(res, 3), "segment has no encoder");
    assert_string_equal(s_reason_of(res, 4), "unknown task kind");
    assert_on(res, nodes, 5, "c");
    assert_true(s_est_of(res, 5) == 10.0 / 30.0);
    cf_sched_result_destroy(&res);
}

/* Whether node N may run task T (alive, named, not excluded, offering a
 * segment's encoder) with SLOTS_LEFT slots; invalid kinds never. */
static bool s_may_run(const s_world_t *w, int t, int n, int slots_left)
{
    const cf_sched_node_t *node = &w->nodes[n];
    const cf_sched_task_t *task = &w->tasks[t];
    if (!node->alive || !node->id || slots_left <= 0 || task->kind > CF_TASK_ASSEMBLE)
        return false;
    for (int x = 0; x < task->excluded_count; x++)
        if (strcmp(task->excluded[x], node->id) == 0)
            return false;
    if (task->kind != CF_TASK_SEGMENT)
        return true;
    for (int e = 0; e < node->encoder_count; e++)
        if (strcmp(node->encoders[e], task->encoder) == 0)
            return true;
    return false;
}

static bool s_is_cpu_work(const cf_sched_task_t *task)
{
    return task->kind == CF_TASK_AUDIO ||
           (task->kind == CF_TASK_SEGMENT && !cf_sched_encoder_is_gpu(task->encoder));
}

/* Random rounds (fixed seed): every assignment legal, no node over its free
 * slots, CPU work on a GPU node that GPU work wanted only when no other node
 * had a slot for it, nothing left waiting that a node with a slot left could
 * have run, and the same input twice gives the same answer. */
static void test_random_rounds_hold_the_rules(void **state)
{
    uint64_t seed = 2024;
    int assigned = 0, waited = 0, overflow = 0;
    for (int iter = 0; iter < 3000; iter++) {
        s_world_t w;
        s_random_world(&w, &seed, 8, 40, false);
        cf_sched_input_t in = {.nodes = w.nodes,
                               .node_count = w.node_count,
                               .tasks = w.tasks,
                               .task_count = w.task_count,
                               .assemble_may_exceed_slots = iter % 2};
        cf_sched_result_t *res = cf_schedule(&in), *twice = cf_schedule(&in);
        assert_non_null(res);
        assert_int_equal(res->assignment_count + res->unplaced_count, w.task_count);
        assert_int_equal(res->assignment_count, twice->assignment_count);
        assert_memory_equal(res->assignments, twice->assignments,
                            sizeof(cf_sched_assignment_t) * (size_t)res->assignment_count);
        assert_memory_equal(res->unplaced, twice->unplaced,
                            sizeof(cf_sched_unplaced_t) * (size_t)res->unplaced_count);
        cf_sched_result_destroy(&twice);
        /* GPU nodes that some GPU segment of the round could use. */
        bool wanted[8] = {false};
        for (int n = 0; n < w.node_count; n++)
            for (int t = 0; t < w.task_count; t++)
                wanted[n] = wanted[n] || (w.tasks[t].kind == CF_TASK_SEGMENT &&
                                          cf_sched_encoder_is_gpu(w.tasks[t].encoder) &&
                                          s_may_run(&w, t, n, w.nodes[n].free_slots));
        int used[8] = {0}, seen[40] = {0};
        for (int i = 0; i < res->assignment_count; i++) {
            const cf_sched_assignment_t *a = &res->assignments[i];
            assert_in_range(a->task, 0, w.task_count - 1);
            assert_in_range(a->node, 0, w.node_count - 1);
            seen[a->task]++;
            assert_true(s_may_run(&w, a->task, a->node, 1));
            assert_true(a->est_finish_s >= 0 && !isnan(a->est_finish_s));
            /* An assembly allowed to exceed may go to a full holder. */
            if (++used[a->node] > w.nodes[a->node].free_slots)
                assert_true(in.assemble_may_exceed_slots &&
                            w.tasks[a->task].kind == CF_TASK_ASSEMBLE);
        }
        for (int i = 0; i < res->assignment_count; i++) {
            int t = res->assignments[i].task, g = res->assignments[i].node;
            if (!wanted[g] || !s_is_cpu_work(&w.tasks[t]))
                continue;
            overflow++;
            /* Slots only run out during a round: free at the end, free then. */
            for (int n = 0; n < w.node_count; n++)
                if (!wanted[n])
                    assert_false(s_may_run(&w, t, n, w.nodes[n].free_slots - used[n]));
        }
        for (int i = 0; i < res->unplaced_count; i++) {
            int t = res->unplaced[i].task;
            seen[t]++;
            assert_true(res->unplaced[i].reason[0] != '\0');
            if (strncmp(res->unplaced[i].reason, "waiting for a free slot on ", 27) == 0 &&
                w.tasks[t].kind == CF_TASK_ASSEMBLE)
                continue; /* waits for its holder */
            for (int n = 0; n < w.node_count; n++)
                assert_false(s_may_run(&w, t, n, w.nodes[n].free_slots - used[n]));
        }
        for (int t = 0; t < w.task_count; t++)
            assert_int_equal(seen[t], 1);
        assigned += res->assignment_count;
        waited += res->unplaced_count;
        cf_sched_result_destroy(&res);
    }
    print_message("random rounds: %d assignments (%d CPU tasks overflowing onto GPU nodes), %d "
                  "unplaced\n",
                  assigned, overflow, waited);
    assert_true(assigned > 1000 && waited > 1000 && overflow > 20);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_capability_routing),
        cmocka_unit_test(test_longest_first),
        cmocka_unit_test(test_earliest_finish_uses_fps),
        cmocka_unit_test(test_fast_node_gets_twice_the_frames),
        cmocka_unit_test(test_free_slots),
        cmocka_unit_test(test_gpu_node_takes_cpu_work_only_when_idle),
        cmocka_unit_test(test_exclusions),
        cmocka_unit_test(test_aging),
        cmocka_unit_test(test_audio_counts_light),
        cmocka_unit_test(test_assemble),
        cmocka_unit_test(test_dead_nodes_get_nothing),
        cmocka_unit_test(test_deterministic_under_shuffles),
        cmocka_unit_test(test_garbage_inputs),
        cmocka_unit_test(test_random_rounds_hold_the_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
