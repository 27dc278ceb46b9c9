/* Overlaps between the paths a command reads and writes (include/lms/paths.h). */
#include "lms/paths.h"

#include <dirent.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lms/alloc.h"

/* Below a directory that is read, symbolic links are looked for this many levels deep (a
 * checkpoint has two or three) and among this many entries in all, so that a huge tree given
 * by mistake costs a bounded walk. */
#define WALK_DEPTH 8
#define WALK_ENTRIES 100000

/* The absolute form of path with every symbolic link resolved into dst (PATH_MAX bytes). A path
 * that does not exist is resolved by its parent, its last component appended as written ("."
 * dropped, ".." taking the previous component off). */
static bool resolve(const char *path, char *dst)
{
    if (realpath(path, dst))
        return true;
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    if (n == 0 || n >= PATH_MAX)
        return false;
    const char *slash = NULL;
    for (size_t i = n; i-- > 0 && !slash;)
        if (path[i] == '/')
            slash = path + i;
    const char *name = slash ? slash + 1 : path;
    size_t name_len = n - (size_t)(name - path);
    char parent[PATH_MAX];
    if (slash)
        snprintf(parent, sizeof parent, "%.*s", (int)(slash == path ? 1 : slash - path), path);
    else
        snprintf(parent, sizeof parent, ".");
    if (strlen(parent) >= n || !resolve(parent, dst)) /* "." itself does not resolve */
        return false;
    if (name_len == 1 && name[0] == '.')
        return true;
    if (name_len == 2 && name[0] == '.' && name[1] == '.') {
        char *last = strrchr(dst, '/');
        if (last)
            last[last == dst ? 1 : 0] = '\0';
        return true;
    }
    size_t d = strlen(dst);
    int w = snprintf(dst + d, PATH_MAX - d, "%s%.*s", strcmp(dst, "/") ? "/" : "",
                     (int)name_len, name);
    return w > 0 && (size_t)w < PATH_MAX - d;
}

/* inner is outer or lies below it (both resolved). */
static bool is_within(const char *inner, const char *outer)
{
    size_t n = strlen(outer);
    if (n == 1 && outer[0] == '/')
        return true;
    return strncmp(inner, outer, n) == 0 && (inner[n] == '\0' || inner[n] == '/');
}

static bool overlap(const char *a, const char *b)
{
    return is_within(a, b) || is_within(b, a);
}

struct written {
    const struct lms_path_role *role;
    char real[PATH_MAX];
};

static enum lms_status refuse(const struct lms_path_role *w, const char *what, const char *path,
                              struct lms_error *err)
{
    return lms_error_set(err, LMS_EINVAL, "refusing to write %s%s'%s': it overlaps %s '%s'",
                         w->what ? w->what : "", w->what ? " " : "", w->path, what, path);
}

/* Looks for symbolic links below dir (shown as shown in messages) that lead to or around a
 * written path; directories that are links are not entered. */
static enum lms_status walk_links(const struct written *w, size_t nw, const char *dir,
                                  const char *shown, const char *what, const char *input,
                                  int depth, size_t *budget, struct lms_error *err)
{
    DIR *d = opendir(dir);
    if (!d)
        return LMS_OK;
    enum lms_status rc = LMS_OK;
    struct dirent *e;
    while (!rc && *budget > 0 && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        (*budget)--;
        char child[PATH_MAX], child_shown[PATH_MAX], real[PATH_MAX];
        int n = snprintf(child, sizeof child, "%s/%s", dir, e->d_name);
        int m = snprintf(child_shown, sizeof child_shown, "%s/%s", shown, e->d_name);
        struct stat sb;
        if (n < 0 || (size_t)n >= sizeof child || m < 0 || (size_t)m >= sizeof child_shown ||
            lstat(child, &sb) != 0)
            continue;
        if (S_ISDIR(sb.st_mode) && depth < WALK_DEPTH) {
            rc = walk_links(w, nw, child, child_shown, what, input, depth + 1, budget, err);
            continue;
        }
        if (!S_ISLNK(sb.st_mode) || !realpath(child, real))
            continue;
        for (size_t i = 0; i < nw && !rc; i++)
            if (overlap(w[i].real, real))
                rc = lms_error_set(err, LMS_EINVAL, "refusing to write %s%s'%s': %s '%s' reads "
                                   "'%s', a link to '%s'", w[i].role->what ? w[i].role->what : "",
                                   w[i].role->what ? " " : "", w[i].role->path, what, input,
                                   child_shown, real);
    }
    closedir(d);
    return rc;
}

/* One path that is read against every written one, and for a directory, the links below it. */
static enum lms_status check_read(const struct written *w, size_t nw, const char *path,
                                  const char *what, struct lms_error *err)
{
    char real[PATH_MAX];
    struct stat sb;
    if (stat(path, &sb) != 0 || !realpath(path, real))
        return LMS_OK;
    for (size_t i = 0; i < nw; i++)
        if (overlap(w[i].real, real))
            return refuse(w[i].role, what, path, err);
    if (!S_ISDIR(sb.st_mode))
        return LMS_OK;
    size_t budget = WALK_ENTRIES;
    return walk_links(w, nw, real, path, what, path, 0, &budget, err);
}

/* A dataset prefix: the raw file PREFIX, or PREFIX.bin and PREFIX.idx, whichever exist. */
static enum lms_status check_data(const struct written *w, size_t nw, const char *prefix,
                                  const char *what, struct lms_error *err)
{
    enum lms_status rc = check_read(w, nw, prefix, what, err);
    static const char *const ext[] = {".bin", ".idx"};
    for (int k = 0; k < 2 && !rc; k++) {
        char path[PATH_MAX];
        int n = snprintf(path, sizeof path, "%s%s", prefix, ext[k]);
        if (n > 0 && (size_t)n < sizeof path)
            rc = check_read(w, nw, path, what, err);
    }
    return rc;
}

enum lms_status lms_paths_check(const struct lms_path_role *roles, size_t n,
                                struct lms_error *err)
{
    size_t nw = 0;
    for (size_t i = 0; i < n; i++)
        nw += roles[i].path && roles[i].use == LMS_PATH_WRITE;
    if (!nw)
        return LMS_OK;
    struct written *w = lms_calloc(nw, sizeof *w);
    if (!w)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    nw = 0;
    for (size_t i = 0; i < n; i++)
        if (roles[i].path && roles[i].use == LMS_PATH_WRITE && resolve(roles[i].path, w[nw].real))
            w[nw++].role = &roles[i]; /* an unresolvable one fails later, naming itself */
    enum lms_status rc = LMS_OK;
    for (size_t i = 0; i < nw && !rc; i++)
        for (size_t j = i + 1; j < nw && !rc; j++)
            if (overlap(w[i].real, w[j].real))
                rc = refuse(w[j].role, w[i].role->what ? w[i].role->what : "the output",
                            w[i].role->path, err);
    for (size_t i = 0; i < n && !rc; i++) {
        const struct lms_path_role *r = &roles[i];
        const char *what = r->what ? r->what : "the input";
        if (r->path && r->use == LMS_PATH_READ)
            rc = check_read(w, nw, r->path, what, err);
        else if (r->path && r->use == LMS_PATH_READ_DATA)
            rc = check_data(w, nw, r->path, what, err);
    }
    lms_free(w);
    return rc;
}
