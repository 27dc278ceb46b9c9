/* GGUF container: the parser on files assembled byte by byte here (following the format's
 * description, not our writer), every malformed input giving its one-line LMS_EFORMAT error,
 * and the header writer reproducing the hand-assembled bytes exactly. The layout: llama.cpp's
 * phi3 names (fused attn_qkv and ffn_up) and YaRN keys, read from files assembled here with the
 * container writer and written from the fixtures, and the refusals. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check_main.h"
#include "formats/codecs/gguf.h"
#include "lms/format.h"
#include "lms/gguf.h"
#include "lms/outdir.h"
#include "lms/safetensors.h"

/* ---- a byte builder ------------------------------------------------------------------------ */

struct bytes {
    uint8_t p[4096];
    size_t n;
};

static void le(struct bytes *b, uint64_t v, int n)
{
    ck_assert(b->n + (size_t)n <= sizeof b->p);
    for (int i = 0; i < n; i++)
        b->p[b->n++] = (uint8_t)(v >> (8 * i));
}

static void str(struct bytes *b, const char *s)
{
    le(b, strlen(s), 8);
    ck_assert(b->n + strlen(s) <= sizeof b->p);
    memcpy(b->p + b->n, s, strlen(s));
    b->n += strlen(s);
}

static void pad(struct bytes *b, size_t align)
{
    while (b->n % align)
        b->p[b->n++] = 0;
}

static void header(struct bytes *b, uint64_t n_tensors, uint64_t n_kv)
{
    b->n = 0;
    memcpy(b->p, "GGUF", 4);
    b->n = 4;
    le(b, 3, 4);
    le(b, n_tensors, 8);
    le(b, n_kv, 8);
}

static void tensor_info(struct bytes *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                        uint32_t type, uint64_t offset)
{
    str(b, name);
    le(b, n_dims, 4);
    for (uint32_t i = 0; i < n_dims; i++)
        le(b, ne[i], 8);
    le(b, type, 4);
    le(b, offset, 8);
}

/* The golden file: 3 pairs (a string, a u32, a string array), an F32 [2, 3] tensor (ne {3, 2})
 * and a Q8_0 tensor of one block, default alignment 32. */
static void golden(struct bytes *b)
{
    header(b, 2, 3);
    str(b, "general.architecture");
    le(b, LMS_GGUF_STRING, 4);
    str(b, "llama");
    str(b, "llama.block_count");
    le(b, LMS_GGUF_U32, 4);
    le(b, 12, 4);
    str(b, "tokenizer.ggml.tokens");
    le(b, LMS_GGUF_ARRAY, 4);
    le(b, LMS_GGUF_STRING, 4);
    le(b, 2, 8);
    str(b, "a");
    str(b, "bc");
    tensor_info(b, "w", 2, (const uint64_t[]){3, 2}, LMS_GGML_F32, 0);
    tensor_info(b, "q", 1, (const uint64_t[]){32}, LMS_GGML_Q8_0, 32);
    pad(b, 32);
    for (int i = 0; i < 6; i++)
        le(b, 0x3f800000u, 4); /* 1.0f */
    pad(b, 32);
    for (int i = 0; i < 34; i++)
        le(b, (uint64_t)i, 1);
}

static enum lms_status parse(const struct bytes *b, struct lms_gguf *g, struct lms_error *err)
{
    /* a heap copy of exactly n bytes, so that ASan sees any read past the end */
    uint8_t *copy = malloc(b->n ? b->n : 1);
    ck_assert_ptr_nonnull(copy);
    memcpy(copy, b->p, b->n);
    enum lms_status rc = lms_gguf_parse(copy, b->n, "t.gguf", g, err);
    if (rc)
        lms_gguf_release(g);
    free(copy);
    return rc;
}

static void expect_error(const struct bytes *b, const char *needle)
{
    struct lms_error err;
    struct lms_gguf g;
    lms_error_clear(&err);
    ck_assert_int_eq(parse(b, &g, &err), LMS_EFORMAT);
    ck_assert_msg(strstr(err.msg, needle), "'%s' not in '%s'", needle, err.msg);
    ck_assert_msg(strstr(err.msg, "'t.gguf'"), "no file name in '%s'", err.msg);
    ck_assert_ptr_null(strchr(err.msg, '\n'));
}

START_TEST(parses_golden)
{
    struct bytes b;
    golden(&b);
    uint8_t *copy = malloc(b.n);
    memcpy(copy, b.p, b.n);
    struct lms_gguf g;
    struct lms_error err;
    ck_assert_int_eq(lms_gguf_parse(copy, b.n, "t.gguf", &g, &err), LMS_OK);
    ck_assert_uint_eq(g.version, 3);
    ck_assert_uint_eq(g.n_kv, 3);
    ck_assert_uint_eq(g.alignment, 32);
    const struct lms_gguf_kv *arch = lms_gguf_find(&g, "general.architecture");
    ck_assert_ptr_nonnull(arch);
    ck_assert_uint_eq(arch->type, LMS_GGUF_STRING);
    ck_assert_uint_eq(arch->v.s.n, 5);
    ck_assert(memcmp(arch->v.s.p, "llama", 5) == 0);
    ck_assert_uint_eq(lms_gguf_find(&g, "llama.block_count")->v.u, 12);
    const struct lms_gguf_kv *toks = lms_gguf_find(&g, "tokenizer.ggml.tokens");
    ck_assert_uint_eq(toks->v.arr.n, 2);
    const uint8_t *cur = toks->v.arr.data;
    struct lms_gguf_str s0 = lms_gguf_next_str(&cur), s1 = lms_gguf_next_str(&cur);
    ck_assert(s0.n == 1 && s0.p[0] == 'a' && s1.n == 2 && memcmp(s1.p, "bc", 2) == 0);
    ck_assert_ptr_null(lms_gguf_find(&g, "missing"));
    ck_assert_uint_eq(g.n_tensors, 2);
    ck_assert_uint_eq(g.data_offset % 32, 0);
    ck_assert_uint_eq(g.data_offset + 32 + 34, b.n);
    ck_assert_uint_eq(g.tensors[0].nbytes, 24);
    ck_assert_uint_eq(g.tensors[0].ne[0], 3);
    ck_assert_uint_eq(g.tensors[0].ne[1], 2);
    ck_assert_uint_eq(g.tensors[1].nbytes, 34);
    ck_assert_uint_eq(g.tensors[1].offset, 32);
    float one;
    memcpy(&one, copy + g.data_offset, 4);
    ck_assert(one == 1.0f);
    lms_gguf_release(&g);
    free(copy);
}
END_TEST

START_TEST(every_truncation_is_an_error)
{
    struct bytes b, t;
    golden(&b);
    for (size_t n = 0; n < b.n; n++) {
        t = b;
        t.n = n;
        struct lms_error err;
        struct lms_gguf g;
        ck_assert_int_eq(parse(&t, &g, &err), LMS_EFORMAT);
        ck_assert_ptr_null(strchr(err.msg, '\n'));
    }
}
END_TEST

START_TEST(rejects_bad_magic_and_version)
{
    struct bytes b;
    golden(&b);
    b.p[0] = 'X';
    expect_error(&b, "not a GGUF file");
    golden(&b);
    b.p[4] = 1;
    expect_error(&b, "GGUF version 1");
}
END_TEST

START_TEST(rejects_absurd_counts)
{
    struct bytes b;
    header(&b, 0, UINT64_C(1) << 60);
    expect_error(&b, "metadata pairs do not fit");
    header(&b, UINT64_C(1) << 60, 0);
    expect_error(&b, "tensors do not fit");
    header(&b, 0, 1);
    str(&b, "k");
    le(&b, LMS_GGUF_ARRAY, 4);
    le(&b, LMS_GGUF_U32, 4);
    le(&b, UINT64_C(1) << 61, 8);
    expect_error(&b, "does not fit in the file");
}
END_TEST

START_TEST(rejects_lying_lengths)
{
    struct bytes b;
    header(&b, 0, 1);
    le(&b, UINT64_C(0xffffffffffff), 8); /* key length far past the end */
    le(&b, 0, 8);
    expect_error(&b, "past the end of the file");
    header(&b, 0, 1);
    str(&b, "k");
    le(&b, LMS_GGUF_STRING, 4);
    le(&b, 100, 8);
    str(&b, "short");
    expect_error(&b, "claims 100 bytes");
    header(&b, 0, 1);
    str(&b, "k");
    le(&b, LMS_GGUF_ARRAY, 4);
    le(&b, LMS_GGUF_STRING, 4);
    le(&b, 3, 8);
    str(&b, "a");
    str(&b, "b");
    expect_error(&b, "array of 3 elements does not fit");
    header(&b, 0, 1);
    str(&b, "k");
    le(&b, LMS_GGUF_ARRAY, 4);
    le(&b, LMS_GGUF_STRING, 4);
    le(&b, 2, 8);
    str(&b, "a");
    le(&b, 1000, 8); /* the second string's length lies */
    le(&b, 0, 8);
    expect_error(&b, "claims 1000 bytes");
}
END_TEST

START_TEST(rejects_bad_values)
{
    struct bytes b;
    header(&b, 0, 1);
    str(&b, "k");
    le(&b, 13, 4);
    expect_error(&b, "unknown value type 13");
    header(&b, 0, 1);
    str(&b, "k");
    le(&b, LMS_GGUF_ARRAY, 4);
    le(&b, LMS_GGUF_ARRAY, 4);
    le(&b, 0, 8);
    expect_error(&b, "nested");
    header(&b, 0, 1);
    str(&b, "k");
    le(&b, LMS_GGUF_BOOL, 4);
    le(&b, 2, 1);
    expect_error(&b, "boolean value 2");
    header(&b, 0, 2);
    for (int i = 0; i < 2; i++) {
        str(&b, "k");
        le(&b, LMS_GGUF_U8, 4);
        le(&b, 1, 1);
    }
    expect_error(&b, "appears 2 times");
}
END_TEST

START_TEST(rejects_bad_alignment)
{
    struct bytes b;
    header(&b, 0, 1);
    str(&b, "general.alignment");
    le(&b, LMS_GGUF_U32, 4);
    le(&b, 48, 4);
    expect_error(&b, "48 is not a power of two");
    header(&b, 0, 1);
    str(&b, "general.alignment");
    le(&b, LMS_GGUF_U64, 4);
    le(&b, 64, 8);
    expect_error(&b, "u32 expected");
    /* a tensor offset that is not a multiple of the alignment */
    header(&b, 1, 0);
    tensor_info(&b, "w", 1, (const uint64_t[]){4}, LMS_GGML_F32, 16);
    pad(&b, 32);
    for (int i = 0; i < 64; i++)
        le(&b, 0, 1);
    expect_error(&b, "offset 16 is not a multiple of the alignment");
}
END_TEST

START_TEST(rejects_bad_tensors)
{
    struct bytes b;
    header(&b, 1, 0);
    tensor_info(&b, "w", 1, (const uint64_t[]){4}, 99, 0);
    expect_error(&b, "unknown tensor type 99");
    header(&b, 1, 0);
    tensor_info(&b, "w", 5, (const uint64_t[]){1, 1, 1, 1, 1}, LMS_GGML_F32, 0);
    expect_error(&b, "5 dimensions");
    header(&b, 1, 0);
    tensor_info(&b, "w", 1, (const uint64_t[]){31}, LMS_GGML_Q8_0, 0);
    expect_error(&b, "whole blocks of 32");
    header(&b, 1, 0);
    tensor_info(&b, "w", 2, (const uint64_t[]){UINT64_C(1) << 40, UINT64_C(1) << 40},
                LMS_GGML_F32, 0);
    expect_error(&b, "absurdly large");
    header(&b, 1, 0);
    tensor_info(&b, "w", 1, (const uint64_t[]){1000}, LMS_GGML_F32, 0);
    pad(&b, 32);
    le(&b, 0, 8);
    expect_error(&b, "runs past the end of the file");
    header(&b, 2, 0);
    tensor_info(&b, "w", 1, (const uint64_t[]){1}, LMS_GGML_F32, 0);
    tensor_info(&b, "w", 1, (const uint64_t[]){1}, LMS_GGML_F32, 32);
    expect_error(&b, "appears 2 times");
}
END_TEST

/* The writer's header for the golden content equals the hand-assembled bytes. */
START_TEST(writer_reproduces_golden)
{
    struct bytes b;
    golden(&b);
    struct lms_gguf_writer w;
    lms_gguf_writer_init(&w);
    lms_gguf_put_str(&w, "general.architecture", "llama", 5);
    lms_gguf_put_u32(&w, "llama.block_count", 12);
    const char *toks[] = {"a", "bc"};
    const size_t lens[] = {1, 2};
    lms_gguf_put_str_array(&w, "tokenizer.ggml.tokens", toks, lens, 2);
    uint64_t nb;
    struct lms_error err;
    ck_assert_int_eq(lms_gguf_add_tensor(&w, "w", 2, (const uint64_t[]){3, 2}, LMS_GGML_F32, &nb,
                                         &err), LMS_OK);
    ck_assert_uint_eq(nb, 24);
    ck_assert_int_eq(lms_gguf_add_tensor(&w, "q", 1, (const uint64_t[]){32}, LMS_GGML_Q8_0, &nb,
                                         &err), LMS_OK);
    ck_assert_uint_eq(nb, 34);
    ck_assert_int_eq(lms_gguf_add_tensor(&w, "x", 1, (const uint64_t[]){31}, LMS_GGML_Q8_0, &nb,
                                         &err), LMS_EINVAL);
    char path[] = "/tmp/lms-test-gguf-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(lms_gguf_write_header(&w, fd, path, &err), LMS_OK);
    off_t len = lseek(fd, 0, SEEK_END);
    uint8_t got[4096];
    ck_assert_int_eq(pread(fd, got, (size_t)len, 0), len);
    close(fd);
    unlink(path);
    size_t header_len = b.n - 32 - 34; /* the golden file without its data */
    ck_assert_uint_eq((uint64_t)len, header_len);
    ck_assert(memcmp(got, b.p, header_len) == 0);
    lms_gguf_writer_release(&w);
}
END_TEST

/* The Q8_0 rule worked out by hand: max|x| = 127 gives d = 1 (fp16 0x3C00), halves round away
 * from zero, and an all-zero block has scale 0 and zero codes. */
START_TEST(q8_0_golden)
{
    float x[32] = {127.0f, 63.5f, -63.5f, 0.5f, -0.5f, 0.49f, -126.6f, 1.5f};
    uint8_t q[34];
    lms_gguf_q8_0_quantize(x, q);
    const int8_t want[8] = {127, 64, -64, 1, -1, 0, -127, 2};
    ck_assert_uint_eq(q[0] | (q[1] << 8), 0x3C00);
    for (int i = 0; i < 8; i++)
        ck_assert_int_eq((int8_t)q[2 + i], want[i]);
    for (int i = 8; i < 32; i++)
        ck_assert_int_eq(q[2 + i], 0);
    float back[32];
    lms_gguf_q8_0_dequantize(q, back);
    ck_assert(back[1] == 64.0f && back[2] == -64.0f && back[6] == -127.0f);
    /* max 254 -> d = 2: 3.0 / 2 = 1.5 rounds to 2, -1.0 / 2 = -0.5 rounds to -1 */
    float y[32] = {254.0f, 3.0f, -1.0f};
    lms_gguf_q8_0_quantize(y, q);
    ck_assert_uint_eq(q[0] | (q[1] << 8), 0x4000);
    ck_assert_int_eq((int8_t)q[3], 2);
    ck_assert_int_eq((int8_t)q[4], -1);
    float z[32] = {0};
    lms_gguf_q8_0_quantize(z, q);
    for (int i = 0; i < 34; i++)
        ck_assert_int_eq(q[i], 0);
}
END_TEST

/* ---- the layout: phi3 and YaRN ------------------------------------------------------------- */

/* A one-layer phi3 as llama.cpp's converter lays it out: hidden 8, 2 heads of 4, 1 KV head,
 * FFN 8, vocab 16. Element e of tensor number t holds t * 1000 + e. */
enum { P_H = 8, P_D = 4, P_F = 8, P_V = 16 };

struct phi3_file {
    int qkv_rows;            /* 16 ([q; k; v] = 8 + 4 + 4); another value lies about the shape */
    bool no_block_count;
    bool longrope;           /* adds rope_factors_long.weight */
    const char *rope_type;   /* ARCH.rope.scaling.type, NULL: none */
    double yarn_factor;      /* written when > 0 */
    int yarn_original;       /* written when > 0 */
    double beta_fast;        /* written when > 0 */
    int rope_dims;           /* phi3.rope.dimension_count when > 0, else the head size */
    const char *arch;        /* general.architecture, NULL: phi3 */
};

static const struct {
    const char *name;
    int rows, cols; /* cols 0: 1-D */
} phi3_tensors[] = {
    {"token_embd.weight", P_V, P_H},     {"blk.0.attn_norm.weight", P_H, 0},
    {"blk.0.attn_qkv.weight", 16, P_H},  {"blk.0.attn_output.weight", P_H, P_H},
    {"blk.0.ffn_norm.weight", P_H, 0},   {"blk.0.ffn_up.weight", 2 * P_F, P_H},
    {"blk.0.ffn_down.weight", P_H, P_F}, {"output_norm.weight", P_H, 0},
    {"output.weight", P_V, P_H},         {"rope_factors_long.weight", P_D / 2, 0},
};

static void write_phi3(const char *path, const struct phi3_file *o)
{
    struct lms_gguf_writer w;
    lms_gguf_writer_init(&w);
    const char *arch = o->arch ? o->arch : "phi3";
    lms_gguf_put_str(&w, "general.architecture", arch, strlen(arch));
    if (!o->no_block_count)
        lms_gguf_put_u32(&w, "phi3.block_count", 1);
    lms_gguf_put_u32(&w, "phi3.context_length", 128);
    lms_gguf_put_u32(&w, "phi3.embedding_length", P_H);
    lms_gguf_put_u32(&w, "phi3.feed_forward_length", P_F);
    lms_gguf_put_u32(&w, "phi3.attention.head_count", 2);
    lms_gguf_put_u32(&w, "phi3.attention.head_count_kv", 1);
    lms_gguf_put_f32(&w, "phi3.attention.layer_norm_rms_epsilon", 1e-5f);
    lms_gguf_put_u32(&w, "phi3.rope.dimension_count",
                     o->rope_dims > 0 ? (uint32_t)o->rope_dims : P_D);
    lms_gguf_put_u32(&w, "phi3.attention.sliding_window", 0);
    if (o->yarn_original > 0)
        lms_gguf_put_u32(&w, "phi3.rope.scaling.original_context_length",
                         (uint32_t)o->yarn_original);
    else if (!o->rope_type) /* the converter writes Phi-3's original context even without YaRN */
        lms_gguf_put_u32(&w, "phi3.rope.scaling.original_context_length", 64);
    if (o->rope_type)
        lms_gguf_put_str(&w, "phi3.rope.scaling.type", o->rope_type, strlen(o->rope_type));
    if (o->yarn_factor > 0)
        lms_gguf_put_f32(&w, "phi3.rope.scaling.factor", (float)o->yarn_factor);
    if (o->beta_fast > 0)
        lms_gguf_put_f32(&w, "phi3.rope.scaling.yarn_beta_fast", (float)o->beta_fast);
    lms_gguf_put_str(&w, "tokenizer.ggml.model", "none", 4);
    int n = o->longrope ? 10 : 9;
    uint64_t nb[10];
    for (int t = 0; t < n; t++) {
        int rows = t == 2 ? o->qkv_rows : phi3_tensors[t].rows, cols = phi3_tensors[t].cols;
        uint64_t ne[2] = {cols ? (uint64_t)cols : (uint64_t)rows, (uint64_t)rows};
        ck_assert_int_eq(lms_gguf_add_tensor(&w, phi3_tensors[t].name, cols ? 2 : 1, ne,
                                             LMS_GGML_F32, &nb[t], NULL), LMS_OK);
    }
    FILE *f = fopen(path, "w+b");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(lms_gguf_write_header(&w, fileno(f), path, NULL), LMS_OK);
    for (int t = 0; t < n; t++) {
        for (uint64_t e = 0; e < nb[t] / 4; e++) {
            float v = (float)(t * 1000 + (int)e);
            ck_assert_int_eq(write(fileno(f), &v, 4), 4);
        }
        ck_assert_int_eq(lms_gguf_write_pad(fileno(f), nb[t], path, NULL), LMS_OK);
    }
    fclose(f);
    lms_gguf_writer_release(&w);
}

static char tmp_dir[64];

static const char *tmp_file(const char *name, char *dst, size_t cap)
{
    if (!tmp_dir[0]) {
        snprintf(tmp_dir, sizeof tmp_dir, "/tmp/lms-test-gguf-layout-XXXXXX");
        ck_assert_ptr_nonnull(mkdtemp(tmp_dir));
    }
    snprintf(dst, cap, "%s/%s", tmp_dir, name);
    unlink(dst);
    return dst;
}

static void tmp_cleanup(void)
{
    if (tmp_dir[0])
        lms_remove_tree(tmp_dir);
    tmp_dir[0] = 0;
}

static struct phi3_file phi3_ok(void)
{
    return (struct phi3_file){.qkv_rows = 16};
}

/* Reads a phi3 file that must fail with status want and a one-line message holding needle and
 * the file's name. */
static void phi3_read_fails(const struct phi3_file *o, enum lms_status want, const char *needle)
{
    char path[128];
    tmp_file("bad.gguf", path, sizeof path);
    write_phi3(path, o);
    struct lms_model m;
    struct lms_error err;
    lms_error_clear(&err);
    ck_assert_int_eq(lms_format_gguf.read(path, &m, &err), want);
    ck_assert_msg(strstr(err.msg, needle), "'%s' not in '%s'", needle, err.msg);
    ck_assert_msg(strstr(err.msg, path), "no file name in '%s'", err.msg);
    ck_assert_ptr_null(strchr(err.msg, '\n'));
}

/* Row r, column c of tensor number t as write_phi3 fills it. */
static float phi3_value(int t, int r, int c)
{
    return (float)(t * 1000 + r * P_H + c);
}

static void assert_rows(const struct lms_model *m, enum lms_role role, int t, int first_row,
                        int rows)
{
    const struct lms_tensor *x = lms_model_find(m, role, 0);
    ck_assert_ptr_nonnull(x);
    ck_assert(x->view->ndim == 2 && x->view->shape[0] == rows && x->view->shape[1] == P_H);
    float got[16 * P_H];
    ck_assert_int_eq(lms_view_read(x->view, 0, rows * P_H, got, NULL), LMS_OK);
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < P_H; c++)
            ck_assert_float_eq(got[r * P_H + c], phi3_value(t, first_row + r, c));
}

/* llama.cpp's attn_qkv is [q; k; v] and its ffn_up [gate; up] (its SwiGLU gates the first
 * half): each role is its row range. No Q/K permutation for phi3. */
START_TEST(phi3_fused_tensors_split_on_read)
{
    char path[128];
    tmp_file("phi3.gguf", path, sizeof path);
    struct phi3_file o = phi3_ok();
    write_phi3(path, &o);
    struct lms_model m;
    struct lms_error err;
    ck_assert_msg(lms_format_gguf.read(path, &m, &err) == LMS_OK, "%s", err.msg);
    ck_assert_int_eq(m.arch.family, LMS_FAMILY_PHI3);
    ck_assert_int_eq(m.arch.head_dim, P_D);
    ck_assert_int_eq(m.arch.sliding_window, 0);
    assert_rows(&m, LMS_ROLE_Q, 2, 0, 8);
    assert_rows(&m, LMS_ROLE_K, 2, 8, 4);
    assert_rows(&m, LMS_ROLE_V, 2, 12, 4);
    assert_rows(&m, LMS_ROLE_GATE, 5, 0, P_F);
    assert_rows(&m, LMS_ROLE_UP, 5, P_F, P_F);
    /* the rebuilt config keeps the original context llama.cpp's converter wrote */
    ck_assert_int_eq(json_integer_value(json_object_get(m.hf_config,
                                                        "original_max_position_embeddings")), 64);
    ck_assert_str_eq(json_string_value(json_array_get(json_object_get(m.hf_config,
                                                                      "architectures"), 0)),
                     "Phi3ForCausalLM");
    lms_model_release(&m);
    tmp_cleanup();
}
END_TEST

START_TEST(phi3_bad_files_are_refused)
{
    struct phi3_file o = phi3_ok();
    o.qkv_rows = 12; /* one KV head fewer than the metadata says */
    phi3_read_fails(&o, LMS_ESHAPE, "tensor 'blk.0.attn_qkv.weight' is not [16, 8]");
    o = phi3_ok();
    o.no_block_count = true;
    phi3_read_fails(&o, LMS_EFORMAT, "metadata 'phi3.block_count' is missing");
    o = phi3_ok();
    o.longrope = true; /* Phi-3 128k: LongRoPE factor tensors */
    phi3_read_fails(&o, LMS_EUNSUPPORTED, "LongRoPE");
    o = phi3_ok();
    o.rope_type = "longrope";
    phi3_read_fails(&o, LMS_EUNSUPPORTED, "LongRoPE");
    o = phi3_ok();
    o.rope_dims = 2; /* Phi-2 style partial rotary */
    phi3_read_fails(&o, LMS_EUNSUPPORTED, "rope over 2 of 4 channels per head");
    o = phi3_ok();
    o.rope_type = "ntk\nx"; /* unknown, and not echoed onto a second line */
    phi3_read_fails(&o, LMS_EUNSUPPORTED, "rope scaling '?' is not supported");
    o = phi3_ok();
    o.arch = "phi\n3"; /* an unknown architecture, not echoed onto a second line either */
    phi3_read_fails(&o, LMS_EUNSUPPORTED, "GGUF architecture '?' is not supported");
    o = phi3_ok();
    o.rope_type = "yarn"; /* no factor */
    phi3_read_fails(&o, LMS_EFORMAT, "needs 'phi3.rope.scaling.factor'");
    tmp_cleanup();
}
END_TEST

/* YaRN from llama.cpp's keys alone (no lmsurgeon.hf_config): the IR's factor and original
 * context, and the config's rope_scaling with the optional values under transformers' names. */
START_TEST(yarn_keys_read_into_config)
{
    char path[128];
    tmp_file("yarn.gguf", path, sizeof path);
    struct phi3_file o = phi3_ok();
    o.rope_type = "yarn";
    o.yarn_factor = 4;
    o.yarn_original = 32;
    o.beta_fast = 32;
    write_phi3(path, &o);
    struct lms_model m;
    struct lms_error err;
    ck_assert_msg(lms_format_gguf.read(path, &m, &err) == LMS_OK, "%s", err.msg);
    ck_assert_int_eq(m.arch.rope.type, LMS_ROPE_YARN);
    ck_assert(m.arch.rope.factor == 4.0);
    ck_assert_int_eq(m.arch.rope.original_max_position, 32);
    const json_t *s = json_object_get(m.hf_config, "rope_scaling");
    ck_assert_str_eq(json_string_value(json_object_get(s, "rope_type")), "yarn");
    ck_assert(json_number_value(json_object_get(s, "factor")) == 4.0);
    ck_assert_int_eq(json_integer_value(json_object_get(s, "original_max_position_embeddings")),
                     32);
    ck_assert(json_number_value(json_object_get(s, "beta_fast")) == 32.0);
    lms_model_release(&m);
    o.yarn_original = 0; /* the original context is required */
    phi3_read_fails(&o, LMS_EFORMAT, "'phi3.rope.scaling.original_context_length' is missing");
    tmp_cleanup();
}
END_TEST

static const struct lms_gguf_kv *file_key(const struct lms_gguf *g, const char *key)
{
    const struct lms_gguf_kv *kv = lms_gguf_find(g, key);
    ck_assert_msg(kv != NULL, "no key %s", key);
    return kv;
}

static const struct lms_gguf_tensor *file_tensor(const struct lms_gguf *g, const char *name)
{
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (g->tensors[i].name.n == strlen(name) && !memcmp(g->tensors[i].name.p, name,
                                                             strlen(name)))
            return &g->tensors[i];
    return NULL;
}

static void load_fixture(const char *rel, struct lms_model *m)
{
    char p[1024];
    struct lms_error err;
    ck_assert_msg(lms_checkpoint_read(fixture_path(rel, p, sizeof p), m, &err) == LMS_OK, "%s",
                  err.msg);
}

static struct lms_storage *write_gguf(const struct lms_model *m, const char *path,
                                      struct lms_gguf *g)
{
    struct lms_write_opts o = {.dtype = LMS_DTYPE_COUNT};
    struct lms_error err;
    ck_assert_msg(lms_format_gguf.write(m, path, &o, NULL, &err) == LMS_OK, "%s", err.msg);
    struct lms_storage *st;
    ck_assert_int_eq(lms_storage_map_file(path, &st, NULL), LMS_OK);
    ck_assert_int_eq(lms_gguf_parse(st->base, st->size, path, g, NULL), LMS_OK);
    return st;
}

/* phi3-tiny written as llama.cpp's converter writes it: fused tensors holding the bytes of the
 * Hugging Face qkv_proj / gate_up_proj, no one-role q/k/v or gate tensors, and phi3's keys. */
START_TEST(phi3_written_as_llama_cpp_names_it)
{
    struct lms_model m;
    load_fixture("models/phi3-tiny", &m);
    char path[128];
    struct lms_gguf g;
    struct lms_storage *st = write_gguf(&m, tmp_file("w.gguf", path, sizeof path), &g);
    const struct lms_gguf_kv *kv = file_key(&g, "general.architecture");
    ck_assert(kv->v.s.n == 4 && !memcmp(kv->v.s.p, "phi3", 4));
    ck_assert_uint_eq(file_key(&g, "phi3.rope.dimension_count")->v.u, 8);
    ck_assert_uint_eq(file_key(&g, "phi3.attention.sliding_window")->v.u, 0);
    ck_assert_uint_eq(file_key(&g, "phi3.rope.scaling.original_context_length")->v.u, 256);
    ck_assert_ptr_null(lms_gguf_find(&g, "phi3.rope.scaling.type"));
    struct lms_st_file sf;
    char sp[1024];
    ck_assert_int_eq(lms_st_open(fixture_path("models/phi3-tiny/model.safetensors", sp, sizeof sp),
                                 &sf, NULL), LMS_OK);
    static const char *const pairs[][2] = {
        {"blk.%d.attn_qkv.weight", "model.layers.%d.self_attn.qkv_proj.weight"},
        {"blk.%d.ffn_up.weight", "model.layers.%d.mlp.gate_up_proj.weight"},
    };
    for (int l = 0; l < 3; l++) {
        char name[64];
        snprintf(name, sizeof name, "blk.%d.attn_q.weight", l);
        ck_assert_ptr_null(file_tensor(&g, name));
        snprintf(name, sizeof name, "blk.%d.ffn_gate.weight", l);
        ck_assert_ptr_null(file_tensor(&g, name));
        for (int p = 0; p < 2; p++) {
            char hf[96];
            snprintf(name, sizeof name, pairs[p][0], l);
            snprintf(hf, sizeof hf, pairs[p][1], l);
            const struct lms_gguf_tensor *t = file_tensor(&g, name);
            ck_assert_msg(t != NULL, "no %s", name);
            const struct lms_st_entry *e = NULL;
            for (size_t i = 0; i < sf.hdr.n_entries; i++)
                if (!strcmp(sf.hdr.entries[i].name, hf))
                    e = &sf.hdr.entries[i];
            ck_assert_ptr_nonnull(e);
            ck_assert(t->type == LMS_GGML_F32 && t->n_dims == 2);
            ck_assert_uint_eq(t->ne[0], (uint64_t)e->shape[1]);
            ck_assert_uint_eq(t->ne[1], (uint64_t)e->shape[0]);
            ck_assert_uint_eq(t->nbytes, e->end - e->begin);
            ck_assert(!memcmp((const char *)st->base + g.data_offset + t->offset,
                              (const char *)sf.storage->base + sf.hdr.data_start + e->begin,
                              t->nbytes));
        }
    }
    lms_st_close(&sf);
    lms_gguf_release(&g);
    lms_storage_release(st);
    lms_model_release(&m);
    tmp_cleanup();
}
END_TEST

/* Sets the fixture's rope block (transformers 5's rope_parameters) and the IR's rope. */
static void set_rope(struct lms_model *m, enum lms_rope_type type, const char *block_json)
{
    m->arch.rope.type = type;
    m->arch.rope.factor = 4;
    m->arch.rope.original_max_position = 32;
    json_object_set_new(m->hf_config, "rope_parameters", json_loads(block_json, 0, NULL));
}

static void write_fails(const struct lms_model *m, const char *needle)
{
    char path[128];
    tmp_file("refused.gguf", path, sizeof path);
    struct lms_write_opts o = {.dtype = LMS_DTYPE_COUNT};
    struct lms_error err;
    lms_error_clear(&err);
    ck_assert_int_eq(lms_format_gguf.write(m, path, &o, NULL, &err), LMS_EUNSUPPORTED);
    ck_assert_msg(strstr(err.msg, needle), "'%s' not in '%s'", needle, err.msg);
    ck_assert_msg(strstr(err.msg, path), "no file name in '%s'", err.msg);
    ck_assert_ptr_null(strchr(err.msg, '\n'));
    struct stat sb;
    ck_assert_int_ne(stat(path, &sb), 0); /* nothing written */
}

/* YaRN: llama.cpp's keys as its converter writes them (type, factor, original context, the
 * optional values the config sets), read back into the same IR; what llama.cpp would run
 * otherwise than transformers, and dynamic NTK scaling, are refused. */
START_TEST(yarn_written_and_refusals)
{
    struct lms_model m;
    load_fixture("models/qwen3-tiny", &m);
    set_rope(&m, LMS_ROPE_YARN, "{\"rope_theta\":1000000.0,\"rope_type\":\"yarn\",\"factor\":4.0,"
                                "\"original_max_position_embeddings\":32,\"beta_fast\":32.0}");
    char path[128];
    struct lms_gguf g;
    struct lms_storage *st = write_gguf(&m, tmp_file("y.gguf", path, sizeof path), &g);
    const struct lms_gguf_kv *kv = file_key(&g, "qwen3.rope.scaling.type");
    ck_assert(kv->v.s.n == 4 && !memcmp(kv->v.s.p, "yarn", 4));
    ck_assert(file_key(&g, "qwen3.rope.scaling.factor")->v.f == 4.0);
    ck_assert_uint_eq(file_key(&g, "qwen3.rope.scaling.original_context_length")->v.u, 32);
    ck_assert(file_key(&g, "qwen3.rope.scaling.yarn_beta_fast")->v.f == 32.0);
    ck_assert_ptr_null(lms_gguf_find(&g, "qwen3.rope.scaling.yarn_beta_slow"));
    lms_gguf_release(&g);
    lms_storage_release(st);
    struct lms_model back;
    struct lms_error err;
    ck_assert_msg(lms_format_gguf.read(path, &back, &err) == LMS_OK, "%s", err.msg);
    ck_assert_int_eq(back.arch.rope.type, LMS_ROPE_YARN);
    ck_assert(back.arch.rope.factor == 4.0);
    ck_assert_int_eq(back.arch.rope.original_max_position, 32);
    lms_model_release(&back);

    set_rope(&m, LMS_ROPE_YARN, "{\"rope_type\":\"yarn\",\"factor\":4.0,\"beta_fast\":8.0,"
                                "\"original_max_position_embeddings\":32}");
    write_fails(&m, "beta_fast");
    set_rope(&m, LMS_ROPE_YARN, "{\"rope_type\":\"yarn\",\"factor\":4.0,\"attention_factor\":1.0,"
                                "\"original_max_position_embeddings\":32}");
    write_fails(&m, "attention_factor");
    set_rope(&m, LMS_ROPE_YARN, "{\"rope_type\":\"yarn\",\"factor\":4.0,\"truncate\":false,"
                                "\"original_max_position_embeddings\":32}");
    write_fails(&m, "truncate");
    set_rope(&m, LMS_ROPE_DYNAMIC, "{\"rope_type\":\"dynamic\",\"factor\":4.0}");
    write_fails(&m, "dynamic (NTK) rope scaling has no llama.cpp equivalent");
    lms_model_release(&m);
    tmp_cleanup();
}
END_TEST

/* A Phi-3 with YaRN (which transformers' Phi-3 runs as LongRoPE) is refused; one whose heads x
 * head_dim is not its hidden size is checked on a pruned model in test_gguf_interop.py. */
START_TEST(phi3_write_refusals)
{
    struct lms_model m;
    load_fixture("models/phi3-tiny", &m);
    set_rope(&m, LMS_ROPE_YARN, "{\"rope_type\":\"yarn\",\"factor\":4.0,"
                                "\"original_max_position_embeddings\":32}");
    write_fails(&m, "Phi-3 with yarn");
    lms_model_release(&m);
    tmp_cleanup();
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("gguf");
    TCase *tc = tcase_create("gguf");
    tcase_add_test(tc, parses_golden);
    tcase_add_test(tc, every_truncation_is_an_error);
    tcase_add_test(tc, rejects_bad_magic_and_version);
    tcase_add_test(tc, rejects_absurd_counts);
    tcase_add_test(tc, rejects_lying_lengths);
    tcase_add_test(tc, rejects_bad_values);
    tcase_add_test(tc, rejects_bad_alignment);
    tcase_add_test(tc, rejects_bad_tensors);
    tcase_add_test(tc, writer_reproduces_golden);
    tcase_add_test(tc, q8_0_golden);
    tcase_add_test(tc, phi3_fused_tensors_split_on_read);
    tcase_add_test(tc, phi3_bad_files_are_refused);
    tcase_add_test(tc, yarn_keys_read_into_config);
    tcase_add_test(tc, phi3_written_as_llama_cpp_names_it);
    tcase_add_test(tc, yarn_written_and_refusals);
    tcase_add_test(tc, phi3_write_refusals);
    suite_add_tcase(s, tc);
    return s;
}
