/* cf_api_blobs: GET and HEAD /internal/v1/blobs/{hash}, the data plane's
 * source: a node pulls a blob another node holds (an uploaded source, an
 * encoded segment, the audio track) from it with cf_blob_pull
 * (lib/net/cf_blob_pull.h).
 *
 * Peer-only: the route takes the credential the nodes derive from the
 * cluster secret (cf_peer_auth.h) and nothing else, since it serves any
 * blob of the node, whoever uploaded it; cf_api_peer_gate has refused
 * everyone else before the handler runs. The blob is sent as stored (only
 * compressed data crosses the network), with its hash as ETag and Range
 * for resuming an interrupted pull. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cf_api_internal.h"
#include "cf_blob.h"
#include "cf_log.h"

int cf_api_h_internal_blob(cf_api_req_t *req)
{
    cf_api_t *api = req->api;
    char hex[CF_BLOB_HEX_SIZE];
    /* A bare hash only (the router captured the segment into req->id). */
    if (!strncmp(req->id, "blob:", 5) || cf_blob_parse_ref(req->id, hex) < 0)
        return cf_api_send_error(req, 400, "invalid_argument", "hash",
                                 "a blob is named by its BLAKE2b-256: 64 lowercase hex characters");
    char path[4096], err[512];
    if (cf_blob_path(api->opts.blobs, hex, path, sizeof path, err, sizeof err) < 0)
        return cf_api_send_error(req, 404, "not_found", "hash", "blob %s is not on this node", hex);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        int saved = errno;
        if (fd >= 0)
            close(fd);
        /* Removed between the lookup and the open (the blob collector). */
        cf_log_debug("api", "blob %s at %s: %s", hex, path, strerror(saved));
        return cf_api_send_error(req, 404, "not_found", "hash", "blob %s is not on this node", hex);
    }
    char etag[CF_BLOB_HEX_SIZE + 2];
    snprintf(etag, sizeof etag, "\"%s\"", hex);
    return cf_api_send_file(req, fd, (int64_t)st.st_size, "application/octet-stream", etag, NULL);
}
