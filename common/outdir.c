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
#include "lms/tempfiles.h"

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
    bool empty_dir = false;
    if (stat(dest, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode) && !force)
            return lms_error_set(err, LMS_EEXIST, "'%s' exists and is not a directory (use --force)",
                                 dest);
        empty_dir = S_ISDIR(sb.st_mode) && dir_is_empty(dest);
        if (S_ISDIR(sb.st_mode) && !empty_dir && !force)
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
    od->replace_empty = empty_dir;
    if (!od->dest || !od->tmp) {
        rmdir(tmp);
        lms_free(od->dest);
        lms_free(od->tmp);
        memset(od, 0, sizeof(*od));
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    lms_temp_track(od->tmp);
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

/* Whether a failed rename into dest failed because something is there now. */
static bool taken_errno(int e)
{
    return e == EEXIST || e == ENOTEMPTY || e == ENOTDIR || e == EISDIR;
}

/* Moves the finished tmp out of the way of dest, which appeared during the run, to a visible
 * unique name beside it, and says so in err (LMS_EEXIST). The temporary name is kept when that
 * fails. Signals are held by the caller. */
static enum lms_status keep_beside(const char *tmp, const char *dest, bool is_dir,
                                   struct lms_error *err)
{
    char kept[PATH_MAX];
    const char *where = tmp;
    int n = snprintf(kept, sizeof kept, "%s.lms-kept-XXXXXX", dest);
    if (n > 0 && (size_t)n < sizeof kept) {
        /* a unique name, then an atomic rename over the empty placeholder just made */
        int fd = -1;
        bool made = is_dir ? mkdtemp(kept) != NULL : (fd = mkstemp(kept)) >= 0;
        if (fd >= 0)
            close(fd);
        if (made && rename(tmp, kept) == 0)
            where = kept;
        else if (made && is_dir)
            rmdir(kept);
        else if (made)
            unlink(kept);
    }
    lms_temp_forget(tmp);
    return lms_error_set(err, LMS_EEXIST, "'%s' appeared while the output was being written; "
                         "without --force it is left alone, and the finished output is in '%s'",
                         dest, where);
}

/* Errors of renameat2 that mean the filesystem or kernel lacks the flag asked for; any other
 * error is a failed rename and is reported, not worked around. */
static bool rename_flag_unsupported(int e)
{
    if (e == ENOTSUP) /* the same value as EOPNOTSUPP on Linux */
        return true;
    return e == EINVAL || e == ENOSYS || e == EOPNOTSUPP;
}

/* Renames tmp to dest when nothing is at dest, atomically (RENAME_NOREPLACE; on a filesystem
 * without it, a directory is claimed with mkdir and a file with link first). replace_empty: an
 * empty directory was at dest when the run began, and a plain rename replaces only an empty
 * directory. 1 when dest is taken, 0 when renamed, -1 on another error (errno set). */
static int rename_new(const char *tmp, const char *dest, bool is_dir, bool replace_empty)
{
    if (replace_empty && is_dir)
        return rename(tmp, dest) == 0 ? 0 : taken_errno(errno) ? 1 : -1;
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, dest, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno == EEXIST)
        return 1;
    if (!rename_flag_unsupported(errno))
        return -1;
    if (is_dir) {
        if (mkdir(dest, 0700) != 0)
            return errno == EEXIST ? 1 : -1;
        return rename(tmp, dest) == 0 ? 0 : taken_errno(errno) ? 1 : -1;
    }
    if (link(tmp, dest) != 0)
        return errno == EEXIST ? 1 : -1;
    unlink(tmp);
    return 0;
}

static enum lms_status fsync_parent(const char *dest, struct lms_error *err)
{
    char parent[PATH_MAX], name[NAME_MAX + 1];
    enum lms_status rc = split_dest(dest, parent, sizeof(parent), name, sizeof(name), err);
    return rc ? rc : fsync_path(parent, err);
}

/* Replaces whatever is at dest by tmp. In one atomic step where the filesystem can exchange
 * two names (after the exchange tmp names the old destination, removed by the caller); else
 * the old destination is moved aside to *old first (a crash between the two renames leaves it
 * in .NAME.lms-old-*). Signals are held by the caller. */
static enum lms_status replace_dest(const char *tmp, const char *dest, char *old,
                                    struct lms_error *err)
{
    char parent[PATH_MAX], name[NAME_MAX + 1];
    enum lms_status rc = split_dest(dest, parent, sizeof(parent), name, sizeof(name), err);
    if (rc)
        return rc;
    old[0] = '\0';
    struct stat sb;
    bool present = lstat(dest, &sb) == 0;
    if (!present) {
        /* nothing there: take the name only if it is still free, so that something appearing
         * in the meantime is replaced by the exchange below instead of failing the rename */
        if (renameat2(AT_FDCWD, tmp, AT_FDCWD, dest, RENAME_NOREPLACE) == 0) {
            lms_temp_forget(tmp);
            return LMS_OK;
        }
        if (errno == EEXIST)
            present = lstat(dest, &sb) == 0;
        else if (!rename_flag_unsupported(errno))
            return lms_error_set(err, LMS_EIO, "renaming '%s' to '%s': %s", tmp, dest,
                                 strerror(errno));
    }
    if (present) {
        if (renameat2(AT_FDCWD, tmp, AT_FDCWD, dest, RENAME_EXCHANGE) == 0)
            return LMS_OK;
        if (!rename_flag_unsupported(errno)) /* a real failure: dest is still as it was */
            return lms_error_set(err, LMS_EIO, "renaming '%s' to '%s': %s", tmp, dest,
                                 strerror(errno));
        if (S_ISDIR(sb.st_mode) && dir_is_empty(dest)) {
            rmdir(dest);
        } else {
            snprintf(old, PATH_MAX, "%s/.%s.lms-old-XXXXXX", parent, name);
            if (!mkdtemp(old)) {
                old[0] = '\0';
                return lms_error_set(err, LMS_EIO, "replacing '%s': %s", dest, strerror(errno));
            }
            rmdir(old);
            if (rename(dest, old) != 0) {
                old[0] = '\0';
                return lms_error_set(err, LMS_EIO, "moving '%s' aside: %s", dest,
                                     strerror(errno));
            }
            lms_temp_track(old);
        }
    }
    if (rename(tmp, dest) != 0) {
        rc = lms_error_set(err, LMS_EIO, "renaming '%s' to '%s': %s", tmp, dest,
                           strerror(errno));
        if (old[0] && rename(old, dest) == 0) /* put the previous destination back */
            lms_temp_forget(old);
        old[0] = '\0';
        return rc;
    }
    lms_temp_forget(tmp);
    return LMS_OK;
}

/* The rename into place shared by directories and files: with force over whatever is there,
 * else only where nothing appeared since the run began. Signals are held during the renames, so
 * that a handler finds either the temporary or the finished output; what the replacement left
 * to delete stays registered until it is gone. */
static enum lms_status place(const char *tmp, const char *dest, bool force, bool is_dir,
                             bool replace_empty, struct lms_error *err)
{
    sigset_t mask;
    lms_temp_hold_signals(&mask);
    enum lms_status rc = LMS_OK;
    char old[PATH_MAX];
    old[0] = '\0';
    if (force) {
        rc = replace_dest(tmp, dest, old, err);
    } else {
        int r = rename_new(tmp, dest, is_dir, replace_empty);
        if (r > 0)
            rc = keep_beside(tmp, dest, is_dir, err);
        else if (r < 0)
            rc = lms_error_set(err, LMS_EIO, "renaming '%s' to '%s': %s", tmp, dest,
                               strerror(errno));
        else
            lms_temp_forget(tmp);
    }
    lms_temp_release_signals(&mask);
    if (rc == LMS_EEXIST)
        return rc;
    if (rc) {
        lms_remove_tree(tmp);
        lms_temp_forget(tmp);
        return rc;
    }
    rc = fsync_parent(dest, err);
    /* after an exchange, tmp names the old destination (still registered); a plain rename left
     * nothing there */
    lms_remove_tree(tmp);
    lms_temp_forget(tmp);
    if (old[0]) {
        lms_remove_tree(old);
        lms_temp_forget(old);
    }
    return rc;
}

enum lms_status lms_outdir_commit(struct lms_outdir *od, struct lms_error *err)
{
    enum lms_status rc = fsync_tree(od->tmp, err);
    if (rc) {
        lms_outdir_abort(od);
        return rc;
    }
    rc = place(od->tmp, od->dest, od->force, true, od->replace_empty, err);
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
    if (od->tmp) {
        lms_remove_tree(od->tmp);
        lms_temp_forget(od->tmp);
    }
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

/* ---- single files ------------------------------------------------------------------------ */

enum lms_status lms_outfile_begin(const char *dest, bool force, struct lms_outfile *of,
                                  struct lms_error *err)
{
    memset(of, 0, sizeof(*of));
    of->fd = -1;
    char parent[PATH_MAX], name[NAME_MAX + 1];
    enum lms_status rc = split_dest(dest, parent, sizeof(parent), name, sizeof(name), err);
    if (rc)
        return rc;
    struct stat sb;
    if (stat(dest, &sb) == 0) {
        if (S_ISDIR(sb.st_mode))
            return lms_error_set(err, LMS_EEXIST, "'%s' is a directory", dest);
        if (!force)
            return lms_error_set(err, LMS_EEXIST, "'%s' exists (use --force to replace it)",
                                 dest);
    }
    char tmp[PATH_MAX];
    int n = snprintf(tmp, sizeof(tmp), "%s/.%s.lms-tmp-XXXXXX", parent, name);
    if (n < 0 || (size_t)n >= sizeof(tmp))
        return lms_error_set(err, LMS_EINVAL, "output path '%s' is too long", dest);
    int fd = mkstemp(tmp);
    if (fd < 0)
        return lms_error_set(err, LMS_EIO, "creating a temporary file beside '%s': %s", dest,
                             strerror(errno));
    /* mkstemp creates 0600; give the result the permissions of a normal creat */
    mode_t mask = umask(0);
    umask(mask);
    fchmod(fd, 0666 & ~mask);
    of->dest = lms_strdup(dest);
    of->tmp = lms_strdup(tmp);
    if (!of->dest || !of->tmp) {
        close(fd);
        unlink(tmp);
        lms_free(of->dest);
        lms_free(of->tmp);
        memset(of, 0, sizeof(*of));
        of->fd = -1;
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    of->fd = fd;
    of->force = force;
    lms_temp_track(of->tmp);
    return LMS_OK;
}

static void free_outfile(struct lms_outfile *of)
{
    lms_free(of->dest);
    lms_free(of->tmp);
    memset(of, 0, sizeof(*of));
    of->fd = -1;
}

enum lms_status lms_outfile_commit(struct lms_outfile *of, struct lms_error *err)
{
    enum lms_status rc = finish_file(of->fd, of->tmp, err);
    of->fd = -1;
    if (rc) {
        lms_outfile_abort(of);
        return rc;
    }
    rc = place(of->tmp, of->dest, of->force, false, false, err);
    free_outfile(of);
    return rc;
}

void lms_outfile_abort(struct lms_outfile *of)
{
    if (of->fd >= 0)
        close(of->fd);
    if (of->tmp) {
        unlink(of->tmp);
        lms_temp_forget(of->tmp);
    }
    free_outfile(of);
}
