/* cf_proto: table-driven msgpack codec for the control protocol. The table
 * below is generated from the message lists in cf_proto.h; encode, decode,
 * clear, equality and the description all walk it, so a message is declared
 * in exactly one place. */
#include "cf_proto.h"

#include <math.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
    S_U64,
    S_F64,
    S_BOOL,
    S_STR,
    S_ID,
    S_BIN,
    S_STRLIST,
    S_F64LIST,
} s_kind_t;

static const char *const s_kind_names[] = {
    [S_U64] = "uint",      [S_F64] = "float64", [S_BOOL] = "bool",     [S_STR] = "str",
    [S_ID] = "str (UUID)", [S_BIN] = "bin",     [S_STRLIST] = "[str]", [S_F64LIST] = "[float64]",
};

typedef struct {
    const char *name;
    s_kind_t kind;
    size_t offset; /* within the message struct */
    uint64_t lo_u, hi_u;
    double lo_f, hi_f;
    size_t max_items;
} s_field_t;

typedef struct {
    cf_msg_type_t type;
    const char *name;
    const char *summary;
    const s_field_t *fields;
    size_t field_count;
    /* Checks that span fields (NULL: none). Returns 0 or -1 with a reason. */
    int (*check)(const cf_msg_t *msg, char *why, size_t whylen);
} s_message_t;

/* Bounds are written as integers or doubles in the lists; keep both forms. */
#define S_FIELD(T, name_, kind_, lo, hi, max_items_)                                               \
    {#name_,         S_##kind_,    offsetof(T, name_), (uint64_t)(lo),                             \
     (uint64_t)(hi), (double)(lo), (double)(hi),       (size_t)(max_items_)},
#define S_FIELDS(NAME, name, id, summary)                                                          \
    static const s_field_t s_fields_##name[] = {CF_PROTO_FIELDS_##name(S_FIELD, cf_msg_##name##_t)};
CF_PROTO_MESSAGES(S_FIELDS)
#undef S_FIELDS
#undef S_FIELD

static int s_check_hello(const cf_msg_t *msg, char *why, size_t whylen)
{
    if (msg->hello.encoder_fps.count != msg->hello.encoders.count) {
        snprintf(why, whylen, "encoder_fps has %zu values for %zu encoders",
                 msg->hello.encoder_fps.count, msg->hello.encoders.count);
        return -1;
    }
    return 0;
}

#define s_check_heartbeat NULL
#define s_check_leader    NULL
#define s_check_assign    NULL
#define s_check_accept    NULL
#define s_check_reject    NULL
#define s_check_progress  NULL
#define s_check_done      NULL
#define s_check_failed    NULL
#define s_check_cancel    NULL
#define s_check_bye       NULL

static const s_message_t s_messages[] = {
#define S_MESSAGE(NAME, name, id, summary)                                                         \
    {CF_MSG_##NAME,                                                                                \
     #NAME,                                                                                        \
     summary,                                                                                      \
     s_fields_##name,                                                                              \
     sizeof s_fields_##name / sizeof s_fields_##name[0],                                           \
     s_check_##name},
    CF_PROTO_MESSAGES(S_MESSAGE)
#undef S_MESSAGE
};
#define S_MESSAGE_COUNT (sizeof s_messages / sizeof s_messages[0])

static const s_message_t *s_find(cf_msg_type_t type)
{
    for (size_t i = 0; i < S_MESSAGE_COUNT; i++)
        if (s_messages[i].type == type)
            return &s_messages[i];
    return NULL;
}

/* Every message struct sits at the start of the union, right after type. */
static void *s_body(cf_msg_t *msg)
{
    return &msg->hello;
}

static const void *s_cbody(const cf_msg_t *msg)
{
    return &msg->hello;
}

static int s_fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int s_fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

/* ------------------------------------------------------------------ helpers */

void cf_msg_init(cf_msg_t *msg, cf_msg_type_t type)
{
    memset(msg, 0, sizeof *msg);
    msg->type = type;
}

void cf_msg_clear(cf_msg_t *msg)
{
    const s_message_t *def = s_find(msg->type);
    if (def) {
        char *body = s_body(msg);
        for (size_t i = 0; i < def->field_count; i++) {
            const s_field_t *f = &def->fields[i];
            void *slot = body + f->offset;
            switch (f->kind) {
                case S_STR:
                    free(*(char **)slot);
                    break;
                case S_BIN:
                    free(((cf_proto_bin_t *)slot)->data);
                    break;
                case S_STRLIST: {
                    cf_proto_strlist_t *list = slot;
                    for (size_t k = 0; k < list->count; k++)
                        free(list->items[k]);
                    free(list->items);
                    break;
                }
                case S_F64LIST:
                    free(((cf_proto_f64list_t *)slot)->items);
                    break;
                default:
                    break;
            }
        }
    }
    memset(msg, 0, sizeof *msg);
}

const char *cf_msg_type_name(cf_msg_type_t type)
{
    const s_message_t *def = s_find(type);
    return def ? def->name : NULL;
}

int cf_msg_set_str(char **slot, const char *value)
{
    char *copy = strdup(value ? value : "");
    if (!copy)
        return -1;
    free(*slot);
    *slot = copy;
    return 0;
}

int cf_proto_strlist_add(cf_proto_strlist_t *list, const char *value)
{
    char *copy = strdup(value);
    char **items = copy ? realloc(list->items, (list->count + 1) * sizeof *items) : NULL;
    if (!items) {
        free(copy);
        return -1;
    }
    list->items = items;
    list->items[list->count++] = copy;
    return 0;
}

int cf_proto_f64list_add(cf_proto_f64list_t *list, double value)
{
    double *items = realloc(list->items, (list->count + 1) * sizeof *items);
    if (!items)
        return -1;
    list->items = items;
    list->items[list->count++] = value;
    return 0;
}

int cf_proto_bin_set(cf_proto_bin_t *bin, const void *data, size_t size)
{
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return -1;
    if (size)
        memcpy(copy, data, size);
    free(bin->data);
    bin->data = copy;
    bin->size = size;
    return 0;
}

bool cf_proto_is_uuid(const char *text, size_t len)
{
    if (!text || len != 36)
        return false;
    for (size_t i = 0; i < 36; i++) {
        char c = text[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return false;
        } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            return false;
        }
    }
    return true;
}

/* Text fields are UTF-8 without control characters: they end up in logs, JSON
 * and SQL parameters. */
static bool s_text_ok(const char *text, size_t len)
{
    const unsigned char *p = (const unsigned char *)text;
    size_t i = 0;
    while (i < len) {
        unsigned char c = p[i];
        if (c < 0x80) {
            if (c < 0x20 || c == 0x7f)
                return false;
            i++;
            continue;
        }
        size_t extra;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) {
            extra = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            extra = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            extra = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (len - i <= extra)
            return false;
        for (size_t k = 1; k <= extra; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        /* Overlong forms, surrogates and values past U+10FFFF. */
        if ((extra == 2 && cp < 0x800) || (extra == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += extra + 1;
    }
    return true;
}

/* ------------------------------------------------------------------ checks */

/* Checks one field's value against its declaration (used by both directions:
 * we never send what we would refuse). */
static int s_check_field(const s_field_t *f, const void *slot, char *why, size_t whylen)
{
    switch (f->kind) {
        case S_U64: {
            uint64_t v = *(const uint64_t *)slot;
            if (v < f->lo_u || v > f->hi_u)
                return s_fail(why, whylen, "%llu outside %llu..%llu", (unsigned long long)v,
                              (unsigned long long)f->lo_u, (unsigned long long)f->hi_u);
            return 0;
        }
        case S_F64: {
            double v = *(const double *)slot;
            if (!isfinite(v) || v < f->lo_f || v > f->hi_f)
                return s_fail(why, whylen, "%g outside %g..%g", v, f->lo_f, f->hi_f);
            return 0;
        }
        case S_BOOL:
            return 0;
        case S_STR: {
            const char *s = *(char *const *)slot;
            size_t len = s ? strlen(s) : 0;
            if (len < f->lo_u || len > f->hi_u)
                return s_fail(why, whylen, "length %zu outside %llu..%llu", len,
                              (unsigned long long)f->lo_u, (unsigned long long)f->hi_u);
            if (s && !s_text_ok(s, len))
                return s_fail(why, whylen, "not UTF-8 text without control characters");
            return 0;
        }
        case S_ID: {
            const char *s = slot;
            if (!cf_proto_is_uuid(s, strnlen(s, sizeof(cf_proto_id_t))))
                return s_fail(why, whylen, "not a lowercase UUID");
            return 0;
        }
        case S_BIN: {
            const cf_proto_bin_t *bin = slot;
            if (bin->size < f->lo_u || bin->size > f->hi_u)
                return s_fail(why, whylen, "size %zu outside %llu..%llu", bin->size,
                              (unsigned long long)f->lo_u, (unsigned long long)f->hi_u);
            if (bin->size && !bin->data)
                return s_fail(why, whylen, "no data");
            return 0;
        }
        case S_STRLIST: {
            const cf_proto_strlist_t *list = slot;
            if (list->count > f->max_items)
                return s_fail(why, whylen, "%zu items, at most %zu allowed", list->count,
                              f->max_items);
            for (size_t i = 0; i < list->count; i++) {
                const char *s = list->items[i];
                size_t len = s ? strlen(s) : 0;
                if (len < f->lo_u || len > f->hi_u || !s_text_ok(s, len))
                    return s_fail(why, whylen,
                                  "item %zu: length %zu outside %llu..%llu or not text", i, len,
                                  (unsigned long long)f->lo_u, (unsigned long long)f->hi_u);
            }
            return 0;
        }
        case S_F64LIST: {
            const cf_proto_f64list_t *list = slot;
            if (list->count > f->max_items)
                return s_fail(why, whylen, "%zu items, at most %zu allowed", list->count,
                              f->max_items);
            for (size_t i = 0; i < list->count; i++) {
                double v = list->items[i];
                if (!isfinite(v) || v < f->lo_f || v > f->hi_f)
                    return s_fail(why, whylen, "item %zu: %g outside %g..%g", i, v, f->lo_f,
                                  f->hi_f);
            }
            return 0;
        }
    }
    return s_fail(why, whylen, "unknown field kind");
}

static int s_check_message(const s_message_t *def, const cf_msg_t *msg, char *err, size_t errlen)
{
    const char *body = s_cbody(msg);
    char why[200];
    for (size_t i = 0; i < def->field_count; i++) {
        const s_field_t *f = &def->fields[i];
        if (s_check_field(f, body + f->offset, why, sizeof why) < 0)
            return s_fail(err, errlen, "%s.%s: %s", def->name, f->name, why);
    }
    if (def->check && def->check(msg, why, sizeof why) < 0)
        return s_fail(err, errlen, "%s: %s", def->name, why);
    return 0;
}

/* ------------------------------------------------------------------ encode */

static int s_pack_str(msgpack_packer *pk, const char *s, size_t len)
{
    return msgpack_pack_str(pk, len) || msgpack_pack_str_body(pk, s, len) ? -1 : 0;
}

static int s_pack_field(msgpack_packer *pk, const s_field_t *f, const void *slot)
{
    switch (f->kind) {
        case S_U64:
            return msgpack_pack_uint64(pk, *(const uint64_t *)slot);
        case S_F64:
            return msgpack_pack_double(pk, *(const double *)slot);
        case S_BOOL:
            return *(const bool *)slot ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
        case S_STR: {
            const char *s = *(char *const *)slot;
            return s_pack_str(pk, s ? s : "", s ? strlen(s) : 0);
        }
        case S_ID:
            return s_pack_str(pk, slot, 36);
        case S_BIN: {
            const cf_proto_bin_t *bin = slot;
            if (msgpack_pack_bin(pk, bin->size))
                return -1;
            return bin->size ? msgpack_pack_bin_body(pk, bin->data, bin->size) : 0;
        }
        case S_STRLIST: {
            const cf_proto_strlist_t *list = slot;
            if (msgpack_pack_array(pk, list->count))
                return -1;
            for (size_t i = 0; i < list->count; i++)
                if (s_pack_str(pk, list->items[i], strlen(list->items[i])))
                    return -1;
            return 0;
        }
        case S_F64LIST: {
            const cf_proto_f64list_t *list = slot;
            if (msgpack_pack_array(pk, list->count))
                return -1;
            for (size_t i = 0; i < list->count; i++)
                if (msgpack_pack_double(pk, list->items[i]))
                    return -1;
            return 0;
        }
    }
    return -1;
}

int cf_msg_encode(const cf_msg_t *msg, uint8_t **data_p, size_t *size_p, char *err, size_t errlen)
{
    *data_p = NULL;
    *size_p = 0;
    const s_message_t *def = s_find(msg->type);
    if (!def)
        return s_fail(err, errlen, "unknown message type %d", (int)msg->type);
    if (s_check_message(def, msg, err, errlen) < 0)
        return -1;

    msgpack_sbuffer sbuf;
    msgpack_sbuffer_init(&sbuf);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
    const char *body = s_cbody(msg);
    int rc = msgpack_pack_array(&pk, 2 + def->field_count);
    rc = rc || msgpack_pack_uint8(&pk, CF_PROTO_VERSION);
    rc = rc || msgpack_pack_uint8(&pk, (uint8_t)def->type);
    for (size_t i = 0; !rc && i < def->field_count; i++)
        rc = s_pack_field(&pk, &def->fields[i], body + def->fields[i].offset);
    if (rc) {
        msgpack_sbuffer_destroy(&sbuf);
        return s_fail(err, errlen, "%s: out of memory while encoding", def->name);
    }
    if (sbuf.size > CF_PROTO_MAX_SIZE) {
        size_t size = sbuf.size;
        msgpack_sbuffer_destroy(&sbuf);
        return s_fail(err, errlen, "%s: %zu bytes, more than the %d allowed", def->name, size,
                      CF_PROTO_MAX_SIZE);
    }
    *size_p = sbuf.size;
    *data_p = (uint8_t *)msgpack_sbuffer_release(&sbuf);
    msgpack_sbuffer_destroy(&sbuf);
    return 0;
}

/* ------------------------------------------------------------------ decode */

/* Deepest nesting a message may have: [msg [list item]] is 2. */
#define S_MAX_DEPTH 4

/* Walks the msgpack object at *pos without building it, checking that it is
 * well-formed, nests at most S_MAX_DEPTH deep and that every length and
 * element count fits in the bytes that remain. msgpack-c allocates room for
 * an array's declared count before reading its elements, so without this a
 * five-byte input could ask for 100 GB; after it, every element costs at
 * least one input byte and allocation stays proportional to the input. */
static int s_scan(const uint8_t *p, size_t size, size_t *pos, int depth)
{
    if (depth > S_MAX_DEPTH || *pos >= size)
        return -1;
    uint8_t b = p[(*pos)++];
    size_t left = size - *pos;
    uint64_t skip = 0, elements = 0;
    size_t width = 0; /* bytes of a length prefix */
    enum { SCALAR, ARRAY, MAP } shape = SCALAR;

    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
        skip = 0;
    } else if (b >= 0x80 && b <= 0x8f) {
        shape = MAP;
        elements = b & 0x0f;
    } else if (b >= 0x90 && b <= 0x9f) {
        shape = ARRAY;
        elements = b & 0x0f;
    } else if (b >= 0xa0 && b <= 0xbf) {
        skip = b & 0x1f;
    } else {
        switch (b) {
            case 0xc4: /* bin 8/16/32, str 8/16/32 */
            case 0xd9:
                width = 1;
                break;
            case 0xc5:
            case 0xda:
                width = 2;
                break;
            case 0xc6:
            case 0xdb:
                width = 4;
                break;
            case 0xc7: /* ext 8/16/32: length, then a type byte */
                width = 1;
                skip = 1;
                break;
            case 0xc8:
                width = 2;
                skip = 1;
                break;
            case 0xc9:
                width = 4;
                skip = 1;
                break;
            case 0xca: /* float 32/64 */
                skip = 4;
                break;
            case 0xcb:
                skip = 8;
                break;
            case 0xcc: /* uint/int 8..64 */
            case 0xd0:
                skip = 1;
                break;
            case 0xcd:
            case 0xd1:
                skip = 2;
                break;
            case 0xce:
            case 0xd2:
                skip = 4;
                break;
            case 0xcf:
            case 0xd3:
                skip = 8;
                break;
            case 0xd4: /* fixext 1..16: a type byte and the data */
                skip = 2;
                break;
            case 0xd5:
                skip = 3;
                break;
            case 0xd6:
                skip = 5;
                break;
            case 0xd7:
                skip = 9;
                break;
            case 0xd8:
                skip = 17;
                break;
            case 0xdc: /* array 16/32, map 16/32 */
                shape = ARRAY;
                width = 2;
                break;
            case 0xdd:
                shape = ARRAY;
                width = 4;
                break;
            case 0xde:
                shape = MAP;
                width = 2;
                break;
            case 0xdf:
                shape = MAP;
                width = 4;
                break;
            default: /* 0xc1 is never used */
                return -1;
        }
    }
    if (width) {
        if (left < width)
            return -1;
        uint64_t n = 0;
        for (size_t i = 0; i < width; i++)
            n = (n << 8) | p[*pos + i];
        *pos += width;
        left -= width;
        if (shape == SCALAR)
            skip += n;
        else
            elements = n;
    }
    if (shape == SCALAR) {
        if (skip > left)
            return -1;
        *pos += (size_t)skip;
        return 0;
    }
    if (shape == MAP)
        elements *= 2;
    if (elements > left)
        return -1;
    for (uint64_t i = 0; i < elements; i++)
        if (s_scan(p, size, pos, depth + 1) < 0)
            return -1;
    return 0;
}

static const char *s_type_name(const msgpack_object *o)
{
    switch (o->type) {
        case MSGPACK_OBJECT_NIL:
            return "nil";
        case MSGPACK_OBJECT_BOOLEAN:
            return "bool";
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
            return "uint";
        case MSGPACK_OBJECT_NEGATIVE_INTEGER:
            return "negative int";
        case MSGPACK_OBJECT_FLOAT32:
        case MSGPACK_OBJECT_FLOAT64:
            return "float";
        case MSGPACK_OBJECT_STR:
            return "str";
        case MSGPACK_OBJECT_ARRAY:
            return "array";
        case MSGPACK_OBJECT_MAP:
            return "map";
        case MSGPACK_OBJECT_BIN:
            return "bin";
        case MSGPACK_OBJECT_EXT:
            return "ext";
    }
    return "unknown";
}

/* msgpack-c leaves ptr NULL for empty strings: no memchr/memcpy on those. */
static bool s_has_nul(const char *s, size_t len)
{
    return len > 0 && memchr(s, 0, len) != NULL;
}

static char *s_strndup_text(const char *s, size_t len)
{
    char *copy = malloc(len + 1);
    if (copy) {
        if (len)
            memcpy(copy, s, len);
        copy[len] = '\0';
    }
    return copy;
}

/* Reads one field from O into SLOT (zeroed), checking its type here and its
 * bounds afterwards with s_check_field. */
static int s_read_field(const s_field_t *f, const msgpack_object *o, void *slot, char *why,
                        size_t whylen)
{
    switch (f->kind) {
        case S_U64:
            if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                goto wrong_type;
            *(uint64_t *)slot = o->via.u64;
            break;
        case S_F64:
            if (o->type != MSGPACK_OBJECT_FLOAT64 && o->type != MSGPACK_OBJECT_FLOAT32)
                goto wrong_type;
            *(double *)slot = o->via.f64;
            break;
        case S_BOOL:
            if (o->type != MSGPACK_OBJECT_BOOLEAN)
                goto wrong_type;
            *(bool *)slot = o->via.boolean;
            break;
        case S_STR:
            if (o->type != MSGPACK_OBJECT_STR)
                goto wrong_type;
            /* Bound before copying; an embedded NUL would hide the rest. */
            if (o->via.str.size > f->hi_u || s_has_nul(o->via.str.ptr, o->via.str.size))
                return s_fail(why, whylen, "string of %u bytes is too long or holds NUL",
                              (unsigned)o->via.str.size);
            if (!(*(char **)slot = s_strndup_text(o->via.str.ptr, o->via.str.size)))
                return s_fail(why, whylen, "out of memory");
            break;
        case S_ID:
            if (o->type != MSGPACK_OBJECT_STR)
                goto wrong_type;
            if (!cf_proto_is_uuid(o->via.str.ptr, o->via.str.size))
                return s_fail(why, whylen, "not a lowercase UUID");
            memcpy(slot, o->via.str.ptr, 36);
            ((char *)slot)[36] = '\0';
            break;
        case S_BIN:
            if (o->type != MSGPACK_OBJECT_BIN)
                goto wrong_type;
            if (o->via.bin.size > f->hi_u)
                return s_fail(why, whylen, "%u bytes, at most %llu allowed",
                              (unsigned)o->via.bin.size, (unsigned long long)f->hi_u);
            if (cf_proto_bin_set(slot, o->via.bin.ptr, o->via.bin.size) < 0)
                return s_fail(why, whylen, "out of memory");
            break;
        case S_STRLIST: {
            if (o->type != MSGPACK_OBJECT_ARRAY)
                goto wrong_type;
            if (o->via.array.size > f->max_items)
                return s_fail(why, whylen, "%u items, at most %zu allowed",
                              (unsigned)o->via.array.size, f->max_items);
            cf_proto_strlist_t *list = slot;
            for (uint32_t i = 0; i < o->via.array.size; i++) {
                const msgpack_object *item = &o->via.array.ptr[i];
                if (item->type != MSGPACK_OBJECT_STR)
                    return s_fail(why, whylen, "item %u: expected str, got %s", i,
                                  s_type_name(item));
                if (item->via.str.size > f->hi_u ||
                    s_has_nul(item->via.str.ptr, item->via.str.size))
                    return s_fail(why, whylen, "item %u: too long or holds NUL", i);
                char *copy = s_strndup_text(item->via.str.ptr, item->via.str.size);
                char **items =
                    copy ? realloc(list->items, (list->count + 1) * sizeof *items) : NULL;
                if (!items) {
                    free(copy);
                    return s_fail(why, whylen, "out of memory");
                }
                list->items = items;
                list->items[list->count++] = copy;
            }
            break;
        }
        case S_F64LIST: {
            if (o->type != MSGPACK_OBJECT_ARRAY)
                goto wrong_type;
            if (o->via.array.size > f->max_items)
                return s_fail(why, whylen, "%u items, at most %zu allowed",
                              (unsigned)o->via.array.size, f->max_items);
            cf_proto_f64list_t *list = slot;
            for (uint32_t i = 0; i < o->via.array.size; i++) {
                const msgpack_object *item = &o->via.array.ptr[i];
                if (item->type != MSGPACK_OBJECT_FLOAT64 && item->type != MSGPACK_OBJECT_FLOAT32)
                    return s_fail(why, whylen, "item %u: expected float64, got %s", i,
                                  s_type_name(item));
                if (cf_proto_f64list_add(list, item->via.f64) < 0)
                    return s_fail(why, whylen, "out of memory");
            }
            break;
        }
    }
    return s_check_field(f, slot, why, whylen);
wrong_type:
    return s_fail(why, whylen, "expected %s, got %s", s_kind_names[f->kind], s_type_name(o));
}

int cf_msg_decode(const uint8_t *data, size_t size, cf_msg_t *msg, char *err, size_t errlen)
{
    memset(msg, 0, sizeof *msg);
    msgpack_unpacked unpacked;
    msgpack_unpacked_init(&unpacked);
    const s_message_t *def = NULL;
    char why[200];
    size_t pos = 0;

    if (!data || size == 0) {
        s_fail(err, errlen, "empty message");
        goto malformed;
    }
    if (size > CF_PROTO_MAX_SIZE) {
        s_fail(err, errlen, "%zu bytes, more than the %d allowed", size, CF_PROTO_MAX_SIZE);
        goto malformed;
    }
    if (s_scan(data, size, &pos, 0) < 0 || pos != size) {
        s_fail(err, errlen, "not one well-formed msgpack value");
        goto malformed;
    }
    size_t off = 0;
    if (msgpack_unpack_next(&unpacked, (const char *)data, size, &off) != MSGPACK_UNPACK_SUCCESS ||
        off != size) {
        s_fail(err, errlen, "msgpack decoding failed");
        goto malformed;
    }
    const msgpack_object *root = &unpacked.data;
    if (root->type != MSGPACK_OBJECT_ARRAY || root->via.array.size < 2) {
        s_fail(err, errlen, "expected an array [version, type, ...], got %s", s_type_name(root));
        goto malformed;
    }
    const msgpack_object *items = root->via.array.ptr;
    if (items[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER || items[0].via.u64 != CF_PROTO_VERSION) {
        s_fail(err, errlen, "unsupported protocol version (%s %llu, expected %d)",
               s_type_name(&items[0]),
               items[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER
                   ? (unsigned long long)items[0].via.u64
                   : 0ULL,
               CF_PROTO_VERSION);
        goto malformed;
    }
    if (items[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER || items[1].via.u64 > 255 ||
        !(def = s_find((cf_msg_type_t)items[1].via.u64))) {
        s_fail(err, errlen, "unknown message type");
        goto malformed;
    }
    if (root->via.array.size != 2 + def->field_count) {
        s_fail(err, errlen, "%s: %u fields, expected %zu", def->name,
               (unsigned)root->via.array.size - 2, def->field_count);
        def = NULL;
        goto malformed;
    }
    msg->type = def->type;
    char *body = s_body(msg);
    for (size_t i = 0; i < def->field_count; i++) {
        const s_field_t *f = &def->fields[i];
        if (s_read_field(f, &items[2 + i], body + f->offset, why, sizeof why) < 0) {
            s_fail(err, errlen, "%s.%s: %s", def->name, f->name, why);
            goto malformed;
        }
    }
    if (def->check && def->check(msg, why, sizeof why) < 0) {
        s_fail(err, errlen, "%s: %s", def->name, why);
        goto malformed;
    }
    msgpack_unpacked_destroy(&unpacked);
    return 0;

malformed:
    msgpack_unpacked_destroy(&unpacked);
    cf_msg_clear(msg);
    return -1;
}

/* ------------------------------------------------------------------ equality */

static bool s_str_equal(const char *a, const char *b)
{
    return !strcmp(a ? a : "", b ? b : "");
}

bool cf_msg_equal(const cf_msg_t *a, const cf_msg_t *b)
{
    if (a->type != b->type)
        return false;
    const s_message_t *def = s_find(a->type);
    if (!def)
        return true;
    const char *ba = s_cbody(a), *bb = s_cbody(b);
    for (size_t i = 0; i < def->field_count; i++) {
        const s_field_t *f = &def->fields[i];
        const void *x = ba + f->offset, *y = bb + f->offset;
        switch (f->kind) {
            case S_U64:
                if (*(const uint64_t *)x != *(const uint64_t *)y)
                    return false;
                break;
            case S_F64:
                if (*(const double *)x != *(const double *)y)
                    return false;
                break;
            case S_BOOL:
                if (*(const bool *)x != *(const bool *)y)
                    return false;
                break;
            case S_STR:
                if (!s_str_equal(*(char *const *)x, *(char *const *)y))
                    return false;
                break;
            case S_ID:
                if (strncmp(x, y, sizeof(cf_proto_id_t)))
                    return false;
                break;
            case S_BIN: {
                const cf_proto_bin_t *p = x, *q = y;
                if (p->size != q->size || (p->size && memcmp(p->data, q->data, p->size)))
                    return false;
                break;
            }
            case S_STRLIST: {
                const cf_proto_strlist_t *p = x, *q = y;
                if (p->count != q->count)
                    return false;
                for (size_t k = 0; k < p->count; k++)
                    if (!s_str_equal(p->items[k], q->items[k]))
                        return false;
                break;
            }
            case S_F64LIST: {
                const cf_proto_f64list_t *p = x, *q = y;
                if (p->count != q->count)
                    return false;
                for (size_t k = 0; k < p->count; k++)
                    if (p->items[k] != q->items[k])
                        return false;
                break;
            }
        }
    }
    return true;
}

uint64_t cf_msg_epoch(const cf_msg_t *msg)
{
    switch (msg->type) {
        case CF_MSG_HEARTBEAT:
            return msg->heartbeat.epoch;
        case CF_MSG_LEADER:
            return msg->leader.epoch;
        case CF_MSG_ASSIGN:
            return msg->assign.epoch;
        case CF_MSG_ACCEPT:
            return msg->accept.epoch;
        case CF_MSG_REJECT:
            return msg->reject.epoch;
        case CF_MSG_PROGRESS:
            return msg->progress.epoch;
        case CF_MSG_DONE:
            return msg->done.epoch;
        case CF_MSG_FAILED:
            return msg->failed.epoch;
        case CF_MSG_CANCEL:
            return msg->cancel.epoch;
        default:
            return 0;
    }
}

/* ------------------------------------------------------------------ reflection */

size_t cf_proto_message_count(void)
{
    return S_MESSAGE_COUNT;
}

cf_msg_type_t cf_proto_message_type(size_t index)
{
    return index < S_MESSAGE_COUNT ? s_messages[index].type : CF_MSG_NONE;
}

size_t cf_proto_field_count(cf_msg_type_t type)
{
    const s_message_t *def = s_find(type);
    return def ? def->field_count : 0;
}

const char *cf_proto_field_name(cf_msg_type_t type, size_t index)
{
    const s_message_t *def = s_find(type);
    return def && index < def->field_count ? def->fields[index].name : NULL;
}

void cf_proto_describe(void *file)
{
    FILE *out = file;
    for (size_t i = 0; i < S_MESSAGE_COUNT; i++) {
        const s_message_t *def = &s_messages[i];
        fprintf(out, "### %s (type %d)\n\n%s.\n\n", def->name, (int)def->type, def->summary);
        fprintf(out, "| # | field | kind | bounds |\n|---|---|---|---|\n");
        for (size_t k = 0; k < def->field_count; k++) {
            const s_field_t *f = &def->fields[k];
            char bounds[128] = "";
            switch (f->kind) {
                case S_U64:
                    snprintf(bounds, sizeof bounds, "%llu..%llu", (unsigned long long)f->lo_u,
                             (unsigned long long)f->hi_u);
                    break;
                case S_F64:
                    snprintf(bounds, sizeof bounds, "%g..%g, finite", f->lo_f, f->hi_f);
                    break;
                case S_STR:
                    snprintf(bounds, sizeof bounds, "%llu..%llu bytes of UTF-8 text",
                             (unsigned long long)f->lo_u, (unsigned long long)f->hi_u);
                    break;
                case S_ID:
                    snprintf(bounds, sizeof bounds, "36 bytes, lowercase 8-4-4-4-12 hex");
                    break;
                case S_BIN:
                    snprintf(bounds, sizeof bounds, "%llu..%llu bytes", (unsigned long long)f->lo_u,
                             (unsigned long long)f->hi_u);
                    break;
                case S_STRLIST:
                    snprintf(bounds, sizeof bounds, "at most %zu items of %llu..%llu bytes",
                             f->max_items, (unsigned long long)f->lo_u,
                             (unsigned long long)f->hi_u);
                    break;
                case S_F64LIST:
                    snprintf(bounds, sizeof bounds, "at most %zu items in %g..%g", f->max_items,
                             f->lo_f, f->hi_f);
                    break;
                case S_BOOL:
                    snprintf(bounds, sizeof bounds, "true or false");
                    break;
            }
            fprintf(out, "| %zu | `%s` | %s | %s |\n", k + 2, f->name, s_kind_names[f->kind],
                    bounds);
        }
        fprintf(out, "\n");
    }
}
