/* Lazy views: selections, ranges, concatenations and reshapes read the same elements as the
 * equivalent index arithmetic done by hand, for every read window. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "check_main.h"
#include "common/alloc_hook.h"
#include "lms/alloc.h"
#include "lms/ir.h"

/* A 3x4x5 float tensor with value 100*i + 10*j + k. */
static struct lms_view *make_base(void)
{
    struct lms_storage *s;
    ck_assert_int_eq(lms_storage_new_host(60 * sizeof(float), &s, NULL), LMS_OK);
    float *f = s->base;
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++)
            for (int k = 0; k < 5; k++)
                f[(i * 4 + j) * 5 + k] = (float)(100 * i + 10 * j + k);
    struct lms_view *v;
    int64_t shape[3] = {3, 4, 5};
    ck_assert_int_eq(lms_view_new_storage(s, 0, LMS_DTYPE_F32, 3, shape, &v, NULL), LMS_OK);
    lms_storage_release(s);
    return v;
}

/* Reads the whole view through every window split and checks each against want. */
static void check_all_windows(const struct lms_view *v, const float *want)
{
    int64_t n = lms_view_numel(v);
    float got[256];
    for (int64_t a = 0; a <= n; a++)
        for (int64_t b = a; b <= n; b++) {
            ck_assert_int_eq(lms_view_read(v, a, b - a, got, NULL), LMS_OK);
            for (int64_t e = a; e < b; e++)
                ck_assert_msg(got[e - a] == want[e], "element %lld: %g != %g", (long long)e,
                              got[e - a], want[e]);
        }
}

/* FP8 blocks: a 130 x 131 code matrix (blocks of 128 cut short at row 128 and column 128) under
 * four scales reads as code value x its block's scale, for windows that start and end anywhere,
 * including across the short blocks; the codes' view is read, never copied whole. */
START_TEST(fp8_blocks_dequantise)
{
    enum { R = 130, C = 131 };
    struct lms_storage *s;
    ck_assert_int_eq(lms_storage_new_host(R * C, &s, NULL), LMS_OK);
    uint8_t *codes = s->base;
    for (int i = 0; i < R * C; i++)
        codes[i] = (uint8_t)((i * 37 + i / C) % 255 == 0x7F ? 0x3F : (i * 37 + i / C) % 255);
    for (int i = 0; i < R * C; i++)
        if ((codes[i] & 0x7F) == 0x7F)
            codes[i] = 0x40;
    struct lms_view *cv, *dq;
    int64_t shape[2] = {R, C};
    ck_assert_int_eq(lms_view_new_storage(s, 0, LMS_DTYPE_F8_E4M3, 2, shape, &cv, NULL), LMS_OK);
    lms_storage_release(s);
    const float scale[4] = {0.5f, 3.0f, 0.0f, 1e-3f}; /* [2, 2] */
    ck_assert_int_eq(lms_view_new_fp8_blocks(cv, scale, &dq, NULL), LMS_OK);
    lms_view_release(cv);
    ck_assert_int_eq(dq->dtype, LMS_DTYPE_F32);
    ck_assert(dq->shape[0] == R && dq->shape[1] == C);
    static float want[R * C], got[R * C];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            uint8_t q = codes[r * C + c];
            unsigned exp = (q >> 3) & 0xF, man = q & 7;
            double v = exp ? ldexp(8.0 + man, (int)exp - 10) : ldexp((double)man, -9);
            v = (q & 0x80) ? -v : v;
            want[r * C + c] = (float)v * scale[(r / 128) * 2 + c / 128];
        }
    const int64_t windows[][2] = {{0, R * C}, {1, 300}, {127 * C + 120, 2 * C}, {128 * C - 1, 2},
                                  {R * C - 5, 5}, {130, 1}};
    for (size_t w = 0; w < sizeof windows / sizeof windows[0]; w++) {
        int64_t a = windows[w][0], n = windows[w][1];
        ck_assert_int_eq(lms_view_read(dq, a, n, got, NULL), LMS_OK);
        for (int64_t e = 0; e < n; e++)
            ck_assert_msg(memcmp(&got[e], &want[a + e], 4) == 0, "element %lld: %g != %g",
                          (long long)(a + e), got[e], want[a + e]);
    }
    lms_view_release(dq);
    /* only 2-D E4M3 codes can be dequantised */
    struct lms_view *base = make_base();
    ck_assert_int_eq(lms_view_new_fp8_blocks(base, scale, &dq, NULL), LMS_EFORMAT);
    lms_view_release(base);
}
END_TEST

START_TEST(select_each_axis)
{
    struct lms_view *base = make_base();
    int64_t idx[] = {3, 0, 2};
    for (int axis = 0; axis < 3; axis++) {
        int64_t n = axis == 0 ? 2 : 3;
        int64_t *use = axis == 0 ? (int64_t[]){2, 0} : idx;
        struct lms_view *v;
        ck_assert_int_eq(lms_view_new_select(base, axis, use, n, &v, NULL), LMS_OK);
        float want[256];
        int64_t e = 0;
        for (int i = 0; i < v->shape[0]; i++)
            for (int j = 0; j < v->shape[1]; j++)
                for (int k = 0; k < v->shape[2]; k++) {
                    int64_t si = axis == 0 ? use[i] : i, sj = axis == 1 ? use[j] : j,
                            sk = axis == 2 ? use[k] : k;
                    want[e++] = (float)(100 * si + 10 * sj + sk);
                }
        check_all_windows(v, want);
        lms_view_release(v);
    }
    lms_view_release(base);
}
END_TEST

START_TEST(nested_select_concat_reshape)
{
    struct lms_view *base = make_base();
    struct lms_view *rows, *cols, *parts[2], *cat, *flat;
    ck_assert_int_eq(lms_view_new_range(base, 0, 1, 2, &rows, NULL), LMS_OK);
    ck_assert(lms_view_is_direct(rows)); /* leading-axis range stays plain storage */
    ck_assert_int_eq(lms_view_new_select(rows, 2, (int64_t[]){4, 1}, 2, &cols, NULL), LMS_OK);
    parts[0] = cols;
    ck_assert_int_eq(lms_view_new_select(base, 0, (int64_t[]){0, 0}, 2, &parts[1], NULL), LMS_OK);
    struct lms_view *p1s;
    ck_assert_int_eq(lms_view_new_range(parts[1], 2, 0, 3, &p1s, NULL), LMS_OK);
    struct lms_view *both[2] = {cols, p1s};
    ck_assert_int_eq(lms_view_new_concat(both, 2, 2, &cat, NULL), LMS_OK); /* [2, 4, 5] */
    ck_assert_int_eq(cat->shape[2], 5);
    ck_assert_int_eq(lms_view_new_reshape(cat, 2, (int64_t[]){8, 5}, &flat, NULL), LMS_OK);
    float want[40];
    int64_t e = 0;
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4; j++) {
            want[e++] = (float)(100 * (i + 1) + 10 * j + 4);
            want[e++] = (float)(100 * (i + 1) + 10 * j + 1);
            for (int k = 0; k < 3; k++)
                want[e++] = (float)(10 * j + k);
        }
    check_all_windows(flat, want);
    float half[40];
    ck_assert_int_eq(lms_view_read_as(flat, 0, 40, LMS_DTYPE_BF16, half, NULL), LMS_OK);
    lms_view_release(flat);
    lms_view_release(cat);
    lms_view_release(p1s);
    lms_view_release(parts[1]);
    lms_view_release(cols);
    lms_view_release(rows);
    lms_view_release(base);
}
END_TEST

START_TEST(bounds_are_checked)
{
    struct lms_view *base = make_base(), *v;
    struct lms_error err;
    ck_assert_int_eq(lms_view_new_select(base, 1, (int64_t[]){4}, 1, &v, &err), LMS_EINVAL);
    ck_assert_int_eq(lms_view_new_range(base, 0, 2, 2, &v, &err), LMS_EINVAL);
    float f[4];
    ck_assert_int_eq(lms_view_read(base, 58, 4, f, &err), LMS_EINVAL);
    ck_assert_int_eq(lms_view_new_storage(base->u.st.storage, 8, LMS_DTYPE_F32, 1,
                                          (int64_t[]){59}, &v, &err),
                     LMS_EFORMAT);
    lms_view_release(base);
}
END_TEST

START_TEST(allocation_failures_do_not_leak)
{
    struct lms_view *base = make_base(), *v;
    for (long k = 0; k < 4; k++) {
        lms__alloc_fail_after(k);
        enum lms_status rc = lms_view_new_select(base, 1, (int64_t[]){1, 2}, 2, &v, NULL);
        lms__alloc_fail_after(-1);
        if (rc == LMS_OK)
            lms_view_release(v);
        else
            ck_assert_int_eq(rc, LMS_ENOMEM);
    }
    lms_view_release(base);
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("view");
    TCase *tc = tcase_create("view");
    tcase_add_test(tc, select_each_axis);
    tcase_add_test(tc, fp8_blocks_dequantise);
    tcase_add_test(tc, nested_select_concat_reshape);
    tcase_add_test(tc, bounds_are_checked);
    tcase_add_test(tc, allocation_failures_do_not_leak);
    suite_add_tcase(s, tc);
    return s;
}
