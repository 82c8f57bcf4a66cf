/* clipfarm download ID -o FILE: fetches a composition's output with a
 * progress bar. Bytes land in FILE.part, renamed to FILE once complete; a
 * FILE.part left by an interrupted download is resumed with Range (and
 * If-Range with the ETag saved beside it, so a changed file starts over). */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cf_api_client.h"
#include "cf_cli.h"
#include "cf_progress.h"

typedef struct {
    const char *part_path;
    const char *etag_path;
    FILE *file;
    int64_t offset; /* bytes already in the part file when the request went out */
    int64_t total;  /* whole file size, -1 unknown */
    int64_t written;
    bool resumed;
    cf_progress_t *bar;
    char err[512];
} s_download_t;

static int s_on_headers(void *arg, const cf_httpc_response_t *resp)
{
    s_download_t *d = arg;
    const char *mode = "ab";
    if (resp->status == 206 && resp->range_start == d->offset) {
        d->resumed = d->offset > 0;
        d->total = resp->range_total;
    } else if (resp->status == 200) {
        mode = "wb"; /* the whole file: start over */
        d->offset = 0;
        d->total = resp->content_length;
    } else {
        snprintf(d->err, sizeof d->err, "unexpected answer %ld to a download", resp->status);
        return -1;
    }
    if (!(d->file = fopen(d->part_path, mode))) {
        snprintf(d->err, sizeof d->err, "cannot write '%s': %s", d->part_path, strerror(errno));
        return -1;
    }
    FILE *etag = resp->etag[0] ? fopen(d->etag_path, "w") : NULL;
    if (etag) {
        fprintf(etag, "%s\n", resp->etag);
        fclose(etag);
    }
    return 0;
}

static int s_on_body(void *arg, const void *data, size_t len)
{
    s_download_t *d = arg;
    if (fwrite(data, 1, len, d->file) != len) {
        snprintf(d->err, sizeof d->err, "cannot write '%s': %s", d->part_path, strerror(errno));
        return -1;
    }
    d->written += (int64_t)len;
    return 0;
}

static void s_on_progress(void *arg, int64_t received, int64_t total)
{
    s_download_t *d = arg;
    if (d->bar)
        cf_progress_update(d->bar, "download", d->offset + received,
                           d->total > 0 ? d->total : d->offset + (total > 0 ? total : received));
}

static int64_t s_file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (int64_t)st.st_size : -1;
}

int cf_cmd_download(int argc, char **argv)
{
    char *out = NULL, *progress = NULL;
    const cf_option_t extra[] = {
        {"output", NULL, CF_OPT_STRING, &out, 0, 0, "where to write the file (required; -o)",
         "FILE"},
        {"progress", NULL, CF_OPT_STRING, &progress, 0, 0,
         "auto (a bar on a terminal), bar, json or none", "MODE"},
        {0},
    };
    /* "-o FILE" is spelled with one dash; the option parser knows long
     * options only. */
    static char output_flag[] = "--output";
    for (int i = 1; i < argc && strcmp(argv[i], "--"); i++)
        if (!strcmp(argv[i], "-o"))
            argv[i] = output_flag;
    cf_config_t cfg;
    cf_api_client_t client = {0};
    char *part_path = NULL, *etag_path = NULL;
    s_download_t d = {.total = -1};
    int rc = cf_cli_parse(&cfg, "download", extra, 1, 1, argc, argv);
    if (rc >= 0 || (rc = cf_api_client_check_id("download", cfg.args[0])) >= 0)
        goto end;
    if (!out || !*out) {
        cf_cli_error("download", "-o FILE is required");
        rc = CF_EXIT_USAGE;
        goto end;
    }
    cf_progress_mode_t mode;
    if (cf_progress_mode_parse(progress ? progress : "auto", stderr, &mode) < 0) {
        cf_cli_error("download", "--progress: expected auto, bar, json or none, got '%s'",
                     progress);
        rc = CF_EXIT_USAGE;
        goto end;
    }
    if ((rc = cf_api_client_open(&client, &cfg, "download")) >= 0)
        goto end;
    if (asprintf(&part_path, "%s.part", out) < 0 || asprintf(&etag_path, "%s.part.etag", out) < 0) {
        cf_cli_error("download", "out of memory");
        rc = CF_EXIT_FAILURE;
        goto end;
    }
    d.part_path = part_path;
    d.etag_path = etag_path;
    d.offset = s_file_size(part_path);
    if (d.offset < 0)
        d.offset = 0;
    char range[64], if_range[200] = "";
    const char *headers[3] = {NULL, NULL, NULL};
    if (d.offset > 0) {
        snprintf(range, sizeof range, "Range: bytes=%" PRId64 "-", d.offset);
        headers[0] = range;
        FILE *etag = fopen(etag_path, "r");
        char tag[160];
        if (etag && fgets(tag, sizeof tag, etag)) {
            tag[strcspn(tag, "\r\n")] = '\0';
            snprintf(if_range, sizeof if_range, "If-Range: %s", tag);
            headers[1] = if_range;
        }
        if (etag)
            fclose(etag);
    }
    d.bar = cf_progress_new(mode, stderr);
    char path[128], err[1024];
    snprintf(path, sizeof path, "/api/v1/compositions/%s/output", cfg.args[0]);
    cf_httpc_response_t resp;
    int got = cf_httpc_get_stream(client.http, path, headers, s_on_headers, s_on_body,
                                  s_on_progress, &d, &resp, err, sizeof err);
    if (d.file && fclose(d.file) != 0 && got == 0) {
        snprintf(err, sizeof err, "cannot write '%s': %s", part_path, strerror(errno));
        got = -1;
    }
    if (d.bar)
        cf_progress_finish(d.bar, NULL);
    if (got < 0) {
        /* The part file stays: the next run resumes it. */
        cf_cli_error("download", "%s", d.err[0] ? d.err : err);
        rc = d.err[0] ? CF_EXIT_FAILURE : CF_EXIT_USAGE;
    } else if (resp.status == 416 && d.offset > 0 && resp.content_range[0]) {
        /* The part already holds every byte (or is larger than the file). */
        long long total = -1;
        sscanf(resp.content_range, "bytes */%lld", &total);
        if (total == d.offset) {
            d.total = total;
            rc = -1;
        } else {
            unlink(part_path);
            cf_cli_error("download", "the partial file did not match the output; removed it, "
                                     "run again to download from the start");
            rc = CF_EXIT_FAILURE;
        }
    } else if (resp.status >= 400) {
        char line[1024];
        cf_httpc_error_line(&resp, line, sizeof line);
        cf_cli_error("download", "%s", line);
        rc = CF_EXIT_FAILURE;
    } else {
        rc = -1;
    }
    cf_httpc_response_clear(&resp);
    if (rc >= 0)
        goto end;
    int64_t size = s_file_size(part_path);
    if (d.total >= 0 && size != d.total) {
        cf_cli_error("download", "got %" PRId64 " of %" PRId64 " bytes; run again to resume", size,
                     d.total);
        rc = CF_EXIT_FAILURE;
        goto end;
    }
    if (rename(part_path, out) < 0) {
        cf_cli_error("download", "cannot write '%s': %s", out, strerror(errno));
        rc = CF_EXIT_FAILURE;
        goto end;
    }
    unlink(etag_path);
    if (client.json)
        printf("{\"file\":\"%s\",\"size_bytes\":%" PRId64 ",\"resumed_from\":%" PRId64 "}\n", out,
               size, d.resumed ? d.offset : 0);
    else
        printf("downloaded %s (%" PRId64 " bytes%s)\n", out, size, d.resumed ? ", resumed" : "");
    rc = CF_EXIT_OK;
end:
    cf_progress_destroy(&d.bar);
    free(part_path);
    free(etag_path);
    cf_api_client_close(&client);
    cf_config_free(&cfg, extra);
    return rc;
}
