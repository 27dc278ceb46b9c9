/* A test-only LD_PRELOAD library that makes the races and failures of writing outputs happen at
 * a chosen point, so that the CLI tests need neither timing luck nor hooks in lmsurgeon itself.
 * Each behaviour is off unless its variable is set:
 *
 *   LMS_SHIM_APPEAR=PATH, LMS_SHIM_APPEAR_KIND=dir|file
 *       at the first fsync (every writer syncs its files before renaming them into place), or
 *       else just before the first rename (rename, renameat, renameat2, link) whose destination
 *       is PATH, another "process" creates PATH: a directory holding notes.txt, or a file; both
 *       hold "x\n". LMS_SHIM_APPEAR_AT=rename: only at the rename.
 *   LMS_SHIM_PAUSE=write|fsync, LMS_SHIM_PAUSE_PATH=SUBSTRING, LMS_SHIM_MARK=FILE
 *       at the first write (write, pwrite, copy_file_range, sendfile) or fsync to a file whose
 *       path contains SUBSTRING, creates FILE and sleeps up to 60 s (a signal that runs a handler
 *       ends the sleep, and so does the file LMS_SHIM_RESUME appearing), then carries on: the
 *       test signals the process while it is inside that write, or runs another command then.
 *   LMS_SHIM_FAIL_WRITE=SUBSTRING
 *       every write to a file whose path contains SUBSTRING fails with ENOSPC (a full disk). */
#undef _FILE_OFFSET_BITS /* define pwrite and pwrite64 each under its own name */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The next definition of name (libc's), looked up once. */
#define REAL(ret, params, name)                                                                \
    static ret(*real) params;                                                                  \
    if (!real)                                                                                 \
        *(void **)(&real) = dlsym(RTLD_NEXT, name)

static int appeared, paused;

static void make_appear(const char *dest)
{
    const char *want = getenv("LMS_SHIM_APPEAR");
    if (appeared || !want || !dest || strcmp(want, dest) != 0)
        return;
    appeared = 1;
    const char *kind = getenv("LMS_SHIM_APPEAR_KIND");
    char path[4200];
    if (kind && !strcmp(kind, "dir")) {
        mkdir(dest, 0755);
        snprintf(path, sizeof path, "%s/notes.txt", dest);
    } else {
        snprintf(path, sizeof path, "%s", dest);
    }
    FILE *f = fopen(path, "w");
    if (f) {
        fputs("x\n", f);
        fclose(f);
    }
}

/* Whether the file open at fd has a path containing the value of variable var. */
static int fd_matches(int fd, const char *var)
{
    const char *want = getenv(var);
    if (!want || !*want)
        return 0;
    char link[64], path[4200];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0)
        return 0;
    path[n] = '\0';
    return strstr(path, want) != NULL;
}

static void maybe_pause(int fd, const char *what)
{
    const char *how = getenv("LMS_SHIM_PAUSE");
    if (paused || !how || strcmp(how, what) != 0 || !fd_matches(fd, "LMS_SHIM_PAUSE_PATH"))
        return;
    paused = 1;
    const char *mark = getenv("LMS_SHIM_MARK");
    if (mark) {
        int m = open(mark, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (m >= 0)
            close(m);
    }
    /* up to 60 s; a signal that runs a handler, or LMS_SHIM_RESUME appearing, ends it sooner */
    const char *resume = getenv("LMS_SHIM_RESUME");
    for (int i = 0; i < 6000; i++) {
        if (resume && access(resume, F_OK) == 0)
            return;
        struct timespec t = {0, 10000000};
        if (nanosleep(&t, NULL) != 0)
            return;
    }
}

static int fail_write(int fd)
{
    if (!fd_matches(fd, "LMS_SHIM_FAIL_WRITE"))
        return 0;
    errno = ENOSPC;
    return 1;
}

ssize_t write(int fd, const void *buf, size_t n)
{
    REAL(ssize_t, (int, const void *, size_t), "write");
    maybe_pause(fd, "write");
    if (fail_write(fd))
        return -1;
    return real(fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t at)
{
    REAL(ssize_t, (int, const void *, size_t, off_t), "pwrite");
    maybe_pause(fd, "write");
    if (fail_write(fd))
        return -1;
    return real(fd, buf, n, at);
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t at)
{
    REAL(ssize_t, (int, const void *, size_t, off64_t), "pwrite64");
    maybe_pause(fd, "write");
    if (fail_write(fd))
        return -1;
    return real(fd, buf, n, at);
}

ssize_t copy_file_range(int in, off64_t *in_at, int out, off64_t *out_at, size_t n,
                        unsigned flags)
{
    REAL(ssize_t, (int, off64_t *, int, off64_t *, size_t, unsigned), "copy_file_range");
    maybe_pause(out, "write");
    if (fail_write(out))
        return -1;
    return real(in, in_at, out, out_at, n, flags);
}

ssize_t sendfile(int out, int in, off_t *at, size_t n)
{
    REAL(ssize_t, (int, int, off_t *, size_t), "sendfile");
    maybe_pause(out, "write");
    if (fail_write(out))
        return -1;
    return real(out, in, at, n);
}

ssize_t sendfile64(int out, int in, off64_t *at, size_t n)
{
    REAL(ssize_t, (int, int, off64_t *, size_t), "sendfile64");
    maybe_pause(out, "write");
    if (fail_write(out))
        return -1;
    return real(out, in, at, n);
}

int fsync(int fd)
{
    REAL(int, (int), "fsync");
    const char *at = getenv("LMS_SHIM_APPEAR_AT");
    if (!at || strcmp(at, "rename") != 0)
        make_appear(getenv("LMS_SHIM_APPEAR"));
    maybe_pause(fd, "fsync");
    return real(fd);
}

int rename(const char *from, const char *to)
{
    REAL(int, (const char *, const char *), "rename");
    make_appear(to);
    return real(from, to);
}

int renameat(int fd1, const char *from, int fd2, const char *to)
{
    REAL(int, (int, const char *, int, const char *), "renameat");
    make_appear(to);
    return real(fd1, from, fd2, to);
}

int renameat2(int fd1, const char *from, int fd2, const char *to, unsigned flags)
{
    REAL(int, (int, const char *, int, const char *, unsigned), "renameat2");
    make_appear(to);
    return real(fd1, from, fd2, to, flags);
}

int link(const char *from, const char *to)
{
    REAL(int, (const char *, const char *), "link");
    make_appear(to);
    return real(from, to);
}
