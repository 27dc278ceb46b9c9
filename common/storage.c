/* Refcounted file mappings and host blocks (include/lms/storage.h). */
#include "lms/storage.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lms/alloc.h"

enum lms_status lms_storage_map_file(const char *path, struct lms_storage **out,
                                     struct lms_error *err)
{
    struct lms_storage *s = lms_calloc(1, sizeof(*s));
    if (!s)
        return lms_error_set(err, LMS_ENOMEM, "mapping '%s': out of memory", path);
    s->kind = LMS_STORAGE_FILE_MAP;
    s->refs = 1;
    s->path = lms_strdup(path);
    if (!s->path) {
        lms_free(s);
        return lms_error_set(err, LMS_ENOMEM, "mapping '%s': out of memory", path);
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        enum lms_status st = lms_error_set(err, LMS_EIO, "opening '%s': %s", path,
                                           strerror(errno));
        lms_storage_release(s);
        return st;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        enum lms_status st = lms_error_set(err, LMS_EIO, "opening '%s': not a regular file",
                                           path);
        close(fd);
        lms_storage_release(s);
        return st;
    }
    s->size = (size_t)sb.st_size;
    if (s->size > 0) {
        s->base = mmap(NULL, s->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (s->base == MAP_FAILED) {
            s->base = NULL;
            enum lms_status st = lms_error_set(err, LMS_EIO, "mapping '%s': %s", path,
                                               strerror(errno));
            close(fd);
            lms_storage_release(s);
            return st;
        }
    }
    close(fd);
    *out = s;
    return LMS_OK;
}

enum lms_status lms_storage_new_host(size_t size, struct lms_storage **out,
                                     struct lms_error *err)
{
    struct lms_storage *s = lms_calloc(1, sizeof(*s));
    if (!s)
        return lms_error_set(err, LMS_ENOMEM, "allocating %zu bytes: out of memory", size);
    s->kind = LMS_STORAGE_HOST;
    s->refs = 1;
    s->size = size;
    if (size) {
        s->base = lms_calloc(1, size);
        if (!s->base) {
            lms_free(s);
            return lms_error_set(err, LMS_ENOMEM, "allocating %zu bytes: out of memory", size);
        }
    }
    *out = s;
    return LMS_OK;
}

struct lms_storage *lms_storage_ref(struct lms_storage *s)
{
    if (s)
        s->refs++;
    return s;
}

void lms_storage_release(struct lms_storage *s)
{
    if (!s || --s->refs > 0)
        return;
    if (s->kind == LMS_STORAGE_FILE_MAP) {
        if (s->base)
            munmap(s->base, s->size);
    } else {
        lms_free(s->base);
    }
    lms_free(s->path);
    lms_free(s);
}
