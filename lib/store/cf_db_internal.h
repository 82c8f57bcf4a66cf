/* cf_db_internal: PRIVATE to lib/store/cf_db*.c. Nothing outside the cf_db
 * module includes this header; its callers use cf_db.h, whose API is the
 * module's only contract.
 *
 * The module is split by job:
 *   cf_db.c              the machinery: options, pool, connect, prepare, exec
 *                        with retries and lost-answer handling, ping, explain,
 *                        and the row helpers below;
 *   cf_db_statements.c   the statement table (all of the module's SQL);
 *   cf_db_compositions.c create, get, list, transitions, progress, output,
 *                        counts, queued, purge;
 *   cf_db_claims.c       claim renewal and the expiry sweep;
 *   cf_db_segments.c     segments and events;
 *   cf_db_fenced.c       a coordinator's writes, fenced by its lease: segments
 *                        (plan, assign, update), workers' results (checked
 *                        against the assignment token), composition
 *                        transitions;
 *   cf_db_tenancy.c      API keys, composition owners, blob uploads;
 *   cf_db_delivery.c     S3 output location and webhook deliveries.
 *
 * Every statement is one entry of ONE table (cf_dbi_stmts) indexed by
 * cf_dbi_stmt_t, so each pooled connection keeps one bit per statement it has
 * prepared. The cf_dbi_ functions are internal: they are not part of the API
 * and may change with the module. */
#ifndef CF_DB_INTERNAL_H
#define CF_DB_INTERNAL_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cf_db.h"
#include "cf_state.h"

/* ------------------------------------------------------------------ statements */

/* One prepared statement per entry of cf_dbi_stmts, in the order of this enum
 * (a connection's prepared bits are indexed by it). */
typedef enum {
    CF_DBI_PING,
    CF_DBI_CREATE,
    CF_DBI_FIND_IDEMPOTENT,
    CF_DBI_GET_JSON,
    CF_DBI_GET,
    CF_DBI_LIST,
    CF_DBI_LIST_AFTER,
    CF_DBI_LIST_STATUS,
    CF_DBI_LIST_STATUS_AFTER,
    CF_DBI_TRANSITION,
    CF_DBI_PROGRESS,
    CF_DBI_OUTPUT,
    CF_DBI_COUNTS,
    CF_DBI_QUEUED,
    CF_DBI_PURGE,
    CF_DBI_SEGMENTS_CREATE,
    CF_DBI_SEGMENT_UPDATE,
    CF_DBI_SEGMENTS_LIST,
    CF_DBI_SEGMENTS_CREATE_FENCED,
    CF_DBI_SEGMENT_ASSIGN_FENCED,
    CF_DBI_SEGMENT_REPORT,
    CF_DBI_TRANSITION_FENCED,
    CF_DBI_EVENT_APPEND,
    CF_DBI_EVENTS_SINCE,
    CF_DBI_KEY_INSERT,
    CF_DBI_KEY_FIND,
    CF_DBI_KEY_REVOKE,
    CF_DBI_KEY_LIST,
    CF_DBI_OP_APPLIED,
    CF_DBI_LIST_OWNED,
    CF_DBI_LIST_OWNED_AFTER,
    CF_DBI_LIST_OWNED_STATUS,
    CF_DBI_LIST_OWNED_STATUS_AFTER,
    CF_DBI_OWNER,
    CF_DBI_KEY_INSERT_SCOPED,
    CF_DBI_BLOB_RECORD,
    CF_DBI_BLOB_USAGE,
    CF_DBI_BLOB_OWNED,
    CF_DBI_BLOB_GC,
    CF_DBI_S3_LOCATION,
    CF_DBI_WEBHOOK_CLAIM,
    CF_DBI_WEBHOOK_DONE,
    CF_DBI_WEBHOOK_RETRY,
    CF_DBI_W_PLAN,
    CF_DBI_W_OPEN,
    CF_DBI_W_PLAN_JSON,
    CF_DBI_W_ASSIGN,
    CF_DBI_W_ACCEPT,
    CF_DBI_W_PROGRESS,
    CF_DBI_W_DONE,
    CF_DBI_W_RETRY,
    CF_DBI_W_TAKEOVER,
    CF_DBI_W_COMP_PROGRESS,
    CF_DBI_W_WAIT_REASON,
    CF_DBI_W_LOST,
    CF_DBI_NODE_RATES,
    CF_DBI_W_CLOSE_CANCELLED,
    CF_DBI_OUTPUT_REFERENCED,
    CF_DBI_CLAIMS_RENEW,
    CF_DBI_CLAIMS_EXPIRE,
    CF_DBI_STMT_COUNT
} cf_dbi_stmt_t;

typedef struct {
    const char *name;
    const char *sql;
    bool readonly; /* safe to run again after the connection broke mid-statement */
} cf_dbi_stmt_def_t;

/* A connection's prepared statements are a bitmap of this many words. */
#define CF_DBI_PREPARED_WORDS ((CF_DBI_STMT_COUNT + 63) / 64)

/* The statement table (cf_db_statements.c): name, SQL and whether the
 * statement may run again after its connection broke. Entries whose SQL needs
 * parameter numbers filled in have sql NULL: use cf_dbi_stmt_sql. */
extern const cf_dbi_stmt_def_t cf_dbi_stmts[CF_DBI_STMT_COUNT];

/* The SQL text of STMT (built once for the entries the table leaves NULL).
 * Thread-safe; never NULL for a valid STMT. */
const char *cf_dbi_stmt_sql(cf_dbi_stmt_t stmt);

/* ------------------------------------------------------------------ exec (cf_db.c) */

/* Runs prepared statement STMT on a pooled connection with text parameters
 * (LENGTHS/FORMATS may be NULL; binary ones for bytea), preparing it first on
 * connections that have not. On CF_DB_OK *res_p holds the result (the caller
 * PQclear's it); otherwise a cf_db_rc_t with a reason in err. Read-only
 * statements are retried once on a fresh connection when the first broke
 * under them. *maybe_applied (may be NULL) is set when a write failed after
 * it was sent: it may have committed. */
int cf_dbi_exec_ex(cf_db_t *db, cf_dbi_stmt_t stmt, int nparams, const char *const *values,
                   const int *lengths, const int *formats, PGresult **res_p, bool *maybe_applied,
                   char *err, size_t errlen);

/* cf_dbi_exec_ex without the lost-answer report. */
int cf_dbi_exec(cf_db_t *db, cf_dbi_stmt_t stmt, int nparams, const char *const *values,
                const int *lengths, const int *formats, PGresult **res_p, char *err, size_t errlen);

/* Calls the write hook (cf_db_set_write_hook), if one is set, with one
 * committed write. */
void cf_dbi_notify(cf_db_t *db, const char *id, int64_t version, cf_state_t state, double progress,
                   const char *event);

/* ------------------------------------------------------------------ segments */

/* The plan as the JSON array CF_DBI_SEGMENTS_CREATE* read (caller frees). */
int cf_dbi_plan_json(const cf_db_segment_plan_t *plan, int count, char **json_p, char *err,
                     size_t errlen);

/* cf_db_segment_update with EPOCH written by HOLDER (NULL: the local
 * renderer, epoch 0, unfenced; else fenced by the lease). */
int cf_dbi_segment_update(cf_db_t *db, const char *composition_id, int index, int64_t epoch,
                          const char *holder, const cf_db_segment_update_t *update, char *err,
                          size_t errlen);

/* ------------------------------------------------------------------ helpers (cf_db.c) */

/* True when ID is a canonical UUID text (8-4-4-4-12 hex digits). */
bool cf_dbi_valid_uuid(const char *id);

/* Writes "no WHAT 'ID'" into err; returns CF_DB_NOT_FOUND. */
int cf_dbi_not_found(const char *what, const char *id, char *err, size_t errlen);

/* A copy of RES's value at ROW, COL (the caller frees it); NULL when the
 * value is SQL NULL or memory ran out. */
char *cf_dbi_strdup_or_null(const PGresult *res, int row, int col);

/* RES's value at ROW, COL as a number; 0 when it is SQL NULL. */
int64_t cf_dbi_int64(const PGresult *res, int row, int col);
double cf_dbi_double(const PGresult *res, int row, int col);

#endif
