/* Helpers shared by the C tests: environment, child processes, temp dirs. */
#ifndef CF_TESTUTIL_H
#define CF_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cf_db.h"

/* Exit code ctest reads as "skipped". */
#define CF_TEST_SKIP 77

/* Returns the value of env var NAME, or exits 77 (skip) with a message naming
 * it when unset: integration tests need servers that tests/run starts. */
const char *cf_test_require_env(const char *name);

/* Result of a child process: exit status (or 128+signal) and its captured
 * stdout and stderr, each NUL-terminated. */
typedef struct {
    int status;
    char *out;
    char *err;
} cf_test_proc_t;

/* Runs argv (argv[0] is looked up in PATH) with extra environment entries
 * "K=V" from env (may be NULL, NULL-terminated), waits, captures output. */
cf_test_proc_t cf_test_run(char *const argv[], char *const env[]);
/* cf_test_run with the arguments listed: ARG0, ..., NULL (at most 63). */
cf_test_proc_t cf_test_runl(const char *arg0, ...) __attribute__((sentinel));
/* Fails the test, showing WHAT, the exit status and stderr, unless PROC
 * exited 0. */
void cf_test_expect_success(const cf_test_proc_t *proc, const char *what);
void cf_test_proc_free(cf_test_proc_t *proc);

/* Path of the clipfarm binary under test (CF_BIN). */
const char *cf_test_bin(void);

/* Creates a fresh directory under $TMPDIR; returns it (caller frees). */
char *cf_test_mkdtemp(const char *prefix);
/* Removes a directory tree. */
void cf_test_rmtree(const char *path);
/* Writes a whole file; fails the test on error. */
void cf_test_write_file(const char *path, const char *text);
/* Counts lines of text (for one-line error checks). */
int cf_test_count_lines(const char *text);

/* Creates an empty database with a name no other test uses (PREFIX, a
 * lowercase identifier, plus pid, counter and clock) on the server of
 * CF_TEST_DATABASE_URL (skips when unset), applies the built-in migrations
 * and writes its URL to URL. Fails the test on any error. */
void cf_test_fresh_database(const char *prefix, char *url, size_t urllen);

/* SQL straight to Postgres on CONN, beside the data layer (a test looking at
 * or changing rows behind the code under test); each fails the test on an
 * error. cf_test_sql_value: the one value of a one-row query written from
 * FMT (caller frees). cf_test_sql_exec: runs SQL as it is. */
char *cf_test_sql_value(PGconn *conn, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cf_test_sql_exec(PGconn *conn, const char *sql);

/* Creates a composition in state queued with PRIORITY and an empty spec
 * through the data layer; writes its id into id and fails the test on error. */
void cf_test_create_queued(cf_db_t *db, cf_priority_t priority, char id[CF_DB_ID_LEN]);

/* Deletes every key under PREFIX on the Redis at URL (the tests share one
 * server); a Redis that cannot be reached is left alone. */
void cf_test_redis_delete_prefix(const char *url, const char *prefix);

/* One MD5 per video frame of PATH, one per line, from ffmpeg's framemd5:
 * of the decoded frames, or of the packets (the bitstream) when PACKETS.
 * Caller frees. */
char *cf_test_video_md5(const char *path, bool packets);

#endif
