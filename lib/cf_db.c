#include "cf_db.h"

#include <stdio.h>
#include <string.h>

char *cf_db_errstr(PGconn *conn, const PGresult *res, char *err, size_t errlen)
{
    const char *msg = res ? PQresultErrorMessage(res) : NULL;
    if (!msg || !*msg)
        msg = conn ? PQerrorMessage(conn) : "no connection";
    /* libpq messages span lines ("connection to server ... failed: \n ..."):
     * join them into one line. */
    size_t out = 0;
    for (const char *p = msg; *p && out + 1 < errlen; p++) {
        char c = (*p == '\n' || *p == '\t') ? ' ' : *p;
        if (c == ' ' && (out == 0 || err[out - 1] == ' '))
            continue;
        err[out++] = c;
    }
    while (out > 0 && err[out - 1] == ' ')
        out--;
    err[out] = '\0';
    return err;
}

static void s_ignore_notice(void *arg, const char *message)
{
}

PGconn *cf_db_connect(const char *url, int timeout_s, char *err, size_t errlen)
{
    char timeout[16];
    snprintf(timeout, sizeof timeout, "%d", timeout_s > 0 ? timeout_s : 10);
    const char *keys[] = {"dbname", "connect_timeout", "application_name", NULL};
    const char *values[] = {url, timeout, "clipfarm", NULL};
    PGconn *conn = PQconnectdbParams(keys, values, 1 /* expand dbname as a URL */);
    if (!conn) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        cf_db_errstr(conn, NULL, err, errlen);
        PQfinish(conn);
        return NULL;
    }
    /* Notices (e.g. "relation already exists, skipping") are not errors. */
    PQsetNoticeProcessor(conn, s_ignore_notice, NULL);
    return conn;
}
