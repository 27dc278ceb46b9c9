/* The torch.save zip container: a validating reader over bytes in memory and a streaming writer
 * (zip.h). Stored entries only, one disk, zip64 when a
 * size or offset does not fit 32 bits. */
#include "formats/codecs/zip.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "lms/alloc.h"

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_EOCD 0x06054b50u
#define SIG_EOCD64 0x06064b50u
#define SIG_LOC64 0x07064b50u
#define U32_MAX_FIELD 0xffffffffu
#define ALIGN 64

static uint64_t le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

void lms_zip_release(struct lms_zip *z)
{
    if (!z)
        return;
    for (size_t i = 0; i < z->n_entries; i++)
        lms_free(z->entries[i].name);
    lms_free(z->entries);
    lms_free(z->prefix);
    memset(z, 0, sizeof(*z));
}

/* Finds the zip64 extended-information values that the central header marked 0xFFFFFFFF. */
static enum lms_status parse_zip64_extra(const unsigned char *ex, size_t ex_len, uint64_t *usize,
                                         uint64_t *csize, uint64_t *lho, struct lms_error *err)
{
    bool need_u = *usize == U32_MAX_FIELD, need_c = *csize == U32_MAX_FIELD,
         need_o = *lho == U32_MAX_FIELD;
    if (!need_u && !need_c && !need_o)
        return LMS_OK;
    size_t i = 0;
    while (ex_len - i >= 4) {
        unsigned id = (unsigned)le(ex + i, 2), n = (unsigned)le(ex + i + 2, 2);
        if (n > ex_len - i - 4)
            return lms_error_set(err, LMS_EFORMAT, "extra field 0x%04x past its header", id);
        if (id == 0x0001) {
            const unsigned char *q = ex + i + 4;
            size_t left = n;
            uint64_t *want[3] = {need_u ? usize : NULL, need_c ? csize : NULL,
                                 need_o ? lho : NULL};
            for (int k = 0; k < 3; k++) {
                if (!want[k])
                    continue;
                if (left < 8)
                    return lms_error_set(err, LMS_EFORMAT, "zip64 extra field too short");
                *want[k] = le(q, 8);
                q += 8;
                left -= 8;
            }
            return LMS_OK;
        }
        i += 4 + n;
    }
    return lms_error_set(err, LMS_EFORMAT, "size 0xFFFFFFFF without a zip64 extra field");
}

enum lms_status lms_zip_parse(const void *src, size_t src_len, struct lms_zip *z,
                              struct lms_error *err)
{
    const unsigned char *p = src;
    memset(z, 0, sizeof(*z));
    if (src_len < 22)
        return lms_error_set(err, LMS_EFORMAT, "zip of %zu bytes is too short", src_len);
    /* EOCD: scan backwards; its comment must end exactly at the end of the slice */
    size_t eocd = SIZE_MAX;
    size_t lowest = src_len - 22 > 65535 ? src_len - 22 - 65535 : 0;
    for (size_t i = src_len - 22 + 1; i-- > lowest;)
        if (le(p + i, 4) == SIG_EOCD && i + 22 + le(p + i + 20, 2) == src_len) {
            eocd = i;
            break;
        }
    if (eocd == SIZE_MAX)
        return lms_error_set(err, LMS_EFORMAT, "no zip end-of-central-directory record");
    uint64_t n_ent = le(p + eocd + 10, 2), cd_size = le(p + eocd + 12, 4),
             cd_off = le(p + eocd + 16, 4);
    if (le(p + eocd + 4, 2) != 0 || le(p + eocd + 6, 2) != 0 ||
        le(p + eocd + 8, 2) != n_ent)
        return lms_error_set(err, LMS_EUNSUPPORTED, "multi-disk zip");
    uint64_t cd_limit = eocd;
    if (n_ent == 0xffff || cd_size == U32_MAX_FIELD || cd_off == U32_MAX_FIELD) {
        if (eocd < 20 || le(p + eocd - 20, 4) != SIG_LOC64)
            return lms_error_set(err, LMS_EFORMAT, "zip64 fields without a zip64 locator");
        uint64_t e64 = le(p + eocd - 20 + 8, 8);
        if (e64 > eocd - 20 || eocd - 20 - e64 < 56 || le(p + e64, 4) != SIG_EOCD64)
            return lms_error_set(err, LMS_EFORMAT, "bad zip64 end record offset %llu",
                                 (unsigned long long)e64);
        n_ent = le(p + e64 + 32, 8);
        cd_size = le(p + e64 + 40, 8);
        cd_off = le(p + e64 + 48, 8);
        cd_limit = e64;
    }
    if (cd_off > cd_limit || cd_size > cd_limit - cd_off)
        return lms_error_set(err, LMS_EFORMAT, "central directory [%llu, +%llu) outside the zip",
                             (unsigned long long)cd_off, (unsigned long long)cd_size);
    if (n_ent == 0 || n_ent > cd_size / 46)
        return lms_error_set(err, LMS_EFORMAT, "%llu entries in a %llu-byte central directory",
                             (unsigned long long)n_ent, (unsigned long long)cd_size);
    z->entries = lms_calloc((size_t)n_ent, sizeof(*z->entries));
    if (!z->entries)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    const unsigned char *q = p + cd_off, *end = p + cd_off + cd_size;
    for (uint64_t k = 0; k < n_ent; k++) {
        if (end - q < 46 || le(q, 4) != SIG_CENTRAL)
            return lms_error_set(err, LMS_EFORMAT, "central header %llu: bad signature",
                                 (unsigned long long)k);
        unsigned flags = (unsigned)le(q + 8, 2), method = (unsigned)le(q + 10, 2);
        uint64_t csize = le(q + 20, 4), usize = le(q + 24, 4), lho = le(q + 42, 4);
        size_t nl = (size_t)le(q + 28, 2), xl = (size_t)le(q + 30, 2), cl = (size_t)le(q + 32, 2);
        if ((size_t)(end - q) - 46 < nl + xl + cl)
            return lms_error_set(err, LMS_EFORMAT, "central header %llu past the directory",
                                 (unsigned long long)k);
        struct lms_zip_entry *e = &z->entries[k];
        e->name = lms_strndup((const char *)q + 46, nl);
        if (!e->name)
            return lms_error_set(err, LMS_ENOMEM, "out of memory");
        z->n_entries++;
        if (strlen(e->name) != nl)
            return lms_error_set(err, LMS_EFORMAT, "record name with a NUL byte");
        if (flags & 0x41)
            return lms_error_set(err, LMS_EUNSUPPORTED, "record '%s' is encrypted", e->name);
        if (method != 0)
            return lms_error_set(err, LMS_EUNSUPPORTED,
                                 "record '%s' uses compression method %u (torch stores only)",
                                 e->name, method);
        enum lms_status rc = parse_zip64_extra(q + 46 + nl, xl, &usize, &csize, &lho, err);
        if (rc)
            return lms_error_wrap(err, "record '%s': ", e->name);
        if (csize != usize)
            return lms_error_set(err, LMS_EFORMAT, "stored record '%s' has sizes %llu != %llu",
                                 e->name, (unsigned long long)csize, (unsigned long long)usize);
        if (lho > cd_off || cd_off - lho < 30 || le(p + lho, 4) != SIG_LOCAL)
            return lms_error_set(err, LMS_EFORMAT, "record '%s': bad local header at %llu",
                                 e->name, (unsigned long long)lho);
        uint64_t data = lho + 30 + le(p + lho + 26, 2) + le(p + lho + 28, 2);
        if (data > cd_off || usize > cd_off - data)
            return lms_error_set(err, LMS_EFORMAT,
                                 "record '%s': data [%llu, +%llu) past the records", e->name,
                                 (unsigned long long)data, (unsigned long long)usize);
        e->data_off = data;
        e->size = usize;
        e->crc = (uint32_t)le(q + 16, 4);
        q += 46 + nl + xl + cl;
    }
    const char *first = z->entries[0].name, *slash = strchr(first, '/');
    z->prefix = lms_strndup(first, slash ? (size_t)(slash - first + 1) : 0);
    if (!z->prefix)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    return LMS_OK;
}

const struct lms_zip_entry *lms_zip_find(const struct lms_zip *z, const char *rel)
{
    size_t pl = strlen(z->prefix);
    for (size_t i = 0; i < z->n_entries; i++) {
        const char *n = z->entries[i].name;
        if (strncmp(n, z->prefix, pl) == 0 && strcmp(n + pl, rel) == 0)
            return &z->entries[i];
    }
    return NULL;
}

static uint32_t crc_update(uint32_t crc, const void *src, uint64_t len)
{
    const unsigned char *p = src;
    while (len) {
        uInt n = len > (1u << 30) ? (1u << 30) : (uInt)len;
        crc = (uint32_t)crc32(crc, p, n);
        p += n;
        len -= n;
    }
    return crc;
}

enum lms_status lms_zip_check_crc(const void *src, const struct lms_zip_entry *e,
                                  struct lms_error *err)
{
    uint32_t c = crc_update(0, (const unsigned char *)src + e->data_off, e->size);
    if (c != e->crc)
        return lms_error_set(err, LMS_EFORMAT, "record '%s': CRC-32 %08x, directory says %08x",
                             e->name, c, e->crc);
    return LMS_OK;
}

/* ---- writer ------------------------------------------------------------------------------- */

static void put(unsigned char **q, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        *(*q)++ = (unsigned char)(v >> (8 * i));
}

static enum lms_status pwrite_all(struct lms_zip_writer *w, const void *src, size_t len,
                                  uint64_t at, struct lms_error *err)
{
    const char *p = src;
    if (w->fd < 0) {
        if (at + len > w->mem_cap) {
            size_t cap = w->mem_cap ? w->mem_cap : 4096;
            while (cap < at + len)
                cap *= 2;
            unsigned char *m = lms_realloc(w->mem, cap);
            if (!m)
                return lms_error_set(err, LMS_ENOMEM, "out of memory");
            w->mem = m;
            w->mem_cap = cap;
        }
        memcpy(w->mem + at, src, len);
        return LMS_OK;
    }
    while (len) {
        ssize_t n = pwrite(w->fd, p, len, (off_t)(w->base + at));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return lms_error_set(err, LMS_EIO, "writing '%s': %s", w->path,
                                 n < 0 ? strerror(errno) : "short write");
        p += n;
        len -= (size_t)n;
        at += (uint64_t)n;
    }
    return LMS_OK;
}

void lms_zip_w_begin(struct lms_zip_writer *w, int fd, const char *path, uint64_t base,
                     const char *archive)
{
    memset(w, 0, sizeof(*w));
    w->fd = fd;
    w->path = path;
    w->base = base;
    snprintf(w->archive, sizeof(w->archive), "%s", archive);
}

void lms_zip_w_release(struct lms_zip_writer *w)
{
    for (size_t i = 0; i < w->n_recs; i++)
        lms_free(w->recs[i].name);
    lms_free(w->recs);
    w->recs = NULL;
    w->n_recs = w->cap_recs = 0;
}

/* Length of the local header for rec (name, zip64 extra, FB padding to 64). */
static size_t local_header(const struct lms_zip_w_rec *r, unsigned char *dst)
{
    size_t nl = strlen(r->name);
    size_t x = r->zip64 ? 20 : 0;
    uint64_t start = r->lho + 30 + nl + x + 4;
    size_t pad = (size_t)((ALIGN - start % ALIGN) % ALIGN);
    if (dst) {
        unsigned char *q = dst;
        put(&q, SIG_LOCAL, 4);
        put(&q, r->zip64 ? 45 : 20, 2);
        put(&q, 0x0800, 2); /* UTF-8 names; sizes and CRC in this header */
        put(&q, 0, 2);      /* stored */
        put(&q, 0, 2);      /* time */
        put(&q, 0, 2);      /* date */
        put(&q, r->crc, 4);
        put(&q, r->zip64 ? U32_MAX_FIELD : r->size, 4);
        put(&q, r->zip64 ? U32_MAX_FIELD : r->size, 4);
        put(&q, nl, 2);
        put(&q, x + 4 + pad, 2);
        memcpy(q, r->name, nl);
        q += nl;
        if (r->zip64) {
            put(&q, 0x0001, 2);
            put(&q, 16, 2);
            put(&q, r->size, 8);
            put(&q, r->size, 8);
        }
        put(&q, 0x4246, 2); /* "FB" */
        put(&q, pad, 2);
        memset(q, 'Z', pad);
    }
    return 30 + nl + x + 4 + pad;
}

static enum lms_status rec_new(struct lms_zip_writer *w, const char *rel, uint64_t size,
                               struct lms_zip_w_rec **out, struct lms_error *err)
{
    if (w->n_recs == w->cap_recs) {
        size_t cap = w->cap_recs ? w->cap_recs * 2 : 8;
        struct lms_zip_w_rec *r = lms_realloc(w->recs, cap * sizeof(*r));
        if (!r)
            return lms_error_set(err, LMS_ENOMEM, "out of memory");
        w->recs = r;
        w->cap_recs = cap;
    }
    size_t al = strlen(w->archive), rl = strlen(rel);
    char *name = lms_malloc(al + 1 + rl + 1);
    if (!name)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    memcpy(name, w->archive, al);
    name[al] = '/';
    memcpy(name + al + 1, rel, rl + 1);
    if (al + 1 + rl > 0xffff) {
        lms_free(name);
        return lms_error_set(err, LMS_EINVAL, "zip record name too long");
    }
    struct lms_zip_w_rec *r = &w->recs[w->n_recs++];
    r->name = name;
    r->lho = w->pos;
    r->size = size;
    r->crc = 0;
    r->zip64 = w->force_zip64 || size >= U32_MAX_FIELD;
    *out = r;
    return LMS_OK;
}

/* Writes rec's local header (again, once the CRC is known). */
static enum lms_status write_local(struct lms_zip_writer *w, const struct lms_zip_w_rec *r,
                                   struct lms_error *err)
{
    unsigned char hdr[30 + 0x10000 + 20 + 4 + ALIGN];
    size_t n = local_header(r, hdr);
    return pwrite_all(w, hdr, n, r->lho, err);
}

enum lms_status lms_zip_w_add(struct lms_zip_writer *w, const char *rel, const void *src,
                              size_t src_len, struct lms_error *err)
{
    struct lms_zip_w_rec *r;
    enum lms_status rc = rec_new(w, rel, src_len, &r, err);
    if (rc)
        return rc;
    r->crc = crc_update(0, src, src_len);
    size_t h = local_header(r, NULL);
    rc = write_local(w, r, err);
    if (!rc)
        rc = pwrite_all(w, src, src_len, r->lho + h, err);
    if (!rc)
        w->pos = r->lho + h + src_len;
    return rc;
}

enum lms_status lms_zip_w_add_view(struct lms_zip_writer *w, const char *rel,
                                   const struct lms_view *v, enum lms_dtype dt, void *buf,
                                   size_t buf_cap, struct lms_error *err)
{
    if (dt == LMS_DTYPE_COUNT)
        dt = v->dtype;
    size_t es = lms_dtype_size(dt);
    if (!es || !lms_dtype_size(v->dtype))
        return lms_error_set(err, LMS_EUNSUPPORTED, "sub-byte dtype %s in a torch file",
                             lms_dtype_name(v->dtype));
    int64_t numel = lms_view_numel(v);
    struct lms_zip_w_rec *r;
    enum lms_status rc = rec_new(w, rel, (uint64_t)numel * es, &r, err);
    if (rc)
        return rc;
    size_t h = local_header(r, NULL);
    uint64_t at = r->lho + h;
    int64_t per = (int64_t)(buf_cap / es);
    uint32_t crc = 0;
    for (int64_t e = 0; e < numel; e += per) {
        int64_t n = numel - e < per ? numel - e : per;
        rc = lms_view_read_as(v, e, n, dt, buf, err);
        if (rc)
            return rc;
        crc = crc_update(crc, buf, (uint64_t)n * es);
        rc = pwrite_all(w, buf, (size_t)n * es, at, err);
        if (rc)
            return rc;
        at += (uint64_t)n * es;
        if (numel > per)
            lms_view_drop_pages(v); /* keep the resident set at one buffer's worth */
    }
    r->crc = crc;
    rc = write_local(w, r, err);
    if (!rc)
        w->pos = at;
    return rc;
}

enum lms_status lms_zip_w_finish(struct lms_zip_writer *w, uint64_t *total,
                                 struct lms_error *err)
{
    enum lms_status rc = LMS_OK;
    uint64_t cd_off = w->pos;
    bool any64 = w->force_zip64 || w->n_recs >= 0xffff;
    for (size_t i = 0; i < w->n_recs && !rc; i++) {
        const struct lms_zip_w_rec *r = &w->recs[i];
        bool big = r->zip64, off64 = r->lho >= U32_MAX_FIELD;
        size_t nl = strlen(r->name), xl = (big ? 16 : 0) + (off64 ? 8 : 0);
        unsigned char hdr[46 + 0x10000 + 4 + 24], *q = hdr;
        put(&q, SIG_CENTRAL, 4);
        put(&q, big || off64 ? 45 : 20, 2); /* made by */
        put(&q, big || off64 ? 45 : 20, 2); /* needed */
        put(&q, 0x0800, 2);
        put(&q, 0, 2);
        put(&q, 0, 2);
        put(&q, 0, 2);
        put(&q, r->crc, 4);
        put(&q, big ? U32_MAX_FIELD : r->size, 4);
        put(&q, big ? U32_MAX_FIELD : r->size, 4);
        put(&q, nl, 2);
        put(&q, xl ? xl + 4 : 0, 2);
        put(&q, 0, 2); /* comment */
        put(&q, 0, 2); /* disk */
        put(&q, 0, 2); /* internal attributes */
        put(&q, 0, 4); /* external attributes */
        put(&q, off64 ? U32_MAX_FIELD : r->lho, 4);
        memcpy(q, r->name, nl);
        q += nl;
        if (xl) {
            put(&q, 0x0001, 2);
            put(&q, xl, 2);
            if (big) {
                put(&q, r->size, 8);
                put(&q, r->size, 8);
            }
            if (off64)
                put(&q, r->lho, 8);
        }
        rc = pwrite_all(w, hdr, (size_t)(q - hdr), w->pos, err);
        w->pos += (uint64_t)(q - hdr);
        any64 = any64 || big || off64;
    }
    uint64_t cd_size = w->pos - cd_off;
    any64 = any64 || cd_off >= U32_MAX_FIELD || cd_size >= U32_MAX_FIELD;
    unsigned char tail[56 + 20 + 22], *q = tail;
    if (!rc && any64) {
        uint64_t e64 = w->pos;
        put(&q, SIG_EOCD64, 4);
        put(&q, 44, 8);
        put(&q, 45, 2);
        put(&q, 45, 2);
        put(&q, 0, 4);
        put(&q, 0, 4);
        put(&q, w->n_recs, 8);
        put(&q, w->n_recs, 8);
        put(&q, cd_size, 8);
        put(&q, cd_off, 8);
        put(&q, SIG_LOC64, 4);
        put(&q, 0, 4);
        put(&q, e64, 8);
        put(&q, 1, 4);
    }
    if (!rc) {
        put(&q, SIG_EOCD, 4);
        put(&q, 0, 2);
        put(&q, 0, 2);
        put(&q, any64 ? 0xffff : w->n_recs, 2);
        put(&q, any64 ? 0xffff : w->n_recs, 2);
        put(&q, any64 ? U32_MAX_FIELD : cd_size, 4);
        put(&q, any64 ? U32_MAX_FIELD : cd_off, 4);
        put(&q, 0, 2);
        rc = pwrite_all(w, tail, (size_t)(q - tail), w->pos, err);
        w->pos += (uint64_t)(q - tail);
    }
    if (!rc && total)
        *total = w->pos;
    lms_zip_w_release(w);
    return rc;
}
