/* dtype casts: exhaustive over all 65,536 bf16 and f16 bit patterns, against an independent
 * arithmetic definition of each format (not the bit tricks of common/dtype.c). */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "check_main.h"
#include "lms/dtype.h"

/* Value of an IEEE-style binary format with e exponent bits and m mantissa bits. */
static double decode_ieee(uint32_t bits, int e, int m)
{
    uint32_t sign = bits >> (e + m), exp = (bits >> m) & ((1u << e) - 1), man = bits & ((1u << m) - 1);
    int bias = (1 << (e - 1)) - 1;
    double v;
    if (exp == (1u << e) - 1)
        v = man ? NAN : INFINITY;
    else if (exp == 0)
        v = ldexp((double)man, 1 - bias - m);
    else
        v = ldexp((double)(man | (1u << m)), (int)exp - bias - m);
    return sign ? -v : v;
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

START_TEST(bf16_to_f32_exhaustive)
{
    for (uint32_t h = 0; h < 65536; h++) {
        double want = decode_ieee(h, 8, 7);
        float got = lms_bf16_to_f32((uint16_t)h);
        if (isnan(want))
            ck_assert_msg(isnan(got), "bf16 %04x", h);
        else
            ck_assert_msg((double)got == want && !signbit(got) == !signbit(want), "bf16 %04x", h);
    }
}
END_TEST

START_TEST(f16_to_f32_exhaustive)
{
    for (uint32_t h = 0; h < 65536; h++) {
        double want = decode_ieee(h, 5, 10);
        float got = lms_f16_to_f32((uint16_t)h);
        if (isnan(want))
            ck_assert_msg(isnan(got), "f16 %04x", h);
        else
            ck_assert_msg((double)got == want && !signbit(got) == !signbit(want), "f16 %04x", h);
    }
}
END_TEST

/* Round trips are the identity for every non-NaN pattern; NaN stays NaN. */
START_TEST(round_trip_exhaustive)
{
    for (uint32_t h = 0; h < 65536; h++) {
        uint16_t b = lms_f32_to_bf16(lms_bf16_to_f32((uint16_t)h));
        uint16_t f = lms_f32_to_f16(lms_f16_to_f32((uint16_t)h));
        if (isnan(decode_ieee(h, 8, 7)))
            ck_assert(isnan(lms_bf16_to_f32(b)));
        else
            ck_assert_uint_eq(b, h);
        if (isnan(decode_ieee(h, 5, 10)))
            ck_assert(isnan(lms_f16_to_f32(f)));
        else
            ck_assert_uint_eq(f, h);
    }
}
END_TEST

/* Nearest-even rounding: for each adjacent pair of representable values, the midpoint and its
 * neighbours one f32 ulp away round to the expected side. */
static void check_rounding(uint16_t (*enc)(float), float (*dec)(uint16_t), uint32_t max_finite)
{
    for (uint32_t h = 0; h < max_finite; h++) {
        float lo = dec((uint16_t)h), hi = dec((uint16_t)(h + 1));
        float mid = (float)(((double)lo + (double)hi) / 2);
        if ((double)mid != ((double)lo + (double)hi) / 2)
            continue; /* midpoint not representable in f32 (does not happen for these formats) */
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        ck_assert_msg(enc(mid) == even, "midpoint above %04x", h);
        ck_assert_uint_eq(enc(nextafterf(mid, -INFINITY)), h);
        ck_assert_uint_eq(enc(nextafterf(mid, INFINITY)), h + 1);
    }
}

START_TEST(bf16_rounding)
{
    check_rounding(lms_f32_to_bf16, lms_bf16_to_f32, 0x7F7F);
}
END_TEST

START_TEST(f16_rounding)
{
    check_rounding(lms_f32_to_f16, lms_f16_to_f32, 0x7BFF);
}
END_TEST

START_TEST(specials)
{
    ck_assert_uint_eq(lms_f32_to_bf16(INFINITY), 0x7F80);
    ck_assert_uint_eq(lms_f32_to_bf16(-INFINITY), 0xFF80);
    ck_assert_uint_eq(lms_f32_to_bf16(NAN), 0x7FC0);
    ck_assert_uint_eq(lms_f32_to_f16(INFINITY), 0x7C00);
    ck_assert_uint_eq(lms_f32_to_f16(65520.0f), 0x7C00); /* rounds up to inf */
    ck_assert_uint_eq(lms_f32_to_f16(65519.0f), 0x7BFF);
    ck_assert_uint_eq(lms_f32_to_f16(-NAN) & 0x8000, 0x8000);
    ck_assert_uint_eq(lms_f32_to_f16(0x1p-25f), 0);        /* half the smallest subnormal: even */
    ck_assert_uint_eq(lms_f32_to_f16(0x1.000002p-25f), 1); /* just above: up */
    ck_assert_uint_eq(lms_f32_to_bf16(3.4e38f), 0x7F80);   /* overflow past max bf16 */
    ck_assert_uint_eq(f32_bits(lms_bf16_to_f32(0x8000)), 0x80000000u);
}
END_TEST

START_TEST(bulk_cast_matches_scalar)
{
    uint16_t src[65536], dst16[65536];
    float f[65536];
    for (uint32_t h = 0; h < 65536; h++)
        src[h] = (uint16_t)h;
    lms_cast(f, LMS_DTYPE_F32, src, LMS_DTYPE_BF16, 65536);
    lms_cast(dst16, LMS_DTYPE_F16, f, LMS_DTYPE_F32, 65536);
    for (uint32_t h = 0; h < 65536; h++)
        ck_assert_uint_eq(dst16[h], lms_f32_to_f16(lms_bf16_to_f32((uint16_t)h)));
    double d[4];
    float back[4] = {1.5f, -2.25f, 1e-3f, 3e5f};
    lms_cast(d, LMS_DTYPE_F64, back, LMS_DTYPE_F32, 4);
    ck_assert(d[0] == 1.5 && d[1] == -2.25 && d[2] == (double)1e-3f && d[3] == 3e5);
}
END_TEST


/* E4M3 ("fn") by its own definition: bias 7, 3 mantissa bits, no infinities, S.1111.111 NaN. */
static double e4m3_reference(uint8_t c)
{
    if ((c & 0x7F) == 0x7F)
        return NAN;
    unsigned exp = (c >> 3) & 0xF, man = c & 7;
    double v = exp ? ldexp(8.0 + man, (int)exp - 10) : ldexp((double)man, -9);
    return (c & 0x80) ? -v : v;
}

START_TEST(e4m3_decode_exhaustive)
{
    for (unsigned c = 0; c < 256; c++) {
        double want = e4m3_reference((uint8_t)c);
        float got = lms_e4m3_to_f32((uint8_t)c);
        if (isnan(want))
            ck_assert_msg(isnan(got), "code 0x%02x", c);
        else
            ck_assert_msg((double)got == want && !!signbit(got) == !!(c & 0x80), "code 0x%02x", c);
    }
    ck_assert(lms_e4m3_to_f32(0x7E) == 448.0f);
    ck_assert(lms_e4m3_to_f32(0x38) == 1.0f);
    ck_assert(lms_e4m3_to_f32(0x01) == 0x1p-9f);
    ck_assert(lms_e4m3_to_f32(0x08) == 0x1p-6f);
}
END_TEST

/* Every finite code encodes back to itself; every midpoint between neighbours goes to the one
 * with the even code (the even mantissa); points just off the midpoint go to the nearer one. */
START_TEST(e4m3_encode_exhaustive)
{
    for (unsigned c = 0; c < 256; c++) {
        if ((c & 0x7F) == 0x7F)
            continue;
        float v = (float)e4m3_reference((uint8_t)c);
        ck_assert_msg(lms_f32_to_e4m3(v) == c, "code 0x%02x", c);
    }
    for (unsigned c = 0; c < 0x7E; c++) {
        for (int neg = 0; neg < 2; neg++) {
            double lo = e4m3_reference((uint8_t)c), hi = e4m3_reference((uint8_t)(c + 1));
            float mid = (float)((lo + hi) / 2); /* exact in f32: a few bits at most */
            ck_assert((double)mid == (lo + hi) / 2);
            unsigned even = (c & 1) ? c + 1 : c;
            unsigned s = neg ? 0x80 : 0;
            float sg = neg ? -1.0f : 1.0f;
            ck_assert_msg(lms_f32_to_e4m3(sg * mid) == (s | even), "tie above 0x%02x", c);
            ck_assert_msg(lms_f32_to_e4m3(sg * nextafterf(mid, 0)) == (s | c), "below mid 0x%02x", c);
            ck_assert_msg(lms_f32_to_e4m3(sg * nextafterf(mid, INFINITY)) == (s | (c + 1)),
                          "above mid 0x%02x", c);
        }
    }
}
END_TEST

START_TEST(e4m3_saturation_and_specials)
{
    ck_assert_uint_eq(lms_f32_to_e4m3(464.0f), 0x7E); /* the 448/480 midpoint: saturated */
    ck_assert_uint_eq(lms_f32_to_e4m3(1e30f), 0x7E);
    ck_assert_uint_eq(lms_f32_to_e4m3(INFINITY), 0x7E);
    ck_assert_uint_eq(lms_f32_to_e4m3(-INFINITY), 0xFE);
    ck_assert_uint_eq(lms_f32_to_e4m3(-500.0f), 0xFE);
    ck_assert_uint_eq(lms_f32_to_e4m3(NAN), 0x7F);
    ck_assert_uint_eq(lms_f32_to_e4m3(-0.0f), 0x80);
    ck_assert_uint_eq(lms_f32_to_e4m3(0x1p-10f), 0x00);      /* half the smallest: tie to 0 */
    ck_assert_uint_eq(lms_f32_to_e4m3(0x1.8p-9f * 2), 0x03); /* 3 * 2^-9 exactly */
    ck_assert_uint_eq(lms_f32_to_e4m3(0x1p-30f), 0x00);
}
END_TEST

/* Hand-worked blocks: a 3 x 130 band has two blocks across (128 and 2 columns wide). */
START_TEST(fp8_blocks_hand_worked)
{
    enum { R = 3, C = 130 };
    static float w[R * C];
    for (int i = 0; i < R * C; i++)
        w[i] = 0;
    w[0] = 1.0f;           /* block 0: max |w| = 896 at (2, 5) */
    w[2 * C + 5] = -896.0f;
    w[1 * C + 7] = 3.0f;   /* 3 / 2 = 1.5: a code exactly */
    w[1 * C + 8] = 2.25f;  /* 1.125: the 1.0/1.125 grid point (e=0 step 1/8) */
    w[1 * C + 9] = 2.125f; /* 1.0625: tie between 1.0 and 1.125, to even 1.0 (0x38) */
    w[1 * C + 128] = 0.0f; /* block 1: all zero */
    float s[2];
    ck_assert(lms_fp8_band_scales(w, R, C, s));
    ck_assert(s[0] == 2.0f);
    ck_assert(s[1] == 1.0f); /* zero block */
    uint8_t q[R * C];
    lms_fp8_band_encode(w, R, C, s, q);
    ck_assert_uint_eq(q[2 * C + 5], 0xFE);      /* -448 */
    ck_assert_uint_eq(q[0], 0x30);              /* 0.5 = 2^-1: exponent 6 */
    ck_assert_uint_eq(q[1 * C + 7], 0x3C);      /* 1.5 */
    ck_assert_uint_eq(q[1 * C + 8], 0x39);      /* 1.125 */
    ck_assert_uint_eq(q[1 * C + 9], 0x38);      /* tie to even */
    ck_assert_uint_eq(q[1 * C + 128], 0x00);
    ck_assert_uint_eq(q[2 * C + 129], 0x00);
    /* a zero block dequantises to zeros */
    ck_assert(lms_e4m3_to_f32(q[C + 129]) * s[1] == 0.0f);
    /* a scale rounding makes |w| / s a hair above 448: saturated, not NaN */
    float v[1] = {448.0f * 3.0f};
    float sv[1] = {nextafterf(3.0f, 0)};
    uint8_t qv[1];
    lms_fp8_band_encode(v, 1, 1, sv, qv);
    ck_assert_uint_eq(qv[0], 0x7E);
    /* non-finite weights have no scale */
    w[5] = INFINITY;
    ck_assert(!lms_fp8_band_scales(w, R, C, s));
    w[5] = NAN;
    ck_assert(!lms_fp8_band_scales(w, R, C, s));
}
END_TEST

/* Re-quantising dequantised values with a recomputed scale gives back the same codes and scale
 * (a block whose largest code is 448, as every block this rule writes has). */
START_TEST(fp8_requantise_exact)
{
    enum { C = 128 };
    static float w[C], back[C];
    uint32_t x = 12345;
    for (int trial = 0; trial < 2000; trial++) {
        float sc = ldexpf(1.0f + (float)(x % 1000) / 1000.0f, (int)(x % 40) - 30);
        for (int i = 0; i < C; i++) {
            x = x * 1664525u + 1013904223u;
            w[i] = ((float)(x >> 8) / 16777216.0f - 0.5f) * sc;
        }
        float s1, s2;
        uint8_t q1[C], q2[C];
        ck_assert(lms_fp8_band_scales(w, 1, C, &s1));
        lms_fp8_band_encode(w, 1, C, &s1, q1);
        for (int i = 0; i < C; i++)
            back[i] = lms_e4m3_to_f32(q1[i]) * s1;
        ck_assert(lms_fp8_band_scales(back, 1, C, &s2));
        lms_fp8_band_encode(back, 1, C, &s2, q2);
        ck_assert_msg(s1 == s2, "trial %d: scale %a then %a", trial, (double)s1, (double)s2);
        ck_assert(memcmp(q1, q2, C) == 0);
    }
}
END_TEST

START_TEST(names)
{
    enum lms_dtype t;
    ck_assert(lms_dtype_parse("F8_E4M3", 7, &t) && t == LMS_DTYPE_F8_E4M3);
    ck_assert(!lms_dtype_parse("bf16", 4, &t));
    ck_assert(lms_dtype_parse_user("bf16", &t) && t == LMS_DTYPE_BF16);
    ck_assert(lms_dtype_parse_user("fp8", &t) && t == LMS_DTYPE_F8_E4M3);
    ck_assert(lms_dtype_from_torch_name("torch.float16", &t) && t == LMS_DTYPE_F16);
    ck_assert_uint_eq(lms_dtype_bits(LMS_DTYPE_F4), 4);
    ck_assert_uint_eq(lms_dtype_size(LMS_DTYPE_F6_E2M3), 0);
    ck_assert_uint_eq(lms_dtype_size(LMS_DTYPE_C64), 8);
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("dtype");
    TCase *tc = tcase_create("casts");
    tcase_add_test(tc, bf16_to_f32_exhaustive);
    tcase_add_test(tc, f16_to_f32_exhaustive);
    tcase_add_test(tc, round_trip_exhaustive);
    tcase_add_test(tc, bf16_rounding);
    tcase_add_test(tc, f16_rounding);
    tcase_add_test(tc, specials);
    tcase_add_test(tc, bulk_cast_matches_scalar);
    tcase_add_test(tc, names);
    tcase_add_test(tc, e4m3_decode_exhaustive);
    tcase_add_test(tc, e4m3_encode_exhaustive);
    tcase_add_test(tc, e4m3_saturation_and_specials);
    tcase_add_test(tc, fp8_blocks_hand_worked);
    tcase_add_test(tc, fp8_requantise_exact);
    suite_add_tcase(s, tc);
    return s;
}
