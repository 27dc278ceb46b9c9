/* bench/forward_gpu: lmsurgeon's CUDA forward on a Qwen3-8B-shaped model with random bf16
 * weights generated on the GPU (no checkpoint), without the LM head; driven by bench/forward-gpu.
 *
 *   forward_gpu [--batch B] [--seq S] [--layers L] [--iters N] [--device cuda:K]
 *
 * Legend: B batch rows, S tokens per row, N = B*S, L layers, H hidden, F FFN width, n_h query
 * heads, n_g key/value heads, d head dim, V vocabulary.
 * Shape (Qwen3-8B): V 151936, H 4096, F 12288, L 36, n_h 32, n_g 8, d 128, q/k RMSNorm, RoPE
 * theta 1e6. The layer is the op sequence of engine/model.c (lms__layer_forward, as the inference
 * engine runs it), on the backend op table in AUTO precision: embedding, then per layer RMSNorm, fused QKV GEMM, q/k RMSNorm, RoPE,
 * attention, o-projection accumulated into the residual, RMSNorm, fused gate|up GEMM, SwiGLU,
 * down projection accumulated into the residual; final RMSNorm. Nothing is allocated per step.
 *
 * FLOPs counted per forward:
 *   matmul    = 2 N L H ((n_h + 2 n_g) d + n_h d + 2F + F)
 *   attention = 4 L B n_h d S (S + 1) / 2   (QK^T and PV over the causal half, diagonal kept)
 * Timing: CUDA events on the backend stream around each forward after one warm-up; the median
 * of --iters runs. One more forward is a profile (time per op category, "profile_ms"). Prints
 * one JSON object on stdout. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/backend_impl.h"
#include "kernels/cuda/lms_cuda.h"
#include "lms/engine.h"

#define V 151936
#define H 4096
#define F 12288
#define NH 32
#define NG 8
#define D 128

struct layer {
    uint16_t *qkv, *o, *gu, *down; /* bf16 (QKV, H), (H, n_h d), (2F, H), (H, F) */
    float *attn_norm, *mlp_norm, *q_norm, *k_norm;
};

static void die(const char *what, const struct lms_error *err)
{
    fprintf(stderr, "forward_gpu: %s: %s\n", what, err ? err->msg : "failed");
    exit(1);
}

static void ck(cudaError_t e, const char *what)
{
    if (e != cudaSuccess) {
        fprintf(stderr, "forward_gpu: %s: %s\n", what, cudaGetErrorString(e));
        exit(1);
    }
}

/* y (rows, n_out) (+)= x (rows, n_in) . W^T, W (n_out, n_in) bf16: engine/model.c's lms__linear() */
static enum lms_status linear(struct lms_backend *be, float *y, int64_t ldy, const float *x,
                              int64_t ldx, const uint16_t *w, int64_t rows, int64_t n_out,
                              int64_t n_in, float beta, struct lms_error *err)
{
    struct lms_matmul mm = {.trans_a = false, .trans_b = true, .m = rows, .n = n_out,
                            .k = n_in, .a = x, .lda = ldx, .b = w, .b_dtype = LMS_DTYPE_BF16,
                            .ldb = n_in, .c = y, .ldc = ldy, .batch = 1, .alpha = 1.0f,
                            .beta = beta};
    return be->ops->matmul(be, &mm, err);
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int64_t B = 2, S = 4096, L = 36, iters = 3;
    const char *device = "cuda";
    static const struct option opts[] = {
        {"batch", required_argument, NULL, 'b'}, {"seq", required_argument, NULL, 's'},
        {"layers", required_argument, NULL, 'l'}, {"iters", required_argument, NULL, 'i'},
        {"device", required_argument, NULL, 'd'}, {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        long long v = c == 'd' ? 0 : strtoll(optarg, &end, 10);
        if (c != 'd' && (!end || *end || v <= 0 || v > (1 << 20))) {
            fprintf(stderr, "forward_gpu: bad value '%s'\n", optarg);
            return 2;
        }
        switch (c) {
        case 'b': B = v; break;
        case 's': S = v; break;
        case 'l': L = v; break;
        case 'i': iters = v; break;
        case 'd': device = optarg; break;
        default: return 2;
        }
    }
    struct lms_error err;
    struct lms_backend *be;
    struct lms_backend_opts bo = {.precision = LMS_PRECISION_AUTO};
    if (lms_backend_open_name(device, &bo, &be, &err))
        die("opening the device", &err);
    const struct lms_backend_ops *ops = be->ops;
    cudaStream_t st = lms__cuda_stream(be);
    const int64_t N = B * S, QKV = (NH + 2 * NG) * D, NQ = NH * D, NKV = NG * D;

    /* weights: one allocation, bf16 matrices then fp32 norms */
    int64_t per_layer16 = QKV * H + H * NQ + 2 * F * H + H * F;
    int64_t n16 = (int64_t)V * H + L * per_layer16;
    int64_t n32 = H + L * (2 * H + 2 * D);
    struct lms_buf wbuf, ws;
    if (lms_buf_alloc(be, (size_t)n16 * 2 + (size_t)n32 * 4 + 256, &wbuf, &err))
        die("allocating the weights", &err);
    uint16_t *w16 = wbuf.ptr;
    float *w32 = (float *)(w16 + n16 + (n16 & 1 ? 1 : 0));
    ck(lms_cuda_fill_uniform_bf16(st, w16, n16, 1234, 0.02f), "random weights");
    /* norm weights 1: activations keep the scale RMSNorm gives them */
    ck(lms_cuda_fill_f32(st, w32, n32, 1.0f), "norm weights");
    uint16_t *embed = w16;
    struct layer *ly = calloc((size_t)L, sizeof *ly);
    uint16_t *p16 = w16 + (int64_t)V * H;
    float *p32 = w32;
    float *final_norm = p32;
    p32 += H;
    for (int64_t l = 0; l < L; l++) {
        ly[l].qkv = p16;
        p16 += QKV * H;
        ly[l].o = p16;
        p16 += H * NQ;
        ly[l].gu = p16;
        p16 += 2 * F * H;
        ly[l].down = p16;
        p16 += H * F;
        ly[l].attn_norm = p32;
        ly[l].mlp_norm = p32 + H;
        ly[l].q_norm = p32 + 2 * H;
        ly[l].k_norm = p32 + 2 * H + D;
        p32 += 2 * H + 2 * D;
    }

    /* workspace: the engine's planner, for the same layout engine/forward.c uses */
    struct lms_arch a;
    memset(&a, 0, sizeof a);
    a.hidden = H;
    a.ffn = F;
    a.n_heads = NH;
    a.n_groups = NG;
    a.head_dim = D;
    a.n_layers = L;
    a.rope.type = LMS_ROPE_DEFAULT;
    a.rope.theta = 1e6;
    struct lms_engine_opts eo = {.max_batch = B, .max_seq = S, .logits_rows = 1};
    struct lms_fwd_plan plan;
    if (lms_fwd_plan_make(&a, 1, &eo, &plan, &err))
        die("planning the workspace", &err);
    if (lms_buf_alloc(be, plan.bytes, &ws, &err))
        die("allocating the workspace", &err);
    char *wsp = ws.ptr;
    float *x = (float *)(wsp + plan.off_x), *xn = (float *)(wsp + plan.off_xn);
    float *qkv = (float *)(wsp + plan.off_qkv), *ctx = (float *)(wsp + plan.off_ctx);
    float *gu = (float *)(wsp + plan.off_gu), *act = (float *)(wsp + plan.off_act);
    int32_t *ids = (int32_t *)(wsp + plan.off_ids), *pos = (int32_t *)(wsp + plan.off_pos);
    float *cs = (float *)(wsp + plan.off_cos), *sn = (float *)(wsp + plan.off_sin);

    int32_t *h_ids = malloc((size_t)N * 4), *h_pos = malloc((size_t)N * 4);
    for (int64_t i = 0; i < N; i++) {
        h_ids[i] = (int32_t)((i * 2654435761u) % V);
        h_pos[i] = (int32_t)(i % S);
    }
    float *tab = malloc((size_t)(S * D) * 4);
    if (lms_rope_table(&a, S, false, tab, tab + S * D / 2, &err))
        die("rope table", &err);
    if (lms_buf_upload(be, ids, h_ids, (size_t)N * 4, &err) ||
        lms_buf_upload(be, pos, h_pos, (size_t)N * 4, &err) ||
        lms_buf_upload(be, cs, tab, (size_t)(S * D / 2) * 4, &err) ||
        lms_buf_upload(be, sn, tab + S * D / 2, (size_t)(S * D / 2) * 4, &err))
        die("uploading inputs", &err);

#define OP(call, what)                                                                       \
    do {                                                                                     \
        if (call)                                                                            \
            die(what, &err);                                                                 \
    } while (0)
/* The last pass is a profile: each op between two events, waited for, its time added to its
 * category (the launch gaps this adds are not counted). */
    enum { C_GEMM, C_ATTN, C_NORM, C_ROPE, C_SWIGLU, C_EMBED, C_N };
    static const char *const cat_name[C_N] = {"gemm", "attention", "rmsnorm", "rope", "swiglu",
                                              "embedding"};
    double cat_ms[C_N] = {0};
    bool prof = false;
    cudaEvent_t p0, p1;
    ck(cudaEventCreate(&p0), "event");
    ck(cudaEventCreate(&p1), "event");
#define TIMED(cat, stmt)                                                                      \
    do {                                                                                     \
        if (prof)                                                                            \
            ck(cudaEventRecord(p0, st), "event");                                            \
        stmt;                                                                                \
        if (prof) {                                                                          \
            float t_;                                                                        \
            ck(cudaEventRecord(p1, st), "event");                                            \
            ck(cudaEventSynchronize(p1), "event");                                           \
            ck(cudaEventElapsedTime(&t_, p0, p1), "event time");                             \
            cat_ms[cat] += t_;                                                               \
        }                                                                                    \
    } while (0)
#define LINEAR(y, ldy, xin, ldx, w, rows, n_out, n_in, beta)                                \
    TIMED(C_GEMM, OP(linear(be, y, ldy, xin, ldx, w, rows, n_out, n_in, beta, &err), "matmul"))

    int64_t runs = iters + 1;
    float *ms = calloc((size_t)runs, sizeof *ms);
    cudaEvent_t e0, e1;
    ck(cudaEventCreate(&e0), "event");
    ck(cudaEventCreate(&e1), "event");
    float eps = 1e-6f;
    for (int64_t it = 0; it <= runs; it++) {
        prof = it == runs;
        ck(cudaEventRecord(e0, st), "event");
        TIMED(C_EMBED,
              OP(ops->embedding(be, x, ids, N, embed, LMS_DTYPE_BF16, V, H, &err), "embedding"));
        for (int64_t l = 0; l < L; l++) {
            const struct layer *w = &ly[l];
            TIMED(C_NORM, OP(ops->rmsnorm(be, xn, H, x, H, w->attn_norm, NULL, N, 1, H, eps, &err),
                             "rmsnorm"));
            LINEAR(qkv, QKV, xn, H, w->qkv, N, QKV, H, 0.0f);
            TIMED(C_NORM, OP(ops->rmsnorm(be, qkv, QKV, qkv, QKV, w->q_norm, NULL, N, NH, D, eps,
                                          &err),
                             "q norm"));
            TIMED(C_NORM, OP(ops->rmsnorm(be, qkv + NQ, QKV, qkv + NQ, QKV, w->k_norm, NULL, N,
                                          NG, D, eps, &err),
                             "k norm"));
            TIMED(C_ROPE, OP(ops->rope(be, qkv, QKV, N, NH, D, pos, cs, sn, S, &err), "rope q"));
            TIMED(C_ROPE,
                  OP(ops->rope(be, qkv + NQ, QKV, N, NG, D, pos, cs, sn, S, &err), "rope k"));
            struct lms_attention at = {
                .batch = B, .seq = S, .n_heads = NH, .n_groups = NG, .head_dim = D, .q = qkv,
                .k = qkv + NQ, .v = qkv + NQ + NKV, .q_stride = QKV, .kv_stride = QKV,
                .out = ctx, .out_stride = NQ, .scale = 1.0f / sqrtf((float)D), .window = 0,
            };
            TIMED(C_ATTN, OP(ops->attention(be, &at, &err), "attention"));
            LINEAR(x, H, ctx, NQ, w->o, N, H, NQ, 1.0f);
            TIMED(C_NORM, OP(ops->rmsnorm(be, xn, H, x, H, w->mlp_norm, NULL, N, 1, H, eps, &err),
                             "rmsnorm"));
            LINEAR(gu, 2 * F, xn, H, w->gu, N, 2 * F, H, 0.0f);
            TIMED(C_SWIGLU, OP(ops->swiglu(be, act, F, gu, gu + F, 2 * F, N, F, &err), "swiglu"));
            LINEAR(x, H, act, F, w->down, N, H, F, 1.0f);
        }
        TIMED(C_NORM, OP(ops->rmsnorm(be, xn, H, x, H, final_norm, NULL, N, 1, H, eps, &err),
                         "final norm"));
        ck(cudaEventRecord(e1, st), "event");
        OP(lms_backend_sync(be, &err), "forward");
        if (!prof)
            ck(cudaEventElapsedTime(&ms[it], e0, e1), "event time");
    }
    /* a sanity value: the final norm output must be finite */
    float probe[8];
    OP(lms_buf_download(be, probe, sizeof probe, xn, sizeof probe, &err), "download");
    int finite = 1;
    for (int i = 0; i < 8; i++)
        finite &= isfinite(probe[i]) ? 1 : 0;

    qsort(ms + 1, (size_t)iters, sizeof *ms, cmp_float);
    double med = ms[1 + iters / 2] / 1e3;
    double mm_flops = 2.0 * (double)N * (double)L * H * (double)(QKV + NQ + 2 * F + F);
    double at_flops = 4.0 * L * B * NH * D * (double)S * (double)(S + 1) / 2.0;
    printf("{\"impl\":\"lmsurgeon\",\"device\":\"%s\",\"batch\":%lld,\"seq\":%lld,\"layers\":%lld,"
           "\"iters\":%lld,\"seconds_median\":%.6f,\"seconds_warmup\":%.6f,"
           "\"tokens_per_second\":%.1f,\"matmul_tflops\":%.2f,\"total_tflops\":%.2f,"
           "\"output_finite\":%s,\"profile_ms\":{",
           lms_backend_name(be), (long long)B, (long long)S, (long long)L, (long long)iters, med,
           ms[0] / 1e3, (double)N / med, mm_flops / med / 1e12,
           (mm_flops + at_flops) / med / 1e12, finite ? "true" : "false");
    for (int ci = 0; ci < C_N; ci++)
        printf("%s\"%s\":%.2f", ci ? "," : "", cat_name[ci], cat_ms[ci]);
    printf("}}\n");
    cudaEventDestroy(p0);
    cudaEventDestroy(p1);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    lms_buf_free(be, &ws);
    lms_buf_free(be, &wbuf);
    lms_backend_free(be);
    free(ly);
    free(ms);
    free(tab);
    free(h_ids);
    free(h_pos);
    return finite ? 0 : 1;
}
