/* cf_config: command-line flags and CF_* environment variables for every
 * clipfarm command. Flags win over the environment, the environment over
 * defaults; every value is validated and a bad one is reported in one line
 * that names the flag or variable it came from.
 *
 * cf_config_t is a plain struct rather than an opaque type: every command
 * reads many of its fields, and accessors for each would add nothing. */
#ifndef CF_CONFIG_H
#define CF_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "cf_log.h"

/* Option groups a command accepts. */
enum {
    CF_OPTS_LOG = 1 << 0,    /* --log-level, --log-json */
    CF_OPTS_DB = 1 << 1,     /* --database-url */
    CF_OPTS_REDIS = 1 << 2,  /* --redis-url */
    CF_OPTS_NODE = 1 << 3,   /* http/control addr, data dir, secret, beacon, tags, slots */
    CF_OPTS_CLIENT = 1 << 4, /* --server, --api-key, --json */
};

typedef struct {
    char *database_url;
    char *redis_url;
    char *http_addr;
    char *control_addr;
    char *data_dir;
    char *cluster_secret_file;
    char *beacon_iface;
    int beacon_port;
    char **tags;
    int tag_count;
    int slots;
    cf_log_level_t log_level;
    bool log_json;
    char *server;
    char *api_key;
    bool json;
    /* Positional arguments, borrowed from argv. */
    char **args;
    int arg_count;
} cf_config_t;

/* Kinds of command-specific options. */
typedef enum {
    CF_OPT_FLAG,      /* bool *, no value */
    CF_OPT_STRING,    /* char ** (strdup'ed; freed by cf_config_free_extra) */
    CF_OPT_INT,       /* int *, within [min, max] */
    CF_OPT_DOUBLE,    /* double *, within [min, max] */
    CF_OPT_LIST,      /* char ** (strdup'ed): items joined by '\n'. Repeat the flag
                         to add items (flags replace the environment's); the
                         environment variable separates items with commas */
    CF_OPT_PATH_LIST, /* CF_OPT_LIST whose environment variable separates
                         items with colons, like PATH */
} cf_opt_kind_t;

/* A command-specific option, e.g. render's --jobs. env may be NULL. */
typedef struct {
    const char *name; /* without the leading "--" */
    const char *env;
    cf_opt_kind_t kind;
    void *target;
    double min, max;
    const char *help;
    const char *metavar;
} cf_option_t;

/* Fills CFG from defaults, the environment and ARGV (argv[0] is the command
 * name). GROUPS selects the shared options the command accepts; EXTRA (may be
 * NULL, ends with a {0} entry) adds its own. "-h"/"--help" sets *help.
 * Returns 0, or -1 with a one-line message in err naming the option. */
int cf_config_parse(cf_config_t *cfg, int groups, const cf_option_t *extra, int argc, char **argv,
                    bool *help, char *err, size_t errlen);

/* Frees what cf_config_parse allocated in CFG and in EXTRA's string targets. */
void cf_config_free(cf_config_t *cfg, const cf_option_t *extra);

/* Writes the options of GROUPS and EXTRA with their env names and help. */
void cf_config_print_usage(int groups, const cf_option_t *extra, void *file);

/* Prints the effective configuration with secrets masked. */
void cf_config_print(const cf_config_t *cfg, int groups, void *file);

/* Default data directory: $CF_DATA_DIR, else /var/lib/clipfarm for root,
 * else $XDG_DATA_HOME/clipfarm or ~/.local/share/clipfarm. Caller frees. */
char *cf_config_default_data_dir(void);

#endif
