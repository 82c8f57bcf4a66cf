/* cf_api_client_nodes: the node table shared by `clipfarm nodes` and
 * `clipfarm status`. */
#include <stdio.h>
#include <string.h>

#include "cf_api_client.h"

/* "libx264 412fps, libx265 61fps" from capabilities.encoders. */
static void s_encoders(json_t *node, char *names, size_t names_len, char *fps, size_t fps_len)
{
    json_t *encoders = json_object_get(json_object_get(node, "capabilities"), "encoders");
    size_t i, n = 0, f = 0;
    json_t *enc;
    names[0] = fps[0] = '\0';
    json_array_foreach(encoders, i, enc)
    {
        const char *name = json_string_value(json_object_get(enc, "name"));
        double value = json_number_value(json_object_get(enc, "fps"));
        if (!name)
            continue;
        if (n < names_len)
            n += (size_t)snprintf(names + n, names_len - n, "%s%s", n ? "," : "", name);
        if (f < fps_len)
            f += (size_t)snprintf(fps + f, fps_len - f, "%s%.0f", f ? "," : "", value);
    }
    if (!names[0])
        snprintf(names, names_len, "-");
    if (!fps[0])
        snprintf(fps, fps_len, "-");
}

void cf_api_client_print_nodes(json_t *cluster)
{
    printf("%-36s  %-28s  %-11s  %-6s  %-20s  %-10s  %5s  %9s  %-14s  %s\n", "NODE", "ADDRESS",
           "ROLE", "STATE", "ENCODERS", "FPS", "LOAD", "IN-FLIGHT", "RECENT", "LAST SEEN");
    size_t i;
    json_t *node;
    json_array_foreach(json_object_get(cluster, "nodes"), i, node)
    {
        char names[128], fps[64], age[32], load[16];
        s_encoders(node, names, sizeof names, fps, sizeof fps);
        json_t *load_json = json_object_get(node, "load");
        if (json_is_number(load_json))
            snprintf(load, sizeof load, "%.2f", json_number_value(load_json));
        else
            snprintf(load, sizeof load, "-");
        const char *id = json_string_value(json_object_get(node, "id"));
        const char *addr = json_string_value(json_object_get(node, "http_endpoint"));
        const char *role = json_string_value(json_object_get(node, "role"));
        const char *state = json_string_value(json_object_get(node, "state"));
        json_t *in_flight = json_object_get(node, "in_flight");
        char flight[16] = "-";
        if (json_is_integer(in_flight))
            snprintf(flight, sizeof flight, "%lld", (long long)json_integer_value(in_flight));
        /* Segments finished in the last 10 minutes, at their mean fps. */
        char recent[32] = "-";
        json_t *segs = json_object_get(node, "recent_segments");
        if (json_is_integer(segs))
            snprintf(recent, sizeof recent, "%lld @ %.0f fps", (long long)json_integer_value(segs),
                     json_number_value(json_object_get(node, "recent_fps")));
        printf("%-36s  %-28s  %-11s  %-6s  %-20s  %-10s  %5s  %9s  %-14s  %s%s\n", id ? id : "-",
               addr ? addr : "-", role ? role : "-", state ? state : "-", names, fps, load, flight,
               recent,
               cf_api_client_age(json_object_get(node, "last_seen_ms_ago"), age, sizeof age),
               json_is_true(json_object_get(node, "self")) ? " (answered)" : "");
    }
}
