#include "cf_state.h"

#include <string.h>

static const char *const s_state_names[CF_STATE_COUNT] = {
    "pending", "queued", "planning", "encoding", "assembling", "completed", "failed", "cancelled",
};

static const char *const s_priority_names[CF_PRIORITY_COUNT] = {"high", "default", "low"};

static const char *const s_seg_names[CF_SEG_COUNT] = {"pending", "assigned", "encoding", "done",
                                                      "failed"};

static bool s_is_processing(cf_state_t state)
{
    return state == CF_STATE_PLANNING || state == CF_STATE_ENCODING || state == CF_STATE_ASSEMBLING;
}

const char *cf_state_name(cf_state_t state)
{
    return (unsigned)state < CF_STATE_COUNT ? s_state_names[state] : NULL;
}

const char *cf_state_status(cf_state_t state)
{
    if ((unsigned)state >= CF_STATE_COUNT)
        return NULL;
    return s_is_processing(state) ? "processing" : s_state_names[state];
}

const char *cf_state_stage(cf_state_t state)
{
    return s_is_processing(state) ? s_state_names[state] : NULL;
}

int cf_state_parse(const char *name, cf_state_t *state)
{
    for (int i = 0; name && i < CF_STATE_COUNT; i++) {
        if (!strcmp(name, s_state_names[i])) {
            *state = (cf_state_t)i;
            return 0;
        }
    }
    return -1;
}

int cf_state_from_columns(const char *status, const char *stage, cf_state_t *state)
{
    if (!status)
        return -1;
    bool has_stage = stage && *stage;
    if (!strcmp(status, "processing")) {
        cf_state_t parsed;
        if (!has_stage || cf_state_parse(stage, &parsed) < 0 || !s_is_processing(parsed))
            return -1;
        *state = parsed;
        return 0;
    }
    cf_state_t parsed;
    if (has_stage || cf_state_parse(status, &parsed) < 0 || s_is_processing(parsed))
        return -1;
    *state = parsed;
    return 0;
}

bool cf_state_is_terminal(cf_state_t state)
{
    return state == CF_STATE_COMPLETED || state == CF_STATE_FAILED || state == CF_STATE_CANCELLED;
}

bool cf_status_is_valid(const char *status)
{
    cf_state_t state;
    if (!status)
        return false;
    if (!strcmp(status, "processing"))
        return true;
    return cf_state_parse(status, &state) == 0 && !s_is_processing(state);
}

const char *cf_priority_name(cf_priority_t priority)
{
    return (unsigned)priority < CF_PRIORITY_COUNT ? s_priority_names[priority] : NULL;
}

int cf_priority_parse(const char *name, cf_priority_t *priority)
{
    for (int i = 0; name && i < CF_PRIORITY_COUNT; i++) {
        if (!strcmp(name, s_priority_names[i])) {
            *priority = (cf_priority_t)i;
            return 0;
        }
    }
    return -1;
}

const char *cf_seg_state_name(cf_seg_state_t state)
{
    return (unsigned)state < CF_SEG_COUNT ? s_seg_names[state] : NULL;
}

int cf_seg_state_parse(const char *name, cf_seg_state_t *state)
{
    for (int i = 0; name && i < CF_SEG_COUNT; i++) {
        if (!strcmp(name, s_seg_names[i])) {
            *state = (cf_seg_state_t)i;
            return 0;
        }
    }
    return -1;
}

static const char *const s_task_kinds[] = {"segment", "audio", "assemble"};

const char *cf_task_kind_name(cf_task_kind_t kind)
{
    return kind >= CF_TASK_SEGMENT && kind <= CF_TASK_ASSEMBLE ? s_task_kinds[kind] : NULL;
}

int cf_task_kind_parse(const char *name, cf_task_kind_t *kind)
{
    for (int i = 0; name && i < 3; i++)
        if (!strcmp(name, s_task_kinds[i])) {
            *kind = (cf_task_kind_t)i;
            return 0;
        }
    return -1;
}
