/* cf_json: depth-bounded JSON parsing (see cf_json.h). */
#include "cf_json.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

int cf_json_depth(const char *text, size_t len, int max_depth, size_t *at_p)
{
    int depth = 0, deepest = 0;
    bool in_string = false;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (in_string) {
            if (c == '\\')
                i++; /* the escaped character cannot end the string */
            else if (c == '"')
                in_string = false;
            continue;
        }
        if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            if (++depth > deepest)
                deepest = depth;
            if (depth > max_depth) {
                if (at_p)
                    *at_p = i;
                return max_depth + 1;
            }
        } else if ((c == ']' || c == '}') && depth > 0) {
            depth--;
        }
    }
    return deepest;
}

json_t *cf_json_loadb(const char *text, size_t len, size_t flags, json_error_t *error)
{
    size_t at = 0;
    if (cf_json_depth(text, len, CF_JSON_MAX_DEPTH, &at) > CF_JSON_MAX_DEPTH) {
        if (error) {
            memset(error, 0, sizeof *error);
            int line = 1, column = 1;
            for (size_t i = 0; i < at; i++) {
                if (text[i] == '\n') {
                    line++;
                    column = 1;
                } else {
                    column++;
                }
            }
            error->line = line;
            error->column = column;
            error->position = (int)at;
            snprintf(error->text, sizeof error->text,
                     "arrays and objects nested deeper than %d levels", CF_JSON_MAX_DEPTH);
            snprintf(error->source, sizeof error->source, "<buffer>");
        }
        return NULL;
    }
    return json_loadb(text, len, flags, error);
}

json_t *cf_json_loads(const char *text, size_t flags, json_error_t *error)
{
    return cf_json_loadb(text, strlen(text), flags, error);
}

/* Length of the valid UTF-8 sequence at P (1..4), or 0 when invalid. */
static int s_utf8_len(const unsigned char *p)
{
    unsigned c = p[0];
    if (c < 0x80)
        return 1;
    int len;
    unsigned cp;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    for (int i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3f);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return len;
}

void cf_json_utf8_scrub(char *text)
{
    unsigned char *p = (unsigned char *)text;
    while (*p) {
        int len = s_utf8_len(p);
        if (len == 0) {
            *p++ = '?';
        } else {
            p += len;
        }
    }
}
