/* Random initialisation (lmsurgeon init): the generated views read the same values whatever the
 * thread count and chunking, their draws match a double-precision Box-Muller over the same
 * hashes and have the moments of a normal distribution, a random model follows Hugging Face's
 * _init_weights (norms one, biases zero, weights at initializer_range, the padding row zero),
 * the presets have the published parameter counts of their models, and the byte-level stand-in
 * tokenizer loads and encodes a text to its bytes. */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check_main.h"
#include "common/alloc_hook.h"
#include "lms/alloc.h"
#include "lms/hf.h"
#include "lms/init.h"
#include "lms/outdir.h"
#include "lms/tokenizer.h"
#include "ir/generate.h"

static struct lms_view *generated(enum lms_dtype dt, int64_t rows, int64_t cols, uint64_t key,
                                  double std, int threads)
{
    struct lms_view *v;
    struct lms_error err;
    int64_t shape[2] = {rows, cols};
    ck_assert_msg(lms_view_new_generated(dt, 2, shape, key, 0, std, threads, &v, &err) == LMS_OK,
                  "%s", err.msg);
    return v;
}

/* Reads all of v in pieces of step elements starting at element first (the rest before it
 * read last), so that every piece but the first starts at an arbitrary offset. */
static void read_in_pieces(const struct lms_view *v, int64_t first, int64_t step, char *dst)
{
    int64_t n = lms_view_numel(v);
    size_t es = lms_dtype_size(v->dtype);
    for (int64_t e = first; e < n; e += step) {
        int64_t m = n - e < step ? n - e : step;
        ck_assert_int_eq(lms_view_read(v, e, m, dst + (size_t)e * es, NULL), LMS_OK);
    }
    if (first)
        ck_assert_int_eq(lms_view_read(v, 0, first, dst, NULL), LMS_OK);
}

START_TEST(same_values_for_every_thread_count_and_chunking)
{
    static const enum lms_dtype dts[] = {LMS_DTYPE_F32, LMS_DTYPE_BF16, LMS_DTYPE_F16};
    const int64_t rows = 37, cols = 9001; /* 333,037 elements: odd, not a multiple of a block */
    for (size_t d = 0; d < 3; d++) {
        struct lms_view *one = generated(dts[d], rows, cols, 42, 0.02, 1);
        size_t bytes = lms_view_nbytes(one);
        char *want = malloc(bytes), *got = malloc(bytes);
        ck_assert_int_eq(lms_view_read(one, 0, lms_view_numel(one), want, NULL), LMS_OK);
        for (int threads = 0; threads <= 4; threads++) {
            struct lms_view *v = generated(dts[d], rows, cols, 42, 0.02, threads);
            static const int64_t steps[][2] = {{0, 333037}, {0, 1}, {1, 7},    {3, 4095},
                                               {5, 4097},   {0, 65536}, {9, 100003}};
            for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
                if (steps[s][1] == 1 && threads > 1)
                    continue; /* element by element once is enough */
                memset(got, 0xa5, bytes);
                read_in_pieces(v, steps[s][0], steps[s][1], got);
                ck_assert_msg(memcmp(got, want, bytes) == 0,
                              "%s, %d threads, pieces of %lld from %lld differ",
                              lms_dtype_name(dts[d]), threads, (long long)steps[s][1],
                              (long long)steps[s][0]);
            }
            lms_view_release(v);
        }
        free(want);
        free(got);
        lms_view_release(one);
    }
}
END_TEST

/* The documented draw, computed in double with libm: pair j of key takes h = the splitmix64
 * finaliser of key + (j + 1) * golden; radius sqrt(-2 ln u), u = (h >> 41 + 0.5) / 2^23; angle
 * in quarter turns: quadrant = bits 30-31 of the low word, then 1/8 turn + 24 more bits. */
static void reference_pair(uint64_t key, int64_t j, double *z0, double *z1)
{
    uint64_t h = key + (uint64_t)(j + 1) * UINT64_C(0x9e3779b97f4a7c15);
    h = (h ^ (h >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    h = (h ^ (h >> 27)) * UINT64_C(0x94d049bb133111eb);
    h ^= h >> 31;
    uint32_t lo = (uint32_t)h;
    double u = ((double)(h >> 41) + 0.5) / 8388608.0;
    double r = sqrt(-2.0 * log(u));
    double turns = (double)(lo >> 30) / 4 + 1.0 / 8 +
                   ((double)((lo >> 6) & 0xffffff) / 16777216.0 - 0.5) / 4;
    *z0 = r * cos(2 * M_PI * turns);
    *z1 = r * sin(2 * M_PI * turns);
}

START_TEST(draws_match_a_double_precision_box_muller)
{
    enum { N = 200000 };
    float *z = malloc(N * sizeof(float));
    lms__normal_fill(0x0123456789abcdefu, 0, N, z);
    double worst = 0;
    for (int64_t j = 0; j < N / 2; j++) {
        double r0, r1;
        reference_pair(0x0123456789abcdefu, j, &r0, &r1);
        double e = fmax(fabs(z[2 * j] - r0), fabs(z[2 * j + 1] - r1));
        worst = fmax(worst, e);
    }
    /* f32 arithmetic on values up to 5.8: a few units in the last place */
    ck_assert_msg(worst < 4e-6, "largest difference from the reference %g", worst);
    free(z);
}
END_TEST

START_TEST(draws_have_the_moments_of_a_standard_normal)
{
    enum { N = 1 << 22 };
    float *z = malloc(N * sizeof(float));
    lms__normal_fill(7, 0, N, z);
    double s1 = 0, s2 = 0, s4 = 0, lag = 0, in1 = 0, in2 = 0;
    for (int i = 0; i < N; i++) {
        double x = z[i];
        s1 += x, s2 += x * x, s4 += x * x * x * x;
        in1 += fabs(x) < 1, in2 += fabs(x) < 2;
        if (i)
            lag += x * z[i - 1];
    }
    double mean = s1 / N, var = s2 / N - mean * mean;
    /* bounds: about 5 standard errors of each estimate over 2^22 draws */
    ck_assert_msg(fabs(mean) < 0.0025, "mean %g", mean);
    ck_assert_msg(fabs(var - 1) < 0.0035, "variance %g", var);
    ck_assert_msg(fabs(s4 / N / (var * var) - 3) < 0.012, "kurtosis %g", s4 / N / (var * var));
    ck_assert_msg(fabs(in1 / N - 0.682689) < 0.0012, "P(|z| < 1) = %g", in1 / N);
    ck_assert_msg(fabs(in2 / N - 0.954500) < 0.0006, "P(|z| < 2) = %g", in2 / N);
    ck_assert_msg(fabs(lag / N) < 0.0025, "lag-1 correlation %g", lag / N);
    /* another key is another stream */
    float *w = malloc(N * sizeof(float));
    lms__normal_fill(8, 0, N, w);
    double cross = 0;
    for (int i = 0; i < N; i++)
        cross += (double)z[i] * w[i];
    ck_assert_msg(fabs(cross / N) < 0.0025, "keys 7 and 8 correlate: %g", cross / N);
    free(w);
    free(z);
}
END_TEST

START_TEST(scaled_views_and_constants)
{
    struct lms_view *v = generated(LMS_DTYPE_BF16, 512, 1024, 3, 0.02, 0);
    int64_t n = lms_view_numel(v);
    float *f = malloc((size_t)n * sizeof(float));
    ck_assert_int_eq(lms_view_read_as(v, 0, n, LMS_DTYPE_F32, f, NULL), LMS_OK);
    double s1 = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++)
        s1 += f[i], s2 += (double)f[i] * f[i];
    double std = sqrt(s2 / n - (s1 / n) * (s1 / n));
    ck_assert_msg(fabs(std / 0.02 - 1) < 0.005, "std %g, want 0.02", std);
    ck_assert_msg(fabs(s1 / n) < 0.0002, "mean %g", s1 / n);
    lms_view_release(v);
    free(f);

    struct lms_view *ones;
    ck_assert_int_eq(lms_view_new_generated(LMS_DTYPE_BF16, 1, (int64_t[]){300}, 9, 1.0, 0, 0,
                                            &ones, NULL),
                     LMS_OK);
    uint16_t h[300];
    ck_assert_int_eq(lms_view_read(ones, 0, 300, h, NULL), LMS_OK);
    for (int i = 0; i < 300; i++)
        ck_assert_uint_eq(h[i], 0x3f80); /* bf16 1.0 */
    lms_view_release(ones);

    struct lms_error err;
    ck_assert_int_eq(lms_view_new_generated(LMS_DTYPE_I32, 1, (int64_t[]){3}, 0, 0, 1, 0, &v,
                                            &err),
                     LMS_EUNSUPPORTED);
    ck_assert_int_eq(lms_view_new_generated(LMS_DTYPE_F32, 1, (int64_t[]){3}, 0, 0, -1, 0, &v,
                                            &err),
                     LMS_EINVAL);
    ck_assert_int_eq(lms_view_new_generated(LMS_DTYPE_F32, 1, (int64_t[]){3}, 0, NAN, 1, 0, &v,
                                            &err),
                     LMS_EINVAL);
}
END_TEST

static struct lms_arch tiny_arch(enum lms_family fam)
{
    struct lms_arch a = {.family = fam, .n_layers = 3, .hidden = 64, .ffn = 96, .n_heads = 4,
                         .n_groups = 2, .head_dim = 16, .vocab = 300, .padded_vocab = 300,
                         .max_position = 128, .norm_eps = 1e-6,
                         .rope = {.theta = 10000, .factor = 1}};
    a.qkv_bias = fam == LMS_FAMILY_QWEN2 || fam == LMS_FAMILY_LLAMA;
    a.o_bias = fam == LMS_FAMILY_LLAMA; /* Llama with attention_bias */
    a.qk_norm = fam == LMS_FAMILY_QWEN3;
    return a;
}

static float *read_f32(const struct lms_view *v)
{
    int64_t n = lms_view_numel(v);
    float *f = malloc((size_t)n * sizeof(float));
    ck_assert_int_eq(lms_view_read_as(v, 0, n, LMS_DTYPE_F32, f, NULL), LMS_OK);
    return f;
}

START_TEST(random_model_follows_init_weights)
{
    static const enum lms_family fams[] = {LMS_FAMILY_LLAMA, LMS_FAMILY_QWEN2, LMS_FAMILY_QWEN3};
    for (size_t k = 0; k < 3; k++) {
        struct lms_arch a = tiny_arch(fams[k]);
        struct lms_init_opts o = {.seed = 5, .init_range = 0.05, .dtype = LMS_DTYPE_F32,
                                  .pad_row = -1};
        struct lms_model m;
        struct lms_error err;
        ck_assert_msg(lms_model_new_random(&a, &o, &m, &err) == LMS_OK, "%s", err.msg);
        ck_assert_msg(lms_model_validate(&m, &err) == LMS_OK, "%s", err.msg);
        ck_assert_int_eq(lms_model_n_params(&m), lms_arch_n_params(&a));
        int n_norms = 0, n_biases = 0;
        for (size_t i = 0; i < m.n_tensors; i++) {
            const struct lms_tensor *t = &m.tensors[i];
            float *f = read_f32(t->view);
            int64_t n = lms_view_numel(t->view);
            const char *nm = t->name;
            bool norm = strstr(nm, "norm") != NULL, bias = strstr(nm, ".bias") != NULL;
            n_norms += norm, n_biases += bias;
            double s2 = 0;
            for (int64_t e = 0; e < n; e++) {
                if (norm)
                    ck_assert_msg(f[e] == 1.0f, "%s[%lld] = %g", nm, (long long)e, f[e]);
                else if (bias)
                    ck_assert_msg(f[e] == 0.0f, "%s[%lld] = %g", nm, (long long)e, f[e]);
                s2 += (double)f[e] * f[e];
            }
            if (!norm && !bias) /* weights of 4096 to 19200 draws: std within 5 % */
                ck_assert_msg(fabs(sqrt(s2 / n) / 0.05 - 1) < 0.05, "%s: std %g", nm,
                              sqrt(s2 / n));
            free(f);
        }
        /* 2 per layer + the final one, q/k norms for Qwen3; q/k/v (+ o) biases */
        ck_assert_int_eq(n_norms, 3 * 2 + 1 + (fams[k] == LMS_FAMILY_QWEN3 ? 3 * 2 : 0));
        ck_assert_int_eq(n_biases, fams[k] == LMS_FAMILY_LLAMA   ? 3 * 4
                                   : fams[k] == LMS_FAMILY_QWEN2 ? 3 * 3
                                                                 : 0);
        lms_model_release(&m);
    }
}
END_TEST

START_TEST(weights_depend_on_seed_and_name_only)
{
    struct lms_arch a = tiny_arch(LMS_FAMILY_QWEN3), b = a;
    b.n_layers = 1;
    struct lms_init_opts o = {.seed = 11, .init_range = 0.02, .dtype = LMS_DTYPE_BF16,
                              .pad_row = -1};
    struct lms_model m3, m1, other;
    ck_assert_int_eq(lms_model_new_random(&a, &o, &m3, NULL), LMS_OK);
    ck_assert_int_eq(lms_model_new_random(&b, &o, &m1, NULL), LMS_OK);
    o.seed = 12;
    ck_assert_int_eq(lms_model_new_random(&a, &o, &other, NULL), LMS_OK);
    const char *name = "model.layers.0.mlp.down_proj.weight";
    float *x = read_f32(lms_model_find_name(&m3, name)->view);
    float *y = read_f32(lms_model_find_name(&m1, name)->view);
    float *z = read_f32(lms_model_find_name(&other, name)->view);
    float *w = read_f32(lms_model_find_name(&m3, "model.layers.1.mlp.down_proj.weight")->view);
    int64_t n = 64 * 96, same_seed = 0, other_seed = 0, other_layer = 0;
    for (int64_t e = 0; e < n; e++) {
        same_seed += x[e] == y[e];
        other_seed += x[e] == z[e];
        other_layer += x[e] == w[e];
    }
    ck_assert_int_eq(same_seed, n); /* a model with fewer layers shares layer 0 */
    ck_assert_int_lt(other_seed, n / 50); /* equal only by bf16 coincidence */
    ck_assert_int_lt(other_layer, n / 50);
    free(x), free(y), free(z), free(w);
    lms_model_release(&m3), lms_model_release(&m1), lms_model_release(&other);
}
END_TEST

START_TEST(padding_row_is_zero_and_the_others_unchanged)
{
    struct lms_arch a = tiny_arch(LMS_FAMILY_QWEN3);
    a.tie_embeddings = true;
    struct lms_init_opts o = {.seed = 1, .init_range = 0.02, .dtype = LMS_DTYPE_F32,
                              .pad_row = -1};
    for (int64_t pad = 0; pad < 300; pad += 299) {
        struct lms_model plain, padded;
        ck_assert_int_eq(lms_model_new_random(&a, &o, &plain, NULL), LMS_OK);
        o.pad_row = pad;
        ck_assert_int_eq(lms_model_new_random(&a, &o, &padded, NULL), LMS_OK);
        o.pad_row = -1;
        ck_assert_int_eq(lms_model_validate(&padded, NULL), LMS_OK);
        float *x = read_f32(lms_model_find(&plain, LMS_ROLE_EMBED, -1)->view);
        float *y = read_f32(lms_model_find(&padded, LMS_ROLE_EMBED, -1)->view);
        for (int64_t r = 0; r < 300; r++)
            for (int64_t c = 0; c < 64; c++)
                ck_assert(y[r * 64 + c] == (r == pad ? 0.0f : x[r * 64 + c]));
        free(x), free(y);
        lms_model_release(&plain), lms_model_release(&padded);
    }
}
END_TEST

START_TEST(allocation_failures_do_not_leak)
{
    struct lms_arch a = tiny_arch(LMS_FAMILY_QWEN2);
    struct lms_init_opts o = {.seed = 1, .init_range = 0.02, .dtype = LMS_DTYPE_BF16,
                              .pad_row = 7};
    for (long k = 0;; k++) {
        struct lms_model m;
        lms__alloc_fail_after(k);
        enum lms_status rc = lms_model_new_random(&a, &o, &m, NULL);
        lms__alloc_fail_after(-1);
        if (rc == LMS_OK) {
            lms_model_release(&m);
            break;
        }
        ck_assert_int_eq(rc, LMS_ENOMEM);
    }
}
END_TEST

/* The parameter counts the Hub lists for these models (Llama 3.1 8B 8,030,261,248; Llama 3.2
 * 1B 1,235,814,400 with tied embeddings; Mistral 7B v0.1 7,241,732,096; Qwen3-8B 8,190,735,360). */
START_TEST(presets_have_their_models_sizes)
{
    static const struct {
        const char *name;
        int64_t params;
    } want[] = {{"llama-3.1-8b", INT64_C(8030261248)},
                {"llama-3.2-1b", INT64_C(1235814400)},
                {"mistral-7b", INT64_C(7241732096)},
                {"qwen3-8b", INT64_C(8190735360)}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        json_t *c;
        struct lms_arch a;
        struct lms_error err;
        ck_assert_msg(lms_preset_hf_config(want[i].name, &c, &err) == LMS_OK, "%s", err.msg);
        ck_assert_msg(lms_hf_config_parse(c, &a, &err) == LMS_OK, "%s: %s", want[i].name,
                      err.msg);
        ck_assert_msg(lms_arch_n_params(&a) == want[i].params, "%s: %lld parameters",
                      want[i].name, (long long)lms_arch_n_params(&a));
        json_decref(c);
    }
    /* every listed preset builds a config the parser takes */
    size_t n = 0;
    for (; lms_preset_name(n); n++) {
        json_t *c;
        struct lms_arch a;
        struct lms_error err;
        ck_assert_msg(lms_preset_hf_config(lms_preset_name(n), &c, &err) == LMS_OK, "%s",
                      err.msg);
        ck_assert_msg(lms_hf_config_parse(c, &a, &err) == LMS_OK, "%s: %s", lms_preset_name(n),
                      err.msg);
        json_decref(c);
    }
    ck_assert_uint_ge(n, 30);
    json_t *c;
    struct lms_error err;
    ck_assert_int_eq(lms_preset_hf_config("qwen3-9b", &c, &err), LMS_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "qwen3-9b"));
}
END_TEST

START_TEST(standin_tokenizer_encodes_bytes)
{
    char dir[] = "/tmp/lms-test-init-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    struct lms_error err;
    ck_assert_msg(lms_standin_tokenizer_write(dir, 4096, &err) == LMS_OK, "%s", err.msg);
    struct lms_tokenizer *tk;
    ck_assert_msg(lms_tokenizer_load(dir, &tk, &err) == LMS_OK, "%s", err.msg);
    ck_assert_int_eq(lms_tokenizer_vocab_size(tk), LMS_STANDIN_N_TOKENS);
    ck_assert_int_eq(lms_tokenizer_eos_id(tk), 256);
    ck_assert_int_eq(lms_tokenizer_pad_id(tk), 256);
    struct lms_tokenizer_ctx *ctx;
    ck_assert_int_eq(lms_tokenizer_ctx_new(tk, &ctx, NULL), LMS_OK);
    /* every byte value that UTF-8 text can hold, spaces and newlines included */
    static const char text[] = "A b\n\t\xc3\xa9t\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac ~\x7f!";
    struct lms_ids ids = {0};
    ck_assert_int_eq(lms_tokenizer_encode(ctx, text, sizeof text - 1, 0, &ids, &err), LMS_OK);
    ck_assert_uint_eq(ids.len, sizeof text - 1);
    for (size_t i = 0; i < ids.len; i++)
        ck_assert_int_eq(ids.data[i], (unsigned char)text[i]);
    int32_t eos = 256;
    char *back;
    size_t back_len;
    ck_assert_int_eq(lms_tokenizer_decode(tk, ids.data, ids.len, false, &back, &back_len, NULL),
                     LMS_OK);
    ck_assert_str_eq(back, text);
    lms_free(back);
    ck_assert_int_eq(lms_tokenizer_decode(tk, &eos, 1, false, &back, &back_len, NULL), LMS_OK);
    ck_assert_str_eq(back, LMS_STANDIN_EOS);
    lms_free(back);
    lms_ids_release(&ids);
    lms_tokenizer_ctx_free(ctx);
    lms_tokenizer_free(tk);
    lms_remove_tree(dir);
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("init");
    TCase *tc = tcase_create("init");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, same_values_for_every_thread_count_and_chunking);
    tcase_add_test(tc, draws_match_a_double_precision_box_muller);
    tcase_add_test(tc, draws_have_the_moments_of_a_standard_normal);
    tcase_add_test(tc, scaled_views_and_constants);
    tcase_add_test(tc, random_model_follows_init_weights);
    tcase_add_test(tc, weights_depend_on_seed_and_name_only);
    tcase_add_test(tc, padding_row_is_zero_and_the_others_unchanged);
    tcase_add_test(tc, allocation_failures_do_not_leak);
    tcase_add_test(tc, presets_have_their_models_sizes);
    tcase_add_test(tc, standin_tokenizer_encodes_bytes);
    suite_add_tcase(s, tc);
    return s;
}
