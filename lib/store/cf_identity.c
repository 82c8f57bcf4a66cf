#define _GNU_SOURCE
#include "cf_identity.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#define S_IDENTITY_FILE "identity"
#define S_FILE_MAX      4096

struct cf_identity_t {
    char node_id[CF_IDENTITY_ID_LEN];
    char public_z85[CF_IDENTITY_Z85_LEN];
    char secret_z85[CF_IDENTITY_Z85_LEN];
    uint8_t public_key[32];
    bool created;
};

struct cf_secret_t {
    uint8_t *key; /* sodium_malloc'ed, CF_SECRET_SIZE bytes */
};

static int s_fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int s_fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* ------------------------------------------------------------------ keys */

int cf_key_to_z85(const uint8_t key[32], char out[CF_IDENTITY_Z85_LEN])
{
    return zmq_z85_encode(out, key, 32) ? 0 : -1;
}

int cf_key_from_z85(const char *text, uint8_t key[32])
{
    if (!text || strlen(text) != 40)
        return -1;
    return zmq_z85_decode(key, text) ? 0 : -1;
}

void cf_identity_new_uuid(char out[CF_IDENTITY_ID_LEN])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t b[16];
    randombytes_buf(b, sizeof b);
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    size_t o = 0;
    for (size_t i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b[i] >> 4];
        out[o++] = hex[b[i] & 15];
    }
    out[o] = '\0';
}

static bool s_is_uuid(const char *s)
{
    if (strlen(s) != 36)
        return false;
    for (size_t i = 0; i < 36; i++) {
        char c = s[i];
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? c != '-' : !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    return true;
}

/* ------------------------------------------------------------------ files */

/* Reads a small file whole. Returns a malloc'ed NUL-terminated buffer or
 * NULL with errno set; *st gets its status. */
static char *s_read_small(const char *path, struct stat *st)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return NULL;
    char *text = NULL;
    if (fstat(fd, st) < 0)
        goto end;
    if (!S_ISREG(st->st_mode) || st->st_size > S_FILE_MAX) {
        errno = EINVAL;
        goto end;
    }
    text = calloc(1, (size_t)st->st_size + 1);
    if (!text)
        goto end;
    ssize_t got = read(fd, text, (size_t)st->st_size);
    if (got != st->st_size) {
        free(text);
        text = NULL;
        errno = EIO;
    }
end:;
    int saved = errno;
    close(fd);
    errno = saved;
    return text;
}

/* mkdir -p; the last component gets MODE, parents 0755. */
static int s_mkdirs(const char *path, mode_t mode, char *err, size_t errlen)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return s_fail(err, errlen, "data dir path too long");
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(buf, 0755) < 0 && errno != EEXIST)
            return s_fail(err, errlen, "cannot create %s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, mode) < 0 && errno != EEXIST)
        return s_fail(err, errlen, "cannot create %s: %s", buf, strerror(errno));
    struct stat st;
    if (stat(buf, &st) < 0 || !S_ISDIR(st.st_mode))
        return s_fail(err, errlen, "%s is not a directory", buf);
    return 0;
}

/* Parses "name = value" lines of the identity file into SELF. */
static int s_parse_identity(cf_identity_t *self, char *text, const char *path, char *err,
                            size_t errlen)
{
    bool have_id = false, have_public = false, have_secret = false;
    uint8_t secret[32];
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        while (*line == ' ' || *line == '\t')
            line++;
        if (!*line || *line == '#')
            continue;
        char name[32], value[64];
        if (sscanf(line, "%31[a-z-] = %63s", name, value) != 2)
            return s_fail(err, errlen, "%s: malformed line '%.40s'", path, line);
        if (!strcmp(name, "node-id") && s_is_uuid(value)) {
            memcpy(self->node_id, value, sizeof self->node_id); /* 36 + NUL, checked */
            have_id = true;
        } else if (!strcmp(name, "public-key") && cf_key_from_z85(value, self->public_key) == 0) {
            memcpy(self->public_z85, value, sizeof self->public_z85); /* 40 + NUL */
            have_public = true;
        } else if (!strcmp(name, "secret-key") && cf_key_from_z85(value, secret) == 0) {
            memcpy(self->secret_z85, value, sizeof self->secret_z85);
            have_secret = true;
        } else {
            return s_fail(err, errlen, "%s: bad value for '%s'", path, name);
        }
    }
    if (!have_id || !have_public || !have_secret)
        return s_fail(err, errlen, "%s: needs node-id, public-key and secret-key", path);
    uint8_t derived[32];
    int rc = crypto_scalarmult_base(derived, secret);
    sodium_memzero(secret, sizeof secret);
    if (rc != 0 || sodium_memcmp(derived, self->public_key, 32) != 0)
        return s_fail(err, errlen, "%s: the public key does not match the secret key", path);
    return 0;
}

/* Writes a new identity to PATH without ever replacing one: the text goes to
 * a private temporary file that is then hard-linked into place, which fails
 * when another process got there first. Returns 0, 1 when PATH already
 * existed, -1 on error. */
static int s_create_identity(const char *path, char *err, size_t errlen)
{
    uint8_t public_key[32], secret_key[32];
    crypto_box_keypair(public_key, secret_key);
    char node_id[CF_IDENTITY_ID_LEN], pub[CF_IDENTITY_Z85_LEN], sec[CF_IDENTITY_Z85_LEN];
    cf_identity_new_uuid(node_id);
    cf_key_to_z85(public_key, pub);
    cf_key_to_z85(secret_key, sec);
    sodium_memzero(secret_key, sizeof secret_key);

    char text[512];
    int len = snprintf(text, sizeof text,
                       "# clipfarm node identity. The secret key must stay private.\n"
                       "node-id = %s\npublic-key = %s\nsecret-key = %s\n",
                       node_id, pub, sec);
    sodium_memzero(sec, sizeof sec);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        sodium_memzero(text, sizeof text);
        return s_fail(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
    }
    int rc = 0;
    if (write(fd, text, (size_t)len) != len || fsync(fd) < 0)
        rc = s_fail(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
    sodium_memzero(text, sizeof text);
    close(fd);
    if (rc == 0 && link(tmp, path) < 0) {
        if (errno == EEXIST)
            rc = 1;
        else
            rc = s_fail(err, errlen, "cannot create %s: %s", path, strerror(errno));
    }
    unlink(tmp);
    return rc;
}

cf_identity_t *cf_identity_load(const char *data_dir, char *err, size_t errlen)
{
    if (sodium_init() < 0) {
        s_fail(err, errlen, "libsodium failed to initialise");
        return NULL;
    }
    if (!data_dir || !*data_dir) {
        s_fail(err, errlen, "no data dir");
        return NULL;
    }
    if (s_mkdirs(data_dir, 0700, err, errlen) < 0)
        return NULL;
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", data_dir, S_IDENTITY_FILE) >= (int)sizeof path) {
        s_fail(err, errlen, "data dir path too long");
        return NULL;
    }
    bool created = false;
    if (access(path, F_OK) < 0) {
        int rc = s_create_identity(path, err, errlen);
        if (rc < 0)
            return NULL;
        created = rc == 0;
    }
    struct stat st;
    char *text = s_read_small(path, &st);
    if (!text) {
        s_fail(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return NULL;
    }
    cf_identity_t *self = NULL;
    if (st.st_mode & 077) {
        s_fail(err, errlen, "%s is readable by others (mode %04o): chmod 600 it", path,
               (unsigned)(st.st_mode & 07777));
        goto end;
    }
    self = sodium_malloc(sizeof *self);
    if (!self) {
        s_fail(err, errlen, "out of memory");
        goto end;
    }
    memset(self, 0, sizeof *self);
    if (s_parse_identity(self, text, path, err, errlen) < 0) {
        cf_identity_destroy(&self);
        goto end;
    }
    self->created = created;
end:
    sodium_memzero(text, (size_t)st.st_size);
    free(text);
    return self;
}

void cf_identity_destroy(cf_identity_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sodium_free(*self_p); /* wipes it */
    *self_p = NULL;
}

bool cf_identity_created(const cf_identity_t *self)
{
    return self->created;
}

const char *cf_identity_node_id(const cf_identity_t *self)
{
    return self->node_id;
}

const char *cf_identity_public_z85(const cf_identity_t *self)
{
    return self->public_z85;
}

const char *cf_identity_secret_z85(const cf_identity_t *self)
{
    return self->secret_z85;
}

const uint8_t *cf_identity_public_key(const cf_identity_t *self)
{
    return self->public_key;
}

/* ------------------------------------------------------------------ secret */

void cf_secret_generate_hex(char out[CF_SECRET_HEX_LEN])
{
    uint8_t key[CF_SECRET_SIZE];
    if (sodium_init() < 0)
        abort(); /* libsodium cannot fail to initialise on a working system */
    randombytes_buf(key, sizeof key);
    sodium_bin2hex(out, CF_SECRET_HEX_LEN, key, sizeof key);
    sodium_memzero(key, sizeof key);
}

cf_secret_t *cf_secret_load(const char *path, bool *loose_mode, char *err, size_t errlen)
{
    if (loose_mode)
        *loose_mode = false;
    if (sodium_init() < 0) {
        s_fail(err, errlen, "libsodium failed to initialise");
        return NULL;
    }
    struct stat st;
    char *text = s_read_small(path, &st);
    if (!text) {
        s_fail(err, errlen, "cannot read %s: %s", path,
               errno == EINVAL ? "not a small regular file" : strerror(errno));
        return NULL;
    }
    cf_secret_t *self = NULL;
    char *hex = NULL;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        line += strspn(line, " \t\r");
        if (!*line || *line == '#')
            continue;
        if (hex) {
            s_fail(err, errlen, "%s: more than one secret in the file", path);
            goto end;
        }
        hex = line;
        hex[strcspn(hex, " \t\r")] = '\0';
    }
    if (!hex || strlen(hex) != 2 * CF_SECRET_SIZE) {
        s_fail(err, errlen, "%s: expected 64 hex digits (clipfarm secret generate > FILE)", path);
        goto end;
    }
    self = calloc(1, sizeof *self);
    if (self)
        self->key = sodium_malloc(CF_SECRET_SIZE);
    if (!self || !self->key) {
        s_fail(err, errlen, "out of memory");
        cf_secret_destroy(&self);
        goto end;
    }
    size_t bin_len = 0;
    if (sodium_hex2bin(self->key, CF_SECRET_SIZE, hex, strlen(hex), NULL, &bin_len, NULL) != 0 ||
        bin_len != CF_SECRET_SIZE) {
        s_fail(err, errlen, "%s: expected 64 hex digits (clipfarm secret generate > FILE)", path);
        cf_secret_destroy(&self);
        goto end;
    }
    if (loose_mode)
        *loose_mode = (st.st_mode & 077) != 0;
end:
    sodium_memzero(text, (size_t)st.st_size);
    free(text);
    return self;
}

void cf_secret_destroy(cf_secret_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sodium_free((*self_p)->key);
    free(*self_p);
    *self_p = NULL;
}

const uint8_t *cf_secret_key(const cf_secret_t *self)
{
    return self->key;
}

void cf_secret_mac_hex(const cf_secret_t *self, const void *data, size_t len,
                       char out[CF_MAC_HEX_LEN])
{
    uint8_t mac[crypto_auth_BYTES];
    crypto_auth(mac, data, len, self->key);
    sodium_bin2hex(out, CF_MAC_HEX_LEN, mac, sizeof mac);
}

bool cf_secret_verify_hex(const cf_secret_t *self, const void *data, size_t len, const char *hex)
{
    uint8_t mac[crypto_auth_BYTES];
    size_t bin_len = 0;
    if (!hex || strlen(hex) != 2 * crypto_auth_BYTES ||
        sodium_hex2bin(mac, sizeof mac, hex, strlen(hex), NULL, &bin_len, NULL) != 0 ||
        bin_len != sizeof mac)
        return false;
    return crypto_auth_verify(mac, data, len, self->key) == 0;
}
