/* cf_s3: a small S3 client on libcurl's built-in AWS Signature V4 (no SDK):
 * streamed downloads with resume, single and multipart uploads with each
 * part retried, and S3's own error codes in messages.
 *
 * Where requests go and with which credentials is the node's business,
 * never a composition's: the endpoint (any S3-compatible service; AWS for
 * the region by default), the region, path-style or virtual-host
 * addressing, and credentials from the standard AWS_ACCESS_KEY_ID /
 * AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN environment (the "default"
 * profile) or an AWS-style credentials file with [profile] sections. A
 * composition names only a bucket, a key and optionally a profile. Bucket
 * names are checked (DNS-compatible) so that virtual-host addressing cannot
 * be steered to another host, requests never follow redirects, and secrets
 * never appear in an error, a log line or a URL.
 *
 * libcurl 7.88 signs the query string as written (it neither sorts it nor
 * adds "=" to a bare name): every query here is written in canonical form
 * ("uploads=", "partNumber=1&uploadId=..."), which S3 accepts as is.
 *
 * Safe to share between threads after cf_s3_new (read-only). */
#ifndef CF_S3_H
#define CF_S3_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cf_s3_t cf_s3_t;

typedef struct {
    const char *endpoint;         /* "http(s)://host[:port]"; NULL: AWS for the region */
    const char *region;           /* default "us-east-1" */
    bool path_style;              /* https://host/bucket/key instead of bucket.host/key */
    const char *credentials_file; /* AWS ini format; NULL: environment only */
    uint64_t part_bytes;          /* multipart part size, >= 64 KiB (default 16 MiB; AWS
                                     needs >= 5 MiB for every part but the last) */
    int part_tries;               /* attempts per part and per request (default 3) */
    long timeout_s;               /* one request (default 600) */
} cf_s3_options_t;

void cf_s3_options_default(cf_s3_options_t *opts);

/* Reads the credentials (environment, then the file's profiles). Returns
 * NULL with a reason in err (an unreadable file, a profile without keys). */
cf_s3_t *cf_s3_new(const cf_s3_options_t *opts, char *err, size_t errlen);
void cf_s3_destroy(cf_s3_t **self_p);

#include "cf_s3_names.h"

typedef struct {
    atomic_bool *cancel;     /* checked at least once a second (may be NULL) */
    uint64_t max_bytes;      /* downloads: 0 for no limit */
    long timeout_s;          /* whole download (0: the client's per-request timeout) */
    void (*tick)(void *arg); /* about once a second while a transfer runs (may be NULL) */
    void *tick_arg;
    /* Downloads: the ETag the object must still have, on every attempt
     * (S3 answers PreconditionFailed otherwise); NULL: any version. */
    const char *if_match;
} cf_s3_transfer_t;

/* Downloads BUCKET/KEY to DEST via DEST.part, resuming a broken transfer
 * with Range (up to part_tries attempts). PROFILE NULL is "default".
 * Returns 0, or -1 with a reason in err (S3's error code and message when
 * S3 answered one); nothing is left at DEST or DEST.part on failure. */
int cf_s3_download(cf_s3_t *self, const char *profile, const char *bucket, const char *key,
                   const char *dest, const cf_s3_transfer_t *transfer, char *err, size_t errlen);

/* Asks for BUCKET/KEY's ETag (quoted, as S3 gives it; empty when S3 names
 * none) and size without its body (HEAD), retried like a download. Returns
 * 0, or -1 with a reason in err and CODE set: "HTTP<status>" when S3
 * answered (a HEAD answer carries no error code: 404 may mean no such key
 * or no such bucket), else a local one ("unreachable", "cancelled",
 * "NoCredentials"). */
int cf_s3_head(cf_s3_t *self, const char *profile, const char *bucket, const char *key,
               const cf_s3_transfer_t *transfer, char etag[128], uint64_t *size, char code[64],
               char *err, size_t errlen);

/* Uploads the file at PATH to BUCKET/KEY: one PUT up to part_bytes, else a
 * multipart upload (memory bounded by nothing more than curl's buffers:
 * parts are read from the file), each part tried part_tries times; a failed
 * multipart upload is aborted. Returns 0, or -1 with S3's code and message
 * in err ("S3 InvalidAccessKeyId: ..."), and CODE (may be NULL, 64 bytes)
 * set to S3's error code or a local one ("unreachable", "cancelled"). */
int cf_s3_upload(cf_s3_t *self, const char *profile, const char *bucket, const char *key,
                 const char *path, const cf_s3_transfer_t *transfer, char code[64], char *err,
                 size_t errlen);

#endif
