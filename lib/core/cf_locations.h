/* cf_locations: where an output lives, "clipfarm://NODE_ID/RELATIVE_PATH":
 * the node that holds the file and its path under that node's data dir. The
 * one place that writes and reads these (the renderer records them, the API
 * serves or fetches from the peer named, the state keeper removes its own
 * node's files at retention). */
#ifndef CF_LOCATIONS_H
#define CF_LOCATIONS_H

#include <stddef.h>

/* Writes "clipfarm://NODE_ID/RELPATH" into out. Returns 0, or -1 when it
 * does not fit. */
int cf_location_format(const char *node_id, const char *relpath, char *out, size_t outlen);

/* Splits a location into node id and relative path. Returns 0, or -1 when
 * it is not such a location or the path leaves the data dir ("..", an
 * absolute path). */
int cf_location_parse(const char *location, char *node_id, size_t node_len, char *relpath,
                      size_t rel_len);

#endif
