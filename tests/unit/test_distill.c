/* Distillation around the engine: the learning-rate schedule against the published table of the
 * seed command (max_steps 40, warm-up 1, lr 1e-4 -> 1e-5), the optimiser presets, --data-paths
 * parsing, and the blend: rows of seq_length + 1 tokens at stride seq_length, the Megatron
 * blending rule worked by hand, disjoint train and validation documents. */
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "check_main.h"
#include "lms/alloc.h"
#include "lms/distill.h"
#include "lms/train.h"

START_TEST(schedule_table)
{
    struct lms_lr_schedule s = {.lr = 1e-4, .min_lr = 1e-5, .warmup = 1, .max_steps = 40};
    /* the seed command's table, 3 significant digits */
    const int64_t steps[] = {0, 1, 2, 5, 10, 15, 20, 25, 30, 35, 39};
    const double want[] = {5.00e-5, 1.00e-4, 9.99e-5, 9.77e-5, 8.87e-5, 7.43e-5,
                           5.68e-5, 3.90e-5, 2.38e-5, 1.36e-5, 1.01e-5};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        double got = lms_lr_at(&s, steps[i]);
        ck_assert_msg(fabs(got - want[i]) <= 0.005 * want[i] + 1e-12, "step %lld: %g != %g",
                      (long long)steps[i], got, want[i]);
    }
    /* the ends exactly: the peak at s = W, the floor at s = M and after */
    ck_assert(lms_lr_at(&s, 1) == 1e-4);
    ck_assert(fabs(lms_lr_at(&s, 40) - 1e-5) < 1e-20);
    ck_assert(lms_lr_at(&s, 41) == 1e-5);
    /* no warm-up: step 0 is already on the cosine, at the peak */
    struct lms_lr_schedule c = {.lr = 2e-3, .min_lr = 2e-4, .warmup = 0, .max_steps = 10};
    ck_assert(lms_lr_at(&c, 0) == 2e-3);
    ck_assert(fabs(lms_lr_at(&c, 5) - 1.1e-3) < 1e-15);
    /* warm-up as long as the run: the floor after it, never a division by zero */
    struct lms_lr_schedule w = {.lr = 1e-3, .min_lr = 1e-4, .warmup = 5, .max_steps = 5};
    ck_assert(lms_lr_at(&w, 5) == 1e-3);
    ck_assert(lms_lr_at(&w, 6) == 1e-4);
}
END_TEST

START_TEST(optimiser_presets)
{
    struct lms_adamw_opts o;
    enum lms_optim_preset p;
    ck_assert(lms_optim_preset_parse("parity", &p) && p == LMS_OPTIM_PARITY);
    lms_optim_preset_apply(p, &o);
    ck_assert(o.beta1 == 0.9 && o.beta2 == 0.999 && o.eps == 1e-8 && o.weight_decay == 0.01 &&
              o.clip_norm == 1.0);
    ck_assert(lms_optim_preset_parse("megatron", &p) && p == LMS_OPTIM_MEGATRON);
    lms_optim_preset_apply(p, &o);
    ck_assert(o.beta1 == 0.9 && o.beta2 == 0.95 && o.eps == 1e-5 && o.weight_decay == 0.1);
    ck_assert(lms_optim_preset_parse("gpt", &p) && p == LMS_OPTIM_GPT);
    lms_optim_preset_apply(p, &o);
    ck_assert(o.beta1 == 0.9 && o.beta2 == 0.95 && o.eps == 1e-8 && o.weight_decay == 0.1 &&
              o.clip_norm == 1.0);
    ck_assert(!lms_optim_preset_parse("adam", &p));
}
END_TEST

START_TEST(data_paths_parse)
{
    struct lms_blend_source *s;
    int n;
    struct lms_error err = {0};
    char *one[] = {"prefix"};
    ck_assert_int_eq(lms_blend_sources_parse(one, 1, &s, &n, &err), LMS_OK);
    ck_assert_int_eq(n, 1);
    ck_assert_str_eq(s[0].path, "prefix");
    ck_assert(s[0].weight < 0); /* by size */
    lms_blend_sources_free(s, n);
    char *pairs[] = {"0.3", "a", "0.7", "b"};
    ck_assert_int_eq(lms_blend_sources_parse(pairs, 4, &s, &n, &err), LMS_OK);
    ck_assert_int_eq(n, 2);
    ck_assert(s[0].weight == 0.3 && s[1].weight == 0.7);
    ck_assert_str_eq(s[1].path, "b");
    lms_blend_sources_free(s, n);
    char *odd[] = {"0.3", "a", "0.7"};
    ck_assert_int_eq(lms_blend_sources_parse(odd, 3, &s, &n, &err), LMS_EINVAL);
    char *neg[] = {"-1", "a"};
    ck_assert_int_eq(lms_blend_sources_parse(neg, 2, &s, &n, &err), LMS_EINVAL);
    ck_assert_msg(strstr(err.msg, "'-1'"), "%s", err.msg);
    char *mixed[] = {"a", "0.5"};
    ck_assert_int_eq(lms_blend_sources_parse(mixed, 2, &s, &n, &err), LMS_EINVAL);
    ck_assert_int_eq(lms_blend_sources_parse(one, 0, &s, &n, &err), LMS_EINVAL);
    /* a weight a double cannot hold is a bad weight, named, not the start of a prefix list */
    char *tiny[] = {"1e-320", "a", "1", "b"};
    ck_assert_int_eq(lms_blend_sources_parse(tiny, 4, &s, &n, &err), LMS_EINVAL);
    ck_assert_msg(strstr(err.msg, "weight '1e-320' is not a positive number a double can hold"),
                  "%s", err.msg);
    char *huge[] = {"0.5", "a", "1e400", "b"};
    ck_assert_int_eq(lms_blend_sources_parse(huge, 4, &s, &n, &err), LMS_EINVAL);
    ck_assert_msg(strstr(err.msg, "weight '1e400'"), "%s", err.msg);
}
END_TEST

/* A dataset of n_docs documents of doc_len ids each; id = 1000 * doc + position. */
static void write_dataset(const char *prefix, int n_docs, int doc_len)
{
    struct lms_dataset_writer *w;
    struct lms_error err = {0};
    ck_assert_int_eq(lms_dataset_writer_new(prefix, LMS_INDEX_I32, true, &w, &err), LMS_OK);
    int32_t *ids = lms_malloc((size_t)doc_len * sizeof *ids);
    for (int d = 0; d < n_docs; d++) {
        for (int i = 0; i < doc_len; i++)
            ids[i] = 1000 * d + i;
        ck_assert_int_eq(lms_dataset_writer_add(w, ids, (size_t)doc_len, &err), LMS_OK);
        ck_assert_int_eq(lms_dataset_writer_end_doc(w, &err), LMS_OK);
    }
    lms_free(ids);
    ck_assert_int_eq(lms_dataset_writer_finish(w, &err), LMS_OK);
    lms_dataset_writer_free(w);
}

START_TEST(blend_rows)
{
    char dir[] = "/tmp/lms-test-distill-XXXXXX", a[64], b[64];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(a, sizeof a, "%s/a", dir);
    snprintf(b, sizeof b, "%s/b", dir);
    write_dataset(a, 10, 100);
    write_dataset(b, 10, 100);
    struct lms_error err = {0};
    struct lms_blend *bl;

    /* one source, data order: row k = stream [k S, k S + S + 1), the last id repeated as the
     * first of the next row */
    struct lms_blend_source one = {.path = a, .weight = -1};
    struct lms_blend_opts o = {.row_len = 9, .stride = 8, .n_rows = 20, .min_tokens = 8 * 4 + 1,
                               .seed = 1, .split = "1", .which = LMS_SPLIT_TRAIN};
    ck_assert_int_eq(lms_blend_open(&one, 1, &o, &bl, &err), LMS_OK);
    int32_t row[9];
    for (int64_t k = 0; k < 20; k++) {
        ck_assert_int_eq(lms_blend_row(bl, k, row, 9, &err), LMS_OK);
        for (int i = 0; i < 9; i++) {
            int64_t p = k * 8 + i;
            ck_assert_int_eq(row[i], (int32_t)(1000 * (p / 100) + p % 100));
        }
    }
    ck_assert_int_eq(lms_blend_tokens(bl), 1000);
    lms_blend_free(bl);

    /* weights 0.3 / 0.7 over 10 rows: each row goes to the source most below its share of
     * max(k, 1) rows (worked by hand): 1 0 1 1 0 1 1 0 1 1 */
    struct lms_blend_source two[] = {{.path = a, .weight = 0.3}, {.path = b, .weight = 0.7}};
    o.n_rows = 10;
    o.shuffle = true;
    ck_assert_int_eq(lms_blend_open(two, 2, &o, &bl, &err), LMS_OK);
    const int want[] = {1, 0, 1, 1, 0, 1, 1, 0, 1, 1};
    for (int k = 0; k < 10; k++)
        ck_assert_int_eq(lms_blend_row_source(bl, k), want[k]);
    /* the same options give the same rows; another seed other rows */
    int32_t first[9], again[9];
    ck_assert_int_eq(lms_blend_row(bl, 3, first, 9, &err), LMS_OK);
    lms_blend_free(bl);
    ck_assert_int_eq(lms_blend_open(two, 2, &o, &bl, &err), LMS_OK);
    ck_assert_int_eq(lms_blend_row(bl, 3, again, 9, &err), LMS_OK);
    ck_assert(memcmp(first, again, sizeof first) == 0);
    lms_blend_free(bl);
    o.seed = 2;
    ck_assert_int_eq(lms_blend_open(two, 2, &o, &bl, &err), LMS_OK);
    bool differs = false;
    for (int k = 0; k < 10 && !differs; k++) {
        ck_assert_int_eq(lms_blend_row(bl, k, again, 9, &err), LMS_OK);
        differs = again[0] != first[0];
    }
    ck_assert(differs);
    lms_blend_free(bl);

    /* split 8,2: training rows come from documents 0-7, validation rows from 8-9 */
    o.split = "8,2";
    o.n_rows = 50;
    for (int which = LMS_SPLIT_TRAIN; which <= LMS_SPLIT_VALID; which++) {
        o.which = which;
        ck_assert_int_eq(lms_blend_open(&one, 1, &o, &bl, &err), LMS_OK);
        ck_assert_int_eq(lms_blend_tokens(bl), which == LMS_SPLIT_TRAIN ? 800 : 200);
        for (int64_t k = 0; k < 50; k++) {
            ck_assert_int_eq(lms_blend_row(bl, k, row, 9, &err), LMS_OK);
            for (int i = 0; i < 9; i++)
                ck_assert((row[i] / 1000 >= 8) == (which == LMS_SPLIT_VALID));
        }
        lms_blend_free(bl);
    }

    /* shorter than one batch, and an empty split: refused, naming the data */
    o.which = LMS_SPLIT_VALID;
    o.min_tokens = 201;
    ck_assert_int_eq(lms_blend_open(&one, 1, &o, &bl, &err), LMS_EFORMAT);
    ck_assert_msg(strstr(err.msg, "holds 200 tokens") && strstr(err.msg, a), "%s", err.msg);
    o.split = "1,0";
    o.min_tokens = 1;
    ck_assert_int_eq(lms_blend_open(&one, 1, &o, &bl, &err), LMS_EFORMAT);
    ck_assert_msg(strstr(err.msg, "validation split") && strstr(err.msg, "0 documents"), "%s",
                  err.msg);
    struct lms_blend_source missing = {.path = "/nonexistent/x", .weight = 1};
    ck_assert_int_eq(lms_blend_open(&missing, 1, &o, &bl, &err), LMS_EIO);

    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* The reference workflow's case on one 141 GB H200: the Qwen3-8B teacher (bf16) and its
 * 24-layer student, micro-batch 1 x 4096 tokens, bf16 working weights. The student's parameter
 * count is worked out by hand from the architecture (per layer: q|k|v 48 x 128 x 4096, o
 * 4096 x 4096, gate|up|down 3 x 12288 x 4096, two norms of 4096, q/k norms of 128 each; plus
 * embedding and LM head 151936 x 4096 each and the final norm). Without recomputation the saved
 * activations do not fit beside 18 bytes per parameter of weights, moments and gradients; with
 * per-layer recomputation they do. */
START_TEST(plan_qwen3_8b_to_6b_on_h200)
{
    struct lms_arch t = {.family = LMS_FAMILY_QWEN3, .n_layers = 36, .hidden = 4096,
                         .ffn = 12288, .n_heads = 32, .n_groups = 8, .head_dim = 128,
                         .vocab = 151936, .padded_vocab = 151936, .max_position = 40960,
                         .norm_eps = 1e-6, .qk_norm = true, .dtype = LMS_DTYPE_BF16};
    t.rope.theta = 1e6;
    t.rope.factor = 1.0;
    struct lms_arch st = t;
    st.n_layers = 24;
    const int64_t per_layer = 48 * 128 * 4096 + 4096 * 4096 + 3 * 12288 * 4096 + 2 * 4096 +
                              2 * 128;
    const int64_t P = 24 * per_layer + 2 * (int64_t)151936 * 4096 + 4096;
    ck_assert_int_eq(P, 5875378176);
    const uint64_t h200 = 141000000000ull;
    for (int recompute = 0; recompute < 2; recompute++) {
        struct lms_train_opts to = {.max_batch = 1, .max_seq = 4096, .recompute = recompute,
                                    .bf16_working = true};
        struct lms_train_plan tp;
        struct lms_error err = {0};
        ck_assert_int_eq(lms_train_plan_make(&st, st.padded_vocab, &to, &tp, &err), LMS_OK);
        ck_assert_int_eq(tp.n_params, P);
        ck_assert_uint_ge(tp.weights, (uint64_t)P * 4);
        ck_assert_uint_ge(tp.working, (uint64_t)P * 2);
        struct lms_distill_shape sh = {.trainer = &tp, .teacher = &t,
                                       .teacher_params = lms_arch_n_params(&t),
                                       .teacher_weight_bytes = 2, .out_bytes = 2, .mbs = 1,
                                       .seq = 4096, .n_rows_planned = 1000, .device = true};
        struct lms_distill_memory m;
        ck_assert_int_eq(lms_distill_memory_plan(&sh, &m, &err), LMS_OK);
        /* the fixed part: 18 B per student parameter and the teacher's bf16 weights */
        uint64_t fixed = (uint64_t)P * 18 + (uint64_t)lms_arch_n_params(&t) * 2;
        ck_assert_uint_ge(m.total, fixed);
        if (recompute)
            ck_assert_uint_le(m.total, h200);
        else
            ck_assert_uint_gt(m.total, h200);
    }
}
END_TEST
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("distill");
    TCase *tc = tcase_create("distill");
    tcase_add_test(tc, schedule_table);
    tcase_add_test(tc, optimiser_presets);
    tcase_add_test(tc, data_paths_parse);
    tcase_add_test(tc, blend_rows);
    tcase_add_test(tc, plan_qwen3_8b_to_6b_on_h200);
    suite_add_tcase(s, tc);
    return s;
}
