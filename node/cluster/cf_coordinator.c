/* cf_coordinator: dispatch of the cluster's work. See cf_coordinator.h. */
#define _GNU_SOURCE
#include "cf_coordinator.h"

#include <czmq.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cf_comp.h"
#include "cf_db.h"
#include "cf_db_work.h"
#include "cf_log.h"
#include "cf_node.h"
#include "cf_plan.h"
#include "cf_proto.h"
#include "cf_queue.h"
#include "cf_render_stages.h"
#include "cf_scheduler.h"
#include "cf_work_bus.h"

#define S_PROGRESS_WRITE_MS 1000
#define S_SILENCE_MS        30000 /* an encoding task unheard of this long is retried */

/* What the coordinator remembers of a task it sent (lost with it: a new
 * coordinator voids every assignment anyway). */
typedef struct {
    int64_t sent_ms;
    int64_t frames; /* the task's, for PROGRESS */
    bool accepted;
    double progress;
    bool progress_dirty;
} s_sent_t;

/* An open composition's plan, read from Postgres once and kept while the
 * composition is in the work list (a plan never changes once stored; a
 * copy of what Postgres holds, not state of its own). */
typedef struct {
    cf_plan_t *plan;
    char *needed; /* the clip set SUBSET was written for ("101": clips 0 and 2) */
    char *subset; /* the plan as sent for that set: other clips' sources "-" */
} s_plan_entry_t;

static void s_plan_entry_free(void **item)
{
    s_plan_entry_t *e = *item;
    if (e) {
        cf_plan_destroy(&e->plan);
        free(e->needed);
        free(e->subset);
        free(e);
    }
    *item = NULL;
}

/* A planning in progress on its own thread. */
typedef struct {
    cf_coordinator_t *owner;
    char id[CF_DB_ID_LEN];
    cf_dbw_fence_t fence;
    char holder[37];
    pthread_t thread;
    atomic_bool done;
    atomic_bool cancel;
    cf_encoder_t encoder; /* chosen at intake from what the cluster offers */
} s_planning_t;

struct cf_coordinator_t {
    cf_coordinator_options_t opts;
    char *redis_url, *redis_prefix;
    pthread_t thread;
    atomic_bool stop;
    pthread_mutex_t lock;
    cf_coordinator_stats_t stats;

    /* The thread's own. */
    char my_id[37];
    int64_t epoch; /* 0: not active */
    cf_dbw_fence_t fence;
    cf_queue_t *queue;
    zsock_t *inbox, *out;
    zhashx_t *sent; /* "COMP/IDX/ATTEMPT" -> s_sent_t */
    s_planning_t *planning;
    int64_t next_progress_ms;
    zhashx_t *parked;      /* id -> int64_t* (ms): waiting for an encoder, not before then */
    zhashx_t *frames_sent; /* id -> int64_t*: the last "frames" event's count */
    zhashx_t *plans;       /* id -> s_plan_entry_t: open compositions' plans, read once */
    cf_queue_item_t held;  /* taken off the queue, its take not known to have applied */
    bool holding;
    int64_t next_idle_note_ms; /* when queued work next says why it waits */
};

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#define S_COUNT(self, field)                                                                       \
    do {                                                                                           \
        pthread_mutex_lock(&(self)->lock);                                                         \
        (self)->stats.field++;                                                                     \
        pthread_mutex_unlock(&(self)->lock);                                                       \
    } while (0)

void cf_coordinator_options_default(cf_coordinator_options_t *opts)
{
    memset(opts, 0, sizeof *opts);
    opts->redis_prefix = "cf:";
    opts->accept_timeout_ms = 10000;
    opts->tick_ms = 100;
}

/* The key of an assignment: composition, task, attempt and node (an
 * attempt not counted is reissued to another node under the same number). */
static void s_key(char *out, size_t outlen, const char *comp, int index, int attempt,
                  const char *node)
{
    snprintf(out, outlen, "%s/%d/%d/%s", comp, index, attempt, node ? node : "");
}

/* ------------------------------------------------------------------ planning */

/* The task list of PLAN: its segments, the audio, the assembly. */
static cf_dbw_task_plan_t *s_tasks_of(const cf_plan_t *plan, int *count_p)
{
    int n = plan->segment_count + 2;
    cf_dbw_task_plan_t *tasks = calloc((size_t)n, sizeof *tasks);
    if (!tasks)
        return NULL;
    for (int s = 0; s < plan->segment_count; s++)
        tasks[s] = (cf_dbw_task_plan_t){s, CF_TASK_SEGMENT, plan->segments[s].first_frame,
                                        plan->segments[s].first_frame + plan->segments[s].frames};
    tasks[plan->segment_count] =
        (cf_dbw_task_plan_t){plan->segment_count, CF_TASK_AUDIO, 0, plan->total_frames};
    tasks[plan->segment_count + 1] =
        (cf_dbw_task_plan_t){plan->segment_count + 1, CF_TASK_ASSEMBLE, 0, plan->total_frames};
    *count_p = n;
    return tasks;
}

static void *s_plan_thread(void *arg)
{
    s_planning_t *p = arg;
    cf_coordinator_t *self = p->owner;
    cf_db_t *db = self->opts.db;
    char err[1024] = "", why[512];
    cf_db_composition_t comp;
    memset(&comp, 0, sizeof comp);
    cf_comp_t *spec = NULL;
    cf_render_job_t *job = NULL;
    char *plan_json = NULL;
    cf_dbw_task_plan_t *tasks = NULL;
    const char *code = "render_failed";
    int rc = cf_db_composition_get(db, p->id, &comp, err, sizeof err);
    if (rc != CF_DB_OK)
        goto end;
    cf_comp_errors_t problems = {0};
    const char *text = comp.spec_json ? comp.spec_json : "";
    spec = cf_comp_parse(text, strlen(text), &problems);
    if (!spec) {
        char *joined = cf_comp_errors_join(&problems);
        snprintf(err, sizeof err, "invalid composition: %s", joined ? joined : "unparseable");
        free(joined);
        cf_comp_errors_free(&problems);
        code = "invalid_composition";
        rc = -1;
        goto end;
    }
    cf_comp_errors_free(&problems);
    cf_render_opts_t ro = self->opts.prepare;
    ro.cancel = &p->cancel;
    ro.encoder = p->encoder;
    job = cf_render_prepare(spec, &ro, err, sizeof err);
    if (!job) {
        rc = -1;
        goto end;
    }
    const cf_plan_t *plan = cf_render_job_plan(job);
    int count = 0;
    plan_json = cf_plan_to_json(plan);
    tasks = s_tasks_of(plan, &count);
    if (!plan_json || !tasks) {
        snprintf(err, sizeof err, "out of memory");
        rc = -1;
        goto end;
    }
    /* Postgres away: keep the plan and try again (for a lease TTL or so; a
     * successor replans what is left in planning). */
    for (int tries = 0; tries < 10 && !atomic_load(&p->cancel); tries++) {
        rc = cf_dbw_plan(db, &p->fence, p->id, plan_json, cf_render_job_encoder(job), tasks, count,
                         err, sizeof err);
        if (rc != CF_DB_UNAVAILABLE)
            break;
        zclock_sleep(1000);
    }
    if (rc == CF_DB_OK) {
        S_COUNT(self, planned);
        cf_log_info("coordinator", "%s: planned %lld frames in %d segments (%s)", p->id,
                    (long long)plan->total_frames, plan->segment_count, cf_render_job_encoder(job));
    }
end:
    if (rc != CF_DB_OK)
        cf_log_info("coordinator", "%s: planning ended (%d): %s", p->id, rc, err);
    if (rc != CF_DB_OK && !atomic_load(&p->cancel) && rc != CF_DB_STALE &&
        rc != CF_DB_UNAVAILABLE) {
        for (char *c = err; *c; c++)
            if (*c == '\n')
                *c = ';';
        cf_log_warn("coordinator", "%s: planning failed: %s", p->id, err);
        cf_dbw_fail(db, &p->fence, p->id, code, err, why, sizeof why);
    }
    free(tasks);
    free(plan_json);
    cf_render_job_destroy(&job);
    cf_comp_destroy(&spec);
    cf_db_composition_clear(&comp);
    atomic_store(&p->done, true);
    return NULL;
}

static void s_planning_reap(cf_coordinator_t *self, bool wait)
{
    s_planning_t *p = self->planning;
    if (!p)
        return;
    if (wait)
        atomic_store(&p->cancel, true);
    if (!wait && !atomic_load(&p->done))
        return;
    pthread_join(p->thread, NULL);
    free(p);
    self->planning = NULL;
}

/* ------------------------------------------------------------------ the cluster */

typedef struct {
    char id[37];
    char http[260];
    bool alive;
    bool gone; /* known to have gone or left (not merely still connecting) */
    int slots, cores;
    int encoder_count;
    const char *encoders[16];
    double fps[16];
    int active;         /* tasks assigned/encoding on it */
    double queued;      /* their remaining frames */
    int64_t held_bytes; /* segment bytes it holds, for one composition at a time */
} s_member_t;

typedef struct {
    json_t *snapshot;
    s_member_t *members;
    int count;
} s_view_t;

static void s_member_caps(s_member_t *m, json_t *caps)
{
    m->slots = (int)json_integer_value(json_object_get(caps, "slots"));
    m->cores = (int)json_integer_value(json_object_get(caps, "cores"));
    json_t *encs = json_object_get(caps, "encoders");
    size_t i;
    json_t *e;
    json_array_foreach(encs, i, e)
    {
        if (m->encoder_count >= 16)
            break;
        const char *name = json_string_value(json_object_get(e, "name"));
        if (!name)
            continue;
        m->encoders[m->encoder_count] = name;
        m->fps[m->encoder_count++] = json_number_value(json_object_get(e, "fps"));
    }
}

/* This node and its peers, from the node's view (borrowed strings live as
 * long as the snapshot). */
static int s_view(cf_coordinator_t *self, s_view_t *view)
{
    memset(view, 0, sizeof *view);
    view->snapshot = cf_node_snapshot(self->opts.node);
    if (!view->snapshot)
        return -1;
    json_t *peers = json_object_get(view->snapshot, "peers");
    size_t n = json_array_size(peers) + 1;
    view->members = calloc(n, sizeof *view->members);
    if (!view->members)
        return -1;
    s_member_t *me = &view->members[view->count++];
    snprintf(me->id, sizeof me->id, "%s", self->my_id);
    snprintf(me->http, sizeof me->http, "%s",
             json_string_value(json_object_get(view->snapshot, "http_endpoint")) ?: "");
    me->alive = true;
    s_member_caps(me, json_object_get(view->snapshot, "capabilities"));
    size_t i;
    json_t *p;
    json_array_foreach(peers, i, p)
    {
        const char *id = json_string_value(json_object_get(p, "id"));
        const char *state = json_string_value(json_object_get(p, "state"));
        if (!id || strlen(id) != 36)
            continue;
        s_member_t *m = &view->members[view->count++];
        snprintf(m->id, sizeof m->id, "%s", id);
        snprintf(m->http, sizeof m->http, "%s",
                 json_string_value(json_object_get(p, "http_endpoint")) ?: "");
        m->alive = state && !strcmp(state, "alive");
        m->gone = state && (!strcmp(state, "gone") || !strcmp(state, "left"));
        s_member_caps(m, json_object_get(p, "capabilities"));
    }
    return 0;
}

static void s_view_clear(s_view_t *view)
{
    free(view->members);
    json_decref(view->snapshot);
    memset(view, 0, sizeof *view);
}

static bool s_view_offers(const s_view_t *view, const char *encoder)
{
    for (int i = 0; i < view->count; i++) {
        const s_member_t *m = &view->members[i];
        for (int e = 0; m->alive && m->slots > 0 && e < m->encoder_count; e++)
            if (!strcmp(m->encoders[e], encoder))
                return true;
    }
    return false;
}

static s_member_t *s_member(s_view_t *view, const char *id)
{
    for (int i = 0; id && i < view->count; i++)
        if (!strcmp(view->members[i].id, id))
            return &view->members[i];
    return NULL;
}

/* ------------------------------------------------------------------ intake */

/* The encoder a composition gets in this cluster, or NULL (with the one it
 * waits for in WANT) when no live node offers it. "auto" takes the GPU
 * when a live node has one for the codec. */
static bool s_choose_encoder(const cf_comp_t *spec, const s_view_t *view, cf_encoder_t *encoder,
                             const char **want)
{
    bool hevc = spec->video_codec == CF_CODEC_HEVC;
    const char *cpu = hevc ? "libx265" : "libx264", *gpu = hevc ? "hevc_nvenc" : "h264_nvenc";
    if (spec->encoder != CF_ENCODER_CPU && s_view_offers(view, gpu)) {
        *encoder = CF_ENCODER_GPU;
        return true;
    }
    if (spec->encoder == CF_ENCODER_GPU) {
        *want = gpu;
        return false;
    }
    *encoder = CF_ENCODER_CPU;
    *want = cpu;
    return s_view_offers(view, cpu);
}

/* Takes one composition off the intake when no planning runs. One that
 * needs an encoder no live node offers stays queued, says what it waits
 * for, and is looked at again every two seconds (others go ahead). */
/* The composition's spec (for its destination), or NULL. */
static cf_comp_t *s_spec(cf_coordinator_t *self, const char *id)
{
    cf_db_composition_t comp;
    memset(&comp, 0, sizeof comp);
    char err[256];
    cf_comp_t *spec = NULL;
    if (cf_db_composition_get(self->opts.db, id, &comp, err, sizeof err) == CF_DB_OK &&
        comp.spec_json)
        spec = cf_comp_parse(comp.spec_json, strlen(comp.spec_json), NULL);
    cf_db_composition_clear(&comp);
    return spec;
}

/* The plan of open composition ID, from the cache or Postgres; NULL with a
 * warning when it cannot be read. */
static s_plan_entry_t *s_plan(cf_coordinator_t *self, const char *id)
{
    s_plan_entry_t *e = zhashx_lookup(self->plans, id);
    if (e)
        return e;
    char err[512];
    char *text = cf_dbw_plan_json(self->opts.db, id, err, sizeof err);
    cf_plan_t *plan = text ? cf_plan_from_json(text, strlen(text), err, sizeof err) : NULL;
    free(text);
    if (!plan || !(e = calloc(1, sizeof *e))) {
        cf_log_warn("coordinator", "%s: cannot read its plan: %s", id,
                    plan ? "out of memory" : err);
        cf_plan_destroy(&plan);
        return NULL;
    }
    e->plan = plan;
    zhashx_update(self->plans, id, e);
    return e;
}

/* Forgets the plans of compositions no longer in the work list. */
static void s_plans_trim(cf_coordinator_t *self, const cf_dbw_task_t *tasks, int count)
{
    zlistx_t *keys = zhashx_keys(self->plans);
    for (const char *id = keys ? zlistx_first(keys) : NULL; id; id = zlistx_next(keys)) {
        bool open = false;
        for (int i = 0; i < count && !open; i++)
            open = !strcmp(tasks[i].composition, id);
        if (!open)
            zhashx_delete(self->plans, id);
    }
    zlistx_destroy(&keys);
}

/* No live node takes any work: the queue is left alone, and what waits in
 * it says why (looked at every two seconds, from Postgres). */
static bool s_nobody_works(cf_coordinator_t *self)
{
    s_view_t view = {0};
    if (s_view(self, &view) < 0) {
        s_view_clear(&view);
        return true; /* no view of the cluster yet: take nothing */
    }
    bool nobody = true;
    for (int i = 0; nobody && i < view.count; i++)
        nobody = !(view.members[i].alive && view.members[i].slots > 0 &&
                   view.members[i].encoder_count > 0);
    s_view_clear(&view);
    if (!nobody || s_now_ms() < self->next_idle_note_ms)
        return nobody;
    self->next_idle_note_ms = s_now_ms() + 2000;
    cf_db_queued_t *items = NULL;
    int count = 0;
    char err[512];
    if (cf_db_composition_queued(self->opts.db, 200, &items, &count, err, sizeof err) != CF_DB_OK)
        return true;
    for (int i = 0; i < count; i++) {
        cf_comp_t *spec = s_spec(self, items[i].id);
        if (!spec)
            continue;
        /* What it would wait for in a cluster offering nothing. */
        s_view_t none = {0};
        cf_encoder_t encoder;
        const char *want = "libx264";
        s_choose_encoder(spec, &none, &encoder, &want);
        char reason[128];
        snprintf(reason, sizeof reason, "waiting for a node with %s", want);
        cf_dbw_wait_reason(self->opts.db, &self->fence, items[i].id, reason, err, sizeof err);
        cf_comp_destroy(&spec);
    }
    free(items);
    return true;
}

static void s_intake(cf_coordinator_t *self)
{
    if (self->planning || !self->queue)
        return;
    if (!self->holding && s_nobody_works(self))
        return;
    cf_queue_item_t item;
    char err[512];
    if (self->holding) {
        item = self->held; /* the last take's answer was lost: try it again */
    } else if (cf_queue_take(self->queue, 0, &item, err, sizeof err) <= 0) {
        return;
    }
    int64_t *until = zhashx_lookup(self->parked, item.id);
    cf_encoder_t encoder = CF_ENCODER_CPU;
    const char *want = NULL;
    bool ready = !until || s_now_ms() >= *until;
    if (ready) {
        cf_db_composition_t comp;
        memset(&comp, 0, sizeof comp);
        if (cf_db_composition_get(self->opts.db, item.id, &comp, err, sizeof err) == CF_DB_OK &&
            comp.spec_json) {
            cf_comp_t *spec = cf_comp_parse(comp.spec_json, strlen(comp.spec_json), NULL);
            s_view_t view = {0};
            if (spec &&
                (s_view(self, &view) < 0 || !s_choose_encoder(spec, &view, &encoder, &want)))
                ready = false; /* no view: nothing known to offer its encoder */
            s_view_clear(&view);
            cf_comp_destroy(&spec);
        }
        cf_db_composition_clear(&comp);
    }
    if (!ready) {
        self->holding = false; /* pushed back below: taken afresh later */
        if (want) {
            char reason[128];
            snprintf(reason, sizeof reason, "waiting for a node with %s", want);
            cf_dbw_wait_reason(self->opts.db, &self->fence, item.id, reason, err, sizeof err);
        }
        int64_t *next = malloc(sizeof *next);
        if (next) {
            *next = s_now_ms() + 2000;
            if (!until || s_now_ms() >= *until)
                zhashx_update(self->parked, item.id, next);
            else
                free(next);
        }
        /* Back to the end of its list: the others go first. */
        if (cf_queue_push(self->queue, item.id, item.priority, err, sizeof err) == 0)
            cf_queue_ack(self->queue, &item, err, sizeof err);
        return;
    }
    zhashx_delete(self->parked, item.id);
    int rc = cf_dbw_take(self->opts.db, &self->fence, item.id, err, sizeof err);
    if (rc == CF_DB_UNAVAILABLE || rc == CF_DB_STALE) {
        /* It may have applied without our hearing it: keep the item and
         * ask again (the queue keeps it in our processing list). */
        self->held = item;
        self->holding = rc == CF_DB_UNAVAILABLE;
        return;
    }
    bool retried = self->holding;
    self->holding = false;
    if (rc == CF_DB_ILLEGAL && retried) {
        /* Refused on a retry: if it is planning, the lost take was ours
         * (only the coordinator takes compositions). */
        cf_db_composition_t comp;
        memset(&comp, 0, sizeof comp);
        if (cf_db_composition_get(self->opts.db, item.id, &comp, err, sizeof err) == CF_DB_OK &&
            comp.state == CF_STATE_PLANNING)
            rc = CF_DB_OK;
        cf_db_composition_clear(&comp);
    }
    cf_queue_ack(self->queue, &item, err, sizeof err);
    if (rc != CF_DB_OK)
        return; /* cancelled or taken meanwhile */
    s_planning_t *p = calloc(1, sizeof *p);
    if (!p)
        return;
    p->owner = self;
    p->encoder = encoder;
    snprintf(p->id, sizeof p->id, "%s", item.id);
    snprintf(p->holder, sizeof p->holder, "%s", self->my_id);
    p->fence = (cf_dbw_fence_t){self->epoch, p->holder};
    atomic_init(&p->done, false);
    atomic_init(&p->cancel, false);
    if (pthread_create(&p->thread, NULL, s_plan_thread, p) != 0) {
        free(p);
        return;
    }
    self->planning = p;
}

/* ------------------------------------------------------------------ dispatch */

/* The plan as task T is sent it: compact (no segments: the worker derives
 * them, so a segment's or the audio's task does not grow with the
 * timeline's length), the sources of the clips it does not use written "-"
 * (a worker fetches only what its segment needs). Kept in the entry for the
 * last clip set asked: consecutive segments mostly share one. */
static const char *s_plan_subset(s_plan_entry_t *e, const cf_dbw_task_t *t)
{
    const cf_plan_t *plan = e->plan;
    char *needed = calloc((size_t)plan->clip_count + 1, 1);
    if (!needed)
        return NULL;
    for (int i = 0; i < plan->clip_count; i++)
        needed[i] = '0';
    if (t->kind == CF_TASK_SEGMENT && t->index < plan->segment_count) {
        const cf_plan_segment_t *seg = &plan->segments[t->index];
        for (int p = 0; p < seg->part_count; p++)
            needed[seg->parts[p].clip] = '1';
    } else if (t->kind == CF_TASK_AUDIO) {
        for (int i = 0; i < plan->clip_count; i++)
            needed[i] = plan->clips[i].has_audio ? '1' : '0';
    }
    if (e->subset && !strcmp(e->needed, needed)) {
        free(needed);
        return e->subset;
    }
    /* Written from a shallow copy whose unused sources read "-" (a string
     * literal: the copy is only written, never destroyed). */
    cf_plan_t copy = *plan;
    cf_plan_clip_t *clips = calloc((size_t)plan->clip_count + 1, sizeof *clips);
    char *text = NULL;
    if (clips) {
        for (int i = 0; i < plan->clip_count; i++) {
            clips[i] = plan->clips[i];
            if (needed[i] == '0')
                clips[i].source = "-";
        }
        copy.clips = clips;
        text = cf_plan_to_json_compact(&copy); /* the worker derives the segments */
    }
    free(clips);
    if (!text) {
        free(needed);
        return NULL;
    }
    free(e->needed);
    free(e->subset);
    e->needed = needed;
    e->subset = text;
    return text;
}

/* The task description a worker gets: the plan as s_plan_subset writes it,
 * where to pull blob: sources from, and for the assembly every piece and
 * its holder. */
static char *s_task_json(const cf_dbw_task_t *t, s_plan_entry_t *entry, const cf_dbw_task_t *all,
                         int all_count, s_view_t *view, const cf_comp_t *dest)
{
    const cf_plan_t *plan = entry->plan;
    const char *subset = s_plan_subset(entry, t);
    json_t *root = json_object();
    json_t *pull = json_array();
    if (!subset || !root || !pull)
        goto fail;
    json_object_set_new(root, "kind", json_string(cf_task_kind_name(t->kind)));
    json_object_set_new(root, "index", json_integer(t->index));
    if (t->kind == CF_TASK_ASSEMBLE && dest && dest->dest_s3_bucket) {
        /* The assembler uploads the output where the composition says. */
        json_object_set_new(root, "destination",
                            json_pack("{s:s,s:s,s:s?}", "bucket", dest->dest_s3_bucket, "key",
                                      dest->dest_s3_key ? dest->dest_s3_key : "", "profile",
                                      dest->dest_s3_profile));
    }
    if (t->kind == CF_TASK_ASSEMBLE) {
        /* Every segment and the audio, with the node that holds each. */
        json_t *pieces = json_array();
        for (int k = 0; k < all_count; k++) {
            const cf_dbw_task_t *o = &all[k];
            if (strcmp(o->composition, t->composition) || o->kind == CF_TASK_ASSEMBLE)
                continue;
            s_member_t *m = s_member(view, o->node_id);
            json_array_append_new(
                pieces, json_pack("{s:s,s:i,s:s,s:I,s:s}", "kind", cf_task_kind_name(o->kind),
                                  "index", o->index, "blob", o->blob_hash ? o->blob_hash : "",
                                  "bytes", (json_int_t)o->size_bytes, "from", m ? m->http : ""));
        }
        json_object_set_new(root, "pieces", pieces);
    }
    /* blob: sources come from the node that stored the upload; any live
     * peer may hold it, the worker asks the ones listed in turn. */
    for (int i = 0; i < plan->clip_count; i++) {
        if (entry->needed[i] == '1' && !strncmp(plan->clips[i].source, "blob:", 5)) {
            for (int m = 0; m < view->count; m++)
                if (view->members[m].alive && view->members[m].http[0])
                    json_array_append_new(pull,
                                          json_pack("{s:s,s:s}", "blob", plan->clips[i].source + 5,
                                                    "from", view->members[m].http));
        }
    }
    json_object_set_new(root, "pull", pull);
    pull = NULL;
    /* {"plan":SUBSET, ...the rest}: the plan text spliced in as written,
     * not parsed and dumped again for every task. */
    char *rest = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    char *out = NULL;
    if (rest && rest[0] == '{' && rest[1] != '}') {
        size_t n = strlen(subset) + strlen(rest) + 16;
        if ((out = malloc(n)))
            snprintf(out, n, "{\"plan\":%s,%s", subset, rest + 1);
    }
    free(rest);
    return out;
fail:
    json_decref(pull);
    json_decref(root);
    return NULL;
}

static void s_send_assign(cf_coordinator_t *self, const cf_dbw_task_t *t, int attempt,
                          const char *node, const char *task_json)
{
    cf_msg_t msg;
    cf_msg_init(&msg, CF_MSG_ASSIGN);
    msg.assign.epoch = (uint64_t)self->epoch;
    snprintf(msg.assign.composition, sizeof msg.assign.composition, "%s", t->composition);
    msg.assign.segment = (uint64_t)t->index;
    msg.assign.attempt = (uint64_t)attempt;
    msg.assign.kind = (uint64_t)t->kind;
    msg.assign.frame_start = (uint64_t)t->frame_start;
    msg.assign.frame_count = (uint64_t)(t->frame_end - t->frame_start);
    cf_msg_set_str(&msg.assign.encoder, t->encoder ? t->encoder : "libx264");
    cf_msg_set_str(&msg.assign.task, task_json);
    if (cf_work_bus_send(self->out, node, &msg) < 0)
        cf_log_warn("coordinator", "ASSIGN %s/%d to %.8s could not be sent", t->composition,
                    t->index, node);
    cf_msg_clear(&msg);
}

/* One composition's tasks: [first, first + count) of the list. */
typedef struct {
    int first, count;
    int segments_done, segments_total; /* segments and audio */
    int64_t frames_total;
    double frames_done;
    bool any_failed;
    int failed_index;
    bool assemble_pending;
} s_comp_t;

/* Whether every segment and the audio of composition COMP are done (the
 * assembly can run). */
static bool s_pieces_done(const cf_dbw_task_t *tasks, int count, const char *comp)
{
    for (int k = 0; k < count; k++)
        if (!strcmp(tasks[k].composition, comp) && tasks[k].kind != CF_TASK_ASSEMBLE &&
            tasks[k].state != CF_SEG_DONE)
            return false;
    return true;
}

static void s_dispatch(cf_coordinator_t *self, cf_dbw_task_t *tasks, int count, s_view_t *view)
{
    char err[512];
    cf_sched_node_t *nodes = calloc((size_t)view->count + 1, sizeof *nodes);
    cf_sched_task_t *st = calloc((size_t)count + 1, sizeof *st);
    int *st_task = calloc((size_t)count + 1, sizeof *st_task);
    const char **holders = calloc((size_t)view->count + 1, sizeof *holders);
    if (!nodes || !st || !st_task || !holders)
        goto end;
    /* Work in flight per node, from the work list itself. */
    for (int i = 0; i < count; i++) {
        const cf_dbw_task_t *t = &tasks[i];
        if (t->state != CF_SEG_ASSIGNED && t->state != CF_SEG_ENCODING)
            continue;
        s_member_t *m = s_member(view, t->node_id);
        if (m) {
            m->active++;
            m->queued += (double)(t->frame_end - t->frame_start) * (1 - t->progress);
        }
    }
    for (int i = 0; i < view->count; i++) {
        s_member_t *m = &view->members[i];
        int slots = m->slots; /* 0: unknown, or a node that takes no work */
        nodes[i] = (cf_sched_node_t){.id = m->id,
                                     .encoders = m->encoders,
                                     .fps = m->fps,
                                     .encoder_count = m->encoder_count,
                                     .cores = m->cores,
                                     .free_slots = slots > m->active ? slots - m->active : 0,
                                     .queued_frames = m->queued,
                                     .alive = m->alive};
    }
    int n = 0;
    bool have_assembly = false;
    for (int i = 0; i < count; i++) {
        cf_dbw_task_t *t = &tasks[i];
        if (t->state != CF_SEG_PENDING)
            continue;
        if (t->kind == CF_TASK_ASSEMBLE && (have_assembly || t->comp_state != CF_STATE_ASSEMBLING ||
                                            !s_pieces_done(tasks, count, t->composition)))
            continue;
        cf_sched_task_t *s = &st[n];
        *s =
            (cf_sched_task_t){.composition = t->composition,
                              .index = t->index,
                              .kind = t->kind,
                              .encoder = t->encoder,
                              .frames = t->frame_end - t->frame_start,
                              /* The audio goes first: it then runs beside the
                               * segments instead of after them. */
                              .priority = t->kind == CF_TASK_AUDIO ? CF_PRIORITY_HIGH : t->priority,
                              .waiting_s = t->waiting_s,
                              .excluded = (const char *const *)t->excluded,
                              .excluded_count = t->excluded_count};
        if (t->kind == CF_TASK_ASSEMBLE) {
            /* The holders of this composition's pieces, most bytes first. */
            for (int m = 0; m < view->count; m++)
                view->members[m].held_bytes = 0;
            for (int k = 0; k < count; k++)
                if (!strcmp(tasks[k].composition, t->composition) &&
                    tasks[k].state == CF_SEG_DONE) {
                    s_member_t *m = s_member(view, tasks[k].node_id);
                    if (m)
                        m->held_bytes += tasks[k].size_bytes;
                }
            int hc = 0;
            for (int m = 0; m < view->count; m++)
                if (view->members[m].held_bytes > 0)
                    holders[hc++] = view->members[m].id;
            for (int a = 0; a < hc; a++) /* insertion sort, by bytes */
                for (int b = a; b > 0; b--) {
                    s_member_t *x = s_member(view, holders[b]), *y = s_member(view, holders[b - 1]);
                    if (x->held_bytes <= y->held_bytes)
                        break;
                    const char *tmp = holders[b];
                    holders[b] = holders[b - 1];
                    holders[b - 1] = tmp;
                }
            /* One assembly per round keeps the holders array simple. */
            s->preferred = holders;
            s->preferred_count = hc;
        }
        st_task[n++] = i;
        if (t->kind == CF_TASK_ASSEMBLE)
            have_assembly = true; /* one per round: they share the holders array */
    }
    cf_sched_input_t in = {.nodes = nodes, .node_count = view->count, .tasks = st, .task_count = n};
    cf_sched_result_t *r = n ? cf_schedule(&in) : NULL;
    for (int a = 0; r && a < r->assignment_count && !atomic_load(&self->stop); a++) {
        cf_dbw_task_t *t = &tasks[st_task[r->assignments[a].task]];
        const char *node = view->members[r->assignments[a].node].id;
        s_plan_entry_t *entry = s_plan(self, t->composition);
        cf_comp_t *spec =
            entry && t->kind == CF_TASK_ASSEMBLE ? s_spec(self, t->composition) : NULL;
        char *task_json = entry ? s_task_json(t, entry, tasks, count, view, spec) : NULL;
        cf_comp_destroy(&spec);
        int attempt = 0;
        if (!task_json) {
            cf_log_warn("coordinator", "%s/%d: cannot describe the task", t->composition, t->index);
        } else if (strlen(task_json) > CF_PROTO_TASK_JSON_MAX) {
            /* Cannot be sent, now or later: say so instead of retrying. */
            char message[256];
            snprintf(message, sizeof message,
                     "%s %d: its task description is %zu bytes, more than the %d a message "
                     "carries (fewer clips or longer segments)",
                     cf_task_kind_name(t->kind), t->index, strlen(task_json),
                     CF_PROTO_TASK_JSON_MAX);
            if (cf_dbw_fail(self->opts.db, &self->fence, t->composition, "too_large", message, err,
                            sizeof err) == CF_DB_OK)
                S_COUNT(self, failed);
            cf_log_warn("coordinator", "%s: failed: %s", t->composition, message);
        } else if (cf_dbw_assign(self->opts.db, &self->fence, t->composition, t->index, node,
                                 &attempt, err, sizeof err) == CF_DB_OK) {
            s_send_assign(self, t, attempt, node, task_json);
            /* It moves: whatever it waited for is over (written when the
             * work list says it waits, once a round). */
            if (t->comp_waiting) {
                cf_dbw_wait_reason(self->opts.db, &self->fence, t->composition, NULL, err,
                                   sizeof err);
                for (int k = 0; k < count; k++)
                    if (!strcmp(tasks[k].composition, t->composition))
                        tasks[k].comp_waiting = false;
            }
            char key[160];
            s_key(key, sizeof key, t->composition, t->index, attempt, node);
            s_sent_t *sent = calloc(1, sizeof *sent);
            if (sent) {
                sent->sent_ms = s_now_ms();
                sent->frames = t->frame_end - t->frame_start;
                zhashx_update(self->sent, key, sent);
            }
            S_COUNT(self, assigned);
            cf_log_debug("coordinator", "%s/%d (%s) attempt %d -> %.8s", t->composition, t->index,
                         cf_task_kind_name(t->kind), attempt, node);
        }
        free(task_json);
    }
    /* Why what could not go anywhere waits, once per composition and only
     * when no node could ever take it (a busy cluster is not news). */
    const char *said = NULL;
    for (int u = 0; r && u < r->unplaced_count; u++) {
        cf_dbw_task_t *t = &tasks[st_task[r->unplaced[u].task]];
        if (strstr(r->unplaced[u].reason, "free slot") || (said && !strcmp(said, t->composition)))
            continue;
        said = t->composition;
        bool running = false;
        for (int k = 0; k < count; k++)
            running = running ||
                      (!strcmp(tasks[k].composition, t->composition) &&
                       (tasks[k].state == CF_SEG_ASSIGNED || tasks[k].state == CF_SEG_ENCODING));
        if (!running)
            cf_dbw_wait_reason(self->opts.db, &self->fence, t->composition, r->unplaced[u].reason,
                               err, sizeof err);
    }
    cf_sched_result_destroy(&r);
end:
    free(holders);
    free(st_task);
    free(st);
    free(nodes);
}

/* Tasks on nodes that are gone, or sent and never accepted, go back. */
static void s_requeue_lost(cf_coordinator_t *self, cf_dbw_task_t *tasks, int count, s_view_t *view)
{
    char err[512];
    int64_t now = s_now_ms();
    for (int i = 0; i < count; i++) {
        cf_dbw_task_t *t = &tasks[i];
        if (t->state == CF_SEG_DONE && t->kind != CF_TASK_ASSEMBLE) {
            /* Its blob is on a node that is gone: encode it again. */
            s_member_t *holder = s_member(view, t->node_id);
            if (holder && !holder->gone)
                continue; /* alive, or still connecting */
            char why[160];
            snprintf(why, sizeof why, "its node %s went away with the result",
                     t->node_id ? t->node_id : "?");
            if (cf_dbw_lost(self->opts.db, &self->fence, t->composition, t->index, t->node_id, why,
                            err, sizeof err) == CF_DB_OK) {
                t->state = CF_SEG_PENDING;
                S_COUNT(self, retried);
                cf_log_info("coordinator", "%s/%d encoded again: %s", t->composition, t->index,
                            why);
            }
            continue;
        }
        if (t->state != CF_SEG_ASSIGNED && t->state != CF_SEG_ENCODING)
            continue;
        s_member_t *m = s_member(view, t->node_id);
        char key[160], reason[160] = "";
        s_key(key, sizeof key, t->composition, t->index, t->attempts, t->node_id);
        s_sent_t *sent = zhashx_lookup(self->sent, key);
        bool counted = true;
        if (!m || m->gone) {
            snprintf(reason, sizeof reason, "node %s went away", t->node_id ? t->node_id : "?");
        } else if (t->state == CF_SEG_ENCODING && sent && now - sent->sent_ms > S_SILENCE_MS) {
            /* PROGRESS comes twice a second: a task silent this long was
             * lost (a reply dropped, a worker restarted within its grace). */
            snprintf(reason, sizeof reason, "no word from node %.8s for %d s", t->node_id,
                     S_SILENCE_MS / 1000);
        } else if (t->state == CF_SEG_ASSIGNED && t->epoch == self->epoch &&
                   (!sent || now - sent->sent_ms > self->opts.accept_timeout_ms)) {
            snprintf(reason, sizeof reason, "node %.8s did not answer the ASSIGN", t->node_id);
            counted = false;
        }
        if (!reason[0])
            continue;
        bool failed = false;
        if (cf_dbw_retry(self->opts.db, &self->fence, t->composition, t->index, t->node_id,
                         t->attempts, counted, reason, &failed, err, sizeof err) == CF_DB_OK) {
            S_COUNT(self, retried);
            t->state = failed ? CF_SEG_FAILED : CF_SEG_PENDING;
            cf_log_info("coordinator", "%s/%d back to %s: %s", t->composition, t->index,
                        failed ? "failed" : "pending", reason);
        }
        zhashx_delete(self->sent, key);
    }
}

static void s_complete(cf_coordinator_t *self, const char *id, int index, const char *node,
                       const char *hex, int64_t size);

/* Compositions whose segments are all done move to assembling; one whose
 * task failed for good fails, naming it. */
static void s_advance(cf_coordinator_t *self, cf_dbw_task_t *tasks, int count)
{
    char err[512];
    for (int i = 0; i < count;) {
        int j = i;
        bool all_done = true, assemble_failed = false;
        const cf_dbw_task_t *failed = NULL;
        while (j < count && !strcmp(tasks[j].composition, tasks[i].composition)) {
            const cf_dbw_task_t *t = &tasks[j];
            if (t->kind != CF_TASK_ASSEMBLE && t->state != CF_SEG_DONE)
                all_done = false;
            if (t->state == CF_SEG_FAILED && !failed)
                failed = t;
            if (t->kind == CF_TASK_ASSEMBLE && t->state == CF_SEG_FAILED)
                assemble_failed = true;
            j++;
        }
        const cf_dbw_task_t *first = &tasks[i];
        if (failed) {
            char message[512];
            snprintf(message, sizeof message, "%s %d failed after %d attempts on node %s",
                     cf_task_kind_name(failed->kind), failed->index, failed->attempts,
                     failed->node_id ? failed->node_id : "?");
            (void)assemble_failed;
            if (cf_dbw_fail(self->opts.db, &self->fence, first->composition, "segment_failed",
                            message, err, sizeof err) == CF_DB_OK) {
                S_COUNT(self, failed);
                cf_log_warn("coordinator", "%s: failed: %s", first->composition, message);
            }
        } else if (all_done && first->comp_state == CF_STATE_ENCODING) {
            if (cf_dbw_assembling(self->opts.db, &self->fence, first->composition, err,
                                  sizeof err) == CF_DB_OK) {
                /* This round's dispatch sends the assembly at once. */
                for (int k = i; k < j; k++)
                    tasks[k].comp_state = CF_STATE_ASSEMBLING;
                /* Every frame is encoded: say so to live progress bars, even
                 * when the render was quicker than the progress writes. */
                int64_t frames = 0;
                for (int k = i; k < j; k++)
                    if (tasks[k].kind == CF_TASK_SEGMENT)
                        frames += tasks[k].frame_end - tasks[k].frame_start;
                char payload[96];
                snprintf(payload, sizeof payload, "{\"done\":%lld,\"total\":%lld}",
                         (long long)frames, (long long)frames);
                cf_db_event_append(self->opts.db, first->composition, "frames", payload, NULL, err,
                                   sizeof err);
            }
        } else if (first->comp_state == CF_STATE_ASSEMBLING) {
            /* Assembled, but the completion did not land (Postgres away, a
             * coordinator that died between the two): complete it now. */
            for (int k = i; k < j; k++)
                if (tasks[k].kind == CF_TASK_ASSEMBLE && tasks[k].state == CF_SEG_DONE)
                    s_complete(self, tasks[k].composition, tasks[k].index, tasks[k].node_id,
                               tasks[k].blob_hash, tasks[k].size_bytes);
        }
        i = j;
    }
}

/* Writes the progress PROGRESS messages brought, about once a second. */
static void s_write_progress(cf_coordinator_t *self, cf_dbw_task_t *tasks, int count)
{
    int64_t now = s_now_ms();
    if (now < self->next_progress_ms)
        return;
    self->next_progress_ms = now + S_PROGRESS_WRITE_MS;
    char err[512];
    for (int i = 0; i < count;) {
        int j = i;
        double done = 0, total = 0, frames_done = 0, frames_total = 0;
        while (j < count && !strcmp(tasks[j].composition, tasks[i].composition)) {
            cf_dbw_task_t *t = &tasks[j];
            double frames = (double)(t->frame_end - t->frame_start);
            /* The timeline's weight: segments by frames, the audio and the
             * assembly as a twentieth of it each. */
            double weight = t->kind == CF_TASK_SEGMENT ? frames : frames / 20;
            double progress = t->state == CF_SEG_DONE ? 1 : t->progress;
            char key[160];
            s_key(key, sizeof key, t->composition, t->index, t->attempts, t->node_id);
            s_sent_t *sent = zhashx_lookup(self->sent, key);
            if (sent && t->state != CF_SEG_DONE) {
                if (sent->progress > progress)
                    progress = sent->progress;
                if (sent->progress_dirty) {
                    cf_dbw_progress(self->opts.db, &self->fence, t->composition, t->index,
                                    t->node_id, t->attempts, sent->progress, err, sizeof err);
                    sent->progress_dirty = false;
                }
            }
            done += weight * progress;
            total += weight;
            if (t->kind == CF_TASK_SEGMENT) {
                frames_done += frames * progress;
                frames_total += frames;
            }
            j++;
        }
        if (total > 0)
            cf_dbw_comp_progress(self->opts.db, &self->fence, tasks[i].composition, done / total,
                                 err, sizeof err);
        /* Frames for live progress bars (`clipfarm submit --wait`), when
         * they moved. */
        int64_t *last = zhashx_lookup(self->frames_sent, tasks[i].composition);
        int64_t now_frames = (int64_t)(frames_done + 0.5);
        if (frames_total > 0 && (!last || *last != now_frames)) {
            char payload[96];
            snprintf(payload, sizeof payload, "{\"done\":%lld,\"total\":%lld}",
                     (long long)now_frames, (long long)frames_total);
            if (cf_db_event_append(self->opts.db, tasks[i].composition, "frames", payload, NULL,
                                   err, sizeof err) == CF_DB_OK) {
                int64_t *v = last ? last : malloc(sizeof *v);
                if (v) {
                    *v = now_frames;
                    if (!last)
                        zhashx_update(self->frames_sent, tasks[i].composition, v);
                }
            }
        }
        i = j;
    }
}

static void s_cancel_closed(cf_coordinator_t *self)
{
    char **items = NULL, err[512];
    int n = 0;
    if (cf_dbw_close_cancelled(self->opts.db, &self->fence, &items, &n, err, sizeof err) !=
        CF_DB_OK)
        return;
    for (int i = 0; i < n; i++) {
        char comp[CF_DB_ID_LEN] = "", node[64] = "";
        if (sscanf(items[i], "%36s %63s", comp, node) != 2)
            continue;
        cf_msg_t msg;
        cf_msg_init(&msg, CF_MSG_CANCEL);
        msg.cancel.epoch = (uint64_t)self->epoch;
        snprintf(msg.cancel.composition, sizeof msg.cancel.composition, "%s", comp);
        cf_work_bus_send(self->out, node, &msg);
        cf_msg_clear(&msg);
        cf_log_info("coordinator", "%s: CANCEL to %.8s", comp, node);
    }
    cf_db_strings_free(&items, n);
}

/* Completes composition ID when INDEX is its assembly, done on NODE with
 * the output blob HEX of SIZE bytes. */
static void s_complete(cf_coordinator_t *self, const char *id, int index, const char *node,
                       const char *hex, int64_t size)
{
    char err[512];
    cf_db_t *db = self->opts.db;
    s_plan_entry_t *entry = s_plan(self, id);
    const cf_plan_t *plan = entry ? entry->plan : NULL;
    if (plan && index == plan->segment_count + 1 && node && hex) {
        char location[256];
        snprintf(location, sizeof location, "clipfarm://%s/blobs/%.2s/%s", node, hex, hex);
        double duration = (double)plan->total_frames * plan->output.fps_den /
                          (plan->output.fps_num > 0 ? plan->output.fps_num : 1);
        cf_db_output_t out = {location, size, duration, hex};
        /* The assembler uploaded it where the composition asked. */
        cf_comp_t *spec = s_spec(self, id);
        if (spec && spec->dest_s3_bucket) {
            char s3[1200];
            snprintf(s3, sizeof s3, "s3://%s/%s", spec->dest_s3_bucket,
                     spec->dest_s3_key ? spec->dest_s3_key : "");
            cf_db_composition_set_s3_location(db, id, s3, err, sizeof err);
        }
        cf_comp_destroy(&spec);
        if (cf_dbw_complete(db, &self->fence, id, &out, err, sizeof err) == CF_DB_OK) {
            zhashx_delete(self->frames_sent, id);
            S_COUNT(self, completed);
            cf_log_info("coordinator", "%s: completed on %.8s (%lld bytes)", id, node,
                        (long long)size);
        }
    }
}

/* ------------------------------------------------------------------ replies */

static void s_on_reply(cf_coordinator_t *self, const char *from, const cf_msg_t *msg)
{
    char err[512];
    cf_db_t *db = self->opts.db;
    const cf_dbw_fence_t *f = &self->fence;
    char key[160];
    switch (msg->type) {
        case CF_MSG_ACCEPT: {
            const cf_msg_accept_t *m = &msg->accept;
            s_key(key, sizeof key, m->composition, (int)m->segment, (int)m->attempt, from);
            cf_dbw_accept(db, f, m->composition, (int)m->segment, from, (int)m->attempt, err,
                          sizeof err);
            s_sent_t *sent = zhashx_lookup(self->sent, key);
            if (sent)
                sent->accepted = true;
            break;
        }
        case CF_MSG_REJECT: {
            const cf_msg_reject_t *m = &msg->reject;
            S_COUNT(self, rejected);
            cf_dbw_retry(db, f, m->composition, (int)m->segment, from, (int)m->attempt, false,
                         m->reason, NULL, err, sizeof err);
            s_key(key, sizeof key, m->composition, (int)m->segment, (int)m->attempt, from);
            zhashx_delete(self->sent, key);
            cf_log_info("coordinator", "%s/%llu rejected by %.8s: %s", m->composition,
                        (unsigned long long)m->segment, from, m->reason);
            break;
        }
        case CF_MSG_PROGRESS: {
            const cf_msg_progress_t *m = &msg->progress;
            s_key(key, sizeof key, m->composition, (int)m->segment, (int)m->attempt, from);
            s_sent_t *sent = zhashx_lookup(self->sent, key);
            /* frames_done of the task's frames; the fraction is kept. */
            if (sent) {
                sent->accepted = true;
                sent->sent_ms = s_now_ms(); /* last heard of */
                double frac = sent->frames > 0 ? (double)m->frames_done / (double)sent->frames : 0;
                if (frac > sent->progress) {
                    sent->progress = frac > 1 ? 1 : frac;
                    sent->progress_dirty = true;
                }
            }
            break;
        }
        case CF_MSG_DONE: {
            const cf_msg_done_t *m = &msg->done;
            char hex[CF_BLOB_HEX_SIZE];
            sodium_bin2hex(hex, sizeof hex, m->blob_hash.data, m->blob_hash.size);
            double fps = m->fps;
            int rc =
                cf_dbw_done(db, f, m->composition, (int)m->segment, from, (int)m->attempt, hex,
                            (int64_t)m->size_bytes, fps, (int64_t)m->encode_ms, err, sizeof err);
            s_key(key, sizeof key, m->composition, (int)m->segment, (int)m->attempt, from);
            zhashx_delete(self->sent, key);
            if (rc != CF_DB_OK) {
                S_COUNT(self, discarded);
                cf_log_info("coordinator", "discarded DONE of %s/%llu from %.8s: %s",
                            m->composition, (unsigned long long)m->segment, from, err);
                break;
            }
            S_COUNT(self, done);
            /* The assembly's DONE is the output: the composition completes
             * (s_advance tries again on every tick when this write fails). */
            s_complete(self, m->composition, (int)m->segment, from, hex, (int64_t)m->size_bytes);
            break;
        }
        case CF_MSG_FAILED: {
            const cf_msg_failed_t *m = &msg->failed;
            bool failed = false;
            int rrc = cf_dbw_retry(db, f, m->composition, (int)m->segment, from, (int)m->attempt,
                                   true, m->reason, &failed, err, sizeof err);
            if (rrc == CF_DB_OK && !m->retryable) {
                /* Trying again cannot help (a refused upload): the reason
                 * reads "CODE: message". */
                char code[64] = "render_failed";
                const char *message = m->reason;
                const char *colon = strstr(m->reason, ": ");
                if (colon && colon - m->reason < (long)sizeof code &&
                    strspn(m->reason, "abcdefghijklmnopqrstuvwxyz0123456789_") ==
                        (size_t)(colon - m->reason)) {
                    snprintf(code, sizeof code, "%.*s", (int)(colon - m->reason), m->reason);
                    message = colon + 2;
                }
                if (cf_dbw_fail(db, f, m->composition, code, message, err, sizeof err) == CF_DB_OK)
                    S_COUNT(self, failed);
            }
            s_key(key, sizeof key, m->composition, (int)m->segment, (int)m->attempt, from);
            zhashx_delete(self->sent, key);
            S_COUNT(self, retried);
            cf_log_warn("coordinator", "%s/%llu failed on %.8s (attempt %llu): %s", m->composition,
                        (unsigned long long)m->segment, from, (unsigned long long)m->attempt,
                        m->reason);
            break;
        }
        default:
            break;
    }
}

/* ------------------------------------------------------------------ the loop */

static void s_step_down(cf_coordinator_t *self)
{
    if (!self->epoch)
        return;
    cf_log_info("coordinator", "stepping down (epoch %lld)", (long long)self->epoch);
    s_planning_reap(self, true);
    self->holding = false; /* still in our processing list: the reaper returns it */
    zhashx_purge(self->sent);
    zhashx_purge(self->frames_sent);
    zhashx_purge(self->plans);
    zsock_destroy(&self->inbox);
    zsock_destroy(&self->out);
    cf_queue_destroy(&self->queue);
    self->epoch = 0;
}

static void s_take_over(cf_coordinator_t *self, int64_t epoch)
{
    char err[512];
    s_step_down(self);
    self->inbox = cf_work_bus_inbox(self->my_id, CF_WORK_COORD);
    self->out = cf_work_bus_sender(self->my_id);
    if (!self->inbox || !self->out) {
        cf_log_error("coordinator", "cannot open the work bus");
        zsock_destroy(&self->inbox);
        zsock_destroy(&self->out);
        return;
    }
    zsock_set_rcvtimeo(self->inbox, self->opts.tick_ms);
    cf_queue_options_t qo;
    cf_queue_options_default(&qo);
    qo.url = self->redis_url;
    qo.prefix = self->redis_prefix;
    char consumer[64];
    snprintf(consumer, sizeof consumer, "coordinator-%s", self->my_id);
    qo.consumer = consumer;
    self->queue = self->redis_url ? cf_queue_new(&qo, err, sizeof err) : NULL;
    self->epoch = epoch;
    self->fence = (cf_dbw_fence_t){epoch, self->my_id};
    /* Carry on from Postgres: void the old epoch's assignments, encode
     * again what a node that is gone held, replan what was planning. */
    s_view_t view = {0};
    const char **live = NULL;
    int live_count = 0;
    if (s_view(self, &view) == 0 && (live = calloc((size_t)view.count + 1, sizeof *live))) {
        for (int i = 0; i < view.count; i++)
            if (!view.members[i].gone)
                live[live_count++] = view.members[i].id;
    }
    char **requeued = NULL;
    int n = 0;
    if (!live) {
        /* No view of the cluster: what is lost is not known. Try the whole
         * takeover again on the next tick. */
        cf_log_warn("coordinator", "takeover postponed: no view of the cluster");
        s_view_clear(&view);
        s_step_down(self);
        return;
    }
    if (cf_dbw_takeover(self->opts.db, &self->fence, live, live_count, &requeued, &n, err,
                        sizeof err) == CF_DB_OK) {
        for (int i = 0; i < n && self->queue; i++)
            cf_queue_push(self->queue, requeued[i], CF_PRIORITY_HIGH, err, sizeof err);
        cf_db_strings_free(&requeued, n);
    } else {
        cf_log_warn("coordinator", "takeover: %s", err);
    }
    free(live);
    s_view_clear(&view);
    S_COUNT(self, takeovers);
    cf_log_info("coordinator", "active at epoch %lld", (long long)epoch);
}

/* A composition cancelled while it is being planned stops its planning
 * (a download in progress ends within a second). */
static void s_watch_planning(cf_coordinator_t *self)
{
    s_planning_t *p = self->planning;
    if (!p || atomic_load(&p->done) || atomic_load(&p->cancel))
        return;
    cf_db_composition_t comp;
    memset(&comp, 0, sizeof comp);
    char err[256];
    if (cf_db_composition_get(self->opts.db, p->id, &comp, err, sizeof err) == CF_DB_OK &&
        comp.state != CF_STATE_PLANNING) {
        cf_log_info("coordinator", "%s: %s while planning: stopping", p->id,
                    cf_state_name(comp.state));
        atomic_store(&p->cancel, true);
    }
    cf_db_composition_clear(&comp);
}

static void s_tick(cf_coordinator_t *self)
{
    char err[512];
    s_watch_planning(self);
    s_planning_reap(self, false);
    s_intake(self);
    cf_dbw_task_t *tasks = NULL;
    int count = 0;
    if (cf_dbw_open_tasks(self->opts.db, &tasks, &count, err, sizeof err) != CF_DB_OK)
        return;
    s_plans_trim(self, tasks, count);
    s_view_t view;
    if (s_view(self, &view) == 0) {
        s_requeue_lost(self, tasks, count, &view);
        s_advance(self, tasks, count);
        s_write_progress(self, tasks, count);
        s_dispatch(self, tasks, count, &view);
    }
    s_view_clear(&view);
    cf_dbw_tasks_free(&tasks, count);
    s_cancel_closed(self);
}

static void *s_thread(void *arg)
{
    cf_coordinator_t *self = arg;
    int64_t next_tick = 0;
    while (!atomic_load(&self->stop)) {
        int64_t epoch = 0;
        bool leader = cf_node_is_coordinator(self->opts.node, &epoch);
        if (!leader || epoch != self->epoch) {
            if (leader)
                s_take_over(self, epoch);
            else
                s_step_down(self);
        }
        if (!self->epoch) {
            zclock_sleep(self->opts.tick_ms);
            continue;
        }
        /* Replies first, as they come; a dispatch round every tick. */
        char from[37];
        cf_msg_t msg;
        if (cf_work_bus_recv(self->inbox, from, &msg) == 0) {
            s_on_reply(self, from, &msg);
            /* A slot just came free: dispatch now, not at the next tick. */
            if (msg.type == CF_MSG_DONE ||
                msg.type == CF_MSG_FAILED) /* not REJECT: no retry storm */
                next_tick = 0;
            cf_msg_clear(&msg);
        }
        if (s_now_ms() >= next_tick) {
            s_tick(self);
            next_tick = s_now_ms() + self->opts.tick_ms;
        }
    }
    s_step_down(self);
    return NULL;
}

static void s_free_sent(void **item)
{
    free(*item);
    *item = NULL;
}

cf_coordinator_t *cf_coordinator_new(const cf_coordinator_options_t *opts, char *err, size_t errlen)
{
    if (!opts->node || !opts->db) {
        snprintf(err, errlen, "coordinator: node and database are required");
        return NULL;
    }
    cf_coordinator_t *self = calloc(1, sizeof *self);
    if (!self) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    self->opts = *opts;
    if (self->opts.tick_ms <= 0)
        self->opts.tick_ms = 100;
    if (self->opts.accept_timeout_ms <= 0)
        self->opts.accept_timeout_ms = 10000;
    self->redis_url = opts->redis_url ? strdup(opts->redis_url) : NULL;
    self->redis_prefix = strdup(opts->redis_prefix ? opts->redis_prefix : "cf:");
    snprintf(self->my_id, sizeof self->my_id, "%s", cf_node_id(opts->node));
    self->sent = zhashx_new();
    self->parked = zhashx_new();
    self->frames_sent = zhashx_new();
    self->plans = zhashx_new();
    pthread_mutex_init(&self->lock, NULL);
    atomic_init(&self->stop, false);
    if (!self->sent || !self->parked || !self->frames_sent || !self->plans || !self->redis_prefix) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    zhashx_set_destructor(self->sent, s_free_sent);
    zhashx_set_destructor(self->parked, s_free_sent);
    zhashx_set_destructor(self->frames_sent, s_free_sent);
    zhashx_set_destructor(self->plans, s_plan_entry_free);
    if (pthread_create(&self->thread, NULL, s_thread, self) != 0) {
        snprintf(err, errlen, "cannot start the coordinator thread");
        goto fail;
    }
    return self;
fail:
    zhashx_destroy(&self->sent);
    zhashx_destroy(&self->parked);
    zhashx_destroy(&self->frames_sent);
    zhashx_destroy(&self->plans);
    free(self->redis_url);
    free(self->redis_prefix);
    pthread_mutex_destroy(&self->lock);
    free(self);
    return NULL;
}

void cf_coordinator_destroy(cf_coordinator_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_coordinator_t *self = *self_p;
    atomic_store(&self->stop, true);
    pthread_join(self->thread, NULL);
    zhashx_destroy(&self->sent);
    zhashx_destroy(&self->parked);
    zhashx_destroy(&self->frames_sent);
    zhashx_destroy(&self->plans);
    free(self->redis_url);
    free(self->redis_prefix);
    pthread_mutex_destroy(&self->lock);
    free(self);
    *self_p = NULL;
}

void cf_coordinator_stats(cf_coordinator_t *self, cf_coordinator_stats_t *stats)
{
    pthread_mutex_lock(&self->lock);
    *stats = self->stats;
    pthread_mutex_unlock(&self->lock);
}
