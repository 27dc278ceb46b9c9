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

START_TEST(names)
{
    enum lms_dtype t;
    ck_assert(lms_dtype_parse("F8_E4M3", 7, &t) && t == LMS_DTYPE_F8_E4M3);
    ck_assert(!lms_dtype_parse("bf16", 4, &t));
    ck_assert(lms_dtype_parse_user("bf16", &t) && t == LMS_DTYPE_BF16);
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
    suite_add_tcase(s, tc);
    return s;
}
