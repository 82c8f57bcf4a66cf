/* cf_api_client: what the client commands (status, submit, ls, get,
 * cancel, download, nodes) share: a libcurl client for --server/CF_SERVER
 * with --api-key/CF_API_KEY, one-line errors, exit codes, and formatting.
 *
 * Exit codes follow cf_cli.h: a server that answers with an error is
 * CF_EXIT_FAILURE (its error shown as one line); a server that cannot be
 * reached is CF_EXIT_USAGE (the line names the URL tried). */
#ifndef CF_API_CLIENT_H
#define CF_API_CLIENT_H

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

#include "cf_config.h"
#include "cf_httpc.h"

typedef struct {
    cf_httpc_t *http;
    const char *command;
    bool json;
} cf_api_client_t;

/* Opens a client for CFG's server and key. Returns -1 when the command may
 * go on, else the exit code (the reason printed). */
int cf_api_client_open(cf_api_client_t *client, const cf_config_t *cfg, const char *command);
void cf_api_client_close(cf_api_client_t *client);

/* Sends METHOD PATH (BODY may be NULL) and parses a JSON answer into
 * *json_p (caller decrefs; may be NULL to ignore). HEADERS may be NULL.
 * Returns -1 on a 2xx/3xx answer, else the exit code after printing one
 * line: the server's error, or the URL that could not be reached. */
int cf_api_client_call(cf_api_client_t *client, const char *method, const char *path,
                       const char *const *headers, const char *content_type, const void *body,
                       size_t body_len, json_t **json_p);

/* Prints V as one line of compact JSON on stdout. */
void cf_api_client_print_json(json_t *value);

/* A text progress bar of WIDTH cells for FRACTION (0..1) into buf. */
char *cf_api_client_bar(double fraction, int width, char *buf, size_t len);

/* "3.2 s ago" style age from milliseconds. */
char *cf_api_client_age(json_t *ms, char *buf, size_t len);

/* Prints the "nodes" of a GET /api/v1/cluster answer as a table. */
void cf_api_client_print_nodes(json_t *cluster);

/* Checks ID looks like a composition id (a UUID). Returns -1 when fine,
 * else prints why and returns CF_EXIT_USAGE. */
int cf_api_client_check_id(const char *command, const char *id);

#endif
