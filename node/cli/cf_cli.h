/* cf_cli: what every clipfarm subcommand shares: its descriptor, option
 * parsing with --help, and the exit codes. */
#ifndef CF_CLI_H
#define CF_CLI_H

#include "cf_config.h"

/* Exit codes of every command. */
enum {
    CF_EXIT_OK = 0,
    CF_EXIT_FAILURE = 1, /* the work failed (render error, server said no) */
    CF_EXIT_USAGE = 2,   /* bad flag, bad config, unreachable dependency */
};

typedef struct {
    const char *name;
    const char *args;    /* positional arguments for the usage line */
    const char *summary; /* one line for `clipfarm --help` */
    int groups;          /* CF_OPTS_* this command accepts */
    int (*run)(int argc, char **argv);
} cf_command_t;

/* The command table, ending with a {0} entry (node/main.c). */
extern const cf_command_t cf_commands[];
const cf_command_t *cf_command_find(const char *name);

/* Parses a command's options into CFG (cf_config_parse), configures logging
 * and handles --help. Returns -1 when the command should go on, else the exit
 * code to return (0 after --help, 2 after a bad option, with its one-line
 * message on stderr). min_args/max_args bound the positional arguments
 * (max_args < 0: no limit). */
int cf_cli_parse(cf_config_t *cfg, const char *command, const cf_option_t *extra, int min_args,
                 int max_args, int argc, char **argv);

/* Prints "clipfarm COMMAND: message" on stderr. */
void cf_cli_error(const char *command, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Commands (node/cli/cmd_*.c). */
int cf_cmd_node(int argc, char **argv);
int cf_cmd_render(int argc, char **argv);
int cf_cmd_migrate(int argc, char **argv);
int cf_cmd_status(int argc, char **argv);
int cf_cmd_submit(int argc, char **argv);
int cf_cmd_ls(int argc, char **argv);
int cf_cmd_get(int argc, char **argv);
int cf_cmd_cancel(int argc, char **argv);
int cf_cmd_download(int argc, char **argv);
int cf_cmd_nodes(int argc, char **argv);
int cf_cmd_apikey(int argc, char **argv);
int cf_cmd_secret(int argc, char **argv);
/* Internal, not in the table (so not in --help): a node's render stage in a
 * process of its own (node/work/cf_task.h). */
int cf_cmd_task(int argc, char **argv);

#endif
