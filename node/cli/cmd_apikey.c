/* clipfarm apikey create NAME | list | revoke ID: API keys, straight in the
 * database. A new key is printed once; only its keyed hash is stored (see
 * lib/store/cf_apikey.h), keyed by the cluster secret the nodes use. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cf_apikey.h"
#include "cf_cli.h"
#include "cf_db.h"
#include "cf_migrate.h"

static int s_create(cf_db_t *db, const uint8_t *hashkey, const char *name, bool admin, bool json)
{
    char key[CF_APIKEY_TEXT_SIZE], id[CF_APIKEY_ID_CHARS + 1], err[512];
    if (!*name || strlen(name) > 200) {
        cf_cli_error("apikey", "NAME must be 1 to 200 characters");
        return CF_EXIT_USAGE;
    }
    if (cf_apikey_generate(key, id) < 0) {
        cf_cli_error("apikey", "libsodium cannot be initialised");
        return CF_EXIT_FAILURE;
    }
    uint8_t hash[CF_APIKEY_HASH_BYTES];
    cf_apikey_hash(hashkey, key, hash);
    int rc = cf_db_api_key_insert_scoped(db, id, name, hash, sizeof hash, admin, err, sizeof err);
    if (rc != CF_DB_OK) {
        cf_cli_error("apikey", "%s", err);
        return rc == CF_DB_UNAVAILABLE ? CF_EXIT_USAGE : CF_EXIT_FAILURE;
    }
    char webhook_secret[CF_APIKEY_WEBHOOK_SECRET_SIZE];
    cf_apikey_webhook_secret(hashkey, id, webhook_secret);
    if (json) {
        json_t *out = json_pack("{s:s,s:s,s:s,s:s,s:s}", "id", id, "name", name, "key", key,
                                "webhook_secret", webhook_secret, "scope", admin ? "admin" : "own");
        char *text = json_dumps(out, JSON_COMPACT);
        printf("%s\n", text ? text : "{}");
        free(text);
        json_decref(out);
    } else {
        printf("%s\n", key);
        fprintf(stderr, "API key %s (%s, %s) created. Store it now: it is never shown again.\n", id,
                name,
                admin ? "admin: sees and manages every key's compositions"
                      : "sees only its own compositions and uploads");
        fprintf(stderr, "Webhook secret (verifies Clipfarm-Signature): %s\n", webhook_secret);
    }
    return CF_EXIT_OK;
}

static int s_list(cf_db_t *db, bool json)
{
    cf_db_api_key_t *keys = NULL;
    int count = 0;
    char err[512];
    int rc = cf_db_api_key_list(db, &keys, &count, err, sizeof err);
    if (rc != CF_DB_OK) {
        cf_cli_error("apikey", "%s", err);
        return CF_EXIT_FAILURE;
    }
    if (json) {
        json_t *items = json_array();
        for (int i = 0; i < count; i++)
            json_array_append_new(
                items,
                json_pack("{s:s,s:s,s:s,s:s,s:o}", "id", keys[i].id, "name", keys[i].name, "scope",
                          keys[i].admin ? "admin" : "own", "created_at", keys[i].created_at,
                          "revoked_at",
                          keys[i].revoked_at ? json_string(keys[i].revoked_at) : json_null()));
        char *text = json_dumps(items, JSON_COMPACT);
        printf("%s\n", text ? text : "[]");
        free(text);
        json_decref(items);
    } else {
        printf("%-16s  %-24s  %-5s  %-27s  %s\n", "ID", "NAME", "SCOPE", "CREATED", "REVOKED");
        for (int i = 0; i < count; i++)
            printf("%-16s  %-24s  %-5s  %-27s  %s\n", keys[i].id, keys[i].name,
                   keys[i].admin ? "admin" : "own", keys[i].created_at,
                   keys[i].revoked_at ? keys[i].revoked_at : "-");
    }
    cf_db_api_keys_free(&keys, count);
    return CF_EXIT_OK;
}

static int s_revoke(cf_db_t *db, const char *what, bool json)
{
    /* Accept the id or the whole key (the id is inside). */
    char id[CF_APIKEY_ID_CHARS + 1], why[128], err[512];
    if (cf_apikey_parse(what, id, why, sizeof why) < 0)
        snprintf(id, sizeof id, "%s", what);
    int rc = cf_db_api_key_revoke(db, id, err, sizeof err);
    if (rc == CF_DB_NOT_FOUND) {
        cf_cli_error("apikey", "no API key with id '%s'", id);
        return CF_EXIT_FAILURE;
    }
    if (rc != CF_DB_OK) {
        cf_cli_error("apikey", "%s", err);
        return CF_EXIT_FAILURE;
    }
    if (json)
        printf("{\"id\":\"%s\",\"revoked\":true}\n", id);
    else
        printf("revoked %s\n", id);
    return CF_EXIT_OK;
}

int cf_cmd_apikey(int argc, char **argv)
{
    char *secret_file = NULL;
    bool json = false, admin = false;
    const cf_option_t extra[] = {
        {"admin", NULL, CF_OPT_FLAG, &admin, 0, 0,
         "create: a key that sees and manages every key's compositions (default: its own only)",
         NULL},
        {"cluster-secret-file", "CF_CLUSTER_SECRET_FILE", CF_OPT_STRING, &secret_file, 0, 0,
         "cluster secret the nodes use (it keys the stored hash)", "FILE"},
        {"json", NULL, CF_OPT_FLAG, &json, 0, 0, "print JSON instead of text", NULL},
        {0},
    };
    cf_config_t cfg;
    cf_db_t *db = NULL;
    int rc = cf_cli_parse(&cfg, "apikey", extra, 1, 2, argc, argv);
    if (rc >= 0)
        goto end;
    const char *action = cfg.args[0];
    const char *arg = cfg.arg_count > 1 ? cfg.args[1] : NULL;
    if (!(!strcmp(action, "create") && arg) && !(!strcmp(action, "list") && !arg) &&
        !(!strcmp(action, "revoke") && arg)) {
        cf_cli_error("apikey", "expected 'create NAME', 'list' or 'revoke ID'");
        rc = CF_EXIT_USAGE;
        goto end;
    }
    if (!cfg.database_url) {
        cf_cli_error("apikey", "--database-url (or CF_DATABASE_URL) is required");
        rc = CF_EXIT_USAGE;
        goto end;
    }
    char err[1024];
    uint8_t hashkey[CF_APIKEY_HASHKEY_BYTES];
    if (cf_apikey_hashkey_load(secret_file, hashkey, err, sizeof err) < 0) {
        cf_cli_error("apikey", "--cluster-secret-file: %s", err);
        rc = CF_EXIT_USAGE;
        goto end;
    }
    /* Migrations first, so keys can be made before any node ever ran. */
    PGconn *conn = cf_db_connect(cfg.database_url, 10, err, sizeof err);
    if (!conn) {
        cf_cli_error("apikey", "--database-url: cannot connect: %s", err);
        rc = CF_EXIT_USAGE;
        goto end;
    }
    cf_migrate_report_t report;
    int migrated = cf_migrate_run(conn, NULL, &report, err, sizeof err);
    PQfinish(conn);
    if (migrated < 0) {
        cf_cli_error("apikey", "%s", err);
        rc = CF_EXIT_FAILURE;
        goto end;
    }
    cf_db_options_t opts;
    cf_db_options_default(&opts);
    opts.url = cfg.database_url;
    opts.pool_size = 1;
    opts.max_overflow = 0;
    opts.acquire_timeout_ms = 5000;
    if (!(db = cf_db_new(&opts, err, sizeof err))) {
        cf_cli_error("apikey", "%s", err);
        rc = CF_EXIT_USAGE;
        goto end;
    }
    if (!strcmp(action, "create"))
        rc = s_create(db, hashkey, arg, admin, json);
    else if (!strcmp(action, "list"))
        rc = s_list(db, json);
    else
        rc = s_revoke(db, arg, json);
end:
    cf_db_destroy(&db);
    cf_config_free(&cfg, extra);
    return rc;
}
