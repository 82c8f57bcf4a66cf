/* cf_s3_names: what S3 names a composition may hold (bucket, object key,
 * credentials profile), checked without any I/O. Shared by the composition
 * model (validation at submit) and the S3 client. */
#ifndef CF_S3_NAMES_H
#define CF_S3_NAMES_H

#include <stdbool.h>
#include <stddef.h>

/* Splits "s3://BUCKET/KEY" (KEY %-decoded). Returns 0, or -1 with a reason
 * in err (bad bucket name, empty or overlong key). */
int cf_s3_parse_url(const char *url, char *bucket, size_t bucket_len, char *key, size_t key_len,
                    char *err, size_t errlen);

/* A DNS-compatible bucket name (3-63 of a-z, 0-9, '.', '-'; starts and ends
 * with a letter or digit; not an IP address). */
bool cf_s3_bucket_valid(const char *bucket);
/* A profile name: 1-64 of letters, digits, '-', '_', '.'. */
bool cf_s3_profile_valid(const char *profile);

#endif
