/* The GGUF container: a checked parser over bytes in memory and a header writer (gguf.h). */
#include "formats/codecs/gguf.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "lms/alloc.h"
#include "lms/dtype.h"
#include "lms/outdir.h"

/* ---- ggml types ----------------------------------------------------------------------------- */

struct ggml_type_info {
    uint32_t type;
    const char *name;
    uint32_t block_elems, block_bytes;
};

/* Block geometry of the ggml types, so that a file holding types lmsurgeon does not convert can
 * still be checked (and named) precisely. */
static const struct ggml_type_info ggml_types[] = {
    {0, "F32", 1, 4},        {1, "F16", 1, 2},        {2, "Q4_0", 32, 18},
    {3, "Q4_1", 32, 20},     {6, "Q5_0", 32, 22},     {7, "Q5_1", 32, 24},
    {8, "Q8_0", 32, 34},     {9, "Q8_1", 32, 40},     {10, "Q2_K", 256, 84},
    {11, "Q3_K", 256, 110},  {12, "Q4_K", 256, 144},  {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210},  {15, "Q8_K", 256, 292},  {16, "IQ2_XXS", 256, 66},
    {17, "IQ2_XS", 256, 74}, {18, "IQ3_XXS", 256, 98}, {19, "IQ1_S", 256, 50},
    {20, "IQ4_NL", 32, 18},  {21, "IQ3_S", 256, 110}, {22, "IQ2_S", 256, 82},
    {23, "IQ4_XS", 256, 136}, {24, "I8", 1, 1},       {25, "I16", 1, 2},
    {26, "I32", 1, 4},       {27, "I64", 1, 8},       {28, "F64", 1, 8},
    {29, "IQ1_M", 256, 56},  {30, "BF16", 1, 2},      {34, "TQ1_0", 256, 54},
    {35, "TQ2_0", 256, 66},
};

static const struct ggml_type_info *ggml_type_find(uint32_t type)
{
    for (size_t i = 0; i < sizeof ggml_types / sizeof ggml_types[0]; i++)
        if (ggml_types[i].type == type)
            return &ggml_types[i];
    return NULL;
}

bool lms_ggml_type_size(uint32_t type, uint32_t *block_elems, uint32_t *block_bytes)
{
    const struct ggml_type_info *t = ggml_type_find(type);
    if (!t)
        return false;
    *block_elems = t->block_elems;
    *block_bytes = t->block_bytes;
    return true;
}

const char *lms_ggml_type_name(uint32_t type)
{
    const struct ggml_type_info *t = ggml_type_find(type);
    return t ? t->name : NULL;
}

/* ---- Q8_0 ------------------------------------------------------------------------------------ */

/* ggml's reference Q8_0 rule: the scale d is max|x| / 127 over the block of 32, computed and
 * applied in f32 (each x multiplied by 1/d, 0 when d is 0), the quotient rounded to nearest with
 * halves away from zero; d is stored as fp16 (rounded to nearest even). */
void lms_gguf_q8_0_quantize(const float *x, uint8_t *out)
{
    float amax = 0;
    for (int i = 0; i < LMS_GGML_Q8_0_BLOCK; i++)
        amax = fmaxf(amax, fabsf(x[i]));
    float d = amax / 127.0f;
    float id = d != 0 ? 1.0f / d : 0.0f;
    uint16_t h = lms_f32_to_f16(d);
    out[0] = (uint8_t)h;
    out[1] = (uint8_t)(h >> 8);
    for (int i = 0; i < LMS_GGML_Q8_0_BLOCK; i++) {
        float q = roundf(x[i] * id); /* within [-127, 127] for finite blocks */
        /* NaN and infinities have no Q8_0 value: NaN becomes 0, the rest saturates */
        q = isnan(q) ? 0 : fminf(fmaxf(q, -127.0f), 127.0f);
        out[2 + i] = (uint8_t)(int8_t)q;
    }
}

void lms_gguf_q8_0_dequantize(const uint8_t *in, float *x)
{
    float d = lms_f16_to_f32((uint16_t)(in[0] | (in[1] << 8)));
    for (int i = 0; i < LMS_GGML_Q8_0_BLOCK; i++)
        x[i] = (float)(int8_t)in[2 + i] * d;
}

/* ---- parsing --------------------------------------------------------------------------------- */

/* A read cursor over the buffer; every take checks the bytes are there. */
struct cur {
    const uint8_t *base;
    uint64_t size, pos;
    const char *label;
    struct lms_error *err;
};

static enum lms_status truncated(struct cur *c, const char *what)
{
    return lms_error_set(c->err, LMS_EFORMAT, "'%s': truncated at byte %llu reading %s",
                         c->label, (unsigned long long)c->pos, what);
}

static enum lms_status take(struct cur *c, uint64_t n, const char *what, const uint8_t **out)
{
    *out = NULL;
    if (n > c->size - c->pos)
        return truncated(c, what);
    *out = c->base + c->pos;
    c->pos += n;
    return LMS_OK;
}

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static enum lms_status take_u32(struct cur *c, const char *what, uint32_t *v)
{
    const uint8_t *p = NULL;
    enum lms_status rc = take(c, 4, what, &p);
    if (!rc)
        *v = (uint32_t)le(p, 4);
    return rc;
}

static enum lms_status take_u64(struct cur *c, const char *what, uint64_t *v)
{
    const uint8_t *p = NULL;
    enum lms_status rc = take(c, 8, what, &p);
    if (!rc)
        *v = le(p, 8);
    return rc;
}

static enum lms_status take_str(struct cur *c, const char *what, struct lms_gguf_str *s)
{
    uint64_t n;
    const uint8_t *p = NULL;
    enum lms_status rc = take_u64(c, what, &n);
    if (rc)
        return rc;
    if (n > c->size - c->pos)
        return lms_error_set(c->err, LMS_EFORMAT,
                             "'%s': %s at byte %llu claims %llu bytes, past the end of the file",
                             c->label, what, (unsigned long long)(c->pos - 8),
                             (unsigned long long)n);
    rc = take(c, n, what, &p);
    s->p = (const char *)p;
    s->n = n;
    return rc;
}

/* Bytes of one scalar of type t; 0 for strings and arrays, -1 for an unknown type. */
static int scalar_size(uint32_t t)
{
    switch (t) {
    case LMS_GGUF_U8: case LMS_GGUF_I8: case LMS_GGUF_BOOL: return 1;
    case LMS_GGUF_U16: case LMS_GGUF_I16: return 2;
    case LMS_GGUF_U32: case LMS_GGUF_I32: case LMS_GGUF_F32: return 4;
    case LMS_GGUF_U64: case LMS_GGUF_I64: case LMS_GGUF_F64: return 8;
    case LMS_GGUF_STRING: case LMS_GGUF_ARRAY: return 0;
    default: return -1;
    }
}

static bool is_signed(uint32_t t)
{
    return t == LMS_GGUF_I8 || t == LMS_GGUF_I16 || t == LMS_GGUF_I32 || t == LMS_GGUF_I64;
}

static int64_t sign_extend(uint64_t v, int bytes)
{
    if (bytes == 8)
        return (int64_t)v;
    uint64_t m = UINT64_C(1) << (bytes * 8 - 1);
    return (int64_t)((v ^ m) - m);
}

static double float_of(uint64_t bits, int bytes)
{
    if (bytes == 4) {
        uint32_t b = (uint32_t)bits;
        float f;
        memcpy(&f, &b, 4);
        return f;
    }
    double d;
    memcpy(&d, &bits, 8);
    return d;
}

static enum lms_status bad_key(struct cur *c, const struct lms_gguf_str *key, const char *fmt,
                               unsigned long long v)
{
    char what[160];
    snprintf(what, sizeof what, fmt, v);
    return lms_error_set(c->err, LMS_EFORMAT, "'%s': metadata key '%.*s': %s", c->label,
                         (int)(key->n > 200 ? 200 : key->n), key->p, what);
}

static enum lms_status parse_array(struct cur *c, struct lms_gguf_kv *kv)
{
    uint32_t et;
    uint64_t n;
    enum lms_status rc = take_u32(c, "an array type", &et);
    if (!rc)
        rc = take_u64(c, "an array length", &n);
    if (rc)
        return rc;
    int es = scalar_size(et);
    if (es < 0 || et == LMS_GGUF_ARRAY)
        return bad_key(c, &kv->key, "array of unknown or nested type %llu", et);
    uint64_t left = c->size - c->pos;
    /* a string element is at least its 8-byte length */
    uint64_t min = es ? (uint64_t)es : 8;
    if (n > left / min)
        return bad_key(c, &kv->key, "array of %llu elements does not fit in the file", n);
    kv->v.arr.type = et;
    kv->v.arr.n = n;
    kv->v.arr.data = c->base + c->pos;
    uint64_t start = c->pos;
    if (es) {
        c->pos += n * (uint64_t)es;
    } else {
        for (uint64_t i = 0; i < n; i++) {
            struct lms_gguf_str s;
            if ((rc = take_str(c, "an array string", &s)))
                return rc;
        }
    }
    kv->v.arr.bytes = c->pos - start;
    return LMS_OK;
}

static enum lms_status parse_value(struct cur *c, struct lms_gguf_kv *kv)
{
    int es = scalar_size(kv->type);
    if (es < 0)
        return bad_key(c, &kv->key, "unknown value type %llu", kv->type);
    if (kv->type == LMS_GGUF_STRING)
        return take_str(c, "a string value", &kv->v.s);
    if (kv->type == LMS_GGUF_ARRAY)
        return parse_array(c, kv);
    const uint8_t *p = NULL;
    enum lms_status rc = take(c, (uint64_t)es, "a value", &p);
    if (rc)
        return rc;
    uint64_t bits = le(p, es);
    if (kv->type == LMS_GGUF_F32 || kv->type == LMS_GGUF_F64)
        kv->v.f = float_of(bits, es);
    else if (is_signed(kv->type))
        kv->v.i = sign_extend(bits, es);
    else if (kv->type == LMS_GGUF_BOOL && bits > 1)
        return bad_key(c, &kv->key, "boolean value %llu", bits);
    else
        kv->v.u = bits;
    return LMS_OK;
}

static bool str_eq(const struct lms_gguf_str *a, const struct lms_gguf_str *b)
{
    return a->n == b->n && memcmp(a->p, b->p, a->n) == 0;
}

static enum lms_status parse_kvs(struct cur *c, struct lms_gguf *g)
{
    /* each pair takes at least a key length and a type */
    if (g->n_kv > (c->size - c->pos) / 12)
        return lms_error_set(c->err, LMS_EFORMAT, "'%s': %llu metadata pairs do not fit in the "
                             "file", c->label, (unsigned long long)g->n_kv);
    g->kv = lms_calloc(g->n_kv ? g->n_kv : 1, sizeof *g->kv);
    if (!g->kv)
        return lms_error_set(c->err, LMS_ENOMEM, "out of memory");
    for (uint64_t i = 0; i < g->n_kv; i++) {
        struct lms_gguf_kv *kv = &g->kv[i];
        enum lms_status rc = take_str(c, "a metadata key", &kv->key);
        if (!rc)
            rc = take_u32(c, "a metadata type", &kv->type);
        if (!rc)
            rc = parse_value(c, kv);
        if (rc)
            return rc;
        for (uint64_t j = 0; j < i; j++)
            if (str_eq(&g->kv[j].key, &kv->key))
                return bad_key(c, &kv->key, "appears %llu times", 2);
    }
    return LMS_OK;
}

static enum lms_status tensor_error(struct cur *c, const struct lms_gguf_tensor *t,
                                    const char *fmt, unsigned long long v)
{
    char what[160];
    snprintf(what, sizeof what, fmt, v);
    return lms_error_set(c->err, LMS_EFORMAT, "'%s': tensor '%.*s': %s", c->label,
                         (int)(t->name.n > 200 ? 200 : t->name.n), t->name.p, what);
}

/* Element count and byte size of t, checked for overflow and whole blocks. */
static enum lms_status tensor_size(struct cur *c, struct lms_gguf_tensor *t)
{
    const struct ggml_type_info *ti = ggml_type_find(t->type);
    if (!ti)
        return tensor_error(c, t, "unknown tensor type %llu", t->type);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        if (t->ne[d] == 0 || t->ne[d] > (UINT64_C(1) << 62) / numel)
            return tensor_error(c, t, "dimension %llu is zero or absurdly large", d);
        numel *= t->ne[d];
    }
    if (t->ne[0] % ti->block_elems)
        return tensor_error(c, t, "innermost dimension is not whole blocks of %llu",
                            ti->block_elems);
    t->nbytes = numel / ti->block_elems * ti->block_bytes;
    return LMS_OK;
}

static enum lms_status parse_tensor(struct cur *c, struct lms_gguf *g, uint64_t i)
{
    struct lms_gguf_tensor *t = &g->tensors[i];
    enum lms_status rc = take_str(c, "a tensor name", &t->name);
    if (!rc)
        rc = take_u32(c, "a tensor's dimension count", &t->n_dims);
    if (rc)
        return rc;
    if (t->n_dims < 1 || t->n_dims > LMS_GGUF_MAX_DIMS)
        return tensor_error(c, t, "%llu dimensions (1 to 4 allowed)", t->n_dims);
    for (int d = 0; d < LMS_GGUF_MAX_DIMS; d++)
        t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims && !rc; d++)
        rc = take_u64(c, "a tensor dimension", &t->ne[d]);
    if (!rc)
        rc = take_u32(c, "a tensor type", &t->type);
    if (!rc)
        rc = take_u64(c, "a tensor offset", &t->offset);
    if (rc)
        return rc;
    for (uint64_t j = 0; j < i; j++)
        if (str_eq(&g->tensors[j].name, &t->name))
            return tensor_error(c, t, "appears %llu times", 2);
    return tensor_size(c, t);
}

static enum lms_status read_alignment(struct cur *c, struct lms_gguf *g)
{
    g->alignment = LMS_GGUF_DEFAULT_ALIGNMENT;
    const struct lms_gguf_kv *kv = lms_gguf_find(g, "general.alignment");
    if (!kv)
        return LMS_OK;
    if (kv->type != LMS_GGUF_U32)
        return bad_key(c, &kv->key, "type %llu (u32 expected)", kv->type);
    if (kv->v.u == 0 || (kv->v.u & (kv->v.u - 1)))
        return bad_key(c, &kv->key, "%llu is not a power of two", kv->v.u);
    g->alignment = kv->v.u;
    return LMS_OK;
}

/* Each tensor's data must start on the alignment and end inside the file. */
static enum lms_status check_data(struct cur *c, struct lms_gguf *g)
{
    uint64_t pad = (g->alignment - c->pos % g->alignment) % g->alignment;
    if (pad > c->size - c->pos && g->n_tensors)
        return truncated(c, "the padding before the tensor data");
    g->data_offset = c->pos + pad;
    uint64_t avail = g->data_offset <= c->size ? c->size - g->data_offset : 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        struct lms_gguf_tensor *t = &g->tensors[i];
        if (t->offset % g->alignment)
            return tensor_error(c, t, "data offset %llu is not a multiple of the alignment",
                                t->offset);
        if (t->offset > avail || t->nbytes > avail - t->offset)
            return tensor_error(c, t, "data at offset %llu runs past the end of the file",
                                t->offset);
    }
    return LMS_OK;
}

static enum lms_status parse_header(struct cur *c, struct lms_gguf *g)
{
    const uint8_t *magic = NULL;
    enum lms_status rc = take(c, 4, "the magic", &magic);
    if (rc)
        return rc;
    if (memcmp(magic, LMS_GGUF_MAGIC, 4) != 0)
        return lms_error_set(c->err, LMS_EFORMAT, "'%s': not a GGUF file (no GGUF magic)",
                             c->label);
    if ((rc = take_u32(c, "the version", &g->version)))
        return rc;
    if (g->version != 2 && g->version != 3)
        return lms_error_set(c->err, LMS_EFORMAT, "'%s': GGUF version %u (2 or 3 supported)",
                             c->label, (unsigned)g->version);
    rc = take_u64(c, "the tensor count", &g->n_tensors);
    if (!rc)
        rc = take_u64(c, "the metadata count", &g->n_kv);
    return rc;
}

enum lms_status lms_gguf_parse(const void *buf, size_t size, const char *label,
                               struct lms_gguf *g, struct lms_error *err)
{
    memset(g, 0, sizeof *g);
    struct cur c = {.base = buf, .size = size, .label = label, .err = err};
    enum lms_status rc = parse_header(&c, g);
    if (!rc)
        rc = parse_kvs(&c, g);
    if (!rc)
        rc = read_alignment(&c, g);
    if (rc)
        return rc;
    /* each tensor info takes at least a name length, one dim, a type and an offset */
    if (g->n_tensors > (c.size - c.pos) / 28)
        return lms_error_set(err, LMS_EFORMAT, "'%s': %llu tensors do not fit in the file",
                             label, (unsigned long long)g->n_tensors);
    g->tensors = lms_calloc(g->n_tensors ? g->n_tensors : 1, sizeof *g->tensors);
    if (!g->tensors)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    for (uint64_t i = 0; i < g->n_tensors && !rc; i++)
        rc = parse_tensor(&c, g, i);
    if (!rc)
        rc = check_data(&c, g);
    return rc;
}

void lms_gguf_release(struct lms_gguf *g)
{
    lms_free(g->kv);
    lms_free(g->tensors);
    memset(g, 0, sizeof *g);
}

const struct lms_gguf_kv *lms_gguf_find(const struct lms_gguf *g, const char *key)
{
    size_t n = strlen(key);
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key.n == n && memcmp(g->kv[i].key.p, key, n) == 0)
            return &g->kv[i];
    return NULL;
}

struct lms_gguf_str lms_gguf_next_str(const uint8_t **cursor)
{
    struct lms_gguf_str s = {.n = le(*cursor, 8)};
    s.p = (const char *)*cursor + 8;
    *cursor += 8 + s.n;
    return s;
}

int64_t lms_gguf_arr_int(const struct lms_gguf_kv *kv, uint64_t i)
{
    int es = scalar_size(kv->v.arr.type);
    if (es <= 0 || i >= kv->v.arr.n)
        return 0;
    uint64_t bits = le(kv->v.arr.data + i * (uint64_t)es, es);
    if (kv->v.arr.type == LMS_GGUF_F32 || kv->v.arr.type == LMS_GGUF_F64)
        return (int64_t)float_of(bits, es);
    return is_signed(kv->v.arr.type) ? sign_extend(bits, es) : (int64_t)bits;
}

/* ---- writing --------------------------------------------------------------------------------- */

static void buf_put(struct lms_gguf_buf *b, const void *p, size_t n)
{
    if (b->oom)
        return;
    if (n > b->cap - b->n) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap - b->n < n)
            cap *= 2;
        uint8_t *q = lms_realloc(b->p, cap);
        if (!q) {
            b->oom = true;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, p, n);
    b->n += n;
}

static void buf_le(struct lms_gguf_buf *b, uint64_t v, int bytes)
{
    uint8_t tmp[8];
    for (int i = 0; i < bytes; i++)
        tmp[i] = (uint8_t)(v >> (8 * i));
    buf_put(b, tmp, (size_t)bytes);
}

static void buf_str(struct lms_gguf_buf *b, const char *s, size_t n)
{
    buf_le(b, n, 8);
    buf_put(b, s, n);
}

void lms_gguf_writer_init(struct lms_gguf_writer *w)
{
    memset(w, 0, sizeof *w);
}

void lms_gguf_writer_release(struct lms_gguf_writer *w)
{
    lms_free(w->kv.p);
    lms_free(w->ti.p);
    memset(w, 0, sizeof *w);
}

static void put_key(struct lms_gguf_writer *w, const char *key, uint32_t type)
{
    buf_str(&w->kv, key, strlen(key));
    buf_le(&w->kv, type, 4);
    w->n_kv++;
}

void lms_gguf_put_u32(struct lms_gguf_writer *w, const char *key, uint32_t v)
{
    put_key(w, key, LMS_GGUF_U32);
    buf_le(&w->kv, v, 4);
}

void lms_gguf_put_i32(struct lms_gguf_writer *w, const char *key, int32_t v)
{
    put_key(w, key, LMS_GGUF_I32);
    buf_le(&w->kv, (uint32_t)v, 4);
}

void lms_gguf_put_f32(struct lms_gguf_writer *w, const char *key, float v)
{
    uint32_t bits;
    memcpy(&bits, &v, 4);
    put_key(w, key, LMS_GGUF_F32);
    buf_le(&w->kv, bits, 4);
}

void lms_gguf_put_bool(struct lms_gguf_writer *w, const char *key, bool v)
{
    put_key(w, key, LMS_GGUF_BOOL);
    buf_le(&w->kv, v ? 1 : 0, 1);
}

void lms_gguf_put_str(struct lms_gguf_writer *w, const char *key, const char *s, size_t n)
{
    put_key(w, key, LMS_GGUF_STRING);
    buf_str(&w->kv, s, n);
}

void lms_gguf_put_str_array(struct lms_gguf_writer *w, const char *key, const char *const *s,
                            const size_t *lens, uint64_t n)
{
    put_key(w, key, LMS_GGUF_ARRAY);
    buf_le(&w->kv, LMS_GGUF_STRING, 4);
    buf_le(&w->kv, n, 8);
    for (uint64_t i = 0; i < n; i++)
        buf_str(&w->kv, s[i], lens[i]);
}

void lms_gguf_put_i32_array(struct lms_gguf_writer *w, const char *key, const int32_t *v,
                            uint64_t n)
{
    put_key(w, key, LMS_GGUF_ARRAY);
    buf_le(&w->kv, LMS_GGUF_I32, 4);
    buf_le(&w->kv, n, 8);
    for (uint64_t i = 0; i < n; i++)
        buf_le(&w->kv, (uint32_t)v[i], 4);
}

static uint64_t pad_to(uint64_t n, uint64_t a)
{
    return (a - n % a) % a;
}

enum lms_status lms_gguf_add_tensor(struct lms_gguf_writer *w, const char *name, uint32_t n_dims,
                                    const uint64_t *ne, uint32_t type, uint64_t *nbytes,
                                    struct lms_error *err)
{
    const struct ggml_type_info *ti = ggml_type_find(type);
    if (!ti || n_dims < 1 || n_dims > LMS_GGUF_MAX_DIMS || ne[0] % ti->block_elems)
        return lms_error_set(err, LMS_EINVAL, "tensor '%s': cannot be stored as ggml type %u",
                             name, (unsigned)type);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; d++)
        numel *= ne[d];
    uint64_t size = numel / ti->block_elems * ti->block_bytes;
    buf_str(&w->ti, name, strlen(name));
    buf_le(&w->ti, n_dims, 4);
    for (uint32_t d = 0; d < n_dims; d++)
        buf_le(&w->ti, ne[d], 8);
    buf_le(&w->ti, type, 4);
    buf_le(&w->ti, w->data_bytes, 8);
    w->data_bytes += size + pad_to(size, LMS_GGUF_DEFAULT_ALIGNMENT);
    w->n_tensors++;
    *nbytes = size;
    return LMS_OK;
}

enum lms_status lms_gguf_write_header(struct lms_gguf_writer *w, int fd, const char *path,
                                      struct lms_error *err)
{
    struct lms_gguf_buf h = {0};
    buf_put(&h, LMS_GGUF_MAGIC, 4);
    buf_le(&h, LMS_GGUF_VERSION, 4);
    buf_le(&h, w->n_tensors, 8);
    buf_le(&h, w->n_kv, 8);
    if (!w->kv.oom)
        buf_put(&h, w->kv.p, w->kv.n);
    if (!w->ti.oom)
        buf_put(&h, w->ti.p, w->ti.n);
    static const uint8_t zeros[LMS_GGUF_DEFAULT_ALIGNMENT];
    buf_put(&h, zeros, pad_to(h.n, LMS_GGUF_DEFAULT_ALIGNMENT));
    enum lms_status rc;
    if (h.oom || w->kv.oom || w->ti.oom)
        rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
    else
        rc = lms_write_all(fd, h.p, h.n, path, err);
    lms_free(h.p);
    return rc;
}

enum lms_status lms_gguf_write_pad(int fd, uint64_t nbytes, const char *path,
                                   struct lms_error *err)
{
    static const uint8_t zeros[LMS_GGUF_DEFAULT_ALIGNMENT];
    uint64_t pad = pad_to(nbytes, LMS_GGUF_DEFAULT_ALIGNMENT);
    return pad ? lms_write_all(fd, zeros, (size_t)pad, path, err) : LMS_OK;
}
