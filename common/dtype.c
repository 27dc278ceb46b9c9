/* Element types and float conversions (include/lms/dtype.h). */
#include "lms/dtype.h"

#include <math.h>
#include <string.h>
#include <strings.h>

static const struct {
    const char *name;  /* safetensors spelling */
    const char *torch; /* config.json spelling, NULL if none */
    unsigned bits;
} dtype_table[LMS_DTYPE_COUNT] = {
    [LMS_DTYPE_BOOL] = {"BOOL", "bool", 8},
    [LMS_DTYPE_F4] = {"F4", NULL, 4},
    [LMS_DTYPE_F6_E2M3] = {"F6_E2M3", NULL, 6},
    [LMS_DTYPE_F6_E3M2] = {"F6_E3M2", NULL, 6},
    [LMS_DTYPE_U8] = {"U8", "uint8", 8},
    [LMS_DTYPE_I8] = {"I8", "int8", 8},
    [LMS_DTYPE_F8_E5M2] = {"F8_E5M2", "float8_e5m2", 8},
    [LMS_DTYPE_F8_E4M3] = {"F8_E4M3", "float8_e4m3fn", 8},
    [LMS_DTYPE_F8_E8M0] = {"F8_E8M0", "float8_e8m0fnu", 8},
    [LMS_DTYPE_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", "float8_e4m3fnuz", 8},
    [LMS_DTYPE_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", "float8_e5m2fnuz", 8},
    [LMS_DTYPE_I16] = {"I16", "int16", 16},
    [LMS_DTYPE_U16] = {"U16", "uint16", 16},
    [LMS_DTYPE_F16] = {"F16", "float16", 16},
    [LMS_DTYPE_BF16] = {"BF16", "bfloat16", 16},
    [LMS_DTYPE_I32] = {"I32", "int32", 32},
    [LMS_DTYPE_U32] = {"U32", "uint32", 32},
    [LMS_DTYPE_F32] = {"F32", "float32", 32},
    [LMS_DTYPE_C64] = {"C64", "complex64", 64},
    [LMS_DTYPE_F64] = {"F64", "float64", 64},
    [LMS_DTYPE_I64] = {"I64", "int64", 64},
    [LMS_DTYPE_U64] = {"U64", "uint64", 64},
};

const char *lms_dtype_name(enum lms_dtype t)
{
    return (unsigned)t < LMS_DTYPE_COUNT ? dtype_table[t].name : NULL;
}

const char *lms_dtype_torch_name(enum lms_dtype t)
{
    return (unsigned)t < LMS_DTYPE_COUNT ? dtype_table[t].torch : NULL;
}

bool lms_dtype_parse(const char *s, size_t n, enum lms_dtype *out)
{
    for (int i = 0; i < LMS_DTYPE_COUNT; i++) {
        const char *name = dtype_table[i].name;
        if (strlen(name) == n && memcmp(name, s, n) == 0) {
            *out = (enum lms_dtype)i;
            return true;
        }
    }
    return false;
}

bool lms_dtype_from_torch_name(const char *s, enum lms_dtype *out)
{
    if (strncmp(s, "torch.", 6) == 0)
        s += 6;
    for (int i = 0; i < LMS_DTYPE_COUNT; i++) {
        if (dtype_table[i].torch && strcmp(dtype_table[i].torch, s) == 0) {
            *out = (enum lms_dtype)i;
            return true;
        }
    }
    if (strcmp(s, "half") == 0 || strcmp(s, "float") == 0 || strcmp(s, "double") == 0) {
        *out = s[0] == 'h' ? LMS_DTYPE_F16 : s[0] == 'f' ? LMS_DTYPE_F32 : LMS_DTYPE_F64;
        return true;
    }
    return false;
}

bool lms_dtype_parse_user(const char *s, enum lms_dtype *out)
{
    static const struct {
        const char *spelling;
        enum lms_dtype t;
    } aliases[] = {
        {"bf16", LMS_DTYPE_BF16},    {"bfloat16", LMS_DTYPE_BF16}, {"f16", LMS_DTYPE_F16},
        {"fp16", LMS_DTYPE_F16},     {"half", LMS_DTYPE_F16},      {"float16", LMS_DTYPE_F16},
        {"f32", LMS_DTYPE_F32},      {"fp32", LMS_DTYPE_F32},      {"float", LMS_DTYPE_F32},
        {"float32", LMS_DTYPE_F32},  {"f64", LMS_DTYPE_F64},       {"fp64", LMS_DTYPE_F64},
        {"float64", LMS_DTYPE_F64},
        {"fp8", LMS_DTYPE_F8_E4M3},  {"f8", LMS_DTYPE_F8_E4M3},
    };
    for (size_t i = 0; i < sizeof(aliases) / sizeof(aliases[0]); i++) {
        if (strcasecmp(aliases[i].spelling, s) == 0) {
            *out = aliases[i].t;
            return true;
        }
    }
    return lms_dtype_parse(s, strlen(s), out);
}

unsigned lms_dtype_bits(enum lms_dtype t)
{
    return (unsigned)t < LMS_DTYPE_COUNT ? dtype_table[t].bits : 0;
}

size_t lms_dtype_size(enum lms_dtype t)
{
    unsigned bits = lms_dtype_bits(t);
    return bits % 8 ? 0 : bits / 8;
}

bool lms_dtype_is_castable(enum lms_dtype t)
{
    return t == LMS_DTYPE_F64 || t == LMS_DTYPE_F32 || t == LMS_DTYPE_F16 ||
           t == LMS_DTYPE_BF16;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float lms_bf16_to_f32(uint16_t h)
{
    return bits_f32((uint32_t)h << 16);
}

uint16_t lms_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u)
        return 0x7FC0; /* as PyTorch: one canonical NaN */
    /* round to nearest even on the 16 dropped bits; carries into the exponent give inf */
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float lms_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x3FFu;
    if (exp == 0x1F) /* inf / NaN: keep the payload */
        return bits_f32(sign | 0x7F800000u | (man << 13));
    if (exp != 0)
        return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
    if (man == 0)
        return bits_f32(sign);
    /* subnormal: value = man * 2^-24, exactly representable in f32 */
    float v = (float)man * 0x1p-24f;
    return (h & 0x8000u) ? -v : v;
}

uint16_t lms_f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u)
        return sign | 0x7E00u; /* NaN, sign kept (as PyTorch) */
    if (a >= 0x477FF000u)      /* >= 65520 rounds to inf; includes inf itself */
        return sign | 0x7C00u;
    if (a < 0x38800000u) { /* below the smallest normal f16 (2^-14): subnormal or zero */
        if (a < 0x33000000u) /* below half the smallest subnormal (2^-25): zero */
            return sign;
        /* add the hidden bit, shift so the f16 subnormal unit (2^-24) is bit 0, round RNE */
        uint32_t exp = a >> 23;
        uint32_t man = (a & 0x7FFFFFu) | 0x800000u;
        unsigned shift = 126u - exp; /* 14..24 */
        uint32_t q = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u)))
            q++;
        return sign | (uint16_t)q;
    }
    /* normal: rebias exponent (127 -> 15) and round the 13 dropped mantissa bits */
    uint32_t r = a - 0x38000000u; /* exponent - 112 */
    r += 0xFFFu + ((r >> 13) & 1u);
    return sign | (uint16_t)(r >> 13);
}

float lms_e4m3_to_f32(uint8_t c)
{
    unsigned exp = (c >> 3) & 0xFu, man = c & 7u;
    float v;
    if (exp == 0xF && man == 7)
        v = NAN;
    else if (exp == 0) /* subnormal: man * 2^-9 */
        v = ldexpf((float)man, -9);
    else
        v = ldexpf((float)(8u + man), (int)exp - 10); /* (1 + man/8) * 2^(exp-7) */
    return (c & 0x80u) ? -v : v;
}

uint8_t lms_f32_to_e4m3(float f)
{
    uint8_t sign = signbit(f) ? 0x80u : 0u;
    float a = fabsf(f);
    if (isnan(a))
        return sign | 0x7Fu;
    if (a >= LMS_E4M3_MAX)
        return sign | 0x7Eu;
    if (a < 0x1p-6f) /* subnormal range: the code is the count of 2^-9 steps */
        return sign | (uint8_t)nearbyintf(a * 0x1p9f);
    int e;
    frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1): unbiased exponent e - 1 */
    /* scale the significand to [8, 16) so the 3 kept mantissa bits are the integer part; the
     * scaling is by a power of two (exact), nearbyintf rounds ties to even; a carry to 16 steps
     * into the next exponent, which the code arithmetic below does by itself */
    unsigned q = (unsigned)nearbyintf(ldexpf(a, 4 - e));
    unsigned code = (unsigned)(e - 1 + 7) * 8u + (q - 8u);
    return sign | (uint8_t)(code > 0x7Eu ? 0x7Eu : code);
}

bool lms_fp8_band_scales(const float *w, int64_t rows, int64_t cols, float *scale_inv)
{
    for (int64_t c0 = 0, b = 0; c0 < cols; c0 += LMS_FP8_BLOCK, b++) {
        int64_t c1 = c0 + LMS_FP8_BLOCK < cols ? c0 + LMS_FP8_BLOCK : cols;
        float amax = 0;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = c0; c < c1; c++) {
                float a = fabsf(w[r * cols + c]);
                if (!isfinite(a))
                    return false;
                amax = a > amax ? a : amax;
            }
        float s = amax / LMS_E4M3_MAX;
        scale_inv[b] = s > 0 ? s : 1.0f;
    }
    return true;
}

void lms_fp8_band_encode(const float *w, int64_t rows, int64_t cols, const float *scale_inv,
                         uint8_t *codes)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            codes[r * cols + c] = lms_f32_to_e4m3(w[r * cols + c] / scale_inv[c / LMS_FP8_BLOCK]);
}

static double load_f64(const void *src, enum lms_dtype st, size_t i)
{
    switch (st) {
    case LMS_DTYPE_F64: {
        double d;
        memcpy(&d, (const char *)src + 8 * i, 8);
        return d;
    }
    case LMS_DTYPE_F32: {
        float f;
        memcpy(&f, (const char *)src + 4 * i, 4);
        return f;
    }
    case LMS_DTYPE_F16: {
        uint16_t h;
        memcpy(&h, (const char *)src + 2 * i, 2);
        return lms_f16_to_f32(h);
    }
    case LMS_DTYPE_BF16: {
        uint16_t h;
        memcpy(&h, (const char *)src + 2 * i, 2);
        return lms_bf16_to_f32(h);
    }
    default:
        return 0;
    }
}

static void cast_to_f32(float *dst, const void *src, enum lms_dtype st, size_t n)
{
    const uint16_t *h = src;
    if (st == LMS_DTYPE_BF16) {
        /* exact: bf16 is the top half of an f32; written as bit moves so it vectorises */
        uint32_t *o = (uint32_t *)(void *)dst;
        for (size_t i = 0; i < n; i++)
            o[i] = (uint32_t)h[i] << 16;
    } else if (st == LMS_DTYPE_F16) {
        for (size_t i = 0; i < n; i++)
            dst[i] = lms_f16_to_f32(h[i]);
    } else {
        for (size_t i = 0; i < n; i++)
            dst[i] = (float)load_f64(src, st, i);
    }
}

void lms_cast(void *dst, enum lms_dtype dt, const void *src, enum lms_dtype st, size_t n)
{
    if (dt == st) {
        if (dst != src)
            memmove(dst, src, n * lms_dtype_size(dt));
        return;
    }
    switch (dt) {
    case LMS_DTYPE_F32:
        cast_to_f32(dst, src, st, n);
        return;
    case LMS_DTYPE_BF16: {
        uint16_t *o = dst;
        if (st == LMS_DTYPE_F32) {
            const float *f = src;
            for (size_t i = 0; i < n; i++)
                o[i] = lms_f32_to_bf16(f[i]);
        } else {
            for (size_t i = 0; i < n; i++)
                o[i] = lms_f32_to_bf16((float)load_f64(src, st, i));
        }
        return;
    }
    case LMS_DTYPE_F16: {
        uint16_t *o = dst;
        if (st == LMS_DTYPE_F32) {
            const float *f = src;
            for (size_t i = 0; i < n; i++)
                o[i] = lms_f32_to_f16(f[i]);
        } else {
            for (size_t i = 0; i < n; i++)
                o[i] = lms_f32_to_f16((float)load_f64(src, st, i));
        }
        return;
    }
    case LMS_DTYPE_F64: {
        double *o = dst;
        for (size_t i = 0; i < n; i++)
            o[i] = load_f64(src, st, i);
        return;
    }
    default:
        return;
    }
}
