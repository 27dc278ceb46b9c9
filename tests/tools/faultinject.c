/* faultinject: an LD_PRELOAD shim that makes one chosen file-system call fail, for the
 * fault-injection tests (tests/cli/test_faults_*.sh). Built only for the tests, never installed.
 *
 * Every call that changes something below the directory $LMS_FAULT_DIR is a numbered "fault
 * point", counted per process in call order (a forked child continues from its parent's count):
 *   create  open/openat/creat with O_CREAT, mkstemp and mkostemp, mkdir, mkdirat, mkdtemp
 *   write   write, pwrite, writev, pwritev, copy_file_range and sendfile into such a file, and
 *           the buffered writes of a stdio stream opened on one (fopen and fdopen for writing
 *           return a stream whose writes come through this shim)
 *   size    ftruncate, fallocate, posix_fallocate
 *   sync    fsync, fdatasync (of any descriptor below the directory, the directory included)
 *   close   close of a descriptor this shim saw written
 *   rename  rename, renameat, renameat2 with either name below the directory
 * A descriptor is matched by what /proc/self/fd/N points to, a name by its parent directory's
 * real path, so inputs read from elsewhere never fail and relative names work.
 *
 * Environment (nothing set: the shim only passes calls through):
 *   LMS_FAULT_DIR    the directory; required for anything below to happen
 *   LMS_FAULT_AT     N >= 1: the N-th fault point fails (unset or 0: a counting run)
 *   LMS_FAULT_ERRNO  the error it fails with: ENOSPC (default), EIO, EDQUOT, EROFS or a number
 *   LMS_FAULT_STICKY 1: every fault point from the N-th on fails (a disk that stays full)
 *   LMS_FAULT_LOG    a file outside the directory that gets one line per fault point,
 *                    "N OP PATH", the injected one ending in " FAIL"
 *   LMS_FAULT_DELAY_BEFORE_RENAME  seconds to sleep before each rename (after logging it), so
 *                    that a test can act between a command's last write and its commit
 *   LMS_FAULT_DELAY_EACH  seconds to sleep before every fault point, which stretches a short run
 *                    so that a signal can land between any two of its writes
 *   LMS_FAULT_SKIP_SYNC  1: fsync and fdatasync below the directory succeed without syncing
 *                    (still counted), so that the tests do not wait for the disk
 * A failing call does nothing and returns -1 with errno set, except close, which closes the
 * descriptor first as Linux does. */
/* the wrappers define open and open64 (and the other pairs) themselves, so the header's
 * redirection of one to the other, and fortified inline versions, must stay off */
#undef _FILE_OFFSET_BITS
#undef _FORTIFY_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* ---- configuration and the real functions ------------------------------------------------ */

static struct {
    char dir[PATH_MAX];
    size_t dir_len; /* 0: the shim is off */
    long at;
    bool sticky, skip_sync;
    int err;
    int log_fd;
    double delay_rename, delay_each;
} cfg = {.log_fd = -1};

static atomic_long n_points;
static pthread_once_t once = PTHREAD_ONCE_INIT;

#define REAL_FN(ret, name, params) static ret(*real_##name) params
REAL_FN(int, open, (const char *, int, ...));
REAL_FN(int, openat, (int, const char *, int, ...));
REAL_FN(ssize_t, write, (int, const void *, size_t));
REAL_FN(ssize_t, pwrite, (int, const void *, size_t, off_t));
REAL_FN(ssize_t, writev, (int, const struct iovec *, int));
REAL_FN(ssize_t, pwritev, (int, const struct iovec *, int, off_t));
REAL_FN(ssize_t, copy_file_range, (int, off64_t *, int, off64_t *, size_t, unsigned));
REAL_FN(ssize_t, sendfile, (int, int, off_t *, size_t));
REAL_FN(int, ftruncate, (int, off_t));
REAL_FN(int, fallocate, (int, int, off_t, off_t));
REAL_FN(int, posix_fallocate, (int, off_t, off_t));
REAL_FN(int, fsync, (int));
REAL_FN(int, fdatasync, (int));
REAL_FN(int, close, (int));
REAL_FN(int, rename, (const char *, const char *));
REAL_FN(int, renameat, (int, const char *, int, const char *));
REAL_FN(int, renameat2, (int, const char *, int, const char *, unsigned));
REAL_FN(int, mkdir, (const char *, mode_t));
REAL_FN(int, mkdirat, (int, const char *, mode_t));
REAL_FN(char *, mkdtemp, (char *));
REAL_FN(int, mkostemp, (char *, int));
REAL_FN(FILE *, fopen, (const char *, const char *));
REAL_FN(FILE *, fdopen, (int, const char *));
REAL_FN(int, fileno, (FILE *));
REAL_FN(int, fileno_unlocked, (FILE *));

/* dlsym returns void *; going through memcpy keeps -Wpedantic quiet about the conversion */
#define RESOLVE(name)                                                                             \
    do {                                                                                          \
        void *sym = dlsym(RTLD_NEXT, #name);                                                      \
        memcpy(&real_##name, &sym, sizeof sym);                                                   \
    } while (0)

static int parse_errno(const char *s)
{
    static const struct { const char *name; int value; } names[] = {
        {"ENOSPC", ENOSPC}, {"EIO", EIO}, {"EDQUOT", EDQUOT}, {"EROFS", EROFS}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(s, names[i].name))
            return names[i].value;
    int v = (int)strtol(s, NULL, 10);
    return v > 0 ? v : ENOSPC;
}

static void init(void)
{
    RESOLVE(open);
    RESOLVE(openat);
    RESOLVE(write);
    RESOLVE(pwrite);
    RESOLVE(writev);
    RESOLVE(pwritev);
    RESOLVE(copy_file_range);
    RESOLVE(sendfile);
    RESOLVE(ftruncate);
    RESOLVE(fallocate);
    RESOLVE(posix_fallocate);
    RESOLVE(fsync);
    RESOLVE(fdatasync);
    RESOLVE(close);
    RESOLVE(rename);
    RESOLVE(renameat);
    RESOLVE(renameat2);
    RESOLVE(mkdir);
    RESOLVE(mkdirat);
    RESOLVE(mkdtemp);
    RESOLVE(mkostemp);
    RESOLVE(fopen);
    RESOLVE(fdopen);
    RESOLVE(fileno);
    RESOLVE(fileno_unlocked);
    const char *dir = getenv("LMS_FAULT_DIR");
    if (!dir || !*dir)
        return;
    if (!realpath(dir, cfg.dir))
        snprintf(cfg.dir, sizeof cfg.dir, "%s", dir);
    cfg.dir_len = strlen(cfg.dir);
    const char *s = getenv("LMS_FAULT_AT");
    cfg.at = s ? strtol(s, NULL, 10) : 0;
    s = getenv("LMS_FAULT_STICKY");
    cfg.sticky = s && !strcmp(s, "1");
    s = getenv("LMS_FAULT_SKIP_SYNC");
    cfg.skip_sync = s && !strcmp(s, "1");
    s = getenv("LMS_FAULT_ERRNO");
    cfg.err = s ? parse_errno(s) : ENOSPC;
    s = getenv("LMS_FAULT_DELAY_BEFORE_RENAME");
    cfg.delay_rename = s ? strtod(s, NULL) : 0;
    s = getenv("LMS_FAULT_DELAY_EACH");
    cfg.delay_each = s ? strtod(s, NULL) : 0;
    s = getenv("LMS_FAULT_LOG");
    if (s && *s)
        cfg.log_fd = real_open(s, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

static void ensure_init(void)
{
    pthread_once(&once, init);
}

/* ---- which calls are fault points -------------------------------------------------------- */

static bool in_dir(const char *abs)
{
    return cfg.dir_len && !strncmp(abs, cfg.dir, cfg.dir_len) &&
           (abs[cfg.dir_len] == '\0' || abs[cfg.dir_len] == '/' || cfg.dir_len == 1);
}

/* What descriptor fd points to, into out (PATH_MAX); false when unknown. */
static bool fd_path(int fd, char *out)
{
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, PATH_MAX - 1);
    if (n <= 0)
        return false;
    out[n] = '\0';
    return true;
}

static bool fd_in_dir(int fd, char *path)
{
    return cfg.dir_len && fd >= 0 && fd_path(fd, path) && in_dir(path);
}

/* The absolute name of path relative to dirfd, its parent resolved (the name itself may not
 * exist yet), into out (PATH_MAX). */
static bool name_path(int dirfd, const char *path, char *out)
{
    char joined[PATH_MAX], base[PATH_MAX];
    if (!path)
        return false;
    if (path[0] == '/')
        snprintf(joined, sizeof joined, "%s", path);
    else if (dirfd == AT_FDCWD ? !getcwd(base, sizeof base) : !fd_path(dirfd, base))
        return false;
    else if (snprintf(joined, sizeof joined, "%s/%s", base, path) >= (int)sizeof joined)
        return false;
    size_t n = strlen(joined);
    while (n > 1 && joined[n - 1] == '/')
        joined[--n] = '\0';
    char *slash = strrchr(joined, '/');
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%.*s", slash == joined ? 1 : (int)(slash - joined), joined);
    if (!realpath(parent, base))
        snprintf(base, sizeof base, "%s", parent);
    return snprintf(out, PATH_MAX, "%s/%s", strcmp(base, "/") ? base : "", slash + 1) < PATH_MAX;
}

static bool name_in_dir(int dirfd, const char *path, char *abs)
{
    return cfg.dir_len && name_path(dirfd, path, abs) && in_dir(abs);
}

static void sleep_for(double seconds)
{
    if (seconds <= 0)
        return;
    struct timespec ts = {.tv_sec = (time_t)seconds,
                          .tv_nsec = (long)((seconds - (double)(time_t)seconds) * 1e9)};
    nanosleep(&ts, NULL); /* a signal cuts it short, which is what the signal tests want */
}

/* Counts one fault point; true when this one must fail (errno is then set). */
static bool fault_point(const char *op, const char *path)
{
    int saved = errno;
    long n = atomic_fetch_add(&n_points, 1) + 1;
    bool fail = cfg.at > 0 && (n == cfg.at || (cfg.sticky && n > cfg.at));
    if (cfg.log_fd >= 0) {
        char line[PATH_MAX + 64];
        int len = snprintf(line, sizeof line, "%ld %s %s%s\n", n, op, path, fail ? " FAIL" : "");
        if (len > 0)
            (void)!real_write(cfg.log_fd, line, (size_t)len < sizeof line ? (size_t)len
                                                                           : sizeof line - 1);
    }
    sleep_for(cfg.delay_each);
    errno = fail ? cfg.err : saved;
    return fail;
}

/* ---- descriptors that were written (their close is a fault point) ------------------------ */

#define TRACKED_FDS 65536
static atomic_uchar written[TRACKED_FDS];

static void mark_written(int fd)
{
    if (fd >= 0 && fd < TRACKED_FDS)
        atomic_store(&written[fd], 1);
}

static bool take_written(int fd)
{
    return fd >= 0 && fd < TRACKED_FDS && atomic_exchange(&written[fd], 0);
}

/* ---- the wrappers ------------------------------------------------------------------------ */

/* A write-family call on fd: a fault point when fd lies below the directory. */
#define WRITE_CALL(op, fd, call)                                                                  \
    do {                                                                                          \
        ensure_init();                                                                            \
        char p_[PATH_MAX];                                                                        \
        if (fd_in_dir(fd, p_)) {                                                                  \
            if (fault_point(op, p_))                                                              \
                return -1;                                                                        \
            mark_written(fd);                                                                     \
        }                                                                                         \
        return call;                                                                              \
    } while (0)

/* A call on fd that changes it without writing data (size, sync). */
#define FD_CALL(op, fd, fail_value, call)                                                         \
    do {                                                                                          \
        ensure_init();                                                                            \
        char p_[PATH_MAX];                                                                        \
        if (fd_in_dir(fd, p_) && fault_point(op, p_))                                             \
            return fail_value;                                                                    \
        return call;                                                                              \
    } while (0)

ssize_t write(int fd, const void *buf, size_t n)
{
    WRITE_CALL("write", fd, real_write(fd, buf, n));
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t at)
{
    WRITE_CALL("pwrite", fd, real_pwrite(fd, buf, n, at));
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t at)
{
    WRITE_CALL("pwrite", fd, real_pwrite(fd, buf, n, at));
}

ssize_t writev(int fd, const struct iovec *iov, int n)
{
    WRITE_CALL("writev", fd, real_writev(fd, iov, n));
}

ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t at)
{
    WRITE_CALL("pwritev", fd, real_pwritev(fd, iov, n, at));
}

ssize_t pwritev64(int fd, const struct iovec *iov, int n, off64_t at)
{
    WRITE_CALL("pwritev", fd, real_pwritev(fd, iov, n, at));
}

ssize_t copy_file_range(int in, off64_t *in_at, int out, off64_t *out_at, size_t n,
                        unsigned flags)
{
    WRITE_CALL("copy_file_range", out, real_copy_file_range(in, in_at, out, out_at, n, flags));
}

ssize_t sendfile(int out, int in, off_t *in_at, size_t n)
{
    WRITE_CALL("sendfile", out, real_sendfile(out, in, in_at, n));
}

ssize_t sendfile64(int out, int in, off64_t *in_at, size_t n)
{
    WRITE_CALL("sendfile", out, real_sendfile(out, in, in_at, n));
}

int ftruncate(int fd, off_t len)
{
    FD_CALL("ftruncate", fd, -1, real_ftruncate(fd, len));
}

int ftruncate64(int fd, off64_t len)
{
    FD_CALL("ftruncate", fd, -1, real_ftruncate(fd, len));
}

int fallocate(int fd, int mode, off_t at, off_t len)
{
    FD_CALL("fallocate", fd, -1, real_fallocate(fd, mode, at, len));
}

int fallocate64(int fd, int mode, off64_t at, off64_t len)
{
    FD_CALL("fallocate", fd, -1, real_fallocate(fd, mode, at, len));
}

/* posix_fallocate reports its error as the return value, not in errno */
int posix_fallocate(int fd, off_t at, off_t len)
{
    FD_CALL("posix_fallocate", fd, errno, real_posix_fallocate(fd, at, len));
}

int posix_fallocate64(int fd, off64_t at, off64_t len)
{
    FD_CALL("posix_fallocate", fd, errno, real_posix_fallocate(fd, at, len));
}

/* A sync below the directory: a fault point, and skipped when LMS_FAULT_SKIP_SYNC says so. */
#define SYNC_CALL(op, fd, call)                                                                   \
    do {                                                                                          \
        ensure_init();                                                                            \
        char p_[PATH_MAX];                                                                        \
        if (!fd_in_dir(fd, p_))                                                                   \
            return call;                                                                          \
        if (fault_point(op, p_))                                                                  \
            return -1;                                                                            \
        return cfg.skip_sync ? 0 : call;                                                          \
    } while (0)

int fsync(int fd)
{
    SYNC_CALL("fsync", fd, real_fsync(fd));
}

int fdatasync(int fd)
{
    SYNC_CALL("fdatasync", fd, real_fdatasync(fd));
}

int close(int fd)
{
    ensure_init();
    char p[PATH_MAX];
    if (!take_written(fd) || !fd_in_dir(fd, p))
        return real_close(fd);
    bool fail = fault_point("close", p);
    int rc = real_close(fd);
    if (fail) {
        errno = cfg.err;
        return -1;
    }
    return rc;
}

/* A rename with either name below the directory. */
static bool rename_fails(int from_fd, const char *from, int to_fd, const char *to)
{
    char a[PATH_MAX], b[PATH_MAX], both[2 * PATH_MAX + 8];
    bool from_in = name_in_dir(from_fd, from, a), to_in = name_in_dir(to_fd, to, b);
    if (!from_in && !to_in)
        return false;
    snprintf(both, sizeof both, "%s -> %s", from_in ? a : from, to_in ? b : to);
    bool fail = fault_point("rename", both);
    if (!fail && cfg.delay_rename > 0) {
        int saved = errno;
        sleep_for(cfg.delay_rename);
        errno = saved;
    }
    return fail;
}

int rename(const char *from, const char *to)
{
    ensure_init();
    return rename_fails(AT_FDCWD, from, AT_FDCWD, to) ? -1 : real_rename(from, to);
}

int renameat(int from_fd, const char *from, int to_fd, const char *to)
{
    ensure_init();
    return rename_fails(from_fd, from, to_fd, to) ? -1 : real_renameat(from_fd, from, to_fd, to);
}

int renameat2(int from_fd, const char *from, int to_fd, const char *to, unsigned flags)
{
    ensure_init();
    return rename_fails(from_fd, from, to_fd, to) ? -1
                                                   : real_renameat2(from_fd, from, to_fd, to, flags);
}

/* A call that creates the name path (relative to dirfd). */
static bool create_fails(const char *op, int dirfd, const char *path)
{
    char abs[PATH_MAX];
    return name_in_dir(dirfd, path, abs) && fault_point(op, abs);
}

static mode_t mode_arg(int flags, va_list ap)
{
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

static int open_at(int dirfd, const char *path, int flags, mode_t mode)
{
    ensure_init();
    if ((flags & O_CREAT) && create_fails("create", dirfd, path))
        return -1;
    return real_openat(dirfd, path, flags, mode);
}

int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return open_at(AT_FDCWD, path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return open_at(AT_FDCWD, path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return open_at(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_arg(flags, ap);
    va_end(ap);
    return open_at(dirfd, path, flags, mode);
}

int creat(const char *path, mode_t mode)
{
    return open_at(AT_FDCWD, path, O_WRONLY | O_CREAT | O_TRUNC, mode);
}

int creat64(const char *path, mode_t mode)
{
    return open_at(AT_FDCWD, path, O_WRONLY | O_CREAT | O_TRUNC, mode);
}

int mkdir(const char *path, mode_t mode)
{
    ensure_init();
    return create_fails("mkdir", AT_FDCWD, path) ? -1 : real_mkdir(path, mode);
}

int mkdirat(int dirfd, const char *path, mode_t mode)
{
    ensure_init();
    return create_fails("mkdir", dirfd, path) ? -1 : real_mkdirat(dirfd, path, mode);
}

char *mkdtemp(char *tmpl)
{
    ensure_init();
    return create_fails("mkdtemp", AT_FDCWD, tmpl) ? NULL : real_mkdtemp(tmpl);
}

int mkostemp(char *tmpl, int flags)
{
    ensure_init();
    return create_fails("mkstemp", AT_FDCWD, tmpl) ? -1 : real_mkostemp(tmpl, flags);
}

int mkostemp64(char *tmpl, int flags)
{
    return mkostemp(tmpl, flags);
}

int mkstemp(char *tmpl)
{
    return mkostemp(tmpl, 0);
}

int mkstemp64(char *tmpl)
{
    return mkostemp(tmpl, 0);
}

/* ---- stdio: a stream opened for writing below the directory (fopen, fdopen) is a cookie
 * stream over a descriptor, so that its buffered writes reach write() above (glibc's own stdio
 * writes through an internal call a preloaded write never sees); fileno of such a stream still
 * answers its descriptor ------------------------------------------------------------------ */

#define MAX_STREAMS 64
static struct {
    FILE *f;
    int fd;
} streams[MAX_STREAMS];
static pthread_mutex_t streams_lock = PTHREAD_MUTEX_INITIALIZER;

static void stream_remember(FILE *f, int fd)
{
    pthread_mutex_lock(&streams_lock);
    for (int i = 0; i < MAX_STREAMS; i++)
        if (!streams[i].f) {
            streams[i].f = f;
            streams[i].fd = fd;
            break;
        }
    pthread_mutex_unlock(&streams_lock);
}

static void stream_forget(int fd)
{
    pthread_mutex_lock(&streams_lock);
    for (int i = 0; i < MAX_STREAMS; i++)
        if (streams[i].f && streams[i].fd == fd)
            streams[i].f = NULL;
    pthread_mutex_unlock(&streams_lock);
}

/* the descriptor under a cookie stream of this shim, or -1 */
static int stream_fd(FILE *f)
{
    int fd = -1;
    pthread_mutex_lock(&streams_lock);
    for (int i = 0; i < MAX_STREAMS; i++)
        if (streams[i].f == f)
            fd = streams[i].fd;
    pthread_mutex_unlock(&streams_lock);
    return fd;
}

static ssize_t cookie_read(void *c, char *buf, size_t n)
{
    return read((int)(intptr_t)c, buf, n);
}

static ssize_t cookie_write(void *c, const char *buf, size_t n)
{
    size_t done = 0;
    while (done < n) {
        ssize_t w = write((int)(intptr_t)c, buf + done, n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return done ? (ssize_t)done : -1;
        done += (size_t)w;
    }
    return (ssize_t)done;
}

static int cookie_seek(void *c, off64_t *at, int whence)
{
    off64_t r = lseek64((int)(intptr_t)c, *at, whence);
    if (r < 0)
        return -1;
    *at = r;
    return 0;
}

static int cookie_close(void *c)
{
    stream_forget((int)(intptr_t)c);
    return close((int)(intptr_t)c);
}

/* A cookie stream over fd (closed when that fails). */
static FILE *cookie_stream(int fd, const char *mode)
{
    cookie_io_functions_t io = {.read = cookie_read, .write = cookie_write, .seek = cookie_seek,
                                .close = cookie_close};
    FILE *f = fopencookie((void *)(intptr_t)fd, mode, io);
    if (!f) {
        int saved = errno;
        real_close(fd);
        errno = saved;
        return NULL;
    }
    stream_remember(f, fd);
    return f;
}

/* open(2) flags of an fopen mode that writes; -1 for a read-only mode */
static int mode_flags(const char *mode)
{
    int flags;
    switch (mode[0]) {
    case 'w': flags = O_WRONLY | O_CREAT | O_TRUNC; break;
    case 'a': flags = O_WRONLY | O_CREAT | O_APPEND; break;
    case 'r': flags = strchr(mode, '+') ? O_RDWR : -1; break;
    default: return -1;
    }
    if (flags < 0)
        return -1;
    if (strchr(mode, '+'))
        flags = (flags & ~O_WRONLY) | O_RDWR;
    if (strchr(mode, 'x'))
        flags |= O_EXCL;
    if (strchr(mode, 'e'))
        flags |= O_CLOEXEC;
    return flags;
}

FILE *fopen(const char *path, const char *mode)
{
    ensure_init();
    char abs[PATH_MAX];
    int flags = mode_flags(mode);
    if (flags < 0 || !name_in_dir(AT_FDCWD, path, abs))
        return real_fopen(path, mode);
    int fd = open_at(AT_FDCWD, path, flags, 0666);
    return fd < 0 ? NULL : cookie_stream(fd, mode);
}

FILE *fopen64(const char *path, const char *mode)
{
    return fopen(path, mode);
}

FILE *fdopen(int fd, const char *mode)
{
    ensure_init();
    char p[PATH_MAX];
    if (mode_flags(mode) < 0 || !fd_in_dir(fd, p))
        return real_fdopen(fd, mode);
    return cookie_stream(fd, mode);
}

int fileno(FILE *f)
{
    ensure_init();
    int fd = stream_fd(f);
    return fd >= 0 ? fd : real_fileno(f);
}

int fileno_unlocked(FILE *f)
{
    ensure_init();
    int fd = stream_fd(f);
    return fd >= 0 ? fd : real_fileno_unlocked(f);
}
