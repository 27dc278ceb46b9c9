/* Atomic output directories and small file helpers (include/lms/outdir.h). */

#include "lms/outdir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lms/alloc.h"

const char *lms_path_basename(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* Splits dest into its parent directory and final name (trailing slashes removed). */
static enum lms_status split_dest(const char *dest, char *parent, size_t parent_cap, char *name,
                                  size_t name_cap, struct lms_error *err)
{
    char path[PATH_MAX];
    size_t n = strlen(dest);
    while (n > 1 && dest[n - 1] == '/')
        n--;
    if (n == 0 || n >= sizeof(path))
        return lms_error_set(err, LMS_EINVAL, "invalid output path '%s'", dest);
    memcpy(path, dest, n);
    path[n] = '\0';
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    if (strcmp(base, ".") == 0 || strcmp(base, "..") == 0 || !*base)
        return lms_error_set(err, LMS_EINVAL, "output path '%s' must name a directory", dest);
    if (slash)
        snprintf(parent, parent_cap, "%.*s", (int)(slash == path ? 1 : slash - path), path);
    else
        snprintf(parent, parent_cap, ".");
    snprintf(name, name_cap, "%s", base);
    return LMS_OK;
}

static bool dir_is_empty(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return false;
    struct dirent *e;
    bool empty = true;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            empty = false;
            break;
        }
    closedir(d);
    return empty;
}

enum lms_status lms_outdir_begin(const char *dest, bool force, struct lms_outdir *od,
                                 struct lms_error *err)
{
    memset(od, 0, sizeof(*od));
    char parent[PATH_MAX], name[NAME_MAX + 1];
    enum lms_status rc = split_dest(dest, parent, sizeof(parent), name, sizeof(name), err);
    if (rc)
        return rc;
    struct stat sb;
    if (stat(dest, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode) && !force)
            return lms_error_set(err, LMS_EEXIST, "'%s' exists and is not a directory (use --force)",
                                 dest);
        if (S_ISDIR(sb.st_mode) && !dir_is_empty(dest) && !force)
            return lms_error_set(err, LMS_EEXIST,
                                 "'%s' exists and is not empty (use --force to replace it)", dest);
    }
    if (stat(parent, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return lms_error_set(err, LMS_EIO, "output directory '%s': parent '%s' does not exist",
                             dest, parent);
    char tmp[PATH_MAX];
    int n = snprintf(tmp, sizeof(tmp), "%s/.%s.lms-tmp-XXXXXX", parent, name);
    if (n < 0 || (size_t)n >= sizeof(tmp))
        return lms_error_set(err, LMS_EINVAL, "output path '%s' is too long", dest);
    if (!mkdtemp(tmp))
        return lms_error_set(err, LMS_EIO, "creating a temporary directory beside '%s': %s",
                             dest, strerror(errno));
    /* mkdtemp creates 0700; give the result the permissions of a normal mkdir */
    mode_t mask = umask(0);
    umask(mask);
    chmod(tmp, 0777 & ~mask);
    od->dest = lms_strdup(dest);
    od->tmp = lms_strdup(tmp);
    od->force = force;
    if (!od->dest || !od->tmp) {
        rmdir(tmp);
        lms_free(od->dest);
        lms_free(od->tmp);
        memset(od, 0, sizeof(*od));
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    return LMS_OK;
}

enum lms_status lms_outdir_path(const struct lms_outdir *od, const char *name, char *dst,
                                size_t dst_cap, struct lms_error *err)
{
    int n = snprintf(dst, dst_cap, "%s/%s", od->tmp, name);
    if (n < 0 || (size_t)n >= dst_cap)
        return lms_error_set(err, LMS_EINVAL, "path '%s/%s' is too long", od->tmp, name);
    return LMS_OK;
}

static enum lms_status fsync_path(const char *path, struct lms_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lms_error_set(err, LMS_EIO, "opening '%s' to sync: %s", path, strerror(errno));
    int rc = fsync(fd);
    int saved = errno;
    close(fd);
    if (rc != 0)
        return lms_error_set(err, LMS_EIO, "syncing '%s': %s", path, strerror(saved));
    return LMS_OK;
}

/* fsyncs every regular file below dir, then dir itself: durability is settled here, once,
 * before anything is renamed into place, so writers need not fsync file by file. */
static enum lms_status fsync_tree(const char *dir, struct lms_error *err)
{
    DIR *d = opendir(dir);
    if (!d)
        return lms_error_set(err, LMS_EIO, "opening '%s' to sync: %s", dir, strerror(errno));
    enum lms_status rc = LMS_OK;
    struct dirent *e;
    while (!rc && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char child[PATH_MAX];
        struct stat sb;
        int n = snprintf(child, sizeof(child), "%s/%s", dir, e->d_name);
        if (n < 0 || (size_t)n >= sizeof(child) || lstat(child, &sb) != 0)
            continue;
        if (S_ISDIR(sb.st_mode))
            rc = fsync_tree(child, err);
        else if (S_ISREG(sb.st_mode))
            rc = fsync_path(child, err);
    }
    closedir(d);
    return rc ? rc : fsync_path(dir, err);
}

static void free_outdir(struct lms_outdir *od)
{
    lms_free(od->dest);
    lms_free(od->tmp);
    memset(od, 0, sizeof(*od));
}

enum lms_status lms_outdir_commit(struct lms_outdir *od, struct lms_error *err)
{
    char parent[PATH_MAX], name[NAME_MAX + 1], old[PATH_MAX];
    enum lms_status rc = split_dest(od->dest, parent, sizeof(parent), name, sizeof(name), err);
    if (!rc)
        rc = fsync_tree(od->tmp, err);
    if (rc) {
        lms_outdir_abort(od);
        return rc;
    }
    old[0] = '\0';
    struct stat sb;
    if (lstat(od->dest, &sb) == 0) {
        /* replace in one atomic step: after the exchange od->tmp names the old destination */
        if (renameat2(AT_FDCWD, od->tmp, AT_FDCWD, od->dest, RENAME_EXCHANGE) == 0) {
            rc = fsync_path(parent, err);
            lms_remove_tree(od->tmp);
            free_outdir(od);
            return rc;
        }
        if (S_ISDIR(sb.st_mode) && dir_is_empty(od->dest)) {
            rmdir(od->dest);
        } else {
            /* no RENAME_EXCHANGE on this filesystem: move the old destination aside, then
             * rename (a crash between the two leaves it in .NAME.lms-old-*) */
            snprintf(old, sizeof(old), "%s/.%s.lms-old-XXXXXX", parent, name);
            if (!mkdtemp(old)) {
                rc = lms_error_set(err, LMS_EIO, "replacing '%s': %s", od->dest, strerror(errno));
                lms_outdir_abort(od);
                return rc;
            }
            rmdir(old);
            if (rename(od->dest, old) != 0) {
                rc = lms_error_set(err, LMS_EIO, "moving '%s' aside: %s", od->dest,
                                   strerror(errno));
                lms_outdir_abort(od);
                return rc;
            }
        }
    }
    if (rename(od->tmp, od->dest) != 0) {
        rc = lms_error_set(err, LMS_EIO, "renaming '%s' to '%s': %s", od->tmp, od->dest,
                           strerror(errno));
        if (old[0])
            rename(old, od->dest); /* put the previous destination back */
        lms_outdir_abort(od);
        return rc;
    }
    rc = fsync_path(parent, err);
    if (old[0])
        lms_remove_tree(old);
    free_outdir(od);
    return rc;
}

enum lms_status lms_outdir_finish(struct lms_outdir *od, enum lms_status rc,
                                  struct lms_error *err)
{
    if (!rc)
        return lms_outdir_commit(od, err);
    lms_outdir_abort(od);
    return rc;
}

void lms_outdir_abort(struct lms_outdir *od)
{
    if (od->tmp)
        lms_remove_tree(od->tmp);
    free_outdir(od);
}

void lms_remove_tree(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0)
        return;
    if (!S_ISDIR(sb.st_mode)) {
        unlink(path);
        return;
    }
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            char child[PATH_MAX];
            int n = snprintf(child, sizeof(child), "%s/%s", path, e->d_name);
            if (n > 0 && (size_t)n < sizeof(child))
                lms_remove_tree(child);
        }
        closedir(d);
    }
    rmdir(path);
}

/* realpath of path, or of its parent joined with its name when path does not exist yet. */
static bool resolve(const char *path, char *dst)
{
    if (realpath(path, dst))
        return true;
    char parent[PATH_MAX], name[NAME_MAX + 1], rp[PATH_MAX];
    if (split_dest(path, parent, sizeof(parent), name, sizeof(name), NULL))
        return false;
    if (!realpath(parent, rp))
        return false;
    int n = snprintf(dst, PATH_MAX, "%s/%s", strcmp(rp, "/") ? rp : "", name);
    return n > 0 && n < PATH_MAX;
}

static bool is_within(const char *inner, const char *outer)
{
    size_t n = strlen(outer);
    return strncmp(inner, outer, n) == 0 && (inner[n] == '\0' || inner[n] == '/');
}

enum lms_status lms_path_check_not_input(const char *dest, const char *input,
                                         struct lms_error *err)
{
    char d[PATH_MAX], i[PATH_MAX];
    if (!resolve(dest, d) || !resolve(input, i))
        return LMS_OK; /* unresolvable paths fail later with a precise message */
    if (is_within(d, i) || is_within(i, d))
        return lms_error_set(err, LMS_EINVAL, "refusing to write '%s': it overlaps the input '%s'",
                             dest, input);
    return LMS_OK;
}

enum lms_status lms_write_all(int fd, const void *buf, size_t len, const char *path,
                              struct lms_error *err)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return lms_error_set(err, LMS_EIO, "writing '%s': %s", path, strerror(errno));
        }
        p += w;
        len -= (size_t)w;
    }
    return LMS_OK;
}

enum lms_status lms_pwrite_all(int fd, const void *buf, size_t len, uint64_t at,
                               const char *path, struct lms_error *err)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t w = pwrite(fd, p, len, (off_t)at);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return lms_error_set(err, LMS_EIO, "writing '%s': %s", path,
                                 w < 0 ? strerror(errno) : "short write");
        p += w;
        len -= (size_t)w;
        at += (uint64_t)w;
    }
    return LMS_OK;
}

static enum lms_status finish_file(int fd, const char *path, struct lms_error *err)
{
    if (fsync(fd) != 0) {
        int saved = errno;
        close(fd);
        return lms_error_set(err, LMS_EIO, "syncing '%s': %s", path, strerror(saved));
    }
    if (close(fd) != 0)
        return lms_error_set(err, LMS_EIO, "closing '%s': %s", path, strerror(errno));
    return LMS_OK;
}

enum lms_status lms_write_file(const char *path, const void *buf, size_t len,
                               struct lms_error *err)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return lms_error_set(err, LMS_EIO, "creating '%s': %s", path, strerror(errno));
    enum lms_status rc = lms_write_all(fd, buf, len, path, err);
    if (rc) {
        close(fd);
        return rc;
    }
    return finish_file(fd, path, err);
}

enum lms_status lms_copy_file(const char *src_path, const char *dst_path, struct lms_error *err)
{
    int in = open(src_path, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return lms_error_set(err, LMS_EIO, "opening '%s': %s", src_path, strerror(errno));
    int out = open(dst_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        close(in);
        return lms_error_set(err, LMS_EIO, "creating '%s': %s", dst_path, strerror(errno));
    }
    char buf[1 << 16];
    enum lms_status rc = LMS_OK;
    for (;;) {
        ssize_t r = read(in, buf, sizeof(buf));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = lms_error_set(err, LMS_EIO, "reading '%s': %s", src_path, strerror(errno));
            break;
        }
        if (r == 0)
            break;
        rc = lms_write_all(out, buf, (size_t)r, dst_path, err);
        if (rc)
            break;
    }
    close(in);
    if (rc) {
        close(out);
        return rc;
    }
    return finish_file(out, dst_path, err);
}
