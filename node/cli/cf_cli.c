#include "cf_cli.h"

#include <stdarg.h>
#include <stdio.h>

void cf_cli_error(const char *command, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "clipfarm %s: ", command);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int cf_cli_parse(cf_config_t *cfg, const char *command, const cf_option_t *extra, int min_args,
                 int max_args, int argc, char **argv)
{
    const cf_command_t *cmd = cf_command_find(command);
    int groups = cmd ? cmd->groups : CF_OPTS_LOG;
    bool help = false;
    char err[512];
    if (cf_config_parse(cfg, groups, extra, argc, argv, &help, err, sizeof err) < 0) {
        cf_cli_error(command, "%s", err);
        return CF_EXIT_USAGE;
    }
    if (help) {
        printf("usage: clipfarm %s [OPTIONS]%s%s\n", command, cmd && *cmd->args ? " " : "",
               cmd ? cmd->args : "");
        if (cmd)
            printf("\n%s\n", cmd->summary);
        printf("\noptions:\n");
        cf_config_print_usage(groups, extra, stdout);
        return CF_EXIT_OK;
    }
    if (cfg->arg_count < min_args || (max_args >= 0 && cfg->arg_count > max_args)) {
        if (cfg->arg_count < min_args)
            cf_cli_error(command, "missing argument (usage: clipfarm %s %s)", command,
                         cmd ? cmd->args : "");
        else
            cf_cli_error(command, "unexpected argument '%s' (usage: clipfarm %s %s)",
                         cfg->args[max_args], command, cmd ? cmd->args : "");
        return CF_EXIT_USAGE;
    }
    cf_log_configure(cfg->log_level, cfg->log_json);
    return -1;
}
