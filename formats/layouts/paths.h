/* Small path tests shared by the checkpoint layouts (library-internal). */
#ifndef LMS_FORMATS_LAYOUTS_PATHS_H
#define LMS_FORMATS_LAYOUTS_PATHS_H

#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/stat.h>

/* dir/name into dst; false when it does not fit. */
static inline bool join(char *dst, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(dst, cap, "%s/%s", dir, name);
    return n > 0 && (size_t)n < cap;
}

static inline bool is_file(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static inline bool is_dir(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

/* True when dir/name exists as a file or a directory. */
static inline bool has(const char *dir, const char *name)
{
    char p[PATH_MAX];
    return join(p, sizeof(p), dir, name) && (is_file(p) || is_dir(p));
}

#endif
