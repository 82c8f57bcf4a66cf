/* cf_source_cache: the node-wide cache of downloaded sources (see
 * cf_source_cache.h for the contract).
 *
 * One mutex guards the index: a doubly linked list of entries, most
 * recently used first, and the list of downloads in flight. Nothing slow
 * runs under it: the origin is asked with the mutex released, the entry it
 * revalidates held by a pin meanwhile. Requests for a URL that is in flight
 * wait on one condition variable (broadcast when any flight ends) in short
 * slices, so that their own cancel flag and heartbeat keep working. */
#define _GNU_SOURCE
#include "cf_source_cache.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cf_log.h"

#define S_HASH_HEX      32 /* hex digits of the URL hash in a name */
#define S_RAND_HEX      16 /* hex digits of the random part */
#define S_BASE_LEN      (S_HASH_HEX + 1 + S_RAND_HEX)
#define S_META_MAGIC    "clipfarm-source-cache 1"
#define S_WAIT_SLICE_MS 200

typedef struct s_entry_t s_entry_t;
struct s_entry_t {
    char *url;
    cf_source_validator_t validator;
    char base[S_BASE_LEN + 1]; /* "<urlhash>-<random>": the meta file's name */
    char *name;                /* the file's name: base plus the URL's extension */
    uint64_t bytes;
    int pins;
    /* A newer entry replaced this one: it is removed at its last release. */
    bool superseded;
    /* Who may share an entry without validator (compared, never read). */
    const void *policy_key;
    int64_t used_ns; /* last use, from the meta file's mtime (used at open) */
    s_entry_t *prev, *next;
};

typedef struct s_flight_t s_flight_t;
struct s_flight_t {
    char *url;
    const void *policy_key;
    bool done;
    bool retry;       /* the leader was cancelled: waiters ask again themselves */
    s_entry_t *entry; /* on success; one pin owed to each waiter */
    char err[1024];   /* on failure */
    int waiters;      /* waiting now */
    int users;        /* the leader and the waiters that still read this */
    s_flight_t *next;
};

struct cf_source_cache_t {
    char *dir;
    int lock_fd;
    uint64_t max_bytes;
    pthread_mutex_t mutex;
    pthread_cond_t cond;
    s_entry_t *head, *tail; /* most recently used first */
    s_flight_t *flights;
    uint64_t bytes, entries, hits, misses, evictions;
    int refs; /* one for the owner until destroy, one per pin */
    bool closed;
};

struct cf_source_pin_t {
    cf_source_cache_t *cache;
    s_entry_t *entry;
};

/* ------------------------------------------------------------ helpers */

static bool s_has_validator(const cf_source_validator_t *v)
{
    return v->etag[0] || v->last_modified[0];
}

static bool s_printable(const char *text)
{
    for (const unsigned char *p = (const unsigned char *)text; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return false;
    return true;
}

static int s_path(const cf_source_cache_t *self, const char *name, const char *suffix, char *out,
                  size_t outlen)
{
    int n = snprintf(out, outlen, "%s/%s%s", self->dir, name, suffix ? suffix : "");
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

static bool s_ends_with(const char *name, const char *suffix)
{
    size_t n = strlen(name), s = strlen(suffix);
    return n >= s && !strcmp(name + n - s, suffix);
}

/* "<32 hex>-<16 hex>" at the start of NAME: a file of ours. */
static bool s_our_name(const char *name)
{
    for (int i = 0; i < S_BASE_LEN; i++) {
        char c = name[i];
        if (i == S_HASH_HEX ? c != '-' : !(isdigit((unsigned char)c) || (c >= 'a' && c <= 'f')))
            return false;
    }
    return true;
}

void cf_source_url_ext(const char *url, char *ext, size_t extlen)
{
    if (extlen)
        ext[0] = '\0';
    size_t path_end = strcspn(url, "?#");
    const char *slash = memrchr(url, '/', path_end);
    const char *dot = slash ? memrchr(slash, '.', path_end - (size_t)(slash - url)) : NULL;
    if (!dot)
        return;
    size_t len = path_end - (size_t)(dot - url);
    bool ok = len > 1 && len <= 11 && len < extlen;
    for (size_t i = 1; ok && i < len; i++)
        ok = isalnum((unsigned char)dot[i]);
    if (ok)
        snprintf(ext, extlen, "%.*s", (int)len, dot);
}

static int64_t s_mtime_ns(const struct stat *st)
{
    return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

static int64_t s_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------ the index */

static void s_unlink_lru(cf_source_cache_t *self, s_entry_t *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        self->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        self->tail = e->prev;
    e->prev = e->next = NULL;
}

static void s_push_front(cf_source_cache_t *self, s_entry_t *e)
{
    e->prev = NULL;
    e->next = self->head;
    if (self->head)
        self->head->prev = e;
    self->head = e;
    if (!self->tail)
        self->tail = e;
}

static void s_entry_free(s_entry_t *e)
{
    if (e) {
        free(e->url);
        free(e->name);
        free(e);
    }
}

/* Removes E's files and forgets it. */
static void s_remove(cf_source_cache_t *self, s_entry_t *e)
{
    char path[4096];
    if (s_path(self, e->name, NULL, path, sizeof path) == 0)
        unlink(path);
    if (s_path(self, e->base, ".meta", path, sizeof path) == 0)
        unlink(path);
    s_unlink_lru(self, e);
    self->bytes -= e->bytes;
    self->entries--;
    s_entry_free(e);
}

/* Removes least recently used entries no render holds until the cache is
 * within its bound. */
static void s_evict(cf_source_cache_t *self)
{
    s_entry_t *e = self->tail;
    while (e && self->bytes > self->max_bytes) {
        s_entry_t *prev = e->prev;
        if (e->pins == 0) {
            cf_log_debug("source-cache", "evicting %s (%llu bytes)", e->url,
                         (unsigned long long)e->bytes);
            s_remove(self, e);
            self->evictions++;
        }
        e = prev;
    }
}

static void s_unpin(cf_source_cache_t *self, s_entry_t *e)
{
    if (--e->pins > 0)
        return;
    /* Not reusable by anyone new: gone with its last user. */
    if (e->superseded || !s_has_validator(&e->validator))
        s_remove(self, e);
    else
        s_evict(self);
}

/* The entry a new request for URL may use: the newest not superseded. */
static s_entry_t *s_find(cf_source_cache_t *self, const char *url)
{
    for (s_entry_t *e = self->head; e; e = e->next)
        if (!e->superseded && !strcmp(e->url, url))
            return e;
    return NULL;
}

static s_flight_t *s_find_flight(cf_source_cache_t *self, const char *url, const void *policy_key)
{
    for (s_flight_t *f = self->flights; f; f = f->next)
        if (f->policy_key == policy_key && !strcmp(f->url, url))
            return f;
    return NULL;
}

static void s_flight_leave(cf_source_cache_t *self, s_flight_t *f)
{
    (void)self;
    if (--f->users == 0) {
        free(f->url);
        free(f);
    }
}

static void s_touch(cf_source_cache_t *self, s_entry_t *e)
{
    s_unlink_lru(self, e);
    s_push_front(self, e);
    char path[4096];
    /* The meta file's mtime is the last use, read back at open. */
    if (s_has_validator(&e->validator) && s_path(self, e->base, ".meta", path, sizeof path) == 0)
        utimensat(AT_FDCWD, path, NULL, 0);
}

/* ------------------------------------------------------------ meta files */

/* Writes E's meta file (via a temporary name, so a crash leaves the old one
 * or none). Returns 0 or -1; an entry without meta file is not found again
 * after a restart, nothing worse. */
static int s_write_meta(cf_source_cache_t *self, const s_entry_t *e)
{
    if (!s_printable(e->url) || !s_printable(e->validator.etag) ||
        !s_printable(e->validator.last_modified))
        return -1;
    char tmp[4096], path[4096];
    if (s_path(self, e->base, ".meta.tmp", tmp, sizeof tmp) < 0 ||
        s_path(self, e->base, ".meta", path, sizeof path) < 0)
        return -1;
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    fprintf(f, "%s\nurl=%s\netag=%s\nlast_modified=%s\nfile=%s\nbytes=%llu\n", S_META_MAGIC, e->url,
            e->validator.etag, e->validator.last_modified, e->name, (unsigned long long)e->bytes);
    if (fclose(f) != 0 || rename(tmp, path) < 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* Reads the meta file NAME ("<base>.meta") into a new entry (not yet in the
 * index), or NULL when it is not one of ours or is damaged. */
static s_entry_t *s_read_meta(cf_source_cache_t *self, const char *name)
{
    char path[4096];
    if (strlen(name) != S_BASE_LEN + strlen(".meta") || !s_our_name(name) ||
        s_path(self, name, NULL, path, sizeof path) < 0)
        return NULL;
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    s_entry_t *e = calloc(1, sizeof *e);
    char line[8192];
    bool magic = false, have_bytes = false;
    struct stat st;
    if (!e || fstat(fileno(f), &st) < 0)
        goto bad;
    memcpy(e->base, name, S_BASE_LEN);
    e->base[S_BASE_LEN] = '\0';
    e->used_ns = s_mtime_ns(&st);
    while (fgets(line, sizeof line, f)) {
        size_t len = strlen(line);
        if (!len || line[len - 1] != '\n')
            goto bad; /* cut short, or a line too long */
        line[--len] = '\0';
        if (!magic) {
            if (strcmp(line, S_META_MAGIC))
                goto bad;
            magic = true;
            continue;
        }
        char *eq = strchr(line, '=');
        if (!eq)
            goto bad;
        *eq = '\0';
        const char *key = line, *value = eq + 1;
        if (!strcmp(key, "url") && !e->url) {
            if (!(e->url = strdup(value)))
                goto bad;
        } else if (!strcmp(key, "etag")) {
            if (strlen(value) >= sizeof e->validator.etag)
                goto bad;
            strcpy(e->validator.etag, value);
        } else if (!strcmp(key, "last_modified")) {
            if (strlen(value) >= sizeof e->validator.last_modified)
                goto bad;
            strcpy(e->validator.last_modified, value);
        } else if (!strcmp(key, "file") && !e->name) {
            /* Only a file of this entry's own name, in this directory. */
            if (strncmp(value, e->base, S_BASE_LEN) || strchr(value, '/') ||
                !(e->name = strdup(value)))
                goto bad;
        } else if (!strcmp(key, "bytes")) {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(value, &end, 10);
            if (errno || end == value || *end)
                goto bad;
            e->bytes = n;
            have_bytes = true;
        }
    }
    if (!magic || !e->url || !e->name || !have_bytes || !s_has_validator(&e->validator))
        goto bad;
    fclose(f);
    return e;
bad:
    fclose(f);
    s_entry_free(e);
    return NULL;
}

/* ------------------------------------------------------------ open, close */

static int s_mkdirs(const char *dir)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path)
        return -1;
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0755) < 0 && errno != EEXIST)
            return -1;
        *p = '/';
    }
    return mkdir(path, 0755) < 0 && errno != EEXIST ? -1 : 0;
}

static int s_by_use(const void *a, const void *b)
{
    const s_entry_t *x = *(s_entry_t *const *)a, *y = *(s_entry_t *const *)b;
    return x->used_ns < y->used_ns ? -1 : x->used_ns > y->used_ns;
}

static bool s_listed(s_entry_t **entries, size_t count, const char *name)
{
    for (size_t i = 0; i < count; i++)
        if (entries[i] && !strcmp(entries[i]->name, name))
            return true;
    return false;
}

/* Rebuilds the index from the directory: partial downloads and files no
 * meta file vouches for are removed, so is a meta file whose file is
 * missing or of another size; of two entries for one URL (a crash before
 * the older was dropped) the newer stays. */
static int s_load(cf_source_cache_t *self, char *err, size_t errlen)
{
    DIR *d = opendir(self->dir);
    if (!d) {
        snprintf(err, errlen, "source cache %s: %s", self->dir, strerror(errno));
        return -1;
    }
    s_entry_t **entries = NULL;
    size_t count = 0, cap = 0;
    char path[4096];
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d))) {
        const char *name = de->d_name;
        if (!s_our_name(name))
            continue;
        if (s_ends_with(name, ".part") || s_ends_with(name, ".tmp")) {
            if (s_path(self, name, NULL, path, sizeof path) == 0)
                unlink(path);
            continue;
        }
        if (!s_ends_with(name, ".meta"))
            continue;
        s_entry_t *e = s_read_meta(self, name);
        struct stat st;
        if (!e || s_path(self, e->name, NULL, path, sizeof path) < 0 || stat(path, &st) < 0 ||
            !S_ISREG(st.st_mode) || (uint64_t)st.st_size != e->bytes) {
            if (e)
                cf_log_warn("source-cache", "dropping %s: its file is missing or damaged", name);
            s_entry_free(e);
            if (s_path(self, name, NULL, path, sizeof path) == 0)
                unlink(path);
            continue;
        }
        if (count == cap) {
            size_t grown_cap = cap ? cap * 2 : 64;
            s_entry_t **grown = realloc(entries, grown_cap * sizeof *grown);
            if (!grown) {
                s_entry_free(e);
                snprintf(err, errlen, "out of memory");
                rc = -1;
                break;
            }
            entries = grown;
            cap = grown_cap;
        }
        entries[count++] = e;
    }
    if (rc == 0) {
        /* Files of ours that no meta file names: a crash between the
         * download's rename and its meta file. */
        rewinddir(d);
        while ((de = readdir(d))) {
            if (s_our_name(de->d_name) && !s_ends_with(de->d_name, ".meta") &&
                !s_listed(entries, count, de->d_name) &&
                s_path(self, de->d_name, NULL, path, sizeof path) == 0)
                unlink(path);
        }
    }
    closedir(d);
    if (count)
        qsort(entries, count, sizeof *entries, s_by_use);
    for (size_t i = 0; i < count; i++) {
        s_entry_t *e = entries[i];
        if (rc < 0) {
            s_entry_free(e);
            continue;
        }
        /* Oldest first, each to the front: the newest ends at the head. */
        s_entry_t *older = s_find(self, e->url);
        if (older)
            older->superseded = true;
        s_push_front(self, e);
        self->bytes += e->bytes;
        self->entries++;
        if (older)
            s_remove(self, older);
    }
    free(entries);
    return rc;
}

cf_source_cache_t *cf_source_cache_new(const char *dir, uint64_t max_bytes, char *err,
                                       size_t errlen)
{
    if (sodium_init() < 0) {
        snprintf(err, errlen, "source cache: cannot start libsodium");
        return NULL;
    }
    cf_source_cache_t *self = calloc(1, sizeof *self);
    if (!self) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    self->lock_fd = -1;
    self->refs = 1;
    self->max_bytes = max_bytes ? max_bytes : CF_SOURCE_CACHE_DEFAULT_BYTES;
    pthread_mutex_init(&self->mutex, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&self->cond, &attr);
    pthread_condattr_destroy(&attr);
    char path[4096];
    if (!(self->dir = strdup(dir))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (s_mkdirs(dir) < 0) {
        snprintf(err, errlen, "source cache %s: %s", dir, strerror(errno));
        goto fail;
    }
    /* Two processes on one directory would remove each other's files. */
    if (s_path(self, "lock", NULL, path, sizeof path) < 0 ||
        (self->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644)) < 0) {
        snprintf(err, errlen, "source cache %s: %s", dir, strerror(errno));
        goto fail;
    }
    if (flock(self->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        snprintf(err, errlen, "source cache %s: %s", dir,
                 errno == EWOULDBLOCK ? "in use by another process" : strerror(errno));
        goto fail;
    }
    if (s_load(self, err, errlen) < 0)
        goto fail;
    s_evict(self);
    cf_log_info("source-cache", "%s: %llu entries, %llu of %llu bytes", dir,
                (unsigned long long)self->entries, (unsigned long long)self->bytes,
                (unsigned long long)self->max_bytes);
    return self;
fail:
    cf_source_cache_destroy(&self);
    return NULL;
}

static void s_free(cf_source_cache_t *self)
{
    while (self->head) {
        s_entry_t *e = self->head;
        s_unlink_lru(self, e);
        s_entry_free(e);
    }
    if (self->lock_fd >= 0)
        close(self->lock_fd);
    pthread_mutex_destroy(&self->mutex);
    pthread_cond_destroy(&self->cond);
    free(self->dir);
    free(self);
}

void cf_source_cache_destroy(cf_source_cache_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_source_cache_t *self = *self_p;
    *self_p = NULL;
    pthread_mutex_lock(&self->mutex);
    self->closed = true;
    bool last = --self->refs == 0;
    pthread_mutex_unlock(&self->mutex);
    if (last)
        s_free(self);
}

void cf_source_cache_stats(cf_source_cache_t *self, cf_source_cache_stats_t *stats)
{
    pthread_mutex_lock(&self->mutex);
    *stats = (cf_source_cache_stats_t){.hits = self->hits,
                                       .misses = self->misses,
                                       .evictions = self->evictions,
                                       .bytes = self->bytes,
                                       .entries = self->entries,
                                       .max_bytes = self->max_bytes};
    pthread_mutex_unlock(&self->mutex);
}

/* ------------------------------------------------------------ pins */

static cf_source_pin_t *s_pin_new(cf_source_cache_t *self, s_entry_t *e)
{
    cf_source_pin_t *pin = malloc(sizeof *pin);
    if (!pin)
        return NULL;
    pin->cache = self;
    pin->entry = e;
    self->refs++;
    return pin;
}

void cf_source_pin_release(cf_source_pin_t **pin_p)
{
    if (!pin_p || !*pin_p)
        return;
    cf_source_pin_t *pin = *pin_p;
    *pin_p = NULL;
    cf_source_cache_t *self = pin->cache;
    pthread_mutex_lock(&self->mutex);
    s_unpin(self, pin->entry);
    bool last = --self->refs == 0;
    pthread_mutex_unlock(&self->mutex);
    free(pin);
    if (last)
        s_free(self);
}

/* Hands E (pinned once for the caller already) out as a path and a pin;
 * on failure the pin is dropped. Called with the mutex held. */
static int s_hand_out(cf_source_cache_t *self, const cf_source_request_t *req, s_entry_t *e,
                      char **path_p, cf_source_pin_t **pin_p, char *err, size_t errlen)
{
    char path[4096];
    if (req->max_bytes && e->bytes > req->max_bytes) {
        snprintf(err, errlen, "%s: larger than %llu bytes", req->url,
                 (unsigned long long)req->max_bytes);
        s_unpin(self, e);
        return -1;
    }
    if (s_path(self, e->name, NULL, path, sizeof path) < 0 || !(*path_p = strdup(path)) ||
        !(*pin_p = s_pin_new(self, e))) {
        free(*path_p);
        *path_p = NULL;
        snprintf(err, errlen, "%s: out of memory", req->url);
        s_unpin(self, e);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ requests */

/* Waits (mutex held) for flight F to end, ticking and watching REQ's
 * cancel flag. Returns 0 when it ended, -1 when REQ was cancelled. */
static int s_wait(cf_source_cache_t *self, s_flight_t *f, const cf_source_request_t *req)
{
    int64_t last_tick = s_now_ms();
    while (!f->done) {
        if (req->cancel && atomic_load(req->cancel))
            return -1;
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += S_WAIT_SLICE_MS * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&self->cond, &self->mutex, &until);
        if (!f->done && req->tick && s_now_ms() - last_tick >= 1000) {
            last_tick = s_now_ms();
            /* Heartbeats may take a while (a database): not under the lock. */
            pthread_mutex_unlock(&self->mutex);
            req->tick(req->tick_arg, 0, 0);
            pthread_mutex_lock(&self->mutex);
        }
    }
    return 0;
}

/* A new entry for REQ->url: fresh random name, the URL's extension. */
static s_entry_t *s_entry_new(const char *url)
{
    s_entry_t *e = calloc(1, sizeof *e);
    if (!e || !(e->url = strdup(url))) {
        s_entry_free(e);
        return NULL;
    }
    unsigned char hash[S_HASH_HEX / 2], rnd[S_RAND_HEX / 2];
    crypto_generichash(hash, sizeof hash, (const unsigned char *)url, strlen(url), NULL, 0);
    randombytes_buf(rnd, sizeof rnd);
    sodium_bin2hex(e->base, S_HASH_HEX + 1, hash, sizeof hash);
    e->base[S_HASH_HEX] = '-';
    sodium_bin2hex(e->base + S_HASH_HEX + 1, S_RAND_HEX + 1, rnd, sizeof rnd);
    char ext[12];
    cf_source_url_ext(url, ext, sizeof ext);
    /* Never a name the open-time sweep takes for something else. */
    if (!strcasecmp(ext, ".part") || !strcasecmp(ext, ".tmp") || !strcasecmp(ext, ".meta"))
        ext[0] = '\0';
    if (asprintf(&e->name, "%s%s", e->base, ext) < 0) {
        e->name = NULL;
        s_entry_free(e);
        return NULL;
    }
    return e;
}

/* Leads a flight for REQ: asks the origin (revalidating CURRENT when there
 * is one) with the mutex released. Called and returns with the mutex held;
 * on success the returned entry carries one pin for the caller. */
static s_entry_t *s_lead(cf_source_cache_t *self, const cf_source_request_t *req,
                         s_entry_t *current, char *err, size_t errlen)
{
    s_entry_t *fresh = s_entry_new(req->url);
    s_flight_t *f = calloc(1, sizeof *f);
    char part[4096], path[4096];
    if (!fresh || !f || !(f->url = strdup(req->url)) ||
        s_path(self, fresh->name, ".part", part, sizeof part) < 0 ||
        s_path(self, fresh->name, NULL, path, sizeof path) < 0) {
        snprintf(err, errlen, "%s: %s", req->url,
                 fresh && f ? "cache path too long" : "out of memory");
        s_entry_free(fresh);
        if (f)
            free(f->url);
        free(f);
        return NULL;
    }
    f->policy_key = req->policy_key;
    f->users = 1;
    f->next = self->flights;
    self->flights = f;
    cf_source_validator_t have = {0};
    if (current) {
        current->pins++; /* kept while the origin is asked */
        have = current->validator;
    }
    pthread_mutex_unlock(&self->mutex);

    cf_source_validator_t got = {0};
    bool not_modified = false;
    char why[1024] = "";
    int rc = req->origin(req->origin_arg, current ? &have : NULL, part, &got, &not_modified, why,
                         sizeof why);
    struct stat st;
    if (rc == 0 && not_modified && !current) {
        snprintf(why, sizeof why, "%s: the origin answered 'not modified' to a plain request",
                 req->url);
        rc = -1;
    }
    if (rc == 0 && !not_modified && (rename(part, path) < 0 || stat(path, &st) < 0)) {
        snprintf(why, sizeof why, "%s: cannot store the download: %s", req->url, strerror(errno));
        rc = -1;
    }
    if (rc < 0)
        unlink(part);

    pthread_mutex_lock(&self->mutex);
    s_entry_t *result = NULL;
    if (rc == 0 && not_modified) {
        result = current; /* its pin passes to the caller */
        self->hits++;
        s_touch(self, current);
        cf_log_debug("source-cache", "%s: not modified", req->url);
    } else if (rc == 0) {
        result = fresh;
        fresh = NULL;
        result->validator = got;
        result->bytes = (uint64_t)st.st_size;
        result->pins = 1;
        result->policy_key = req->policy_key;
        if (s_has_validator(&got) && s_write_meta(self, result) < 0) {
            /* Still usable by the renders holding it; not kept after. */
            cf_log_warn("source-cache", "%s: cannot write its meta file", req->url);
            result->validator = (cf_source_validator_t){0};
        }
        s_push_front(self, result);
        self->bytes += result->bytes;
        self->entries++;
        self->misses++;
        /* Every older entry of the URL (requests under another policy may
         * have downloaded it too) goes once no render holds it. */
        for (s_entry_t *e = result->next, *next; e; e = next) {
            next = e->next;
            if (e->superseded || strcmp(e->url, result->url))
                continue;
            e->superseded = true;
            if (e->pins == 0)
                s_remove(self, e);
        }
        if (current)
            s_unpin(self, current);
        s_evict(self);
    } else {
        if (current)
            s_unpin(self, current);
        snprintf(err, errlen, "%s", why);
        /* A cancelled leader's waiters were not cancelled: they ask again. */
        f->retry = req->cancel && atomic_load(req->cancel);
    }
    s_entry_free(fresh);
    f->done = true;
    f->entry = result;
    if (result)
        result->pins += f->waiters;
    snprintf(f->err, sizeof f->err, "%s", rc < 0 ? why : "");
    for (s_flight_t **p = &self->flights; *p; p = &(*p)->next) {
        if (*p == f) {
            *p = f->next;
            break;
        }
    }
    pthread_cond_broadcast(&self->cond);
    s_flight_leave(self, f);
    return result;
}

int cf_source_cache_get(cf_source_cache_t *self, const cf_source_request_t *req, char **path_p,
                        cf_source_pin_t **pin_p, char *err, size_t errlen)
{
    *path_p = NULL;
    *pin_p = NULL;
    int rc = -1;
    pthread_mutex_lock(&self->mutex);
    /* Held while the origin is asked with the mutex released. */
    self->refs++;
    for (;;) {
        if (self->closed) {
            snprintf(err, errlen, "%s: the source cache is closed", req->url);
            break;
        }
        s_flight_t *f = s_find_flight(self, req->url, req->policy_key);
        if (f) {
            /* Someone is asking the origin already: share its answer. */
            f->waiters++;
            f->users++;
            if (s_wait(self, f, req) < 0) {
                f->waiters--;
                s_flight_leave(self, f);
                snprintf(err, errlen, "%s: cancelled", req->url);
                break;
            }
            f->waiters--;
            bool retry = f->retry;
            s_entry_t *e = f->entry;
            if (!e && !retry)
                snprintf(err, errlen, "%s", f->err);
            s_flight_leave(self, f);
            if (retry)
                continue;
            if (e) {
                self->hits++;
                rc = s_hand_out(self, req, e, path_p, pin_p, err, errlen);
            }
            break;
        }
        s_entry_t *current = s_find(self, req->url);
        if (current && !s_has_validator(&current->validator)) {
            /* Nothing to revalidate with: shared while some render holds
             * it, by requests under the same policy only. */
            if (current->pins > 0 && current->policy_key == req->policy_key) {
                current->pins++;
                self->hits++;
                s_unlink_lru(self, current);
                s_push_front(self, current);
                rc = s_hand_out(self, req, current, path_p, pin_p, err, errlen);
                break;
            }
            current = NULL;
        }
        s_entry_t *e = s_lead(self, req, current, err, errlen);
        if (e)
            rc = s_hand_out(self, req, e, path_p, pin_p, err, errlen);
        break;
    }
    bool last = --self->refs == 0;
    pthread_mutex_unlock(&self->mutex);
    if (last)
        s_free(self);
    return rc;
}
