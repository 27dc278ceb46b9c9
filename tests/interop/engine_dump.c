/* Test helper for the interop tests: runs the forward engine on a checkpoint and writes what it
 * computed as raw little-endian fp32, so pytest can compare it with transformers.
 *
 *   engine_dump MODEL IDS B S OUT_PREFIX [--rope-bf16]
 *
 * IDS holds B*S int32 ids. Writes OUT_PREFIX.logits (B, S, V), OUT_PREFIX.layers (L, B, S, H)
 * (every layer's output) and OUT_PREFIX.final_norm (B, S, H). Exit status 0 on success. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lms/engine.h"
#include "lms/format.h"

struct cap {
    float *layers;    /* (L, N, H) */
    float *final_out; /* (N, H) */
    size_t n;         /* N * H */
};

static enum lms_status hook(void *ctx, struct lms_backend *be, const struct lms_activation *a,
                            struct lms_error *err)
{
    struct cap *c = ctx;
    float *dst = a->point == LMS_HOOK_LAYER_OUT ? c->layers + (size_t)a->layer * c->n
                                                : c->final_out;
    return lms_buf_download(be, dst, c->n * sizeof(float), a->data, c->n * sizeof(float), err);
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
    struct cap c = {malloc((size_t)(L * N * H) * 4), malloc((size_t)(N * H) * 4),
                    (size_t)(N * H)};
    float *logits = malloc((size_t)(N * V) * 4);
    struct lms_forward fw = {.ids = ids, .batch = B, .seq = S, .logits = logits,
                             .logits_cap = (size_t)(N * V), .hook = hook, .hook_ctx = &c,
                             .hook_mask = 1u << LMS_HOOK_LAYER_OUT |
                                          1u << LMS_HOOK_FINAL_NORM_OUT};
    if (lms_engine_forward(e, &fw, &err)) {
        fprintf(stderr, "engine_dump: %s\n", err.msg);
        return 1;
    }
    int rc = write_file(argv[5], "logits", logits, (size_t)(N * V) * 4) ||
             write_file(argv[5], "layers", c.layers, (size_t)(L * N * H) * 4) ||
             write_file(argv[5], "final_norm", c.final_out, (size_t)(N * H) * 4);
    free(logits);
    free(c.layers);
    free(c.final_out);
    free(ids);
    lms_engine_free(e);
    lms_backend_free(be);
    lms_model_release(&m);
    return rc;
}
