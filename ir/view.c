/* Lazy tensor views and their materialisation (include/lms/ir.h).
 *
 * Every view reads as a row-major run of elements. A read of [e0, e0 + n) walks the view tree:
 * storage views copy bytes, selections and concatenations split the range into runs that are
 * contiguous in their source and recurse. Runs are as long as the innermost contiguous block,
 * so reading a row selection costs one copy per row and a column selection one per element. */
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "lms/alloc.h"
#include "lms/ir.h"
#include "ir/generate.h"

static struct lms_view *view_alloc(enum lms_view_kind kind, enum lms_dtype dt, int ndim,
                                   const int64_t *shape)
{
    struct lms_view *v = lms_calloc(1, sizeof(*v));
    if (!v)
        return NULL;
    v->kind = kind;
    v->refs = 1;
    v->dtype = dt;
    v->ndim = ndim;
    if (ndim)
        memcpy(v->shape, shape, (size_t)ndim * sizeof(int64_t));
    return v;
}

static enum lms_status check_shape(int ndim, const int64_t *shape, struct lms_error *err)
{
    if (ndim < 0 || ndim > LMS_MAX_DIMS)
        return lms_error_set(err, LMS_EFORMAT, "%d dimensions (at most %d supported)", ndim,
                             LMS_MAX_DIMS);
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0)
            return lms_error_set(err, LMS_EFORMAT, "negative dimension %lld",
                                 (long long)shape[i]);
    return LMS_OK;
}

/* Element count of a shape, or -1 on overflow past 2^62. */
static int64_t shape_numel(int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] != 0 && n > (INT64_C(1) << 62) / shape[i])
            return -1;
        n *= shape[i];
    }
    return n;
}

int64_t lms_view_numel(const struct lms_view *v)
{
    return shape_numel(v->ndim, v->shape);
}

uint64_t lms_view_nbytes(const struct lms_view *v)
{
    return ((uint64_t)lms_view_numel(v) * lms_dtype_bits(v->dtype) + 7) / 8;
}

bool lms_view_is_direct(const struct lms_view *v)
{
    return v->kind == LMS_VIEW_STORAGE;
}

enum lms_status lms_view_new_storage(struct lms_storage *s, uint64_t offset, enum lms_dtype dt,
                                     int ndim, const int64_t *shape, struct lms_view **out,
                                     struct lms_error *err)
{
    enum lms_status rc = check_shape(ndim, shape, err);
    if (rc)
        return rc;
    int64_t numel = shape_numel(ndim, shape);
    if (numel < 0)
        return lms_error_set(err, LMS_EFORMAT, "element count overflows");
    uint64_t nbytes = ((uint64_t)numel * lms_dtype_bits(dt) + 7) / 8;
    if (offset > s->size || nbytes > s->size - offset)
        return lms_error_set(err, LMS_EFORMAT,
                             "bytes [%llu, %llu) lie outside the %zu-byte storage",
                             (unsigned long long)offset, (unsigned long long)(offset + nbytes),
                             s->size);
    struct lms_view *v = view_alloc(LMS_VIEW_STORAGE, dt, ndim, shape);
    if (!v)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    v->u.st.storage = lms_storage_ref(s);
    v->u.st.offset = offset;
    *out = v;
    return LMS_OK;
}

enum lms_status lms_view_new_select(struct lms_view *src, int axis, const int64_t *index,
                                    int64_t n, struct lms_view **out, struct lms_error *err)
{
    if (axis < 0 || axis >= src->ndim)
        return lms_error_set(err, LMS_EINVAL, "select axis %d of a %d-d tensor", axis,
                             src->ndim);
    if (lms_dtype_size(src->dtype) == 0)
        return lms_error_set(err, LMS_EUNSUPPORTED, "cannot slice %s tensors",
                             lms_dtype_name(src->dtype));
    for (int64_t i = 0; i < n; i++)
        if (index[i] < 0 || index[i] >= src->shape[axis])
            return lms_error_set(err, LMS_EINVAL, "index %lld out of range [0, %lld) on axis %d",
                                 (long long)index[i], (long long)src->shape[axis], axis);
    int64_t shape[LMS_MAX_DIMS];
    memcpy(shape, src->shape, sizeof(shape));
    shape[axis] = n;
    struct lms_view *v = view_alloc(LMS_VIEW_SELECT, src->dtype, src->ndim, shape);
    int64_t *copy = lms_malloc((size_t)(n ? n : 1) * sizeof(int64_t));
    if (!v || !copy) {
        lms_free(v);
        lms_free(copy);
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    if (n)
        memcpy(copy, index, (size_t)n * sizeof(int64_t));
    v->u.sel.src = lms_view_ref(src);
    v->u.sel.axis = axis;
    v->u.sel.index = copy;
    *out = v;
    return LMS_OK;
}

enum lms_status lms_view_new_range(struct lms_view *src, int axis, int64_t begin, int64_t n,
                                   struct lms_view **out, struct lms_error *err)
{
    if (axis < 0 || axis >= src->ndim || begin < 0 || n < 0 || begin + n > src->shape[axis])
        return lms_error_set(err, LMS_EINVAL, "range [%lld, %lld) out of bounds on axis %d",
                             (long long)begin, (long long)(begin + n), axis);
    /* A leading-axis range of a storage view is still contiguous: stay direct. */
    if (src->kind == LMS_VIEW_STORAGE && axis == 0 && lms_dtype_size(src->dtype)) {
        int64_t row = shape_numel(src->ndim - 1, src->shape + 1);
        int64_t shape[LMS_MAX_DIMS];
        memcpy(shape, src->shape, sizeof(shape));
        shape[0] = n;
        return lms_view_new_storage(src->u.st.storage,
                                    src->u.st.offset + (uint64_t)(begin * row) *
                                                           lms_dtype_size(src->dtype),
                                    src->dtype, src->ndim, shape, out, err);
    }
    int64_t *index = lms_malloc((size_t)(n ? n : 1) * sizeof(int64_t));
    if (!index)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    for (int64_t i = 0; i < n; i++)
        index[i] = begin + i;
    enum lms_status rc = lms_view_new_select(src, axis, index, n, out, err);
    lms_free(index);
    return rc;
}

enum lms_status lms_view_new_concat(struct lms_view *const *parts, int n_parts, int axis,
                                    struct lms_view **out, struct lms_error *err)
{
    if (n_parts < 1)
        return lms_error_set(err, LMS_EINVAL, "concatenation of no tensors");
    const struct lms_view *p0 = parts[0];
    if (axis < 0 || axis >= p0->ndim)
        return lms_error_set(err, LMS_EINVAL, "concat axis %d of a %d-d tensor", axis,
                             p0->ndim);
    if (lms_dtype_size(p0->dtype) == 0)
        return lms_error_set(err, LMS_EUNSUPPORTED, "cannot concatenate %s tensors",
                             lms_dtype_name(p0->dtype));
    int64_t shape[LMS_MAX_DIMS];
    memcpy(shape, p0->shape, sizeof(shape));
    shape[axis] = 0;
    for (int i = 0; i < n_parts; i++) {
        const struct lms_view *p = parts[i];
        if (p->dtype != p0->dtype || p->ndim != p0->ndim)
            return lms_error_set(err, LMS_ESHAPE, "concat part %d has another dtype or rank", i);
        for (int k = 0; k < p0->ndim; k++)
            if (k != axis && p->shape[k] != p0->shape[k])
                return lms_error_set(err, LMS_ESHAPE, "concat part %d: dim %d is %lld, not %lld",
                                     i, k, (long long)p->shape[k], (long long)p0->shape[k]);
        shape[axis] += p->shape[axis];
    }
    struct lms_view *v = view_alloc(LMS_VIEW_CONCAT, p0->dtype, p0->ndim, shape);
    struct lms_view **copy = lms_calloc((size_t)n_parts, sizeof(*copy));
    if (!v || !copy) {
        lms_free(v);
        lms_free(copy);
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    for (int i = 0; i < n_parts; i++)
        copy[i] = lms_view_ref(parts[i]);
    v->u.cat.parts = copy;
    v->u.cat.n_parts = n_parts;
    v->u.cat.axis = axis;
    *out = v;
    return LMS_OK;
}

enum lms_status lms_view_new_reshape(struct lms_view *src, int ndim, const int64_t *shape,
                                     struct lms_view **out, struct lms_error *err)
{
    enum lms_status rc = check_shape(ndim, shape, err);
    if (rc)
        return rc;
    if (shape_numel(ndim, shape) != lms_view_numel(src))
        return lms_error_set(err, LMS_ESHAPE, "reshape changes the element count");
    if (src->kind == LMS_VIEW_STORAGE)
        return lms_view_new_storage(src->u.st.storage, src->u.st.offset, src->dtype, ndim,
                                    shape, out, err);
    struct lms_view *v = view_alloc(LMS_VIEW_RESHAPE, src->dtype, ndim, shape);
    if (!v)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    v->u.reshape.src = lms_view_ref(src);
    *out = v;
    return LMS_OK;
}

enum lms_status lms_view_new_fp8_blocks(struct lms_view *codes, const float *scale_inv,
                                        struct lms_view **out, struct lms_error *err)
{
    if (codes->dtype != LMS_DTYPE_F8_E4M3 || codes->ndim != 2)
        return lms_error_set(err, LMS_EFORMAT, "FP8 blocks need a 2-D F8_E4M3 tensor, not %d-D %s",
                             codes->ndim, lms_dtype_name(codes->dtype));
    int64_t nb = ((codes->shape[0] + LMS_FP8_BLOCK - 1) / LMS_FP8_BLOCK) *
                 ((codes->shape[1] + LMS_FP8_BLOCK - 1) / LMS_FP8_BLOCK);
    struct lms_view *v = view_alloc(LMS_VIEW_FP8_BLOCKS, LMS_DTYPE_F32, 2, codes->shape);
    float *copy = lms_malloc((size_t)nb * sizeof(float) + 1);
    if (!v || !copy) {
        lms_free(v);
        lms_free(copy);
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    memcpy(copy, scale_inv, (size_t)nb * sizeof(float));
    v->u.fp8.src = lms_view_ref(codes);
    v->u.fp8.scale_inv = copy;
    *out = v;
    return LMS_OK;
}

struct lms_view *lms_view_ref(struct lms_view *v)
{
    if (v)
        v->refs++;
    return v;
}

void lms_view_release(struct lms_view *v)
{
    if (!v || --v->refs > 0)
        return;
    switch (v->kind) {
    case LMS_VIEW_STORAGE:
        lms_storage_release(v->u.st.storage);
        break;
    case LMS_VIEW_SELECT:
        lms_view_release(v->u.sel.src);
        lms_free(v->u.sel.index);
        break;
    case LMS_VIEW_CONCAT:
        for (int i = 0; i < v->u.cat.n_parts; i++)
            lms_view_release(v->u.cat.parts[i]);
        lms_free(v->u.cat.parts);
        break;
    case LMS_VIEW_RESHAPE:
        lms_view_release(v->u.reshape.src);
        break;
    case LMS_VIEW_GENERATED:
        break;
    case LMS_VIEW_FP8_BLOCKS:
        lms_view_release(v->u.fp8.src);
        lms_free(v->u.fp8.scale_inv);
        break;
    }
    lms_free(v);
}

/* Product of dims after axis: the length of one contiguous block along axis. */
static int64_t inner_size(const struct lms_view *v, int axis)
{
    return shape_numel(v->ndim - axis - 1, v->shape + axis + 1);
}

/* Gathers n single elements of size es from src at element offsets base + index[i] * stride.
 * The hot loop of a column selection over storage; sizes 2 and 4 get typed copies. */
static void gather_elems(char *dst, const char *src, size_t es, const int64_t *index, int64_t n,
                         int64_t stride)
{
    if (es == 2) {
        uint16_t *d = (uint16_t *)(void *)dst;
        for (int64_t i = 0; i < n; i++)
            memcpy(d + i, src + (size_t)(index[i] * stride) * 2, 2);
    } else if (es == 4) {
        uint32_t *d = (uint32_t *)(void *)dst;
        for (int64_t i = 0; i < n; i++)
            memcpy(d + i, src + (size_t)(index[i] * stride) * 4, 4);
    } else {
        for (int64_t i = 0; i < n; i++)
            memcpy(dst + (size_t)i * es, src + (size_t)(index[i] * stride) * es, es);
    }
}

static enum lms_status read_select(const struct lms_view *v, int64_t e0, int64_t n, char *dst,
                                   struct lms_error *err)
{
    const struct lms_view *src = v->u.sel.src;
    int axis = v->u.sel.axis;
    const int64_t *index = v->u.sel.index;
    int64_t inner = inner_size(v, axis);
    int64_t k_out = v->shape[axis], k_src = src->shape[axis];
    size_t es = lms_dtype_size(v->dtype);
    char *row = NULL; /* one source row, allocated once per call when a composed source needs it */
    while (n > 0) {
        int64_t block = e0 / inner; /* (outer, i) pair */
        int64_t r = e0 % inner;
        int64_t o = block / k_out, i = block % k_out;
        if (inner == 1 && src->kind != LMS_VIEW_STORAGE) {
            /* column gather from a composed source: materialise whole source rows once, then
             * gather from them, instead of one recursive read per element */
            int64_t m = k_out - i < n ? k_out - i : n;
            if (!row && !(row = lms_malloc((size_t)k_src * es)))
                return lms_error_set(err, LMS_ENOMEM, "out of memory");
            enum lms_status rc = lms_view_read(src, o * k_src, k_src, row, err);
            if (rc) {
                lms_free(row);
                return rc;
            }
            gather_elems(dst, row, es, index + i, m, 1);
            dst += (size_t)m * es;
            e0 += m;
            n -= m;
            continue;
        }
        if (inner == 1) {
            /* column gather straight from the mapping: as many elements of this outer row as
             * the request covers */
            int64_t m = k_out - i < n ? k_out - i : n;
            const char *base = (const char *)src->u.st.storage->base + src->u.st.offset +
                               (size_t)(o * k_src) * es;
            gather_elems(dst, base, es, index + i, m, 1);
            dst += (size_t)m * es;
            e0 += m;
            n -= m;
            continue;
        }
        int64_t m = inner - r < n ? inner - r : n;
        int64_t se = (o * k_src + index[i]) * inner + r;
        enum lms_status rc = lms_view_read(src, se, m, dst, err);
        if (rc) {
            lms_free(row);
            return rc;
        }
        dst += (size_t)m * es;
        e0 += m;
        n -= m;
    }
    lms_free(row);
    return LMS_OK;
}

static enum lms_status read_concat(const struct lms_view *v, int64_t e0, int64_t n, char *dst,
                                   struct lms_error *err)
{
    int axis = v->u.cat.axis;
    int64_t inner = inner_size(v, axis);
    int64_t row = v->shape[axis] * inner; /* elements per outer index */
    size_t es = lms_dtype_size(v->dtype);
    while (n > 0) {
        int64_t o = e0 / row, within = e0 % row;
        int64_t start = 0;
        int p = 0;
        while (within >= (start + v->u.cat.parts[p]->shape[axis]) * inner) {
            start += v->u.cat.parts[p]->shape[axis];
            p++;
        }
        const struct lms_view *part = v->u.cat.parts[p];
        int64_t part_row = part->shape[axis] * inner;
        int64_t off = within - start * inner;
        int64_t m = part_row - off < n ? part_row - off : n;
        enum lms_status rc = lms_view_read(part, o * part_row + off, m, dst, err);
        if (rc)
            return rc;
        dst += (size_t)m * es;
        e0 += m;
        n -= m;
    }
    return LMS_OK;
}

/* Reads codes a chunk at a time into the tail of dst's own space (a code is a quarter of its
 * f32), then widens in place from the front: element j's code sits at byte 3n + j, never
 * behind an f32 not yet written. */
static enum lms_status read_fp8_blocks(const struct lms_view *v, int64_t e0, int64_t n,
                                       float *dst, struct lms_error *err)
{
    uint8_t *codes = (uint8_t *)dst + 3 * (size_t)n;
    enum lms_status rc = lms_view_read(v->u.fp8.src, e0, n, codes, err);
    if (rc)
        return rc;
    float table[256];
    for (int c = 0; c < 256; c++)
        table[c] = lms_e4m3_to_f32((uint8_t)c);
    int64_t cols = v->shape[1];
    int64_t nbc = (cols + LMS_FP8_BLOCK - 1) / LMS_FP8_BLOCK;
    const float *scale = v->u.fp8.scale_inv;
    for (int64_t j = 0; j < n; j++) {
        int64_t e = e0 + j, r = e / cols, c = e % cols;
        dst[j] = table[codes[j]] * scale[(r / LMS_FP8_BLOCK) * nbc + c / LMS_FP8_BLOCK];
    }
    return LMS_OK;
}

enum lms_status lms_view_read(const struct lms_view *v, int64_t e0, int64_t n, void *dst,
                              struct lms_error *err)
{
    int64_t numel = lms_view_numel(v);
    if (e0 < 0 || n < 0 || e0 > numel || n > numel - e0)
        return lms_error_set(err, LMS_EINVAL, "read of elements [%lld, %lld) of %lld",
                             (long long)e0, (long long)(e0 + n), (long long)numel);
    if (n == 0)
        return LMS_OK;
    size_t es = lms_dtype_size(v->dtype);
    switch (v->kind) {
    case LMS_VIEW_STORAGE: {
        const char *base = (const char *)v->u.st.storage->base + v->u.st.offset;
        if (es == 0) {
            if (e0 != 0 || n != numel)
                return lms_error_set(err, LMS_EUNSUPPORTED,
                                     "partial read of a %s tensor", lms_dtype_name(v->dtype));
            memcpy(dst, base, lms_view_nbytes(v));
            return LMS_OK;
        }
        memcpy(dst, base + (size_t)e0 * es, (size_t)n * es);
        return LMS_OK;
    }
    case LMS_VIEW_SELECT:
        return read_select(v, e0, n, dst, err);
    case LMS_VIEW_CONCAT:
        return read_concat(v, e0, n, dst, err);
    case LMS_VIEW_RESHAPE:
        return lms_view_read(v->u.reshape.src, e0, n, dst, err);
    case LMS_VIEW_GENERATED:
        return lms__view_generate(v, e0, n, dst, err);
    case LMS_VIEW_FP8_BLOCKS:
        return read_fp8_blocks(v, e0, n, dst, err);
    }
    return lms_error_set(err, LMS_EINVAL, "unknown view kind");
}

enum lms_status lms_view_read_as(const struct lms_view *v, int64_t e0, int64_t n,
                                 enum lms_dtype dt, void *dst, struct lms_error *err)
{
    if (dt == v->dtype)
        return lms_view_read(v, e0, n, dst, err);
    if (!lms_dtype_is_castable(dt) || !lms_dtype_is_castable(v->dtype))
        return lms_error_set(err, LMS_EUNSUPPORTED, "cannot convert %s to %s",
                             lms_dtype_name(v->dtype), lms_dtype_name(dt));
    enum { CHUNK = 1 << 16 };
    size_t ses = lms_dtype_size(v->dtype), des = lms_dtype_size(dt);
    void *scratch = lms_malloc(CHUNK * ses);
    if (!scratch)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    enum lms_status rc = LMS_OK;
    char *out = dst;
    while (n > 0) {
        int64_t m = n < CHUNK ? n : CHUNK;
        rc = lms_view_read(v, e0, m, scratch, err);
        if (rc)
            break;
        lms_cast(out, dt, scratch, v->dtype, (size_t)m);
        out += (size_t)m * des;
        e0 += m;
        n -= m;
    }
    lms_free(scratch);
    return rc;
}

void lms_view_drop_pages(const struct lms_view *v)
{
    switch (v->kind) {
    case LMS_VIEW_STORAGE: {
        const struct lms_storage *s = v->u.st.storage;
        if (s->kind != LMS_STORAGE_FILE_MAP || !s->base)
            return;
        uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
        uintptr_t begin = (uintptr_t)s->base + v->u.st.offset;
        uintptr_t end = begin + lms_view_nbytes(v);
        begin &= ~(page - 1);
        /* a private read-only file mapping has no dirty pages: dropping them only unmaps them
         * from this process; a later read faults them back in from the page cache */
        madvise((void *)begin, end - begin, MADV_DONTNEED);
        return;
    }
    case LMS_VIEW_SELECT:
        lms_view_drop_pages(v->u.sel.src);
        return;
    case LMS_VIEW_CONCAT:
        for (int i = 0; i < v->u.cat.n_parts; i++)
            lms_view_drop_pages(v->u.cat.parts[i]);
        return;
    case LMS_VIEW_RESHAPE:
        lms_view_drop_pages(v->u.reshape.src);
        return;
    case LMS_VIEW_GENERATED: /* no pages behind it */
        return;
    case LMS_VIEW_FP8_BLOCKS:
        lms_view_drop_pages(v->u.fp8.src);
        return;
    }
}
