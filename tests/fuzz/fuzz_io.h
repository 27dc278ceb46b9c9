/* Helpers for fuzz targets whose reader takes a path, not bytes: the input is written to a
 * memory file (memfd, reached as /proc/self/fd/N) or to a file in a private temporary directory
 * that is removed at exit. Header-only, shared by the fuzz_*.c targets. */
#ifndef LMS_FUZZ_IO_H
#define LMS_FUZZ_IO_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Replaces the contents of the target's memory file with data; returns its path or NULL. */
static inline const char *fuzz_memfd_path(const uint8_t *data, size_t size)
{
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("fuzz-input", MFD_CLOEXEC);
        if (fd < 0)
            return NULL;
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0)
        return NULL;
    for (size_t done = 0; done < size;) {
        ssize_t n = pwrite(fd, data + done, size - done, (off_t)done);
        if (n <= 0)
            return NULL;
        done += (size_t)n;
    }
    return path;
}

static char fuzz_tmp_dir_path[256];

/* Removes the temporary directory: its files, links (never followed) and the files of its
 * subdirectories (one level). */
static inline void fuzz_tmp_dir_remove(void)
{
    if (!fuzz_tmp_dir_path[0])
        return;
    DIR *top = opendir(fuzz_tmp_dir_path);
    struct dirent *e;
    while (top && (e = readdir(top))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char p[800];
        snprintf(p, sizeof(p), "%s/%s", fuzz_tmp_dir_path, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode)) {
            DIR *sub = opendir(p);
            struct dirent *f;
            while (sub && (f = readdir(sub)))
                if (strcmp(f->d_name, ".") && strcmp(f->d_name, "..")) {
                    char q[1200];
                    snprintf(q, sizeof(q), "%s/%s", p, f->d_name);
                    unlink(q);
                }
            if (sub)
                closedir(sub);
            rmdir(p);
        } else {
            unlink(p);
        }
    }
    if (top)
        closedir(top);
    rmdir(fuzz_tmp_dir_path);
}

/* A private temporary directory for this process (created once, removed at exit). */
static inline const char *fuzz_tmp_dir(void)
{
    if (!fuzz_tmp_dir_path[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(fuzz_tmp_dir_path, sizeof(fuzz_tmp_dir_path), "%s/lms-fuzz-XXXXXX",
                 t && *t ? t : "/tmp");
        if (!mkdtemp(fuzz_tmp_dir_path)) {
            fuzz_tmp_dir_path[0] = 0;
            return NULL;
        }
        atexit(fuzz_tmp_dir_remove);
    }
    return fuzz_tmp_dir_path;
}

/* Writes data to name (relative to the temporary directory); returns its path or NULL. */
static inline const char *fuzz_tmp_file(const char *name, const void *data, size_t size)
{
    static char path[512];
    const char *dir = fuzz_tmp_dir();
    if (!dir)
        return NULL;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f)
        return NULL;
    size_t w = size ? fwrite(data, 1, size, f) : 0;
    if (fclose(f) != 0 || w != size)
        return NULL;
    return path;
}

#endif
