/* clipfarm: one binary for every role. Dispatches to a subcommand. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cf_cli.h"

#define S_SERVER_OPTS (CF_OPTS_LOG | CF_OPTS_DB | CF_OPTS_REDIS | CF_OPTS_NODE)
#define S_CLIENT_OPTS (CF_OPTS_LOG | CF_OPTS_CLIENT)

const cf_command_t cf_commands[] = {
    {"node", "", "run a cluster node (REST API, discovery, rendering)", S_SERVER_OPTS, cf_cmd_node},
    {"render", "COMP.json -o OUT", "render a composition locally, no servers needed", CF_OPTS_LOG,
     cf_cmd_render},
    {"migrate", "", "apply database migrations", CF_OPTS_LOG | CF_OPTS_DB, cf_cmd_migrate},
    {"status", "", "the cluster at a glance", S_CLIENT_OPTS, cf_cmd_status},
    {"submit", "COMP.json", "submit a composition (--wait to follow it)", S_CLIENT_OPTS,
     cf_cmd_submit},
    {"ls", "", "list compositions", S_CLIENT_OPTS, cf_cmd_ls},
    {"get", "ID", "show one composition", S_CLIENT_OPTS, cf_cmd_get},
    {"cancel", "ID", "cancel a composition", S_CLIENT_OPTS, cf_cmd_cancel},
    {"download", "ID -o FILE", "download a composition's output", S_CLIENT_OPTS, cf_cmd_download},
    {"nodes", "", "list the cluster's nodes", S_CLIENT_OPTS, cf_cmd_nodes},
    {"apikey", "create NAME | list | revoke ID", "manage API keys", CF_OPTS_LOG | CF_OPTS_DB,
     cf_cmd_apikey},
    {"secret", "generate", "print a new cluster secret", CF_OPTS_LOG, cf_cmd_secret},
    {0},
};

const cf_command_t *cf_command_find(const char *name)
{
    for (const cf_command_t *cmd = cf_commands; cmd->name; cmd++)
        if (!strcmp(cmd->name, name))
            return cmd;
    return NULL;
}

static void s_usage(FILE *out)
{
    fprintf(out, "usage: clipfarm COMMAND [OPTIONS] [ARGS]\n\n"
                 "clipfarm renders video compositions on a cluster of peer nodes.\n\n"
                 "commands:\n");
    for (const cf_command_t *cmd = cf_commands; cmd->name; cmd++)
        fprintf(out, "  %-10s %s\n", cmd->name, cmd->summary);
    fprintf(out, "\nRun 'clipfarm COMMAND --help' for a command's options.\n"
                 "Exit codes: 0 success, 1 failure, 2 usage or configuration error.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        s_usage(stderr);
        return CF_EXIT_USAGE;
    }
    const char *name = argv[1];
    if (!strcmp(name, "--help") || !strcmp(name, "-h") || !strcmp(name, "help")) {
        s_usage(stdout);
        return CF_EXIT_OK;
    }
    if (!strcmp(name, "--version") || !strcmp(name, "-V") || !strcmp(name, "version")) {
        printf("clipfarm %s\n", CF_VERSION);
        return CF_EXIT_OK;
    }
    /* Started by a node for each render stage; never typed by a user. */
    if (!strcmp(name, "task"))
        return cf_cmd_task(argc - 1, argv + 1);
    const cf_command_t *cmd = cf_command_find(name);
    if (!cmd) {
        fprintf(stderr, "clipfarm: unknown command '%s' (see clipfarm --help)\n", name);
        return CF_EXIT_USAGE;
    }
    return cmd->run(argc - 1, argv + 1);
}
