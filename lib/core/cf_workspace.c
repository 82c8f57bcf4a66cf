#define _GNU_SOURCE
#include "cf_workspace.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cf_log.h"

struct cf_workspace_t {
    char *dir;
};

cf_workspace_t *cf_workspace_new(const char *parent, const char *prefix, char *err, size_t errlen)
{
    if (!parent || !*parent)
        parent = getenv("TMPDIR");
    if (!parent || !*parent)
        parent = "/tmp";
    cf_workspace_t *self = calloc(1, sizeof *self);
    if (!self || asprintf(&self->dir, "%s/%s.XXXXXX", parent, prefix) < 0) {
        snprintf(err, errlen, "workspace: out of memory");
        free(self);
        return NULL;
    }
    if (!mkdtemp(self->dir)) {
        snprintf(err, errlen, "workspace: cannot create a directory in %s: %s", parent,
                 strerror(errno));
        free(self->dir);
        free(self);
        return NULL;
    }
    return self;
}

const char *cf_workspace_dir(const cf_workspace_t *self)
{
    return self->dir;
}

int cf_workspace_path(const cf_workspace_t *self, const char *name, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "%s/%s", self->dir, name);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

static int s_remove(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb;
    (void)type;
    (void)ftw;
    if (remove(path) < 0 && errno != ENOENT)
        cf_log_warn("workspace", "cannot remove %s: %s", path, strerror(errno));
    return 0;
}

int cf_workspace_rmtree(const char *path)
{
    return nftw(path, s_remove, 16, FTW_DEPTH | FTW_PHYS);
}

void cf_workspace_destroy(cf_workspace_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    cf_workspace_t *self = *self_p;
    if (cf_workspace_rmtree(self->dir) < 0 && errno != ENOENT)
        cf_log_warn("workspace", "cannot remove %s: %s", self->dir, strerror(errno));
    free(self->dir);
    free(self);
    *self_p = NULL;
}
