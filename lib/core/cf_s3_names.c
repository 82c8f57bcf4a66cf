/* cf_s3_names: S3 bucket, key and profile names (see the header). */
#include "cf_s3_names.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool cf_s3_bucket_valid(const char *bucket)
{
    size_t len = strlen(bucket);
    if (len < 3 || len > 63)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = bucket[i];
        if (!(islower((unsigned char)c) || isdigit((unsigned char)c) || c == '.' || c == '-'))
            return false;
    }
    if (!isalnum((unsigned char)bucket[0]) || !isalnum((unsigned char)bucket[len - 1]) ||
        strstr(bucket, ".."))
        return false;
    struct in_addr addr;
    return inet_pton(AF_INET, bucket, &addr) != 1;
}

bool cf_s3_profile_valid(const char *profile)
{
    size_t len = strlen(profile);
    if (len < 1 || len > 64)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = profile[i];
        if (!isalnum((unsigned char)c) && c != '-' && c != '_' && c != '.')
            return false;
    }
    return true;
}

int cf_s3_parse_url(const char *url, char *bucket, size_t bucket_len, char *key, size_t key_len,
                    char *err, size_t errlen)
{
    if (strncmp(url, "s3://", 5)) {
        snprintf(err, errlen, "not an s3:// URL");
        return -1;
    }
    const char *b = url + 5;
    size_t blen = strcspn(b, "/");
    if (blen >= bucket_len || b[blen] != '/') {
        snprintf(err, errlen, "s3:// URL needs s3://BUCKET/KEY");
        return -1;
    }
    memcpy(bucket, b, blen);
    bucket[blen] = '\0';
    if (!cf_s3_bucket_valid(bucket)) {
        snprintf(err, errlen, "'%.63s' is not a valid bucket name", bucket);
        return -1;
    }
    const char *in = b + blen + 1;
    size_t n = 0;
    for (; *in; in++) {
        char c = *in;
        if (c == '%' && isxdigit((unsigned char)in[1]) && isxdigit((unsigned char)in[2])) {
            char hex[3] = {in[1], in[2], 0};
            c = (char)strtol(hex, NULL, 16);
            in += 2;
        }
        if (c == '\0' || n + 1 >= key_len || n >= 1024) {
            snprintf(err, errlen, "object key is empty, over 1024 bytes or holds NUL");
            return -1;
        }
        key[n++] = c;
    }
    key[n] = '\0';
    if (n == 0) {
        snprintf(err, errlen, "s3:// URL needs s3://BUCKET/KEY");
        return -1;
    }
    return 0;
}
