/* cf_workspace: one private temporary directory for a piece of work (a
 * render's sources, segments, audio, statistics files), removed with
 * everything in it when the work ends, whichever way it ends: callers
 * destroy it on every exit path, and cancellation (Ctrl-C) is a flag that
 * unwinds to that path rather than an exit. */
#ifndef CF_WORKSPACE_H
#define CF_WORKSPACE_H

#include <stddef.h>

typedef struct cf_workspace_t cf_workspace_t;

/* Creates PARENT/PREFIX.XXXXXX (mode 0700). PARENT NULL means $TMPDIR, else
 * /tmp. Returns NULL with a reason in err. */
cf_workspace_t *cf_workspace_new(const char *parent, const char *prefix, char *err, size_t errlen);

/* The directory's path (borrowed). */
const char *cf_workspace_dir(const cf_workspace_t *self);

/* Writes DIR/NAME into out. Returns 0, or -1 when it does not fit. */
int cf_workspace_path(const cf_workspace_t *self, const char *name, char *out, size_t outlen);

/* Removes the directory and everything under it, frees SELF and NULLs the
 * caller's pointer. Safe on NULL. */
void cf_workspace_destroy(cf_workspace_t **self_p);

/* Removes PATH and everything under it (no symlinks followed). Returns 0 or
 * -1 with errno set. */
int cf_workspace_rmtree(const char *path);

#endif
