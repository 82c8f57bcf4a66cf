#define _GNU_SOURCE
#include "cf_blob.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct cf_blob_store_t {
    char *dir;
    char *tmp_dir;
};

struct cf_blob_writer_t {
    cf_blob_store_t *store;
    char *tmp_path;
    int fd;
    uint64_t size;
    uint64_t max_bytes;
    int failed;
    crypto_generichash_state hash;
};

static int s_mkdir(const char *path, char *err, size_t errlen)
{
    if (mkdir(path, 0755) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create '%s': %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* mkdir -p for the store directory (the data dir may not exist yet). */
static int s_mkdirs(const char *path, char *err, size_t errlen)
{
    char *copy = strdup(path);
    if (!copy) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (char *p = copy + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        int rc = s_mkdir(copy, err, errlen);
        *p = '/';
        if (rc < 0) {
            free(copy);
            return -1;
        }
    }
    free(copy);
    return s_mkdir(path, err, errlen);
}

cf_blob_store_t *cf_blob_store_new(const char *dir, char *err, size_t errlen)
{
    if (sodium_init() < 0) {
        snprintf(err, errlen, "libsodium cannot be initialised");
        return NULL;
    }
    cf_blob_store_t *self = calloc(1, sizeof *self);
    if (!self || !(self->dir = strdup(dir)) || asprintf(&self->tmp_dir, "%s/tmp", dir) < 0) {
        if (self)
            self->tmp_dir = NULL;
        snprintf(err, errlen, "out of memory");
        cf_blob_store_destroy(&self);
        return NULL;
    }
    if (s_mkdirs(self->tmp_dir, err, errlen) < 0) {
        cf_blob_store_destroy(&self);
        return NULL;
    }
    /* Temporary files of writers that never finished (the node crashed). */
    DIR *tmp = opendir(self->tmp_dir);
    for (struct dirent *e; tmp && (e = readdir(tmp));)
        if (e->d_name[0] != '.')
            unlinkat(dirfd(tmp), e->d_name, 0);
    if (tmp)
        closedir(tmp);
    return self;
}

void cf_blob_store_destroy(cf_blob_store_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    free((*self_p)->dir);
    free((*self_p)->tmp_dir);
    free(*self_p);
    *self_p = NULL;
}

cf_blob_writer_t *cf_blob_writer_new(cf_blob_store_t *store, uint64_t max_bytes, char *err,
                                     size_t errlen)
{
    cf_blob_writer_t *writer = calloc(1, sizeof *writer);
    if (!writer || asprintf(&writer->tmp_path, "%s/upload-XXXXXX", store->tmp_dir) < 0) {
        free(writer);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    writer->fd = mkostemp(writer->tmp_path, O_CLOEXEC);
    if (writer->fd < 0) {
        snprintf(err, errlen, "cannot create a file in '%s': %s", store->tmp_dir, strerror(errno));
        free(writer->tmp_path);
        free(writer);
        return NULL;
    }
    writer->store = store;
    writer->max_bytes = max_bytes;
    crypto_generichash_init(&writer->hash, NULL, 0, 32);
    return writer;
}

int cf_blob_writer_write(cf_blob_writer_t *writer, const void *data, size_t len, char *err,
                         size_t errlen)
{
    if (writer->failed) {
        snprintf(err, errlen, "blob writer already failed");
        return CF_BLOB_ERROR;
    }
    if (writer->max_bytes && writer->size + len > writer->max_bytes) {
        writer->failed = 1;
        snprintf(err, errlen, "blob larger than %llu bytes", (unsigned long long)writer->max_bytes);
        return CF_BLOB_TOO_LARGE;
    }
    crypto_generichash_update(&writer->hash, data, len);
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(writer->fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            writer->failed = 1;
            snprintf(err, errlen, "cannot write blob: %s", n < 0 ? strerror(errno) : "no space");
            return CF_BLOB_ERROR;
        }
        p += n;
        len -= (size_t)n;
        writer->size += (uint64_t)n;
    }
    return CF_BLOB_OK;
}

uint64_t cf_blob_writer_size(const cf_blob_writer_t *writer)
{
    return writer->size;
}

void cf_blob_writer_abort(cf_blob_writer_t **writer_p)
{
    if (!writer_p || !*writer_p)
        return;
    cf_blob_writer_t *writer = *writer_p;
    if (writer->fd >= 0)
        close(writer->fd);
    if (writer->tmp_path)
        unlink(writer->tmp_path);
    free(writer->tmp_path);
    free(writer);
    *writer_p = NULL;
}

static void s_blob_file(const cf_blob_store_t *store, const char *hex, char *path, size_t pathlen)
{
    snprintf(path, pathlen, "%s/%.2s/%s", store->dir, hex, hex);
}

/* Commits the writer's blob; with EXPECTED (may be NULL) only when its
 * hash is that one (else CF_BLOB_MISMATCH, nothing stored). */
static int s_commit(cf_blob_writer_t **writer_p, const char *expected, char hex[CF_BLOB_HEX_SIZE],
                    char *err, size_t errlen)
{
    cf_blob_writer_t *writer = *writer_p;
    int rc = -1;
    if (writer->failed) {
        snprintf(err, errlen, "blob writer already failed");
        goto end;
    }
    uint8_t digest[32];
    crypto_generichash_final(&writer->hash, digest, sizeof digest);
    sodium_bin2hex(hex, CF_BLOB_HEX_SIZE, digest, sizeof digest);
    if (expected && strcmp(hex, expected)) {
        snprintf(err, errlen, "content hash %s of %llu bytes, expected %s", hex,
                 (unsigned long long)writer->size, expected);
        rc = CF_BLOB_MISMATCH;
        goto end;
    }
    /* fsync before rename: after a crash a blob's name must match its bytes. */
    if (fsync(writer->fd) < 0 || close(writer->fd) < 0) {
        writer->fd = -1;
        snprintf(err, errlen, "cannot flush blob: %s", strerror(errno));
        goto end;
    }
    writer->fd = -1;
    char dir[4096], path[4096];
    snprintf(dir, sizeof dir, "%s/%.2s", writer->store->dir, hex);
    if (s_mkdir(dir, err, errlen) < 0)
        goto end;
    s_blob_file(writer->store, hex, path, sizeof path);
    if (rename(writer->tmp_path, path) < 0) {
        snprintf(err, errlen, "cannot store blob as '%s': %s", path, strerror(errno));
        goto end;
    }
    free(writer->tmp_path);
    writer->tmp_path = NULL; /* moved: abort must not unlink it */
    rc = 0;
end:
    cf_blob_writer_abort(writer_p);
    return rc;
}

int cf_blob_writer_commit(cf_blob_writer_t **writer_p, char hex[CF_BLOB_HEX_SIZE], char *err,
                          size_t errlen)
{
    return s_commit(writer_p, NULL, hex, err, errlen);
}

int cf_blob_writer_commit_expect(cf_blob_writer_t **writer_p, const char *expected_hex, char *err,
                                 size_t errlen)
{
    char hex[CF_BLOB_HEX_SIZE];
    return s_commit(writer_p, expected_hex, hex, err, errlen);
}

int cf_blob_put_file(cf_blob_store_t *store, const char *path, char hex[CF_BLOB_HEX_SIZE],
                     char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        return -1;
    }
    cf_blob_writer_t *writer = cf_blob_writer_new(store, 0, err, errlen);
    int rc = writer ? 0 : -1;
    char buf[65536];
    while (rc == 0) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errlen, "cannot read '%s': %s", path, strerror(errno));
            rc = -1;
        }
        if (n <= 0)
            break;
        rc = cf_blob_writer_write(writer, buf, (size_t)n, err, errlen) == CF_BLOB_OK ? 0 : -1;
    }
    close(fd);
    if (rc == 0)
        return cf_blob_writer_commit(&writer, hex, err, errlen);
    cf_blob_writer_abort(&writer);
    return -1;
}

int cf_blob_adopt_file(cf_blob_store_t *store, const char *path, char hex[CF_BLOB_HEX_SIZE],
                       uint64_t *size_p, char *err, size_t errlen)
{
    uint64_t size = 0;
    char dir[4096], dest[4096];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    /* fsync before rename: after a crash a blob's name must match its bytes. */
    if (fd < 0 || fsync(fd) < 0) {
        snprintf(err, errlen, "cannot flush '%s': %s", path, strerror(errno));
        goto fail;
    }
    close(fd);
    fd = -1;
    if (cf_blob_hash_file(path, hex, &size, err, errlen) < 0)
        goto fail;
    snprintf(dir, sizeof dir, "%s/%.2s", store->dir, hex);
    if (s_mkdir(dir, err, errlen) < 0)
        goto fail;
    s_blob_file(store, hex, dest, sizeof dest);
    if (rename(path, dest) < 0) {
        if (errno != EXDEV) {
            snprintf(err, errlen, "cannot store blob as '%s': %s", dest, strerror(errno));
            goto fail;
        }
        /* Another file system: copy through a writer. */
        if (cf_blob_put_file(store, path, hex, err, errlen) < 0)
            goto fail;
        unlink(path);
    }
    if (size_p)
        *size_p = size;
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    unlink(path);
    return -1;
}

const char *cf_blob_dir(const cf_blob_store_t *store)
{
    return store->dir;
}

const char *cf_blob_tmp_dir(const cf_blob_store_t *store)
{
    return store->tmp_dir;
}

int cf_blob_relpath(const char *ref, char *out, size_t outlen)
{
    char hex[CF_BLOB_HEX_SIZE];
    if (cf_blob_parse_ref(ref, hex) < 0)
        return -1;
    int n = snprintf(out, outlen, "%.2s/%s", hex, hex);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

int cf_blob_hash_file(const char *path, char hex[CF_BLOB_HEX_SIZE], uint64_t *size_p, char *err,
                      size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        return -1;
    }
    crypto_generichash_state state;
    crypto_generichash_init(&state, NULL, 0, 32);
    char buf[65536];
    uint64_t size = 0;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, errlen, "cannot read '%s': %s", path, strerror(errno));
            close(fd);
            return -1;
        }
        crypto_generichash_update(&state, (const unsigned char *)buf, (size_t)n);
        size += (uint64_t)n;
    }
    close(fd);
    unsigned char digest[32];
    crypto_generichash_final(&state, digest, sizeof digest);
    sodium_bin2hex(hex, CF_BLOB_HEX_SIZE, digest, sizeof digest);
    *size_p = size;
    return 0;
}

int cf_blob_parse_ref(const char *ref, char hex[CF_BLOB_HEX_SIZE])
{
    if (!ref)
        return -1;
    if (!strncmp(ref, "blob:", 5))
        ref += 5;
    if (strlen(ref) != CF_BLOB_HEX_SIZE - 1)
        return -1;
    for (int i = 0; i < CF_BLOB_HEX_SIZE - 1; i++)
        if (!((ref[i] >= '0' && ref[i] <= '9') || (ref[i] >= 'a' && ref[i] <= 'f')))
            return -1;
    memcpy(hex, ref, CF_BLOB_HEX_SIZE);
    return 0;
}

int cf_blob_path(cf_blob_store_t *store, const char *ref, char *path, size_t pathlen, char *err,
                 size_t errlen)
{
    char hex[CF_BLOB_HEX_SIZE];
    if (cf_blob_parse_ref(ref, hex) < 0) {
        snprintf(err, errlen, "'%s' is not a blob reference (blob:<64 hex>)", ref ? ref : "");
        return -1;
    }
    s_blob_file(store, hex, path, pathlen);
    struct stat st;
    if (stat(path, &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "blob:%s is not in this node's blob store", hex);
        return -1;
    }
    return 0;
}

int cf_blob_remove(cf_blob_store_t *store, const char *ref)
{
    char path[4096], err[256];
    char hex[CF_BLOB_HEX_SIZE];
    if (cf_blob_parse_ref(ref, hex) < 0)
        return -1;
    if (cf_blob_path(store, hex, path, sizeof path, err, sizeof err) < 0)
        return 0; /* not there */
    return unlink(path) == 0 || errno == ENOENT ? 0 : -1;
}
