/* cf_proto: the node-to-node control protocol. Every message is declared
 * once, in CF_PROTO_MESSAGES and the CF_PROTO_FIELDS_* lists below; the C
 * structs, the msgpack encoder, the decoder with its type and bounds checks,
 * equality and the field description all come from those lists. msgpack-c is
 * used here and nowhere else. proto/PROTOCOL.md documents the wire format.
 *
 * On the wire a message is one msgpack array:
 *     [version, type, field1, field2, ...]
 * with exactly the fields its type declares, in order. A message whose
 * version is not CF_PROTO_VERSION, whose type is unknown, whose array has
 * another length, or any of whose fields has the wrong type or is out of
 * bounds is rejected as a whole (cf_msg_decode returns -1). */
#ifndef CF_PROTO_H
#define CF_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The protocol version; it leads every message and every beacon. Any change
 * to a message's fields bumps it. */
#define CF_PROTO_VERSION 3

/* Largest encoded message accepted or produced: room for the largest task
 * (CF_PROTO_TASK_JSON_MAX) and the ASSIGN around it. */
#define CF_PROTO_MAX_SIZE (4 * 1024 * 1024)

/* Largest epoch (Postgres bigint). */
#define CF_PROTO_EPOCH_MAX INT64_MAX

/* Field kinds and the C type each becomes. */
typedef char cf_proto_id_t[37]; /* canonical lowercase UUID text */
typedef struct {
    uint8_t *data;
    size_t size;
} cf_proto_bin_t;
typedef struct {
    char **items;
    size_t count;
} cf_proto_strlist_t;
typedef struct {
    double *items;
    size_t count;
} cf_proto_f64list_t;

#define CF_PROTO_CTYPE_U64     uint64_t
#define CF_PROTO_CTYPE_F64     double
#define CF_PROTO_CTYPE_BOOL    bool
#define CF_PROTO_CTYPE_STR     char *
#define CF_PROTO_CTYPE_ID      cf_proto_id_t
#define CF_PROTO_CTYPE_BIN     cf_proto_bin_t
#define CF_PROTO_CTYPE_STRLIST cf_proto_strlist_t
#define CF_PROTO_CTYPE_F64LIST cf_proto_f64list_t

/* The messages: M(NAME, name, wire type number, summary). */
#define CF_PROTO_MESSAGES(M)                                                                       \
    M(HELLO, hello, 1, "Who I am: identity, endpoints, capabilities")                              \
    M(HEARTBEAT, heartbeat, 2, "I am alive: load, free slots, work in flight, highest epoch")      \
    M(LEADER, leader, 3, "The coordinator announces its epoch")                                    \
    M(ASSIGN, assign, 4, "Coordinator -> worker: run this task (a segment, the audio, assembly)")  \
    M(ACCEPT, accept, 5, "Worker -> coordinator: task taken")                                      \
    M(REJECT, reject, 6, "Worker -> coordinator: task refused, with the reason")                   \
    M(PROGRESS, progress, 7, "Worker -> coordinator: frames encoded so far")                       \
    M(DONE, done, 8, "Worker -> coordinator: task done, its result stored as a blob")              \
    M(FAILED, failed, 9, "Worker -> coordinator: task failed")                                     \
    M(CANCEL, cancel, 10, "Coordinator -> workers: drop a composition's segments")                 \
    M(BYE, bye, 11, "I am leaving the cluster")

/* Fields: F(T, name, KIND, lo, hi, max_items), T being the message struct
 * (for the table in cf_proto.c). For U64 and F64, lo..hi bound the
 * value; for STR and BIN the length in bytes; for STRLIST each string's length
 * and for F64LIST each value, with at most max_items items. ID and BOOL take
 * no bounds. */
#define CF_PROTO_FIELDS_hello(F, T)                                                                \
    F(T, node_id, ID, 0, 0, 0)                                                                     \
    F(T, software, STR, 1, 64, 0)                                                                  \
    F(T, control_endpoint, STR, 1, 256, 0)                                                         \
    F(T, http_endpoint, STR, 0, 256, 0)                                                            \
    F(T, cores, U64, 1, 65536, 0)                                                                  \
    F(T, memory_mb, U64, 0, 1ULL << 40, 0)                                                         \
    F(T, slots, U64, 0, 256, 0)                                                                    \
    F(T, encoders, STRLIST, 1, 32, 16)                                                             \
    F(T, encoder_fps, F64LIST, 0, 1e6, 16)                                                         \
    F(T, tags, STRLIST, 1, 64, 32)                                                                 \
    F(T, want_hello, BOOL, 0, 0, 0)

#define CF_PROTO_FIELDS_heartbeat(F, T)                                                            \
    F(T, load, F64, 0, 1e6, 0)                                                                     \
    F(T, free_slots, U64, 0, 256, 0)                                                               \
    F(T, in_flight, U64, 0, 65536, 0)                                                              \
    F(T, epoch, U64, 0, CF_PROTO_EPOCH_MAX, 0)

#define CF_PROTO_FIELDS_leader(F, T)                                                               \
    F(T, epoch, U64, 1, CF_PROTO_EPOCH_MAX, 0)                                                     \
    F(T, node_id, ID, 0, 0, 0)

/* Tasks of a composition of N segments: 0..N-1 the segments, N the audio,
 * N + 1 the assembly (kind says which; the index is the task's identity in
 * every reply, with the attempt). */
#define CF_PROTO_TASK_MAX 1000001
/* The largest task description: a 4-hour composition in 1 s segments has
 * an assembly of 14 400 pieces, about 150 bytes each. */
#define CF_PROTO_TASK_JSON_MAX (3584 * 1024)
#define CF_PROTO_FIELDS_assign(F, T)                                                               \
    F(T, epoch, U64, 1, CF_PROTO_EPOCH_MAX, 0)                                                     \
    F(T, composition, ID, 0, 0, 0)                                                                 \
    F(T, segment, U64, 0, CF_PROTO_TASK_MAX, 0)                                                    \
    F(T, attempt, U64, 1, 1000, 0)                                                                 \
    F(T, kind, U64, 0, 2, 0)                                                                       \
    F(T, frame_start, U64, 0, 1ULL << 40, 0)                                                       \
    F(T, frame_count, U64, 1, 1ULL << 40, 0)                                                       \
    F(T, encoder, STR, 1, 32, 0)                                                                   \
    F(T, task, STR, 2, CF_PROTO_TASK_JSON_MAX, 0)
#define CF_PROTO_FIELDS_accept(F, T)                                                               \
    F(T, epoch, U64, 1, CF_PROTO_EPOCH_MAX, 0)                                                     \
    F(T, composition, ID, 0, 0, 0)                                                                 \
    F(T, segment, U64, 0, CF_PROTO_TASK_MAX, 0)                                                    \
    F(T, attempt, U64, 1, 1000, 0)
#define CF_PROTO_FIELDS_reject(F, T)                                                               \
    F(T, epoch, U64, 1, CF_PROTO_EPOCH_MAX, 0)                                                     \
    F(T, composition, ID, 0, 0, 0)                                                                 \
    F(T, segment, U64, 0, CF_PROTO_TASK_MAX, 0)                                                    \
    F(T, attempt, U64, 1, 1000, 0)                                                                 \
    F(T, reason, STR, 1, 256, 0)
#define CF_PROTO_FIELDS_progress(F, T)                                                             \
    F(T, epoch, U64, 1, CF_PROTO_EPOCH_MAX, 0)                                                     \
    F(T, composition, ID, 0, 0, 0)                                                                 \
    F(T, segment, U64, 0, CF_PROTO_TASK_MAX, 0)                                                    \
    F(T, attempt, U64, 1, 1000, 0)                                                                 \
    F(T, frames_done, U64, 0, 1ULL << 40, 0)
#define CF_PROTO_FIELDS_done(F, T)                                                                 \
    F(T, epoch, U64, 1, CF_PROTO_EPOCH_MAX, 0)                                                     \
    F(T, composition, ID, 0, 0, 0)                                                                 \
    F(T, segment, U64, 0, CF_PROTO_TASK_MAX, 0)                                                    \
    F(T, attempt, U64, 1, 1000, 0)                                                                 \
    F(T, frames, U64, 1, 1ULL << 40, 0)                                                            \
    F(T, blob_hash, BIN, 32, 32, 0)                                                                \
    F(T, size_bytes, U64, 1, 1ULL << 48, 0)                                                        \
    F(T, encode_ms, U64, 0, 1ULL << 40, 0)                                                         \
    F(T, fps, F64, 0, 1e6, 0)
#define CF_PROTO_FIELDS_failed(F, T)                                                               \
    F(T, epoch, U64, 1, CF_PROTO_EPOCH_MAX, 0)                                                     \
    F(T, composition, ID, 0, 0, 0)                                                                 \
    F(T, segment, U64, 0, CF_PROTO_TASK_MAX, 0)                                                    \
    F(T, attempt, U64, 1, 1000, 0)                                                                 \
    F(T, reason, STR, 1, 256, 0)                                                                   \
    F(T, retryable, BOOL, 0, 0, 0)
#define CF_PROTO_FIELDS_cancel(F, T)                                                               \
    F(T, epoch, U64, 1, CF_PROTO_EPOCH_MAX, 0)                                                     \
    F(T, composition, ID, 0, 0, 0)

#define CF_PROTO_FIELDS_bye(F, T) F(T, reason, STR, 1, 64, 0)

/* Message type numbers. */
typedef enum {
    CF_MSG_NONE = 0,
#define CF_PROTO_ENUM_(NAME, name, id, summary) CF_MSG_##NAME = id,
    CF_PROTO_MESSAGES(CF_PROTO_ENUM_)
#undef CF_PROTO_ENUM_
} cf_msg_type_t;

/* One struct per message, e.g. cf_msg_hello_t. */
#define CF_PROTO_MEMBER_(T, name, kind, lo, hi, max_items) CF_PROTO_CTYPE_##kind name;
#define CF_PROTO_STRUCT_(NAME, name, id, summary)                                                  \
    typedef struct {                                                                               \
        CF_PROTO_FIELDS_##name(CF_PROTO_MEMBER_, _)                                                \
    } cf_msg_##name##_t;
CF_PROTO_MESSAGES(CF_PROTO_STRUCT_)
#undef CF_PROTO_STRUCT_
#undef CF_PROTO_MEMBER_

/* A decoded (or to be encoded) message: TYPE says which member is valid.
 * Strings, byte strings and lists are owned by the message: set them with
 * cf_msg_set_str / cf_proto_*_add or malloc'ed copies; cf_msg_clear frees. */
typedef struct {
    cf_msg_type_t type;
    union {
#define CF_PROTO_UNION_(NAME, name, id, summary) cf_msg_##name##_t name;
        CF_PROTO_MESSAGES(CF_PROTO_UNION_)
#undef CF_PROTO_UNION_
    };
} cf_msg_t;

/* Zeroes MSG and sets its type. */
void cf_msg_init(cf_msg_t *msg, cf_msg_type_t type);

/* Frees what MSG owns and zeroes it (type becomes CF_MSG_NONE). Safe on a
 * zeroed message. */
void cf_msg_clear(cf_msg_t *msg);

/* "HELLO", "HEARTBEAT", ...; NULL for an unknown type. */
const char *cf_msg_type_name(cf_msg_type_t type);

/* Replaces the string in *slot with a copy of VALUE. Returns 0, -1 when out
 * of memory. */
int cf_msg_set_str(char **slot, const char *value);
int cf_proto_strlist_add(cf_proto_strlist_t *list, const char *value);
int cf_proto_f64list_add(cf_proto_f64list_t *list, double value);
int cf_proto_bin_set(cf_proto_bin_t *bin, const void *data, size_t size);

/* Encodes MSG. Every field is checked against its bounds first, so nothing a
 * peer would reject is ever sent. On success *data_p is a malloc'ed buffer of
 * *size_p bytes (caller frees); returns 0. Returns -1 with a reason in err
 * when a field is out of bounds. */
int cf_msg_encode(const cf_msg_t *msg, uint8_t **data_p, size_t *size_p, char *err, size_t errlen);

/* Decodes DATA into MSG (which need not be initialised). Returns 0, or -1
 * with a one-line reason in err and MSG cleared: malformed msgpack, trailing
 * bytes, unknown version or type, wrong field count, a field of the wrong
 * type or out of bounds. Never reads outside DATA, and allocates memory
 * bounded by a small multiple of SIZE. */
int cf_msg_decode(const uint8_t *data, size_t size, cf_msg_t *msg, char *err, size_t errlen);

/* True when A and B are the same message, field by field. */
bool cf_msg_equal(const cf_msg_t *a, const cf_msg_t *b);

/* The coordinator epoch MSG carries (LEADER, ASSIGN, CANCEL and the worker
 * replies; HEARTBEAT's highest epoch seen), or 0 when it carries none. */
uint64_t cf_msg_epoch(const cf_msg_t *msg);

/* Writes the message table as Markdown (one section per message with its
 * fields, kinds and bounds): the reference part of PROTOCOL.md. */
void cf_proto_describe(void *file);

/* Number of message types, and the wire type of the i-th (0-based); for
 * tests that walk every type. */
size_t cf_proto_message_count(void);
cf_msg_type_t cf_proto_message_type(size_t index);

/* The declared fields of TYPE: their count, and the name of the i-th. */
size_t cf_proto_field_count(cf_msg_type_t type);
const char *cf_proto_field_name(cf_msg_type_t type, size_t index);

/* True when TEXT is a canonical lowercase UUID (8-4-4-4-12 hex digits). */
bool cf_proto_is_uuid(const char *text, size_t len);

#endif
