/* cf_db: PostgreSQL access (libpq). All queries of clipfarm live here. */
#ifndef CF_DB_H
#define CF_DB_H

#include <libpq-fe.h>
#include <stddef.h>

/* Opens one connection to URL, waiting at most timeout_s to connect.
 * Returns the connection, or NULL with a one-line reason in err. */
PGconn *cf_db_connect(const char *url, int timeout_s, char *err, size_t errlen);

/* Copies the first line of libpq's message for CONN (or RES when not NULL)
 * into err. Returns err. */
char *cf_db_errstr(PGconn *conn, const PGresult *res, char *err, size_t errlen);

#endif
