/* cf_locations: output locations "clipfarm://NODE_ID/RELATIVE_PATH". */
#include <stdio.h>
#include <string.h>

#include "cf_locations.h"

int cf_location_format(const char *node_id, const char *relpath, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "clipfarm://%s/%s", node_id, relpath);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

int cf_location_parse(const char *location, char *node_id, size_t node_len, char *relpath,
                      size_t rel_len)
{
    static const char scheme[] = "clipfarm://";
    if (!location || strncmp(location, scheme, sizeof scheme - 1))
        return -1;
    const char *host = location + sizeof scheme - 1;
    const char *slash = strchr(host, '/');
    if (!slash || slash == host || (size_t)(slash - host) >= node_len)
        return -1;
    const char *path = slash + 1;
    if (!*path || path[0] == '/' || strlen(path) >= rel_len)
        return -1;
    /* The path names a file under the data dir: no way out of it. */
    for (const char *p = path; *p; p = strchr(p, '/') ? strchr(p, '/') + 1 : p + strlen(p))
        if (!strncmp(p, "..", 2) && (p[2] == '/' || p[2] == '\0'))
            return -1;
    memcpy(node_id, host, (size_t)(slash - host));
    node_id[slash - host] = '\0';
    strcpy(relpath, path);
    return 0;
}
