/* cf_api_routes: the one table of the REST API's routes. The router serves
 * exactly these, and GET /openapi.json is built from exactly these, so the
 * document cannot list a route that does not exist or miss one that does.
 * The peer-only routes under /internal/ (the nodes' own traffic, closed to
 * API keys: cf_api_route_internal) are the one exception the document
 * leaves out. */
#include <string.h>

#include "cf_json.h"
#include "cf_api_internal.h"

/* Reusable bits of the OpenAPI operation objects. */
#define S_ERR(code, text) "\"" #code "\":{\"$ref\":\"#/components/responses/" text "\"}"
#define S_ERRORS_COMMON                                                                            \
    S_ERR(401, "Unauthorized")                                                                     \
    "," S_ERR(403, "Forbidden") "," S_ERR(429, "RateLimited") "," S_ERR(503, "Unavailable")
#define S_JSON(schema)                                                                             \
    "\"content\":{\"application/json\":{\"schema\":{\"$ref\":\"#/components/schemas/" schema "\"}" \
    "}}"
#define S_ID_PARAM                                                                                 \
    "{\"name\":\"id\",\"in\":\"path\",\"required\":true,\"schema\":{\"type\":\"string\","          \
    "\"format\":\"uuid\"}}"

const cf_api_route_t cf_api_routes[] = {
    {"POST", "/api/v1/compositions", cf_api_h_composition_create, true, "createComposition",
     "Submit a composition for rendering",
     "{\"parameters\":[{\"name\":\"Idempotency-Key\",\"in\":\"header\",\"required\":false,"
     "\"description\":\"Same key and body return the same composition; same key with another "
     "body is 409. A key is honoured for at least 24 hours after its first use (the node's "
     "--idempotency-keep-s): retention never removes its composition sooner.\","
     "\"schema\":{\"type\":\"string\",\"maxLength\":200}}],"
     "\"requestBody\":{\"required\":true," S_JSON(
         "CompositionSpec") "},"
                            "\"responses\":{\"202\":{\"description\":\"Accepted and queued; "
                            "Location names it.\","
                            "\"headers\":{\"Location\":{\"schema\":{\"type\":\"string\"}}}"
                            "," S_JSON("Composition") "}," S_ERR(400, "BadRequest") "," S_ERR(
                                409,
                                "Conflict") "," S_ERR(413,
                                                      "TooLarge") "," S_ERR(415,
                                                                            "UnsupportedMediaTy"
                                                                            "pe") "," S_ERR(422,
                                                                                            "In"
                                                                                            "va"
                                                                                            "li"
                                                                                            "dC"
                                                                                            "om"
                                                                                            "po"
                                                                                            "si"
                                                                                            "ti"
                                                                                            "o"
                                                                                            "n") "," S_ERRORS_COMMON
                                                                                                 "}"
                                                                                                 "}"},
    {"GET", "/api/v1/compositions", cf_api_h_composition_list, true, "listCompositions",
     "List compositions, newest first",
     "{\"parameters\":["
     "{\"name\":\"status\",\"in\":\"query\",\"schema\":{\"type\":\"string\",\"enum\":["
     "\"pending\","
     "\"queued\",\"processing\",\"completed\",\"failed\",\"cancelled\"]}},"
     "{\"name\":\"limit\",\"in\":\"query\",\"schema\":{\"type\":\"integer\",\"minimum\":1,"
     "\"maximum\":100,\"default\":20}},"
     "{\"name\":\"cursor\",\"in\":\"query\",\"description\":\"next_cursor of the previous "
     "page\",\"schema\":{\"type\":\"string\"}},"
     "{\"name\":\"fields\",\"in\":\"query\",\"description\":\"comma-separated fields to "
     "return\",\"schema\":{\"type\":\"string\"}}],"
     "\"responses\":{\"200\":{\"description\":\"A page of compositions.\"," S_JSON(
         "CompositionPage") "}," S_ERR(400, "BadRequest") "," S_ERRORS_COMMON "}}"},
    {"GET", "/api/v1/compositions/{id}", cf_api_h_composition_get, true, "getComposition",
     "One composition (served from the cache)",
     "{\"parameters\":[" S_ID_PARAM "],\"responses\":{\"200\":{\"description\":\"The "
     "composition.\"," S_JSON("Composition") "}," S_ERR(404, "NotFound") "," S_ERRORS_COMMON "}}"},
    {"DELETE", "/api/v1/compositions/{id}", cf_api_h_composition_cancel, true, "cancelComposition",
     "Cancel a composition",
     "{\"parameters\":[" S_ID_PARAM
     "],\"responses\":{\"200\":{\"description\":\"Cancelled.\"," S_JSON("Composition") "}," S_ERR(
         404, "NotFound") "," S_ERR(409, "Conflict") "," S_ERRORS_COMMON "}}"},
    {"GET", "/api/v1/compositions/{id}/segments", cf_api_h_composition_segments, true,
     "listSegments", "Per-segment status, node and progress",
     "{\"parameters\":[" S_ID_PARAM "],\"responses\":{\"200\":{\"description\":\"The "
     "segments in index order.\"," S_JSON("SegmentList") "}," S_ERR(
         404, "NotFound") "," S_ERRORS_COMMON "}}"},
    {"GET", "/api/v1/compositions/{id}/output", cf_api_h_composition_output, true, "downloadOutput",
     "The rendered file (Range, ETag; fetched from the holding node)",
     "{\"parameters\":[" S_ID_PARAM ",{\"name\":\"Range\",\"in\":\"header\",\"schema\":{"
     "\"type\":\"string\",\"example\":\"bytes=0-1023\"}},{\"name\":\"If-None-Match\",\"in\":"
     "\"header\",\"schema\":{\"type\":\"string\"}},{\"name\":\"If-Range\",\"in\":\"header\","
     "\"schema\":{\"type\":\"string\"}}],\"responses\":{"
     "\"200\":{\"description\":\"The whole file.\",\"headers\":{\"ETag\":{\"schema\":{\"type\":"
     "\"string\"}},\"Content-Disposition\":{\"schema\":{\"type\":\"string\"}}},\"content\":{"
     "\"application/octet-stream\":{\"schema\":{\"type\":\"string\",\"format\":\"binary\"}}}},"
     "\"206\":{\"description\":\"The requested range.\",\"headers\":{\"Content-Range\":{"
     "\"schema\":{\"type\":\"string\"}}}},\"304\":{\"description\":\"Not modified.\"}," S_ERR(
         404, "NotFound") "," S_ERR(409,
                                    "Conflict") "," S_ERR(416,
                                                          "RangeNotSatisfiable") "," S_ERRORS_COMMON
                                                                                 "}}"},
    {"GET", "/api/v1/compositions/{id}/events", cf_api_h_composition_events, true, "streamEvents",
     "Server-Sent Events: progress and status changes",
     "{\"parameters\":[" S_ID_PARAM ",{\"name\":\"Last-Event-ID\",\"in\":\"header\","
     "\"schema\":{\"type\":\"integer\"}}],\"responses\":{\"200\":{\"description\":\"An "
     "event stream; ends after the composition reaches a terminal status.\",\"content\":{"
     "\"text/event-stream\":{\"schema\":{\"type\":\"string\"}}}}," S_ERR(
         404, "NotFound") "," S_ERRORS_COMMON "}}"},
    {"POST", "/api/v1/media", cf_api_h_media_upload, true, "uploadMedia",
     "Upload a media file into this node's blob store",
     "{\"requestBody\":{\"required\":true,\"content\":{\"application/"
     "octet-stream\":{\"schema\":"
     "{\"type\":\"string\",\"format\":\"binary\"}},\"video/"
     "*\":{\"schema\":{\"type\":\"string\","
     "\"format\":\"binary\"}},\"audio/*\":{\"schema\":{\"type\":\"string\",\"format\":"
     "\"binary\"}}}},\"responses\":{\"201\":{\"description\":\"Stored; use ref as a clip "
     "source.\"," S_JSON("Blob") "}," S_ERR(413, "TooLarge") "," S_ERR(
         415, "UnsupportedMediaType") "," S_ERRORS_COMMON "}}"},
    {"GET", "/api/v1/cluster", cf_api_h_cluster, true, "getCluster",
     "Coordinator, epoch, nodes and queue depth",
     "{\"responses\":{\"200\":{\"description\":\"The cluster as this node sees it.\"," S_JSON(
         "Cluster") "}," S_ERRORS_COMMON "}}"},
    {"GET", "/healthz", cf_api_h_healthz, false, "health", "Liveness: the process serves HTTP",
     "{\"security\":[],\"responses\":{\"200\":{\"description\":\"Alive.\"}}}"},
    {"GET", "/readyz", cf_api_h_readyz, false, "ready", "Readiness: Postgres and Redis reachable",
     "{\"security\":[],\"responses\":{\"200\":{\"description\":\"Ready.\"},\"503\":{"
     "\"description\":\"A dependency is unreachable.\"}}}"},
    {"GET", "/metrics", cf_api_h_metrics, false, "metrics", "Prometheus metrics (text format)",
     "{\"security\":[],\"responses\":{\"200\":{\"description\":\"Metrics.\",\"content\":{"
     "\"text/plain\":{\"schema\":{\"type\":\"string\"}}}}}}"},
    {"GET", "/openapi.json", cf_api_h_openapi, false, "openapi", "This document",
     "{\"security\":[],\"responses\":{\"200\":{\"description\":\"OpenAPI 3 document.\"}}}"},
    /* Peer-only (under /internal/: the data plane, cf_api_blobs.c). */
    {"GET", "/internal/v1/blobs/{hash}", cf_api_h_internal_blob, false, "getBlob",
     "A blob of this node's store, for another node", NULL},
    {"HEAD", "/internal/v1/blobs/{hash}", cf_api_h_internal_blob, false, "headBlob",
     "A blob's size and hash, for another node", NULL},
    {0},
};

/* Components: the shapes the operations refer to. */
static const char s_components[] =
    "{\"securitySchemes\":{\"bearer\":{\"type\":\"http\",\"scheme\":\"bearer\","
    "\"description\":\"API key from 'clipfarm apikey create NAME'\"}},"
    "\"schemas\":{"
    "\"Error\":{\"type\":\"object\",\"required\":[\"error\"],\"properties\":{\"error\":{"
    "\"type\":\"object\",\"required\":[\"code\",\"message\",\"field\"],\"properties\":{"
    "\"code\":{\"type\":\"string\"},\"message\":{\"type\":\"string\"},\"field\":{\"type\":"
    "\"string\",\"nullable\":true},\"line\":{\"type\":\"integer\"},\"column\":{\"type\":"
    "\"integer\"},\"problems\":{\"type\":\"array\",\"items\":{\"type\":\"object\","
    "\"properties\":{\"field\":{\"type\":\"string\"},\"message\":{\"type\":\"string\"}}}},"
    "\"retry_after_s\":{\"type\":\"integer\"}}}}},"
    "\"CompositionSpec\":{\"type\":\"object\",\"required\":[\"clips\"],\"properties\":{"
    "\"title\":{\"type\":\"string\"},\"priority\":{\"type\":\"string\",\"enum\":[\"high\","
    "\"default\",\"low\"]},\"clips\":{\"type\":\"array\",\"items\":{\"type\":\"object\","
    "\"required\":[\"source\"],\"properties\":{\"source\":{\"type\":\"string\"},\"start\":{"
    "\"type\":\"number\"},\"end\":{\"type\":\"number\"}}}},\"output\":{\"type\":\"object\"},"
    "\"segment_seconds\":{\"type\":\"number\"}}},"
    "\"Composition\":{\"type\":\"object\",\"properties\":{\"id\":{\"type\":\"string\","
    "\"format\":\"uuid\"},\"title\":{\"type\":\"string\"},\"status\":{\"type\":\"string\"},"
    "\"stage\":{\"type\":\"string\",\"nullable\":true},\"priority\":{\"type\":\"string\"},"
    "\"progress\":{\"type\":\"number\"},\"spec\":{\"$ref\":\"#/components/schemas/"
    "CompositionSpec\"},\"error\":{\"type\":\"object\",\"nullable\":true},\"output\":{\"type\":"
    "\"object\",\"nullable\":true},\"attempts\":{\"type\":\"integer\"},\"version\":{\"type\":"
    "\"integer\"},\"created_at\":{\"type\":\"string\"},\"updated_at\":{\"type\":\"string\"},"
    "\"started_at\":{\"type\":\"string\",\"nullable\":true},\"finished_at\":{\"type\":"
    "\"string\",\"nullable\":true}}},"
    "\"CompositionPage\":{\"type\":\"object\",\"properties\":{\"items\":{\"type\":\"array\","
    "\"items\":{\"$ref\":\"#/components/schemas/Composition\"}},\"next_cursor\":{\"type\":"
    "\"string\",\"nullable\":true}}},"
    "\"SegmentList\":{\"type\":\"object\",\"properties\":{\"items\":{\"type\":\"array\","
    "\"items\":{\"type\":\"object\",\"properties\":{\"index\":{\"type\":\"integer\"},"
    "\"frame_start\":{\"type\":\"integer\"},\"frame_end\":{\"type\":\"integer\"},\"status\":{"
    "\"type\":\"string\"},\"node_id\":{\"type\":\"string\",\"nullable\":true},\"progress\":{"
    "\"type\":\"number\"},\"attempts\":{\"type\":\"integer\"}}}}}},"
    "\"Blob\":{\"type\":\"object\",\"properties\":{\"ref\":{\"type\":\"string\"},\"hash\":{"
    "\"type\":\"string\"},\"size_bytes\":{\"type\":\"integer\"},\"node_id\":{\"type\":"
    "\"string\"}}},"
    "\"Cluster\":{\"type\":\"object\",\"properties\":{\"node_id\":{\"type\":\"string\"},"
    "\"coordinator\":{\"type\":\"string\",\"nullable\":true},\"epoch\":{\"type\":\"integer\"},"
    "\"nodes\":{\"type\":\"array\",\"items\":{\"type\":\"object\"}},\"queue_depth\":{\"type\":"
    "\"object\"}}}},"
    "\"responses\":{"
    "\"BadRequest\":{\"description\":\"Malformed request (JSON errors carry line and "
    "column).\"," S_JSON(
        "Error") "},"
                 "\"Unauthorized\":{\"description\":\"Missing or invalid API key.\"," S_JSON(
                     "Error") "},"
                              "\"Forbidden\":{\"description\":\"Revoked API key.\"," S_JSON(
                                  "Error") "},"
                                           "\"NotFound\":{\"description\":\"No such "
                                           "composition.\"," S_JSON(
                                               "Error") "},"
                                                        "\"Conflict\":{\"description\":"
                                                        "\"Conflicting state (already terminal, "
                                                        "idempotency key "
                                                        "reused).\"," S_JSON(
                                                            "Error") "},"
                                                                     "\"TooLarge\":{"
                                                                     "\"description\":\"Body over "
                                                                     "the limit.\"," S_JSON(
                                                                         "Error") "},"
                                                                                  "\"UnsupportedMed"
                                                                                  "iaType\":{"
                                                                                  "\"description\":"
                                                                                  "\"Wrong "
                                                                                  "Content-Type."
                                                                                  "\"," S_JSON(
                                                                                      "Error") "},"
                                                                                               "\"I"
                                                                                               "nva"
                                                                                               "lid"
                                                                                               "Com"
                                                                                               "pos"
                                                                                               "iti"
                                                                                               "on"
                                                                                               "\":"
                                                                                               "{\""
                                                                                               "des"
                                                                                               "cri"
                                                                                               "pti"
                                                                                               "on"
                                                                                               "\":"
                                                                                               "\"E"
                                                                                               "ver"
                                                                                               "y "
                                                                                               "val"
                                                                                               "ida"
                                                                                               "tio"
                                                                                               "n "
                                                                                               "pro"
                                                                                               "ble"
                                                                                               "m "
                                                                                               "lis"
                                                                                               "ted"
                                                                                               ".\""
                                                                                               "," S_JSON(
                                                                                                   "Error") "},"
                                                                                                            "\"RangeNotSatisfiable\":{\"description\":\"Range outside the file.\"," S_JSON(
                                                                                                                "Error") "},"
                                                                                                                         "\"RateLimited\":{\"description\":\"Rate limit; see Retry-After.\",\"headers\":{"
                                                                                                                         "\"Retry-After\":{\"schema\":{\"type\":\"integer\"}}}," S_JSON(
                                                                                                                             "Error") "},"
                                                                                                                                      "\"Unavailable\":{\"description\":\"Database unreachable; see Retry-After.\"," S_JSON(
                                                                                                                                          "Error") "}}}";

json_t *cf_api_openapi_document(void)
{
    json_t *paths = json_object();
    for (const cf_api_route_t *r = cf_api_routes; r->method; r++) {
        if (cf_api_route_internal(r))
            continue; /* between the nodes, not part of the API users see */
        json_t *op = cf_json_loads(r->openapi, 0, NULL);
        if (!op) /* a typo in the table above: caught by the OpenAPI test */
            op = json_pack("{s:s}", "description", "(document entry failed to parse)");
        json_object_set_new(op, "operationId", json_string(r->operation));
        json_object_set_new(op, "summary", json_string(r->summary));
        json_t *path = json_object_get(paths, r->pattern);
        if (!path) {
            path = json_object();
            json_object_set_new(paths, r->pattern, path);
        }
        char method[16];
        size_t i = 0;
        for (; r->method[i] && i + 1 < sizeof method; i++)
            method[i] = (char)(r->method[i] | 0x20); /* OpenAPI keys are lowercase */
        method[i] = '\0';
        json_object_set_new(path, method, op);
    }
    json_t *components = cf_json_loads(s_components, 0, NULL);
    return json_pack("{s:s,s:{s:s,s:s,s:s},s:o,s:[{s:[]}],s:o}", "openapi", "3.0.3", "info",
                     "title", "clipfarm REST API", "version", CF_VERSION, "description",
                     "The same API on every node of a clipfarm cluster.", "paths", paths,
                     "security", "bearer", "components", components ? components : json_object());
}
