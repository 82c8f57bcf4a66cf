/* cf_api_output: GET /api/v1/compositions/{id}/output.
 *
 * Serves the rendered file with Range (one range; 206/416), ETag (the
 * output's content hash), If-None-Match, If-Range, Content-Length and
 * Content-Disposition, streamed in pieces from disk. An output another node
 * holds (location "clipfarm://NODE/PATH", see cf_worker.h) is fetched from
 * that node's API, with the caller's Range passed on and the caller's key
 * replaced by a credential derived from the cluster secret
 * (cf_api_peer_credential), and streamed through as it arrives. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cf_api_internal.h"
#include "cf_locations.h"
#include "cf_db.h"
#include "cf_httpc.h"
#include "cf_log.h"
#include "cf_worker.h"

/* Marks a request one node made to another, so it is never passed on again. */
#define S_PROXIED_HEADER "X-Clipfarm-Proxied"

/* attachment; filename="<safe title or id>.<ext>" */
static void s_disposition(const cf_db_composition_t *comp, const char *ext, char *out,
                          size_t outlen)
{
    char name[96];
    size_t n = 0;
    for (const char *p = comp->title ? comp->title : ""; *p && n + 1 < sizeof name; p++) {
        unsigned char c = (unsigned char)*p;
        name[n++] = isalnum(c) || c == '-' || c == '_' || c == '.' ? (char)c : '_';
    }
    name[n] = '\0';
    snprintf(out, outlen, "Content-Disposition: attachment; filename=\"%s.%s\"\r\n",
             n ? name : comp->id, ext);
}

static int s_serve_local(cf_api_req_t *req, const cf_db_composition_t *comp, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0) {
        int saved = errno;
        if (fd >= 0)
            close(fd);
        cf_log_warn("api", "output of %s at %s: %s", comp->id, path, strerror(saved));
        return cf_api_send_error(req, 404, "output_missing", NULL,
                                 "the output file of composition %s is gone from this node",
                                 comp->id);
    }
    int64_t size = st.st_size;
    char etag[160];
    if (comp->output_hash && *comp->output_hash)
        snprintf(etag, sizeof etag, "\"%.128s\"", comp->output_hash);
    else
        snprintf(etag, sizeof etag, "\"%" PRIx64 "-%" PRIx64 "\"", (uint64_t)size,
                 (uint64_t)st.st_mtime);
    /* Outputs are blobs (no name to go by): Matroska opens with the EBML
     * magic, everything else the renderer makes is MP4. */
    unsigned char magic[4] = {0};
    bool mkv = pread(fd, magic, sizeof magic, 0) == (ssize_t)sizeof magic && magic[0] == 0x1a &&
               magic[1] == 0x45 && magic[2] == 0xdf && magic[3] == 0xa3;
    const char *ext = mkv ? "mkv" : "mp4";
    const char *ct = mkv ? "video/x-matroska" : "video/mp4";
    char disposition[256];
    s_disposition(comp, ext, disposition, sizeof disposition);
    return cf_api_send_file(req, fd, size, ct, etag, disposition);
}

/* ------------------------------------------------------------ from a peer */

typedef struct {
    cf_api_req_t *req;
    bool head_sent;
} s_proxy_t;

static int s_proxy_headers(void *arg, const cf_httpc_response_t *resp)
{
    s_proxy_t *p = arg;
    char head[1200];
    int n = snprintf(head, sizeof head, "HTTP/1.1 %ld %s\r\nContent-Type: %s\r\n", resp->status,
                     resp->status == 206 ? "Partial Content" : "OK",
                     resp->content_type[0] ? resp->content_type : "application/octet-stream");
    if (resp->content_length >= 0)
        n += snprintf(head + n, sizeof head - (size_t)n, "Content-Length: %" PRId64 "\r\n",
                      resp->content_length);
    else
        cf_api_close_after(p->req); /* no length: the end of the body is the close */
    if (resp->etag[0])
        n += snprintf(head + n, sizeof head - (size_t)n, "ETag: %s\r\n", resp->etag);
    if (resp->content_range[0])
        n += snprintf(head + n, sizeof head - (size_t)n, "Content-Range: %s\r\n",
                      resp->content_range);
    if (resp->content_disposition[0])
        n += snprintf(head + n, sizeof head - (size_t)n, "Content-Disposition: %s\r\n",
                      resp->content_disposition);
    n += snprintf(head + n, sizeof head - (size_t)n, "Accept-Ranges: bytes\r\n\r\n");
    p->head_sent = true;
    p->req->status = (int)resp->status;
    return mg_write(p->req->conn, head, (size_t)n) > 0 ? 0 : -1;
}

static int s_proxy_body(void *arg, const void *data, size_t len)
{
    s_proxy_t *p = arg;
    return mg_write(p->req->conn, data, len) > 0 ? 0 : -1;
}

/* The HTTP base URL of peer NODE_ID from the cluster view, or -1. */
static int s_peer_url(cf_api_t *api, const char *node_id, char *url, size_t urllen)
{
    if (!api->opts.cluster)
        return -1;
    json_t *snap = api->opts.cluster(api->opts.cluster_arg);
    size_t i;
    json_t *peer;
    int rc = -1;
    json_array_foreach(json_object_get(snap, "peers"), i, peer)
    {
        const char *id = json_string_value(json_object_get(peer, "id"));
        const char *endpoint = json_string_value(json_object_get(peer, "http_endpoint"));
        if (!id || !endpoint || strcmp(id, node_id))
            continue;
        snprintf(url, urllen, "%s%s", strstr(endpoint, "://") ? "" : "http://", endpoint);
        rc = 0;
        break;
    }
    json_decref(snap);
    return rc;
}

static int s_serve_remote(cf_api_req_t *req, const char *node_id)
{
    cf_api_t *api = req->api;
    if (mg_get_header(req->conn, S_PROXIED_HEADER))
        return cf_api_send_error(req, 404, "output_missing", NULL,
                                 "this node does not hold the output of %s", req->id);
    char base[300], err[512];
    if (s_peer_url(api, node_id, base, sizeof base) < 0) {
        char message[512];
        snprintf(message, sizeof message,
                 "the output of %s is on node %s, which is not reachable now", req->id, node_id);
        json_t *detail = json_pack("{s:s,s:s}", "code", "node_unavailable", "message", message);
        return cf_api_send_error_json(req, 503, detail, "Retry-After: 2\r\n");
    }
    cf_httpc_t *client = cf_httpc_new(base, NULL, 2000, 30000, err, sizeof err);
    if (!client)
        return cf_api_send_error(req, 500, "internal", NULL, "%s", err);
    char path[200];
    snprintf(path, sizeof path, "/api/v1/compositions/%s/output", req->id);
    /* The user's key stays here (it would cross the network in the clear):
     * this node vouches for the request with the cluster's own credential,
     * having checked the caller already. */
    char auth[300] = "", range[200] = "", if_range[200] = "", if_none[200] = "";
    const char *headers[6];
    int h = 0;
    const char *value;
    if (cf_api_peer_credential(api, "GET", path, auth, sizeof auth) < 0) {
        cf_httpc_destroy(&client);
        return cf_api_send_error(req, 500, "internal", NULL,
                                 "this node has no cluster secret to authenticate to node %s",
                                 node_id);
    }
    headers[h++] = auth;
    if ((value = mg_get_header(req->conn, "Range")))
        snprintf(range, sizeof range, "Range: %s", value), headers[h++] = range;
    if ((value = mg_get_header(req->conn, "If-Range")))
        snprintf(if_range, sizeof if_range, "If-Range: %s", value), headers[h++] = if_range;
    if ((value = mg_get_header(req->conn, "If-None-Match")))
        snprintf(if_none, sizeof if_none, "If-None-Match: %s", value), headers[h++] = if_none;
    headers[h++] = S_PROXIED_HEADER ": 1";
    headers[h] = NULL;
    s_proxy_t proxy = {req, false};
    cf_httpc_response_t resp;
    int rc = cf_httpc_get_stream(client, path, headers, s_proxy_headers, s_proxy_body, NULL, &proxy,
                                 &resp, err, sizeof err);
    cf_httpc_destroy(&client);
    int status;
    if (proxy.head_sent) {
        status = req->status;
        if (rc < 0)
            cf_api_close_after(req); /* cut mid-body: the client must not wait for more */
    } else if (rc < 0) {
        status = cf_api_send_error(req, 502, "node_unavailable", NULL,
                                   "fetching the output from node %s failed: %s", node_id, err);
    } else {
        /* The peer's own answer (304, 404, 416...): pass it on as it is. */
        char headers_out[300] = "";
        if (resp.etag[0])
            snprintf(headers_out, sizeof headers_out, "ETag: %s\r\n", resp.etag);
        status = cf_api_send(req, (int)resp.status,
                             resp.content_type[0] ? resp.content_type : "application/json",
                             resp.body ? resp.body : "", resp.body_len, headers_out);
    }
    cf_httpc_response_clear(&resp);
    return status;
}

int cf_api_h_composition_output(cf_api_req_t *req)
{
    cf_api_t *api = req->api;
    int rc = cf_api_composition_visible(req, NULL, NULL);
    if (rc)
        return rc;
    cf_db_composition_t comp;
    memset(&comp, 0, sizeof comp);
    char err[256];
    rc = cf_db_composition_get(api->opts.db, req->id, &comp, err, sizeof err);
    if (rc == CF_DB_NOT_FOUND)
        return cf_api_send_error(req, 404, "not_found", "id", "composition %s not found", req->id);
    if (rc != CF_DB_OK)
        return cf_api_send_db_error(req, rc, "composition", err);
    int status;
    char node_id[128], relpath[512], path[1024];
    if (comp.state != CF_STATE_COMPLETED || !comp.output_location) {
        status = cf_api_send_error(req, 409, "not_ready", NULL,
                                   "composition %s is %s: it has no output yet", req->id,
                                   cf_state_name(comp.state));
    } else if (cf_location_parse(comp.output_location, node_id, sizeof node_id, relpath,
                                 sizeof relpath) < 0) {
        status = cf_api_send_error(req, 404, "output_missing", NULL,
                                   "composition %s has an output location this node cannot "
                                   "read (%s)",
                                   req->id, comp.output_location);
    } else {
        snprintf(path, sizeof path, "%s/%s", api->data_dir, relpath);
        if (!strcmp(node_id, api->node_id) || access(path, R_OK) == 0)
            status = s_serve_local(req, &comp, path);
        else
            status = s_serve_remote(req, node_id);
    }
    cf_db_composition_clear(&comp);
    return status;
}
