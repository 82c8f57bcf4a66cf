/* cf_ids: canonical UUID text. No locale: isxdigit() and tolower() would
 * depend on it, and an id must not. */
#include "cf_ids.h"

#include <stddef.h>

static bool s_is_hyphen_at(int i)
{
    return i == 8 || i == 13 || i == 18 || i == 23;
}

/* The lower-case hex digit C, or 0 when C is none. */
static char s_hex_lower(char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))
        return c;
    if (c >= 'A' && c <= 'F')
        return (char)(c - 'A' + 'a');
    return 0;
}

bool cf_id_parse(const char *text, char out[CF_ID_CHARS + 1])
{
    if (!text)
        return false;
    /* Check all of it before writing: OUT may be TEXT. */
    for (int i = 0; i < CF_ID_CHARS; i++) {
        if (s_is_hyphen_at(i) ? text[i] != '-' : !s_hex_lower(text[i]))
            return false; /* also stops at a NUL: shorter texts */
    }
    if (text[CF_ID_CHARS] != '\0')
        return false;
    for (int i = 0; i < CF_ID_CHARS; i++)
        out[i] = s_is_hyphen_at(i) ? '-' : s_hex_lower(text[i]);
    out[CF_ID_CHARS] = '\0';
    return true;
}
