/* cf_json: the one way clipfarm parses JSON text.
 *
 * jansson parses recursively: every nested array or object costs a few
 * hundred bytes of stack, and civetweb's request threads have little of it,
 * so a 2 KB body of "[[[[..." used to crash a node. Every JSON entry point
 * (request bodies, plans, rows read back from Postgres or Redis, peers'
 * messages, API answers) goes through cf_json_loadb, which measures the
 * nesting with a flat scan *before* jansson sees the text and refuses text
 * nested deeper than CF_JSON_MAX_DEPTH.
 *
 * A composition needs a depth of 4 ({"clips": [{"source"...}]} plus an
 * optional object inside a clip or the output); 32 leaves a wide margin for
 * future fields and costs jansson a few KiB of stack at most. */
#ifndef CF_JSON_H
#define CF_JSON_H

#include <jansson.h>
#include <stddef.h>

#define CF_JSON_MAX_DEPTH 32

/* The deepest nesting of arrays and objects in LEN bytes of TEXT (strings
 * and escapes are skipped; the text need not be valid JSON). Stops counting
 * once MAX_DEPTH is passed and returns MAX_DEPTH + 1; sets *at_p (may be
 * NULL) to the offset of the bracket that went too deep. */
int cf_json_depth(const char *text, size_t len, int max_depth, size_t *at_p);

/* json_loadb with the nesting bound. When TEXT nests deeper than
 * CF_JSON_MAX_DEPTH, returns NULL with ERROR filled as jansson would
 * (line, column, position of the offending bracket, and a text naming the
 * limit); otherwise exactly json_loadb(TEXT, LEN, FLAGS, ERROR). ERROR may
 * be NULL. */
json_t *cf_json_loadb(const char *text, size_t len, size_t flags, json_error_t *error);

/* cf_json_loadb on a NUL-terminated string. */
json_t *cf_json_loads(const char *text, size_t flags, json_error_t *error);

/* Replaces, in place, every byte of TEXT that is not part of a valid UTF-8
 * sequence (overlong forms, surrogates and code points past U+10FFFF
 * included) with '?'. jansson refuses to build a string that is not UTF-8:
 * messages that quote input (a parser's "near '...'", a URL-decoded path,
 * text cut at a buffer's end) go through this first. */
void cf_json_utf8_scrub(char *text);

#endif
