/* Megatron MMIDIDX indexed datasets: validated reader (.idx mapped, .bin read with pread) and
 * atomic writer (include/lms/dataset.h).
 *
 * The .idx arrays are not aligned (they start at byte 34), so every element is read with memcpy.
 * Validation follows the order of the header: magic, version, dtype, counts against the file
 * size, then lengths, pointers (contiguous from 0, matching the .bin size) and the document
 * index (0 .. S, non-decreasing). */
#include "lms/dataset.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/datasets/dataset_impl.h"
#include "lms/alloc.h"
#include "lms/hash.h"
#include "lms/outdir.h"
#include "lms/storage.h"

static const unsigned char idx_magic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', 0, 0};
#define IDX_HEADER 34

enum lms_index_dtype lms_index_dtype_for_vocab(int64_t n_vocab)
{
    return n_vocab < 65500 ? LMS_INDEX_U16 : LMS_INDEX_I32; /* Megatron's choice */
}

size_t lms_index_dtype_size(int code)
{
    switch (code) {
    case LMS_INDEX_U8:
    case LMS_INDEX_I8:
        return 1;
    case LMS_INDEX_I16:
    case LMS_INDEX_U16:
        return 2;
    case LMS_INDEX_I32:
        return 4;
    case LMS_INDEX_I64:
        return 8;
    default:
        return 0;
    }
}

static uint64_t rd_u64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static int64_t rd_i64(const unsigned char *p)
{
    int64_t v;
    memcpy(&v, p, 8);
    return v;
}

static int32_t rd_i32(const unsigned char *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

enum lms_status lms__idx_parse(const void *idx, size_t idx_len, uint64_t bin_len,
                               struct lms__idx *out, struct lms_error *err)
{
    const unsigned char *p = idx;
    memset(out, 0, sizeof(*out));
    if (idx_len < IDX_HEADER)
        return lms_error_set(err, LMS_EFORMAT,
                             "truncated header: %zu bytes, need at least %d", idx_len,
                             IDX_HEADER);
    if (memcmp(p, idx_magic, sizeof(idx_magic)) != 0)
        return lms_error_set(err, LMS_EFORMAT, "bad magic: not an MMIDIDX index file");
    uint64_t version = rd_u64(p + 9);
    if (version != 1)
        return lms_error_set(err, LMS_EUNSUPPORTED, "unsupported version %llu (expected 1)",
                             (unsigned long long)version);
    int code = p[17];
    size_t item = lms_index_dtype_size(code);
    if (!item)
        return lms_error_set(err, LMS_EUNSUPPORTED, "dtype code %d is not a token dtype", code);
    uint64_t n_seq = rd_u64(p + 18), n_doc_idx = rd_u64(p + 26);
    /* S and D bounded so that 34 + 12 S + 8 D cannot overflow before the size check */
    if (n_seq > ((uint64_t)1 << 56) || n_doc_idx > ((uint64_t)1 << 56))
        return lms_error_set(err, LMS_EFORMAT, "sequence count %llu or document index count "
                             "%llu is impossibly large", (unsigned long long)n_seq,
                             (unsigned long long)n_doc_idx);
    uint64_t need = IDX_HEADER + 12 * n_seq + 8 * n_doc_idx;
    if (need > idx_len)
        return lms_error_set(err, LMS_EFORMAT,
                             "truncated: %llu sequences and %llu document index entries need "
                             "%llu bytes, file has %zu", (unsigned long long)n_seq,
                             (unsigned long long)n_doc_idx, (unsigned long long)need, idx_len);
    if (n_doc_idx < 1)
        return lms_error_set(err, LMS_EFORMAT, "document index is empty (need at least 1 "
                             "entry)");
    out->code = (enum lms_index_dtype)code;
    out->itemsize = item;
    out->n_seq = (int64_t)n_seq;
    out->n_doc_idx = (int64_t)n_doc_idx;
    out->lengths = p + IDX_HEADER;
    out->pointers = p + IDX_HEADER + 4 * n_seq;
    out->doc_idx = p + IDX_HEADER + 12 * n_seq;
    /* lengths >= 0, pointers contiguous from 0 */
    uint64_t expect = 0;
    for (uint64_t k = 0; k < n_seq; k++) {
        int32_t len = rd_i32(out->lengths + 4 * k);
        int64_t ptr = rd_i64(out->pointers + 8 * k);
        if (len < 0)
            return lms_error_set(err, LMS_EFORMAT, "sequence %llu: negative length %d",
                                 (unsigned long long)k, len);
        if (ptr < 0 || (uint64_t)ptr != expect)
            return lms_error_set(err, LMS_EFORMAT, "sequence %llu: pointer %lld, expected %llu "
                                 "(sequences must be contiguous)", (unsigned long long)k,
                                 (long long)ptr, (unsigned long long)expect);
        expect += (uint64_t)len * item;
        if (expect > bin_len)
            return lms_error_set(err, LMS_EFORMAT, "sequence %llu: bytes [%lld, %llu) lie past "
                                 "the end of .bin (%llu bytes)", (unsigned long long)k,
                                 (long long)ptr, (unsigned long long)expect,
                                 (unsigned long long)bin_len);
    }
    if (expect != bin_len)
        return lms_error_set(err, LMS_EFORMAT, ".bin has %llu bytes, the index describes %llu",
                             (unsigned long long)bin_len, (unsigned long long)expect);
    int64_t prev = 0;
    for (uint64_t d = 0; d < n_doc_idx; d++) {
        int64_t v = rd_i64(out->doc_idx + 8 * d);
        if (d == 0 && v != 0)
            return lms_error_set(err, LMS_EFORMAT, "document index starts at %lld, expected 0",
                                 (long long)v);
        if (v < prev || (uint64_t)v > n_seq)
            return lms_error_set(err, LMS_EFORMAT, "document index entry %llu = %lld is out of "
                                 "order or past the %llu sequences", (unsigned long long)d,
                                 (long long)v, (unsigned long long)n_seq);
        prev = v;
    }
    if ((uint64_t)prev != n_seq)
        return lms_error_set(err, LMS_EFORMAT, "document index ends at %lld, expected the "
                             "sequence count %llu", (long long)prev,
                             (unsigned long long)n_seq);
    if (idx_len != need)
        out->trailing = idx_len - need; /* multimodal mode bytes or junk: ignored */
    out->n_tokens = (int64_t)(bin_len / item);
    return LMS_OK;
}

struct lms_dataset {
    struct lms_storage *idx_map; /* NULL for raw id files */
    int bin_fd;                  /* the token bytes, read with pread; -1 before the open */
    char *path;                  /* PREFIX, or the raw file; owned */
    char *bin_path;              /* the file bin_fd reads, for messages; owned */
    uint64_t stamp[4];           /* lms__dataset_origin */
    struct lms__idx idx;         /* parsed view of idx_map (or of raw_arrays) */
    unsigned char raw_arrays[4 + 8 + 16]; /* lengths[1], pointers[1], doc_idx[2] for raw */
};

static void path_join(char *dst, size_t cap, const char *prefix, const char *ext)
{
    snprintf(dst, cap, "%s%s", prefix, ext);
}

static uint64_t mtime_ns(const struct stat *sb)
{
    return (uint64_t)sb->st_mtim.tv_sec * 1000000000u + (uint64_t)sb->st_mtim.tv_nsec;
}

/* A handle for the data at path, nothing open yet. */
static enum lms_status dataset_new(const char *path, const char *bin_path,
                                   struct lms_dataset **out, struct lms_error *err)
{
    struct lms_dataset *ds = lms_calloc(1, sizeof(*ds));
    if (!ds)
        return lms_error_set(err, LMS_ENOMEM, "opening dataset '%s': out of memory", path);
    ds->bin_fd = -1;
    ds->path = lms_strdup(path);
    ds->bin_path = lms_strdup(bin_path);
    if (!ds->path || !ds->bin_path) {
        lms_dataset_free(ds);
        return lms_error_set(err, LMS_ENOMEM, "opening dataset '%s': out of memory", path);
    }
    *out = ds;
    return LMS_OK;
}

/* Opens the token file and keeps it open: reads are preads on it. OUT: *bin_size. */
static enum lms_status open_bin(struct lms_dataset *ds, uint64_t *bin_size,
                                struct lms_error *err)
{
    ds->bin_fd = open(ds->bin_path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (ds->bin_fd < 0 || fstat(ds->bin_fd, &sb) != 0 || !S_ISREG(sb.st_mode))
        return lms_error_set(err, LMS_EIO, "opening '%s': %s", ds->bin_path,
                             ds->bin_fd < 0 ? strerror(errno) : "not a regular file");
    ds->stamp[2] = (uint64_t)sb.st_size;
    ds->stamp[3] = mtime_ns(&sb);
    *bin_size = (uint64_t)sb.st_size;
    return LMS_OK;
}

enum lms_status lms_dataset_open(const char *prefix, struct lms_dataset **out,
                                 struct lms_error *err)
{
    char ipath[4096], bpath[4096];
    if (strlen(prefix) + 5 > sizeof(ipath))
        return lms_error_set(err, LMS_EINVAL, "dataset prefix too long");
    path_join(ipath, sizeof(ipath), prefix, ".idx");
    path_join(bpath, sizeof(bpath), prefix, ".bin");
    struct lms_dataset *ds = NULL;
    uint64_t bin_size = 0;
    enum lms_status st = dataset_new(prefix, bpath, &ds, err);
    if (st)
        return st;
    struct stat sb;
    if (!(st = lms_storage_map_file(ipath, &ds->idx_map, err)) && stat(ipath, &sb) == 0) {
        ds->stamp[0] = (uint64_t)sb.st_size;
        ds->stamp[1] = mtime_ns(&sb);
    }
    if (!st)
        st = open_bin(ds, &bin_size, err);
    if (!st && (st = lms__idx_parse(ds->idx_map->base, ds->idx_map->size, bin_size, &ds->idx,
                                    err)))
        lms_error_wrap(err, "reading '%s': ", ipath);
    if (st) {
        lms_dataset_free(ds);
        return st;
    }
    *out = ds;
    return LMS_OK;
}

enum lms_status lms_dataset_open_raw(const char *path, enum lms_index_dtype code,
                                     struct lms_dataset **out, struct lms_error *err)
{
    size_t item = lms_index_dtype_size((int)code);
    if (!item)
        return lms_error_set(err, LMS_EINVAL, "opening '%s': dtype code %d is not a token "
                             "dtype", path, (int)code);
    struct lms_dataset *ds = NULL;
    uint64_t size = 0;
    enum lms_status st = dataset_new(path, path, &ds, err);
    if (!st && (st = open_bin(ds, &size, err)))
        lms_dataset_free(ds);
    if (st)
        return st;
    if (size % item || size / item > INT32_MAX) {
        st = lms_error_set(err, LMS_EFORMAT, "reading '%s': size %llu is not a multiple of %zu "
                           "or holds more than 2^31-1 ids", path, (unsigned long long)size,
                           item);
        lms_dataset_free(ds);
        return st;
    }
    int32_t len = (int32_t)(size / item);
    int64_t zero = 0, one = 1;
    memcpy(ds->raw_arrays, &len, 4);
    memcpy(ds->raw_arrays + 4, &zero, 8);
    memcpy(ds->raw_arrays + 12, &zero, 8);
    memcpy(ds->raw_arrays + 20, &one, 8);
    ds->idx.code = code;
    ds->idx.itemsize = item;
    ds->idx.n_seq = 1;
    ds->idx.n_doc_idx = 2;
    ds->idx.lengths = ds->raw_arrays;
    ds->idx.pointers = ds->raw_arrays + 4;
    ds->idx.doc_idx = ds->raw_arrays + 12;
    ds->idx.n_tokens = len;
    *out = ds;
    return LMS_OK;
}

void lms_dataset_free(struct lms_dataset *ds)
{
    if (!ds)
        return;
    lms_storage_release(ds->idx_map);
    if (ds->bin_fd >= 0)
        close(ds->bin_fd);
    lms_free(ds->path);
    lms_free(ds->bin_path);
    lms_free(ds);
}

void lms__dataset_origin(const struct lms_dataset *ds, struct lms__dataset_origin *out)
{
    out->path = ds->path;
    memcpy(out->stamp, ds->stamp, sizeof(out->stamp));
}

enum lms_index_dtype lms_dataset_dtype(const struct lms_dataset *ds)
{
    return ds->idx.code;
}

int64_t lms_dataset_n_docs(const struct lms_dataset *ds)
{
    return ds->idx.n_doc_idx - 1;
}

int64_t lms_dataset_n_sequences(const struct lms_dataset *ds)
{
    return ds->idx.n_seq;
}

int64_t lms_dataset_n_tokens(const struct lms_dataset *ds)
{
    return ds->idx.n_tokens;
}

static int64_t seq_begin(const struct lms_dataset *ds, int64_t k)
{
    if (k >= ds->idx.n_seq)
        return ds->idx.n_tokens;
    return rd_i64(ds->idx.pointers + 8 * (size_t)k) / (int64_t)ds->idx.itemsize;
}

bool lms_dataset_doc_range(const struct lms_dataset *ds, int64_t d, int64_t *begin,
                           int64_t *end)
{
    if (d < 0 || d >= ds->idx.n_doc_idx - 1)
        return false;
    int64_t s0 = rd_i64(ds->idx.doc_idx + 8 * (size_t)d);
    int64_t s1 = rd_i64(ds->idx.doc_idx + 8 * (size_t)(d + 1));
    *begin = seq_begin(ds, s0);
    *end = seq_begin(ds, s1);
    return true;
}

/* Reads len bytes at byte offset at of the token file. A short read means the file shrank
 * since the open (its size was checked then): an I/O error naming it, where a mapping would
 * have raised SIGBUS. */
static enum lms_status read_bin(const struct lms_dataset *ds, void *dst, size_t len,
                                uint64_t at, struct lms_error *err)
{
    unsigned char *p = dst;
    while (len > 0) {
        ssize_t n = pread(ds->bin_fd, p, len, (off_t)at);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return lms_error_set(err, LMS_EIO, "reading '%s' at byte %llu: %s", ds->bin_path,
                                 (unsigned long long)at, strerror(errno));
        if (n == 0) {
            struct stat sb;
            long long now = fstat(ds->bin_fd, &sb) == 0 ? (long long)sb.st_size : -1;
            return lms_error_set(err, LMS_EIO, "reading '%s': the file now has %lld bytes, it "
                                 "had %llu when opened (truncated while in use?)",
                                 ds->bin_path, now, (unsigned long long)ds->stamp[2]);
        }
        p += n;
        len -= (size_t)n;
        at += (uint64_t)n;
    }
    return LMS_OK;
}

/* Widens n ids of the dataset's dtype at src to int32. */
static enum lms_status widen_ids(const struct lms_dataset *ds, const unsigned char *src,
                                 size_t n, int64_t first, int32_t *dst, struct lms_error *err)
{
    switch (ds->idx.code) {
    case LMS_INDEX_U8:
        for (size_t i = 0; i < n; i++)
            dst[i] = src[i];
        break;
    case LMS_INDEX_I8:
        for (size_t i = 0; i < n; i++)
            dst[i] = (int8_t)src[i];
        break;
    case LMS_INDEX_I16:
        for (size_t i = 0; i < n; i++) {
            int16_t v;
            memcpy(&v, src + 2 * i, 2);
            dst[i] = v;
        }
        break;
    case LMS_INDEX_U16:
        for (size_t i = 0; i < n; i++) {
            uint16_t v;
            memcpy(&v, src + 2 * i, 2);
            dst[i] = v;
        }
        break;
    case LMS_INDEX_I32:
        memcpy(dst, src, 4 * n);
        break;
    case LMS_INDEX_I64:
        for (size_t i = 0; i < n; i++) {
            int64_t v = rd_i64(src + 8 * i);
            if (v < INT32_MIN || v > INT32_MAX)
                return lms_error_set(err, LMS_EFORMAT, "token %lld: id %lld does not fit int32",
                                     (long long)(first + (int64_t)i), (long long)v);
            dst[i] = (int32_t)v;
        }
        break;
    }
    return LMS_OK;
}

enum lms_status lms_dataset_read(const struct lms_dataset *ds, int64_t begin, int64_t end,
                                 int32_t *dst, size_t dst_cap, struct lms_error *err)
{
    if (begin < 0 || end < begin || end > ds->idx.n_tokens)
        return lms_error_set(err, LMS_EINVAL, "token range [%lld, %lld) outside the stream of "
                             "%lld tokens", (long long)begin, (long long)end,
                             (long long)ds->idx.n_tokens);
    size_t n = (size_t)(end - begin);
    if (n > dst_cap)
        return lms_error_set(err, LMS_EINVAL, "token range of %zu ids exceeds the buffer of %zu",
                             n, dst_cap);
    size_t item = ds->idx.itemsize;
    uint64_t at = (uint64_t)begin * item;
    if (ds->idx.code == LMS_INDEX_I32)
        return read_bin(ds, dst, 4 * n, at, err);
    unsigned char chunk[8192];
    size_t per = sizeof(chunk) / item;
    for (size_t done = 0; done < n;) {
        size_t k = n - done < per ? n - done : per;
        enum lms_status st = read_bin(ds, chunk, k * item, at + done * item, err);
        if (!st)
            st = widen_ids(ds, chunk, k, begin + (int64_t)done, dst + done, err);
        if (st)
            return st;
        done += k;
    }
    return LMS_OK;
}

enum lms_status lms_dataset_read_doc(const struct lms_dataset *ds, int64_t d, int32_t **ids,
                                     size_t *n_ids, struct lms_error *err)
{
    int64_t b, e;
    if (!lms_dataset_doc_range(ds, d, &b, &e))
        return lms_error_set(err, LMS_EINVAL, "document %lld out of range (%lld documents)",
                             (long long)d, (long long)lms_dataset_n_docs(ds));
    size_t n = (size_t)(e - b);
    int32_t *buf = lms_malloc(n ? n * sizeof(int32_t) : 1);
    if (!buf)
        return lms_error_set(err, LMS_ENOMEM, "reading document %lld: out of memory",
                             (long long)d);
    enum lms_status st = lms_dataset_read(ds, b, e, buf, n, err);
    if (st) {
        lms_free(buf);
        return st;
    }
    *ids = buf;
    *n_ids = n;
    return LMS_OK;
}

/* ---- writer ---------------------------------------------------------------------------- */

#define WBUF_CAP (1u << 20)

struct lms_dataset_writer {
    char *prefix;          /* destination prefix; owned */
    char *bin_final;       /* PREFIX.bin; owned */
    char *idx_final;       /* PREFIX.idx; owned */
    struct lms_outfile bin; /* the temporary .bin beside it (fd -1 after finish) */
    bool force;            /* replace existing files */
    enum lms_index_dtype code;
    size_t itemsize;
    unsigned char *buf;    /* pending .bin bytes, WBUF_CAP */
    size_t buf_len;
    int32_t *lengths;      /* per sequence, n_seq entries */
    int64_t n_seq, cap_seq;
    int64_t *doc_idx;      /* n_doc_idx entries, starts with 0 */
    int64_t n_doc_idx, cap_doc;
    int64_t n_tokens;
    bool finished;
};

static char *concat(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *s = lms_malloc(la + lb + 1);
    if (s) {
        memcpy(s, a, la);
        memcpy(s + la, b, lb + 1);
    }
    return s;
}

enum lms_status lms_dataset_writer_new(const char *prefix, enum lms_index_dtype code, bool force,
                                       struct lms_dataset_writer **out, struct lms_error *err)
{
    size_t item = lms_index_dtype_size((int)code);
    if (!item)
        return lms_error_set(err, LMS_EINVAL, "dtype code %d is not a token dtype", (int)code);
    struct lms_dataset_writer *w = lms_calloc(1, sizeof(*w));
    if (!w)
        return lms_error_set(err, LMS_ENOMEM, "writing dataset '%s': out of memory", prefix);
    w->bin.fd = -1;
    w->force = force;
    w->code = code;
    w->itemsize = item;
    enum lms_status st = LMS_OK;
    w->prefix = lms_strdup(prefix);
    w->bin_final = concat(prefix, ".bin");
    w->idx_final = concat(prefix, ".idx");
    w->buf = lms_malloc(WBUF_CAP);
    w->cap_doc = 1024;
    w->doc_idx = lms_malloc((size_t)w->cap_doc * sizeof(int64_t));
    if (!w->prefix || !w->bin_final || !w->idx_final || !w->buf || !w->doc_idx) {
        st = lms_error_set(err, LMS_ENOMEM, "writing dataset '%s': out of memory", prefix);
        goto fail;
    }
    w->doc_idx[0] = 0;
    w->n_doc_idx = 1;
    struct stat sb;
    if (!force && (stat(w->bin_final, &sb) == 0 || stat(w->idx_final, &sb) == 0)) {
        st = lms_error_set(err, LMS_EEXIST, "'%s' or '%s' already exists (use --force to "
                           "replace)", w->bin_final, w->idx_final);
        goto fail;
    }
    st = lms_outfile_begin(w->bin_final, force, &w->bin, err);
    if (st)
        goto fail;
    *out = w;
    return LMS_OK;
fail:
    lms_dataset_writer_free(w);
    return st;
}

static enum lms_status flush_buf(struct lms_dataset_writer *w, struct lms_error *err)
{
    enum lms_status st = lms_write_all(w->bin.fd, w->buf, w->buf_len, w->bin.tmp, err);
    w->buf_len = 0;
    return st;
}

enum lms_status lms_dataset_writer_add(struct lms_dataset_writer *w, const int32_t *ids,
                                       size_t n, struct lms_error *err)
{
    if (w->finished || w->bin.fd < 0)
        return lms_error_set(err, LMS_EINVAL, "writing '%s': writer already finished",
                             w->prefix);
    if (n > INT32_MAX)
        return lms_error_set(err, LMS_EINVAL, "writing '%s': sequence of %zu ids exceeds the "
                             "int32 length field", w->prefix, n);
    int64_t lo = 0, hi = INT32_MAX;
    if (w->code == LMS_INDEX_U16)
        hi = 65535;
    else if (w->code == LMS_INDEX_U8)
        hi = 255;
    else if (w->code == LMS_INDEX_I8)
        lo = -128, hi = 127;
    else if (w->code == LMS_INDEX_I16)
        lo = -32768, hi = 32767;
    else if (w->code == LMS_INDEX_I32 || w->code == LMS_INDEX_I64)
        lo = INT32_MIN;
    for (size_t i = 0; i < n; i++)
        if (ids[i] < lo || ids[i] > hi)
            return lms_error_set(err, LMS_EINVAL, "writing '%s': id %d does not fit dtype code "
                                 "%d", w->prefix, ids[i], (int)w->code);
    if (w->n_seq == w->cap_seq) {
        int64_t cap = w->cap_seq ? 2 * w->cap_seq : 1024;
        int32_t *p = lms_realloc(w->lengths, (size_t)cap * sizeof(int32_t));
        if (!p)
            return lms_error_set(err, LMS_ENOMEM, "writing '%s': out of memory", w->prefix);
        w->lengths = p;
        w->cap_seq = cap;
    }
    for (size_t i = 0; i < n; i++) {
        if (w->buf_len + 8 > WBUF_CAP) {
            enum lms_status st = flush_buf(w, err);
            if (st)
                return st;
        }
        unsigned char *d = w->buf + w->buf_len;
        switch (w->code) {
        case LMS_INDEX_U8:
        case LMS_INDEX_I8:
            d[0] = (unsigned char)ids[i];
            break;
        case LMS_INDEX_U16: {
            uint16_t v = (uint16_t)ids[i];
            memcpy(d, &v, 2);
            break;
        }
        case LMS_INDEX_I16: {
            int16_t v = (int16_t)ids[i];
            memcpy(d, &v, 2);
            break;
        }
        case LMS_INDEX_I32:
            memcpy(d, &ids[i], 4);
            break;
        case LMS_INDEX_I64: {
            int64_t v = ids[i];
            memcpy(d, &v, 8);
            break;
        }
        }
        w->buf_len += w->itemsize;
    }
    w->lengths[w->n_seq++] = (int32_t)n;
    w->n_tokens += (int64_t)n;
    return LMS_OK;
}

enum lms_status lms_dataset_writer_end_doc(struct lms_dataset_writer *w, struct lms_error *err)
{
    if (w->n_doc_idx == w->cap_doc) {
        int64_t cap = 2 * w->cap_doc;
        int64_t *p = lms_realloc(w->doc_idx, (size_t)cap * sizeof(int64_t));
        if (!p)
            return lms_error_set(err, LMS_ENOMEM, "writing '%s': out of memory", w->prefix);
        w->doc_idx = p;
        w->cap_doc = cap;
    }
    w->doc_idx[w->n_doc_idx++] = w->n_seq;
    return LMS_OK;
}

int64_t lms_dataset_writer_n_docs(const struct lms_dataset_writer *w)
{
    return w->n_doc_idx - 1;
}

int64_t lms_dataset_writer_n_tokens(const struct lms_dataset_writer *w)
{
    return w->n_tokens;
}

static enum lms_status write_idx(struct lms_dataset_writer *w, int fd, const char *path,
                                 struct lms_error *err)
{
    unsigned char hdr[IDX_HEADER];
    uint64_t version = 1, s = (uint64_t)w->n_seq, d = (uint64_t)w->n_doc_idx;
    memcpy(hdr, idx_magic, 9);
    memcpy(hdr + 9, &version, 8);
    hdr[17] = (unsigned char)w->code;
    memcpy(hdr + 18, &s, 8);
    memcpy(hdr + 26, &d, 8);
    enum lms_status st = lms_write_all(fd, hdr, sizeof(hdr), path, err);
    if (st)
        return st;
    if (w->n_seq) {
        st = lms_write_all(fd, w->lengths, (size_t)w->n_seq * 4, path, err);
        if (st)
            return st;
    }
    /* pointers, in chunks through the bin buffer (already flushed) */
    int64_t pos = 0;
    size_t chunk = WBUF_CAP / 8, used = 0;
    int64_t *ptrs = (int64_t *)(void *)w->buf;
    for (int64_t k = 0; k < w->n_seq; k++) {
        ptrs[used++] = pos;
        pos += (int64_t)w->lengths[k] * (int64_t)w->itemsize;
        if (used == chunk || k + 1 == w->n_seq) {
            st = lms_write_all(fd, ptrs, used * 8, path, err);
            if (st)
                return st;
            used = 0;
        }
    }
    return lms_write_all(fd, w->doc_idx, (size_t)w->n_doc_idx * 8, path, err);
}

/* Whether path names the file identified by id. */
static bool is_same_file(const char *path, const struct stat *id)
{
    struct stat sb;
    return lstat(path, &sb) == 0 && sb.st_dev == id->st_dev && sb.st_ino == id->st_ino;
}

/* Unlinks path when it is still the file identified by id (and not one put there since). */
static void remove_if_same_file(const char *path, const struct stat *id)
{
    if (is_same_file(path, id))
        unlink(path);
}

enum lms_status lms_dataset_writer_finish(struct lms_dataset_writer *w, struct lms_error *err)
{
    if (w->finished)
        return LMS_OK;
    struct lms_outfile idx;
    enum lms_status st = flush_buf(w, err);
    if (!st)
        st = lms_outfile_begin(w->idx_final, w->force, &idx, err);
    if (st) {
        lms_outfile_abort(&w->bin);
        return st;
    }
    if ((st = write_idx(w, idx.fd, idx.tmp, err))) {
        lms_outfile_abort(&idx);
        lms_outfile_abort(&w->bin);
        return st;
    }
    /* .bin first: a reader never sees a new .idx next to an old .bin. When the .bin took a
     * name that was free, a failure from here on removes it again, so that a failed run leaves
     * no half dataset. With --force over an existing dataset the old .bin is already gone once
     * the new one is in place: a failed .idx commit then leaves the new .bin beside the old
     * .idx, which the reader refuses as inconsistent (sizes disagree) until a rerun. */
    struct stat bin_id, idx_id, there;
    bool bin_was_free = fstat(w->bin.fd, &bin_id) == 0 && lstat(w->bin_final, &there) != 0;
    bool idx_known = fstat(idx.fd, &idx_id) == 0;
    st = lms_outfile_commit(&w->bin, err);
    if (st) {
        lms_outfile_abort(&idx);
    } else {
        st = lms_outfile_commit(&idx, err);
    }
    /* once our .idx is in place the dataset is whole (only syncing its directory failed) */
    if (st && bin_was_free && !(idx_known && is_same_file(w->idx_final, &idx_id)))
        remove_if_same_file(w->bin_final, &bin_id);
    if (st)
        return st;
    w->finished = true;
    return LMS_OK;
}

void lms_dataset_writer_free(struct lms_dataset_writer *w)
{
    if (!w)
        return;
    lms_outfile_abort(&w->bin); /* nothing left to remove after a finish */
    lms_free(w->prefix);
    lms_free(w->bin_final);
    lms_free(w->idx_final);
    lms_free(w->buf);
    lms_free(w->lengths);
    lms_free(w->doc_idx);
    lms_free(w);
}

static bool has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

enum lms_status lms_data_open(const char *path, struct lms_dataset **ds, struct lms_error *err)
{
    char idx[4096];
    struct stat st;
    int n = snprintf(idx, sizeof idx, "%s.idx", path);
    if (n > 0 && (size_t)n < sizeof idx && stat(idx, &st) == 0)
        return lms_dataset_open(path, ds, err);
    if (has_suffix(path, ".u16"))
        return lms_dataset_open_raw(path, LMS_INDEX_U16, ds, err);
    if (has_suffix(path, ".i32"))
        return lms_dataset_open_raw(path, LMS_INDEX_I32, ds, err);
    return lms_error_set(err, LMS_EIO,
                         "dataset '%s': no '%s.idx' (and not a raw .u16/.i32 id file)", path,
                         path);
}

/* ---- identity ------------------------------------------------------------------------------ */

/* The files again, by the path the dataset was opened from: the .idx and two MiB of the .bin
 * are cheap to read, and one reader of the bytes keeps the two entry points equal. */
enum lms_status lms_dataset_fingerprint(const struct lms_dataset *ds, char hex[LMS_HASH64_HEX],
                                        struct lms_error *err)
{
    return lms_data_fingerprint(ds->path, hex, err);
}
