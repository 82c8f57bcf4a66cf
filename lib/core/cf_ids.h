/* cf_ids: the text form of the ids clipfarm hands out (compositions, nodes:
 * UUIDs). One canonical spelling, lower case, so that an id names the same
 * cache entry, invalidation channel and log line however a client typed it. */
#ifndef CF_IDS_H
#define CF_IDS_H

#include <stdbool.h>

/* Length of a canonical id, without its NUL. */
#define CF_ID_CHARS 36

/* Parses TEXT as a UUID in the 8-4-4-4-12 hex form, in any case, and
 * writes its canonical (lower-case, NUL-terminated) spelling to OUT. OUT may
 * be TEXT itself (normalising in place). Returns false, with OUT untouched,
 * for NULL or anything else: other lengths, braces, a "urn:uuid:" prefix,
 * misplaced or missing hyphens, non-hex digits. The version and variant
 * bits are not checked: any such id Postgres hands out or accepts passes. */
bool cf_id_parse(const char *text, char out[CF_ID_CHARS + 1]);

#endif
