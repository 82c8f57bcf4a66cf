/* libFuzzer target for the configuration values every command validates at
 * start-up (node/cf_config.c): the input is split at NUL bytes into option
 * values, each given to an option the first byte of the input picks among
 * those that take text (URLs, addresses, ports, slots, log level, tags,
 * booleans, a bounded int and double like the commands' own). Options that
 * name files are left out: a fuzzer naming /dev/zero would only test the
 * kernel. Accepted values must land in range; a refusal is one line. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cf_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const s_options[] = {
    "--database-url", "--redis-url", "--http-addr", "--control-addr", "--beacon-port",
    "--tag",          "--slots",     "--log-level", "--log-json",     "--server",
    "--api-key",      "--jobs",      "--ratio",
};
#define S_OPTION_COUNT (sizeof s_options / sizeof s_options[0])

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    char *text = malloc(size);
    if (!text)
        return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    char *argv[34] = {"fuzz"};
    int argc = 1;
    unsigned pick = data[0];
    for (char *value = text; value < text + size - 1 && argc + 2 < 34; value += strlen(value) + 1) {
        argv[argc++] = (char *)s_options[pick % S_OPTION_COUNT];
        argv[argc++] = value;
        pick = pick * 31u + 7u;
    }
    argv[argc] = NULL;
    int jobs = 0;
    double ratio = 0;
    cf_option_t extra[] = {
        {"jobs", NULL, CF_OPT_INT, &jobs, 0, 256, "jobs", "N"},
        {"ratio", NULL, CF_OPT_DOUBLE, &ratio, 0.5, 100, "ratio", "R"},
        {0},
    };
    cf_config_t cfg;
    bool help = false;
    char err[512] = "";
    int groups = CF_OPTS_LOG | CF_OPTS_DB | CF_OPTS_REDIS | CF_OPTS_NODE | CF_OPTS_CLIENT;
    if (cf_config_parse(&cfg, groups, extra, argc, argv, &help, err, sizeof err) == 0) {
        if (jobs < 0 || jobs > 256 || (ratio != 0 && (ratio < 0.5 || ratio > 100)) ||
            cfg.slots < 1 || cfg.slots > 256 || cfg.beacon_port < 0 || cfg.beacon_port > 65535)
            abort();
    } else if (!err[0] || strchr(err, '\n')) {
        abort(); /* a refusal is one line saying why */
    }
    cf_config_free(&cfg, extra);
    free(text);
    return 0;
}
