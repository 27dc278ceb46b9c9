/* Importance scores from raw calibration sums: the derivation formulas on hand-computed sums,
 * the kept-layer choice of every layer metric (individual drops with ties to the lower index,
 * the lowest block for block metrics), merging (sums add; mismatched shapes, parts that are not
 * disjoint rows of one calibration set and overflowing sums refused with a untouched), the
 * version 2 file round trip (every double back bit for bit) and the writer's refusal of NaN and
 * infinity. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check_main.h"
#include "lms/alloc.h"
#include "lms/importance.h"

/* The provenance `lmsurgeon score` records for rows [begin, end) (README "Importance file"). */
static json_t *part(int64_t begin, int64_t end, int64_t seed, const char *data_fp)
{
    json_t *s = json_pack("{s:s,s:I,s:I,s:I,s:I,s:s,s:I,s:s,s:s,s:s}", "data", "d.u16", "rows",
                          (json_int_t)(end - begin), "row_begin", (json_int_t)begin, "row_end",
                          (json_int_t)end, "row_length", (json_int_t)8, "order", "shuffled",
                          "seed", (json_int_t)seed, "sampler", "megatron-gpt-dataset",
                          "data_fingerprint", data_fp, "model_fingerprint", "00000000000000aa");
    ck_assert_ptr_nonnull(s);
    return s;
}

/* L 3, H 2, F 2, n_h 4, n_g 2; two rows from row 2 * scale (the provenance of a part) */
static void make(struct lms_importance *imp, double scale)
{
    lms_importance_init(imp, NULL);
    imp->n_layers = 3;
    imp->hidden = 2;
    imp->ffn = 2;
    imp->n_heads = 4;
    imp->n_groups = 2;
    imp->layer_metric = LMS_LAYER_METRIC_BI;
    struct lms_importance_raw *r = &imp->raw;
    r->present = true;
    r->n_rows = 2;
    r->seq_len = 8;
    r->n_cos_rows = 16;
    r->hidden_sq = lms_calloc(12, sizeof(double));
    r->ffn_sq = lms_calloc(6, sizeof(double));
    r->head_sq = lms_calloc(12, sizeof(double));
    r->layer_cos = lms_calloc(3, sizeof(double));
    for (int i = 0; i < 12; i++) {
        r->hidden_sq[i] = scale * (i % 2 ? 4.0 : 1.0); /* sqrt: 1 for channel 0, 2 for 1 */
        r->head_sq[i] = scale * (double)(i + 1);
    }
    for (int i = 0; i < 6; i++)
        r->ffn_sq[i] = scale * 9.0 * (i + 1) * (i + 1);
    r->layer_cos[0] = 8.0 * scale; /* BI 0.5, 0.75, 0.25 with 16 rows */
    r->layer_cos[1] = 4.0 * scale;
    r->layer_cos[2] = 12.0 * scale;
    r->n_cos_rows = (int64_t)(16 * scale);
    imp->source = part((int64_t)(2 * scale), (int64_t)(2 * scale) + 2, 1234, "0123456789abcdef");
}

START_TEST(derive_formulas)
{
    struct lms_importance imp;
    struct lms_error err;
    make(&imp, 1.0);
    ck_assert_int_eq(lms_importance_derive(&imp, true, &err), LMS_OK);
    /* hidden: 6 hook points (3 layers x 2 norms) of sqrt(1) and sqrt(4) */
    ck_assert(imp.hidden_s[0] == 6.0 && imp.hidden_s[1] == 12.0);
    for (int i = 0; i < 6; i++)
        ck_assert(imp.ffn_s[i] == 3.0 * (i + 1));
    for (int i = 0; i < 12; i++)
        ck_assert(fabs(imp.heads[i] - sqrt(i + 1.0)) < 1e-15);
    /* group g of layer l: heads 2g, 2g+1: sqrt(head_sq sum) */
    ck_assert(fabs(imp.groups[0] - sqrt(1.0 + 2.0)) < 1e-15);
    ck_assert(fabs(imp.groups[5] - sqrt(11.0 + 12.0)) < 1e-15);
    ck_assert(imp.layers[0] == 0.5 && imp.layers[1] == 0.75 && imp.layers[2] == 0.25);
    lms_importance_release(&imp);
}
END_TEST

START_TEST(merge_sums)
{
    struct lms_importance a, b;
    struct lms_error err;
    make(&a, 1.0);
    make(&b, 3.0);
    ck_assert_int_eq(lms_importance_merge(&a, &b, &err), LMS_OK);
    ck_assert_int_eq(a.raw.n_rows, 4);
    ck_assert_int_eq(a.raw.n_cos_rows, 64);
    ck_assert(a.raw.ffn_sq[5] == 4.0 * 9.0 * 36.0);
    ck_assert(a.ffn_s[5] == sqrt(4.0 * 9.0 * 36.0));
    ck_assert(a.layers[2] == 1.0 - 48.0 / 64.0);
    /* refused merges leave a untouched */
    b.raw.seq_len = 16;
    ck_assert_int_eq(lms_importance_merge(&a, &b, &err), LMS_ESHAPE);
    ck_assert_msg(strstr(err.msg, "16"), "%s", err.msg);
    b.raw.seq_len = 8;
    lms_free(b.raw.ffn_sq);
    b.raw.ffn_sq = NULL;
    ck_assert_int_eq(lms_importance_merge(&a, &b, &err), LMS_ESHAPE);
    ck_assert_int_eq(a.raw.n_rows, 4);
    b.hidden = 3;
    ck_assert_int_eq(lms_importance_merge(&a, &b, &err), LMS_ESHAPE);
    lms_importance_release(&a);
    lms_importance_release(&b);
}
END_TEST

/* Refuses b (whose source is replaced by src, owned) merged into a, with a message containing
 * want; a is unchanged. */
static void refused(json_t *src, enum lms_status code, const char *want)
{
    struct lms_importance a, b;
    struct lms_error err;
    make(&a, 1.0);
    make(&b, 3.0);
    json_decref(b.source);
    b.source = src;
    char *before = json_dumps(a.source, JSON_SORT_KEYS);
    ck_assert_int_eq(lms_importance_merge(&a, &b, &err), code);
    ck_assert_msg(strstr(err.msg, want), "%s (want %s)", err.msg, want);
    char *after = json_dumps(a.source, JSON_SORT_KEYS);
    ck_assert_str_eq(before, after);
    ck_assert_int_eq(a.raw.n_rows, 2);
    ck_assert(a.raw.ffn_sq[5] == 9.0 * 36.0);
    free(before);
    free(after);
    lms_importance_release(&a);
    lms_importance_release(&b);
}

/* Only disjoint rows of one calibration set merge; the merged source lists every part. */
START_TEST(merge_provenance)
{
    /* a holds rows [2, 4) */
    refused(part(2, 4, 1234, "0123456789abcdef"), LMS_ESHAPE, "the same rows [2, 4) twice");
    refused(part(3, 5, 1234, "0123456789abcdef"), LMS_ESHAPE, "rows [2, 4) and [3, 5) overlap");
    refused(part(0, 2, 99, "0123456789abcdef"), LMS_ESHAPE, "different seeds (1234 and 99)");
    refused(part(0, 2, 1234, "fedcba9876543210"), LMS_ESHAPE,
            "different data: 'd.u16' (fingerprint 0123456789abcdef) and 'd.u16' (fingerprint "
            "fedcba9876543210)");
    json_t *p = part(0, 2, 1234, "0123456789abcdef");
    json_object_set_new(p, "order", json_string("sequential"));
    refused(p, LMS_ESHAPE, "different row orders (shuffled and sequential)");
    p = part(0, 2, 1234, "0123456789abcdef"); /* the seed of another sampler version */
    json_object_set_new(p, "sampler", json_string("windows-of-first-epochs"));
    refused(p, LMS_ESHAPE, "rows drawn in different orders (sampler megatron-gpt-dataset and "
            "windows-of-first-epochs)");
    p = part(0, 2, 1234, "0123456789abcdef");
    json_object_del(p, "sampler");
    refused(p, LMS_EFORMAT, "the second file's 'source' has no valid 'sampler'");
    p = part(0, 2, 1234, "0123456789abcdef");
    json_object_set_new(p, "model_fingerprint", json_string("00000000000000bb"));
    refused(p, LMS_ESHAPE, "different models");
    p = part(0, 2, 1234, "0123456789abcdef");
    json_object_del(p, "data_fingerprint");
    refused(p, LMS_EFORMAT, "the second file's 'source' has no valid 'data_fingerprint'");
    refused(part(0, 3, 1234, "0123456789abcdef"), LMS_EFORMAT,
            "'source' covers 3 rows but 'raw.rows' is 2");
    refused(NULL, LMS_EFORMAT, "'source' is missing");
    /* a merged file's parts are checked one by one: [0, 2) + [4, 6), then [5, 7) overlaps */
    struct lms_importance a, b, c;
    struct lms_error err;
    make(&a, 1.0);
    make(&b, 0.0);
    make(&c, 2.0);
    ck_assert_int_eq(lms_importance_merge(&c, &b, &err), LMS_OK);
    json_t *parts = json_object_get(c.source, "parts");
    ck_assert_int_eq(json_array_size(parts), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(parts, 0), "row_begin")), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(json_array_get(parts, 1), "row_begin")), 4);
    ck_assert_int_eq(json_integer_value(json_object_get(c.source, "rows")), 4);
    ck_assert_ptr_null(json_object_get(c.source, "seed"));
    json_decref(a.source);
    a.source = part(5, 7, 1234, "0123456789abcdef");
    ck_assert_int_eq(lms_importance_merge(&c, &a, &err), LMS_ESHAPE);
    ck_assert_msg(strstr(err.msg, "rows [4, 6) and [5, 7) overlap"), "%s", err.msg);
    json_decref(a.source);
    a.source = part(2, 4, 1234, "0123456789abcdef");
    ck_assert_int_eq(lms_importance_merge(&c, &a, &err), LMS_OK);
    ck_assert_int_eq(json_array_size(json_object_get(c.source, "parts")), 3);
    ck_assert_int_eq(c.raw.n_rows, 6);
    lms_importance_release(&a);
    lms_importance_release(&b);
    lms_importance_release(&c);
}
END_TEST

/* Sums that would overflow to infinity are refused naming the field, a untouched. */
START_TEST(merge_overflow)
{
    struct lms_importance a, b;
    struct lms_error err;
    make(&a, 1.0);
    make(&b, 3.0);
    a.raw.head_sq[7] = b.raw.head_sq[7] = 1.5e308;
    ck_assert_int_eq(lms_importance_merge(&a, &b, &err), LMS_EFORMAT);
    ck_assert_msg(strstr(err.msg, "the sums of 'raw.head_sq' overflow (entry 7"), "%s", err.msg);
    ck_assert(a.raw.head_sq[7] == 1.5e308 && a.raw.n_rows == 2);
    b.raw.head_sq[7] = 8.0;
    b.raw.base_loss = a.raw.base_loss = 1e308;
    ck_assert_int_eq(lms_importance_merge(&a, &b, &err), LMS_EFORMAT);
    ck_assert_msg(strstr(err.msg, "'raw.base_loss' overflow"), "%s", err.msg);
    lms_importance_release(&a);
    lms_importance_release(&b);
}
END_TEST

/* A NaN or an infinity anywhere is refused by the writer, naming the field and entry, and
 * nothing is written (json_real would have dropped the entry: a short array). */
START_TEST(write_refuses_non_finite)
{
    struct lms_importance a;
    struct lms_error err;
    char dir[] = "/tmp/lms-test-importance-XXXXXX", path[64];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/i.json", dir);
    make(&a, 1.0);
    ck_assert_int_eq(lms_importance_derive(&a, true, &err), LMS_OK);
    a.hidden_s[1] = NAN;
    ck_assert_int_eq(lms_importance_write(&a, path, false, &err), LMS_EFORMAT);
    ck_assert_msg(strstr(err.msg, "'hidden' entry 1 is not finite"), "%s", err.msg);
    ck_assert_msg(strstr(err.msg, path), "%s", err.msg);
    a.hidden_s[1] = 2.0;
    a.raw.ffn_sq[3] = INFINITY;
    ck_assert_int_eq(lms_importance_write(&a, path, false, &err), LMS_EFORMAT);
    ck_assert_msg(strstr(err.msg, "'raw.ffn_sq[1]' entry 1 is not finite"), "%s", err.msg);
    a.raw.ffn_sq[3] = 1.0;
    a.raw.base_loss = NAN;
    ck_assert_int_eq(lms_importance_write(&a, path, false, &err), LMS_EFORMAT);
    ck_assert_msg(strstr(err.msg, "'raw.base_loss' is not finite"), "%s", err.msg);
    ck_assert_int_eq(rmdir(dir), 0); /* empty: nothing written, no temporary file left */
    lms_importance_release(&a);
}
END_TEST

START_TEST(file_round_trip)
{
    struct lms_importance a, b;
    struct lms_error err;
    make(&a, 1.0 / 3.0);
    a.raw.n_cos_rows = 16;
    ck_assert_int_eq(lms_importance_derive(&a, false, &err), LMS_OK);
    char path[] = "/tmp/lms-test-importance-XXXXXX";
    int fd = mkstemp(path);
    ck_assert(fd >= 0);
    close(fd);
    ck_assert_msg(lms_importance_write(&a, path, true, &err) == LMS_OK, "%s", err.msg);
    ck_assert_msg(lms_importance_read(path, &b, &err) == LMS_OK, "%s", err.msg);
    unlink(path);
    ck_assert(b.raw.present && b.raw.n_rows == 2 && b.raw.seq_len == 8);
    ck_assert(b.layer_metric == LMS_LAYER_METRIC_BI && b.block_size == 0);
    ck_assert(!memcmp(a.raw.head_sq, b.raw.head_sq, 12 * sizeof(double)));
    ck_assert(!memcmp(a.raw.hidden_sq, b.raw.hidden_sq, 12 * sizeof(double)));
    ck_assert(!memcmp(a.raw.layer_cos, b.raw.layer_cos, 3 * sizeof(double)));
    ck_assert(!memcmp(a.heads, b.heads, 12 * sizeof(double)));
    ck_assert(b.groups == NULL && b.raw.ffn_sq != NULL);
    lms_importance_release(&a);
    lms_importance_release(&b);
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("importance");
    TCase *tc = tcase_create("raw_sums");
    tcase_add_test(tc, derive_formulas);
    tcase_add_test(tc, merge_sums);
    tcase_add_test(tc, merge_provenance);
    tcase_add_test(tc, merge_overflow);
    tcase_add_test(tc, write_refuses_non_finite);
    tcase_add_test(tc, file_round_trip);
    suite_add_tcase(s, tc);
    return s;
}
