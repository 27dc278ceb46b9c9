/* The content fingerprint of a dataset (include/lms/dataset.h): what a resumed or multi-rank
 * run compares to know it reads the same tokens, whatever path the files sit at. Reading every
 * token of a corpus of hundreds of gigabytes would cost minutes, so the .bin contributes its
 * size and its first and last MiB; the .idx (every sequence length and offset) is hashed
 * whole. */
#include "lms/dataset.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lms/alloc.h"
#include "lms/hash.h"

#define EDGE_BYTES ((uint64_t)1 << 20) /* the head and the tail of .bin that are read */
#define CHUNK ((size_t)1 << 20)

/* Hashes bytes [off, off + n) of fd (named path) through buf (CHUNK bytes). */
static enum lms_status hash_range(struct lms_hash64 *h, int fd, const char *path, uint64_t off,
                                  uint64_t n, unsigned char *buf, struct lms_error *err)
{
    while (n) {
        size_t want = n < CHUNK ? (size_t)n : CHUNK;
        ssize_t got = pread(fd, buf, want, (off_t)off);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return lms_error_set(err, LMS_EIO, "reading '%s': %s", path, strerror(errno));
        if (got == 0)
            return lms_error_set(err, LMS_EIO, "reading '%s': the file shrank while it was read",
                                 path);
        lms_hash64_update(h, buf, (size_t)got);
        off += (uint64_t)got;
        n -= (uint64_t)got;
    }
    return LMS_OK;
}

/* Adds a file to the hash: whole (every byte), or as its size, first and last EDGE_BYTES. */
static enum lms_status hash_file(struct lms_hash64 *h, const char *path, bool whole,
                                 unsigned char *buf, struct lms_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lms_error_set(err, LMS_EIO, "opening '%s': %s", path, strerror(errno));
    struct stat st;
    enum lms_status rc = LMS_OK;
    if (fstat(fd, &st) != 0) {
        rc = lms_error_set(err, LMS_EIO, "reading '%s': %s", path, strerror(errno));
    } else {
        uint64_t size = (uint64_t)st.st_size, edge = size < EDGE_BYTES ? size : EDGE_BYTES;
        lms_hash64_update_u64(h, size);
        if (whole)
            rc = hash_range(h, fd, path, 0, size, buf, err);
        else if (!(rc = hash_range(h, fd, path, 0, edge, buf, err)))
            rc = hash_range(h, fd, path, size - edge, edge, buf, err);
    }
    close(fd);
    return rc;
}

static bool has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

enum lms_status lms_data_fingerprint(const char *path, char out[LMS_HASH64_HEX],
                                     struct lms_error *err)
{
    char idx[4096], bin[4096];
    struct stat st;
    int ni = snprintf(idx, sizeof idx, "%s.idx", path);
    int nb = snprintf(bin, sizeof bin, "%s.bin", path);
    bool indexed = ni > 0 && (size_t)ni < sizeof idx && nb > 0 && (size_t)nb < sizeof bin &&
                   stat(idx, &st) == 0;
    if (!indexed && !has_suffix(path, ".u16") && !has_suffix(path, ".i32"))
        return lms_error_set(err, LMS_EIO,
                             "dataset '%s': no '%s.idx' (and not a raw .u16/.i32 id file)", path,
                             path);
    unsigned char *buf = lms_malloc(CHUNK);
    if (!buf)
        return lms_error_set(err, LMS_ENOMEM, "out of memory fingerprinting '%s'", path);
    struct lms_hash64 h;
    lms_hash64_init(&h, 0);
    enum lms_status rc = indexed ? hash_file(&h, idx, true, buf, err) : LMS_OK;
    if (!rc)
        rc = hash_file(&h, indexed ? bin : path, false, buf, err);
    lms_free(buf);
    if (!rc)
        lms_hash64_hex(lms_hash64_digest(&h), out);
    return rc;
}
