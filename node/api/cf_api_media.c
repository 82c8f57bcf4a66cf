/* cf_api_media: POST /api/v1/media streams an upload into this node's blob
 * store (never whole in memory, at most max_upload_bytes) and answers with
 * the "blob:<hash>" reference a clip can use as its source on this node. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cf_api_internal.h"
#include "cf_blob.h"
#include "cf_db.h"
#include "cf_log.h"

static bool s_media_type_ok(cf_api_req_t *req)
{
    const char *ct = mg_get_header(req->conn, "Content-Type");
    if (!ct)
        return false;
    while (*ct == ' ')
        ct++;
    return cf_api_content_type_is(req, "application/octet-stream") ||
           !strncasecmp(ct, "video/", 6) || !strncasecmp(ct, "audio/", 6);
}

int cf_api_h_media_upload(cf_api_req_t *req)
{
    cf_api_t *api = req->api;
    int64_t max = api->opts.max_upload_bytes;
    if (!s_media_type_ok(req)) {
        const char *ct = mg_get_header(req->conn, "Content-Type");
        cf_api_close_after(req);
        return cf_api_send_error(req, 415, "unsupported_media_type", NULL,
                                 "Content-Type must be application/octet-stream, video/* or "
                                 "audio/*, got %s",
                                 ct ? ct : "none");
    }
    long long declared = req->ri->content_length;
    if (declared > max) {
        cf_api_close_after(req);
        return cf_api_send_error(req, 413, "too_large", NULL,
                                 "upload of %lld bytes is over the limit of %lld bytes", declared,
                                 (long long)max);
    }
    char err[512];
    /* Per-key quota: what the key already holds plus this upload. */
    int64_t quota = api->opts.upload_quota_bytes, used = 0;
    bool quota_bound = false; /* max is what is left of the quota */
    if (quota > 0) {
        int rc = cf_db_blob_usage(api->opts.db, req->key_id, &used, err, sizeof err);
        if (rc != CF_DB_OK) {
            cf_api_close_after(req);
            return cf_api_send_db_error(req, rc, "uploads", err);
        }
        if (used >= quota || (declared > 0 && used + declared > quota)) {
            cf_api_close_after(req);
            cf_metric_inc(api->m_refused, (const char *[]){"upload_quota"}, 1);
            return cf_api_send_error(req, 413, "quota_exceeded", NULL,
                                     "this API key holds %lld bytes of uploads; the quota is "
                                     "%lld bytes",
                                     (long long)used, (long long)quota);
        }
        if (quota - used < max) {
            max = quota - used;
            quota_bound = true;
        }
    }
    cf_blob_writer_t *writer = cf_blob_writer_new(api->opts.blobs, (uint64_t)max, err, sizeof err);
    if (!writer) {
        cf_log_error("api", "upload: %s", err);
        return cf_api_send_error(req, 500, "internal", NULL, "cannot store uploads now");
    }
    static const size_t piece = 256 * 1024;
    char *buf = malloc(piece);
    int status = 0;
    while (buf && !status) {
        int n = mg_read(req->conn, buf, piece);
        uint64_t got = cf_blob_writer_size(writer);
        /* civetweb reads 0 both at the end of the body and when the client
         * stalls past the request timeout: only the declared length tells
         * a whole upload from a truncated one, which is never stored. */
        if (n == 0 && declared >= 0 && got < (uint64_t)declared) {
            cf_api_close_after(req);
            cf_api_count_rejected(api, "upload_truncated");
            status = cf_api_send_error(req, 408, "timeout", NULL,
                                       "the upload stalled after %llu of %lld bytes",
                                       (unsigned long long)got, declared);
            break;
        }
        if (n == 0)
            break;
        if (n < 0) {
            cf_api_close_after(req);
            cf_api_count_rejected(api, "upload_truncated");
            status = cf_api_send_error(req, 400, "bad_request", NULL,
                                       "the upload was cut off after %llu bytes",
                                       (unsigned long long)got);
            break;
        }
        int rc = cf_blob_writer_write(writer, buf, (size_t)n, err, sizeof err);
        if (rc == CF_BLOB_TOO_LARGE && quota_bound) {
            cf_api_close_after(req);
            cf_metric_inc(api->m_refused, (const char *[]){"upload_quota"}, 1);
            status = cf_api_send_error(req, 413, "quota_exceeded", NULL,
                                       "upload goes over this API key's quota of %lld bytes",
                                       (long long)quota);
        } else if (rc == CF_BLOB_TOO_LARGE) {
            cf_api_close_after(req);
            status = cf_api_send_error(req, 413, "too_large", NULL,
                                       "upload is over the limit of %lld bytes", (long long)max);
        } else if (rc != CF_BLOB_OK) {
            cf_log_error("api", "upload: %s", err);
            cf_api_close_after(req);
            status = cf_api_send_error(req, 507, "insufficient_storage", NULL,
                                       "cannot store the upload on this node");
        }
    }
    if (!buf)
        status = cf_api_send_error(req, 500, "internal", NULL, "out of memory");
    free(buf);
    if (status) {
        cf_blob_writer_abort(&writer);
        return status;
    }
    uint64_t size = cf_blob_writer_size(writer);
    char hex[CF_BLOB_HEX_SIZE];
    if (cf_blob_writer_commit(&writer, hex, err, sizeof err) < 0) {
        cf_log_error("api", "upload: %s", err);
        return cf_api_send_error(req, 507, "insufficient_storage", NULL,
                                 "cannot store the upload on this node");
    }
    int rc = cf_db_blob_record(api->opts.db, hex, req->key_id, api->node_id, (int64_t)size, err,
                               sizeof err);
    if (rc != CF_DB_OK) {
        /* Unrecorded, the upload would belong to nobody: the key could
         * not use it. The file stays for another key's identical upload
         * and goes with the garbage collection of unreferenced blobs. */
        return cf_api_send_db_error(req, rc, "upload", err);
    }
    cf_metric_inc(api->m_uploads, NULL, (double)size);
    char ref[8 + CF_BLOB_HEX_SIZE];
    snprintf(ref, sizeof ref, "blob:%s", hex);
    return cf_api_send_json(req, 201,
                            json_pack("{s:s,s:s,s:I,s:s}", "ref", ref, "hash", hex, "size_bytes",
                                      (json_int_t)size, "node_id", api->node_id),
                            NULL);
}
