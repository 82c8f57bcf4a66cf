/* cf_api_client: shared plumbing of the client commands. */
#include "cf_json.h"
#include "cf_api_client.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cf_cli.h"

int cf_api_client_open(cf_api_client_t *client, const cf_config_t *cfg, const char *command)
{
    char err[512];
    memset(client, 0, sizeof *client);
    client->command = command;
    client->json = cfg->json;
    client->http = cf_httpc_new(cfg->server, cfg->api_key, 5000, 30000, err, sizeof err);
    if (!client->http) {
        cf_cli_error(command, "%s", err);
        return CF_EXIT_USAGE;
    }
    return -1;
}

void cf_api_client_close(cf_api_client_t *client)
{
    cf_httpc_destroy(&client->http);
}

int cf_api_client_call(cf_api_client_t *client, const char *method, const char *path,
                       const char *const *headers, const char *content_type, const void *body,
                       size_t body_len, json_t **json_p)
{
    cf_httpc_response_t resp;
    char err[1024];
    if (json_p)
        *json_p = NULL;
    if (cf_httpc_request(client->http, method, path, headers, content_type, body, body_len, &resp,
                         err, sizeof err) < 0) {
        cf_cli_error(client->command, "%s", err);
        cf_httpc_response_clear(&resp);
        return CF_EXIT_USAGE;
    }
    if (resp.status >= 400) {
        char line[1024];
        cf_httpc_error_line(&resp, line, sizeof line);
        cf_cli_error(client->command, "%s", line);
        cf_httpc_response_clear(&resp);
        return CF_EXIT_FAILURE;
    }
    if (json_p) {
        json_error_t jerr;
        *json_p = cf_json_loadb(resp.body ? resp.body : "", resp.body_len, JSON_DECODE_ANY, &jerr);
        if (!*json_p) {
            cf_cli_error(client->command, "%s%s answered with malformed JSON: %s",
                         cf_httpc_base_url(client->http), path, jerr.text);
            cf_httpc_response_clear(&resp);
            return CF_EXIT_FAILURE;
        }
    }
    cf_httpc_response_clear(&resp);
    return -1;
}

void cf_api_client_print_json(json_t *value)
{
    char *text = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);
    printf("%s\n", text ? text : "null");
    free(text);
}

char *cf_api_client_bar(double fraction, int width, char *buf, size_t len)
{
    if (fraction < 0)
        fraction = 0;
    if (fraction > 1)
        fraction = 1;
    int filled = (int)(fraction * width + 0.5);
    size_t n = 0;
    if (len < (size_t)width + 3)
        width = (int)len - 3;
    buf[n++] = '[';
    for (int i = 0; i < width; i++)
        buf[n++] = i < filled ? '#' : '.';
    buf[n++] = ']';
    buf[n] = '\0';
    return buf;
}

char *cf_api_client_age(json_t *ms, char *buf, size_t len)
{
    if (!json_is_number(ms)) {
        snprintf(buf, len, "-");
        return buf;
    }
    double seconds = json_number_value(ms) / 1000.0;
    if (seconds < 60)
        snprintf(buf, len, "%.1fs ago", seconds);
    else if (seconds < 3600)
        snprintf(buf, len, "%.0fm ago", seconds / 60);
    else
        snprintf(buf, len, "%.1fh ago", seconds / 3600);
    return buf;
}

int cf_api_client_check_id(const char *command, const char *id)
{
    size_t len = strlen(id);
    bool ok = len == 36;
    for (size_t i = 0; ok && i < len; i++)
        ok = (i == 8 || i == 13 || i == 18 || i == 23) ? id[i] == '-'
                                                       : isxdigit((unsigned char)id[i]) != 0;
    if (ok)
        return -1;
    cf_cli_error(command,
                 "'%s' is not a composition id (a UUID like "
                 "0b7c6f1e-8d2a-4c3b-9e5f-1a2b3c4d5e6f)",
                 id);
    return CF_EXIT_USAGE;
}
