/* Test helper for the interop tests: runs the forward engine on a checkpoint and writes what it
 * computed as raw little-endian fp32, so pytest can compare it with transformers.
 *
 *   engine_dump MODEL IDS B S OUT_PREFIX [--rope-bf16]
 *
 * IDS holds B*S int32 ids. Writes OUT_PREFIX.logits (B, S, V), OUT_PREFIX.layers (L, B, S, H)
 * (every layer's output), OUT_PREFIX.final_norm (B, S, H) and the per-layer hook points the
 * importance scores read: .attn_norm and .mlp_norm (L, B, S, H), .ctx (L, B, S, n_h d),
 * .down_in (L, B, S, F). Exit status 0 on success. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lms/engine.h"
#include "lms/format.h"

struct cap {
    float *pt[LMS_HOOK_COUNT]; /* per point: (L, N, cols) or (N, cols) for global points */
    int64_t n;                 /* N */
};

static enum lms_status hook(void *ctx, struct lms_backend *be, const struct lms_activation *a,
                            struct lms_error *err)
{
    struct cap *c = ctx;
    size_t n = (size_t)(c->n * a->cols);
    float *dst = c->pt[a->point] + (a->layer < 0 ? 0 : (size_t)a->layer * n);
    return lms_buf_download(be, dst, n * sizeof(float), a->data, n * sizeof(float), err);
}

static int write_file(const char *prefix, const char *ext, const void *p, size_t bytes)
{
    char path[4096];
    snprintf(path, sizeof path, "%s.%s", prefix, ext);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, bytes, f) != bytes) {
        fprintf(stderr, "engine_dump: cannot write '%s'\n", path);
        if (f)
            fclose(f);
        return 1;
    }
    return fclose(f) != 0;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: engine_dump MODEL IDS B S OUT_PREFIX [--rope-bf16]\n");
        return 2;
    }
    int64_t B = strtoll(argv[3], NULL, 10), S = strtoll(argv[4], NULL, 10), N = B * S;
    struct lms_error err;
    struct lms_model m;
    if (lms_checkpoint_read(argv[1], &m, &err)) {
        fprintf(stderr, "engine_dump: %s\n", err.msg);
        return 1;
    }
    int32_t *ids = malloc((size_t)N * 4);
    FILE *f = fopen(argv[2], "rb");
    if (!f || fread(ids, 4, (size_t)N, f) != (size_t)N) {
        fprintf(stderr, "engine_dump: cannot read %lld ids from '%s'\n", (long long)N, argv[2]);
        return 1;
    }
    fclose(f);
    struct lms_backend *be;
    struct lms_engine *e;
    struct lms_engine_opts eo = {.max_batch = B, .max_seq = S};
    eo.rope_bf16 = argc > 6 && !strcmp(argv[6], "--rope-bf16");
    if (lms_backend_open_name("cpu", NULL, &be, &err) || lms_engine_new(&m, be, &eo, &e, &err)) {
        fprintf(stderr, "engine_dump: %s\n", err.msg);
        return 1;
    }
    int64_t V = lms_engine_logits_cols(e), H = m.arch.hidden, L = m.arch.n_layers;
    int64_t D = m.arch.n_heads * m.arch.head_dim, F = m.arch.ffn;
    struct cap c = {.n = N};
    c.pt[LMS_HOOK_LAYER_OUT] = malloc((size_t)(L * N * H) * 4);
    c.pt[LMS_HOOK_ATTN_NORM_OUT] = malloc((size_t)(L * N * H) * 4);
    c.pt[LMS_HOOK_MLP_NORM_OUT] = malloc((size_t)(L * N * H) * 4);
    c.pt[LMS_HOOK_ATTN_CONTEXT] = malloc((size_t)(L * N * D) * 4);
    c.pt[LMS_HOOK_DOWN_INPUT] = malloc((size_t)(L * N * F) * 4);
    c.pt[LMS_HOOK_FINAL_NORM_OUT] = malloc((size_t)(N * H) * 4);
    float *logits = malloc((size_t)(N * V) * 4);
    struct lms_forward fw = {.ids = ids, .batch = B, .seq = S, .logits = logits,
                             .logits_cap = (size_t)(N * V), .hook = hook, .hook_ctx = &c,
                             .hook_mask = ~(1u << LMS_HOOK_EMBED_OUT)};
    if (lms_engine_forward(e, &fw, &err)) {
        fprintf(stderr, "engine_dump: %s\n", err.msg);
        return 1;
    }
    int rc = write_file(argv[5], "logits", logits, (size_t)(N * V) * 4) ||
             write_file(argv[5], "layers", c.pt[LMS_HOOK_LAYER_OUT], (size_t)(L * N * H) * 4) ||
             write_file(argv[5], "attn_norm", c.pt[LMS_HOOK_ATTN_NORM_OUT],
                        (size_t)(L * N * H) * 4) ||
             write_file(argv[5], "mlp_norm", c.pt[LMS_HOOK_MLP_NORM_OUT],
                        (size_t)(L * N * H) * 4) ||
             write_file(argv[5], "ctx", c.pt[LMS_HOOK_ATTN_CONTEXT], (size_t)(L * N * D) * 4) ||
             write_file(argv[5], "down_in", c.pt[LMS_HOOK_DOWN_INPUT], (size_t)(L * N * F) * 4) ||
             write_file(argv[5], "final_norm", c.pt[LMS_HOOK_FINAL_NORM_OUT],
                        (size_t)(N * H) * 4);
    free(logits);
    for (int k = 0; k < LMS_HOOK_COUNT; k++)
        free(c.pt[k]);
    free(ids);
    lms_engine_free(e);
    lms_backend_free(be);
    lms_model_release(&m);
    return rc;
}
