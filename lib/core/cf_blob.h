/* cf_blob: a node-local content-addressed blob store.
 *
 * Blobs live in DIR/<2 hex>/<64 hex>, named by the BLAKE2b-256 of their bytes
 * (libsodium). A writer streams bytes into a temporary file in DIR/tmp while
 * hashing them, and commit renames it into place: a blob is never held whole
 * in memory, a reader never sees a half-written blob, and storing the same
 * bytes twice leaves one file. A blob is referred to as "blob:<64 hex>".
 *
 * The store is safe to use from several threads: each writer is its own
 * object, and the file system does the rest (rename is atomic). */
#ifndef CF_BLOB_H
#define CF_BLOB_H

#include <stddef.h>
#include <stdint.h>

#define CF_BLOB_HEX_SIZE 65 /* 64 hex characters + NUL */

typedef struct cf_blob_store_t cf_blob_store_t;
typedef struct cf_blob_writer_t cf_blob_writer_t;

/* Return values of cf_blob_writer_write and cf_blob_writer_commit_expect. */
enum { CF_BLOB_OK = 0, CF_BLOB_ERROR = -1, CF_BLOB_TOO_LARGE = -2, CF_BLOB_MISMATCH = -3 };

/* Opens (creating as needed) the store in DIR and removes temporary files
 * left by a crash. Returns NULL with a reason in err. */
cf_blob_store_t *cf_blob_store_new(const char *dir, char *err, size_t errlen);
void cf_blob_store_destroy(cf_blob_store_t **self_p);

/* Starts a blob of at most max_bytes (0: no limit). Returns NULL with a
 * reason in err. */
cf_blob_writer_t *cf_blob_writer_new(cf_blob_store_t *store, uint64_t max_bytes, char *err,
                                     size_t errlen);

/* Appends LEN bytes. Returns CF_BLOB_OK, CF_BLOB_TOO_LARGE when the blob
 * would pass max_bytes, or CF_BLOB_ERROR with a reason in err. After a
 * failure the writer can only be aborted. */
int cf_blob_writer_write(cf_blob_writer_t *writer, const void *data, size_t len, char *err,
                         size_t errlen);

/* Bytes written so far. */
uint64_t cf_blob_writer_size(const cf_blob_writer_t *writer);

/* Finishes the blob: flushes it to disk, moves it to its content address and
 * frees the writer (*writer_p becomes NULL either way). HEX gets the hash.
 * Returns 0, or -1 with a reason in err (the temporary file is removed). */
int cf_blob_writer_commit(cf_blob_writer_t **writer_p, char hex[CF_BLOB_HEX_SIZE], char *err,
                          size_t errlen);

/* cf_blob_writer_commit for bytes that must have the hash EXPECTED_HEX (a
 * blob pulled by its name): returns CF_BLOB_MISMATCH, with both hashes in
 * err and nothing stored, when they do not. */
int cf_blob_writer_commit_expect(cf_blob_writer_t **writer_p, const char *expected_hex, char *err,
                                 size_t errlen);

/* Drops an unfinished blob and its temporary file; safe on NULL. */
void cf_blob_writer_abort(cf_blob_writer_t **writer_p);

/* Stores a copy of the file at PATH (streamed). Returns 0 or -1. */
int cf_blob_put_file(cf_blob_store_t *store, const char *path, char hex[CF_BLOB_HEX_SIZE],
                     char *err, size_t errlen);

/* Moves the finished file at PATH into the store under its content address
 * (hashed, flushed, renamed: no copy when PATH is on the store's file
 * system, as files made in cf_blob_tmp_dir are). PATH is gone afterwards
 * either way. HEX gets the hash, *size_p (may be NULL) the size. Returns 0,
 * or -1 with a reason in err. */
int cf_blob_adopt_file(cf_blob_store_t *store, const char *path, char hex[CF_BLOB_HEX_SIZE],
                       uint64_t *size_p, char *err, size_t errlen);

/* The store's directory; borrowed. */
const char *cf_blob_dir(const cf_blob_store_t *store);

/* The store's directory for files on their way in (same file system as the
 * blobs); borrowed. */
const char *cf_blob_tmp_dir(const cf_blob_store_t *store);

/* The blob's path relative to the store's directory ("ab/ab12..."), for
 * locations. Returns 0, or -1 when REF is not a blob reference or it does not
 * fit. */
int cf_blob_relpath(const char *ref, char *out, size_t outlen);

/* The content address a file would have in the store (BLAKE2b-256 of its
 * bytes, streamed, the same hash the writer computes) and its size, without
 * storing it. Returns 0, or -1 with a reason in err. */
int cf_blob_hash_file(const char *path, char hex[CF_BLOB_HEX_SIZE], uint64_t *size_p, char *err,
                      size_t errlen);

/* Accepts "blob:<hex>" or a bare 64-character lowercase hex hash and copies
 * the hash into HEX. Returns 0, or -1 when REF is neither. */
int cf_blob_parse_ref(const char *ref, char hex[CF_BLOB_HEX_SIZE]);

/* Writes the path of the blob named by REF ("blob:<hex>" or hex) into PATH.
 * Returns 0 when the blob exists, -1 with a reason in err otherwise. */
int cf_blob_path(cf_blob_store_t *store, const char *ref, char *path, size_t pathlen, char *err,
                 size_t errlen);

/* Removes the blob named by REF (no error when it is not there). Returns 0,
 * or -1 when REF is not a blob reference or the file cannot be removed. */
int cf_blob_remove(cf_blob_store_t *store, const char *ref);

#endif
