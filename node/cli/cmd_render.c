/* clipfarm render COMP.json -o OUT [--jobs N] [--progress auto|bar|json|none]
 *
 * Renders a composition on this machine with no servers: the same planner and
 * encoder a cluster uses, segments on local worker threads. Exit codes: 0 the
 * output was written, 1 the render failed (one line saying why), 2 bad usage
 * or an invalid composition (every problem, one per line). Ctrl-C stops the
 * workers and removes every temporary file. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cf_cli.h"
#include "cf_comp.h"
#include "cf_progress.h"
#include "cf_render.h"

static atomic_bool s_cancel;

static void s_on_signal(int sig)
{
    (void)sig;
    atomic_store(&s_cancel, true);
}

typedef struct {
    cf_progress_t *progress;
} s_state_t;

static void s_on_progress(void *arg, const cf_render_progress_t *p)
{
    s_state_t *state = arg;
    /* Fetching and probing take a moment; frames are what the user waits on. */
    if (!strcmp(p->phase, "encode"))
        cf_progress_update(state->progress, p->phase, p->done, p->total);
}

/* Accepts the short forms -o and -j the usage line shows. */
static char **s_expand_short_options(int argc, char **argv)
{
    char **out = calloc((size_t)argc + 1, sizeof(char *));
    if (!out)
        return NULL;
    for (int i = 0; i < argc; i++) {
        if (i > 0 && !strcmp(argv[i], "-o"))
            out[i] = "--output";
        else if (i > 0 && !strcmp(argv[i], "-j"))
            out[i] = "--jobs";
        else
            out[i] = argv[i];
    }
    return out;
}

static void s_print_summary(FILE *out, const char *path, const cf_render_result_t *result,
                            bool json, cf_progress_t *progress)
{
    const cf_plan_t *plan = result->plan;
    double seconds = (double)plan->total_frames * plan->output.fps_den / plan->output.fps_num;
    if (!json) {
        fprintf(out,
                "rendered %s: %lld frames (%.3f s at %d/%d fps), %d segments, %s, %d jobs, "
                "%.1f s\n",
                path, (long long)plan->total_frames, seconds, plan->output.fps_num,
                plan->output.fps_den, plan->segment_count, result->encoder, result->jobs,
                result->seconds);
        return;
    }
    /* JSON members for the final progress line, including where each
     * segment starts, so a caller can check keyframes against the plan. */
    size_t cap = 512 + (size_t)plan->segment_count * 24;
    char *extra = malloc(cap);
    if (!extra)
        return;
    int n = snprintf(extra, cap,
                     "\"ok\":true,\"frames\":%lld,\"samples\":%lld,\"fps\":\"%d/%d\","
                     "\"segments\":%d,\"segment_frames\":%d,\"gop_frames\":%d,"
                     "\"encoder\":\"%s\",\"jobs\":%d,\"seconds\":%.3f,\"segment_starts\":[",
                     (long long)plan->total_frames, (long long)plan->total_samples,
                     plan->output.fps_num, plan->output.fps_den, plan->segment_count,
                     plan->segment_frames, plan->output.gop_frames, result->encoder, result->jobs,
                     result->seconds);
    for (int s = 0; s < plan->segment_count && n > 0 && (size_t)n < cap; s++)
        n += snprintf(extra + n, cap - (size_t)n, "%s%lld", s ? "," : "",
                      (long long)plan->segments[s].first_frame);
    if (n > 0 && (size_t)n < cap)
        snprintf(extra + n, cap - (size_t)n, "]");
    cf_progress_finish(progress, extra);
    free(extra);
}

int cf_cmd_render(int argc, char **argv)
{
    char *output = NULL, *progress_name = NULL, *work_dir = NULL;
    int jobs = 0, max_memory_mb = 300;
    const cf_option_t extra[] = {
        {"output", NULL, CF_OPT_STRING, &output, 0, 0,
         "output file (-o); a .mkv or .mp4 name picks the container, else the composition's "
         "output.container does",
         "FILE"},
        {"jobs", "CF_RENDER_JOBS", CF_OPT_INT, &jobs, 0, 256,
         "segments encoded at once (-j; default: one per CPU)", "N"},
        {"progress", NULL, CF_OPT_STRING, &progress_name, 0, 0,
         "auto (a bar on a terminal), bar, json (one line per update on stdout) or none", "MODE"},
        {"work-dir", "CF_RENDER_WORK_DIR", CF_OPT_STRING, &work_dir, 0, 0,
         "where the temporary workspace goes (default $TMPDIR or /tmp)", "DIR"},
        {"max-memory", "CF_RENDER_MAX_MEMORY", CF_OPT_INT, &max_memory_mb, 0, 1 << 20,
         "memory budget of the encoders in MB: fewer segments at once and a shorter "
         "rate-control lookahead when needed (default 300; 0: no limit)",
         "MB"},
        {0},
    };
    cf_config_t cfg;
    char **args = s_expand_short_options(argc, argv);
    if (!args) {
        cf_cli_error("render", "out of memory");
        return CF_EXIT_FAILURE;
    }
    int rc = cf_cli_parse(&cfg, "render", extra, 1, 1, argc, args);
    if (rc >= 0)
        goto end_config;

    cf_progress_mode_t mode = CF_PROGRESS_NONE;
    if (!output || !*output) {
        cf_cli_error("render", "missing -o OUT (usage: clipfarm render COMP.json -o OUT)");
        rc = CF_EXIT_USAGE;
        goto end_config;
    }
    if (cf_progress_mode_parse(progress_name ? progress_name : "auto", stderr, &mode) < 0) {
        cf_cli_error("render", "--progress: must be auto, bar, json or none");
        rc = CF_EXIT_USAGE;
        goto end_config;
    }

    cf_comp_errors_t errors = {0};
    cf_comp_t *comp = cf_comp_load(cfg.args[0], &errors);
    if (!comp) {
        for (int i = 0; i < errors.count; i++)
            cf_cli_error("render", "%s", errors.items[i]);
        cf_comp_errors_free(&errors);
        rc = CF_EXIT_USAGE;
        goto end_config;
    }
    cf_comp_errors_free(&errors);
    const char *ext = strrchr(output, '.');
    if (ext && !strcasecmp(ext, ".mkv"))
        comp->container = CF_CONTAINER_MKV;
    else if (ext && (!strcasecmp(ext, ".mp4") || !strcasecmp(ext, ".m4v")))
        comp->container = CF_CONTAINER_MP4;

    /* JSON lines go to stdout for programs; the bar to stderr, a terminal. */
    bool json = mode == CF_PROGRESS_JSON;
    s_state_t state = {cf_progress_new(mode, json ? stdout : stderr)};
    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = s_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);

    cf_render_opts_t opts = {.jobs = jobs,
                             .work_parent = work_dir,
                             .progress = s_on_progress,
                             .progress_arg = &state,
                             .cancel = &s_cancel,
                             .memory_budget =
                                 max_memory_mb > 0 ? (int64_t)max_memory_mb << 20 : -1};
    cf_render_result_t result;
    char err[1024];
    if (cf_render_run(comp, output, &opts, &result, err, sizeof err) < 0) {
        cf_progress_finish(state.progress, json ? "\"ok\":false" : NULL);
        cf_cli_error("render", "%s", err);
        rc = CF_EXIT_FAILURE;
    } else {
        if (json) {
            s_print_summary(stdout, output, &result, true, state.progress);
        } else {
            cf_progress_finish(state.progress, NULL);
            s_print_summary(stdout, output, &result, false, state.progress);
        }
        cf_render_result_clear(&result);
        rc = CF_EXIT_OK;
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    cf_progress_destroy(&state.progress);
    cf_comp_destroy(&comp);
end_config:
    cf_config_free(&cfg, extra);
    free(args);
    return rc;
}
