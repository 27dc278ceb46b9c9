/* bench/distill_gpu: one full training step of lmsurgeon's trainer (engine/train.c) on CUDA, on
 * a Qwen3-8B-dimensioned model of a few layers with random weights generated on the GPU;
 * driven by bench/distill-gpu, which runs the PyTorch peer (bench/distill_gpu_torch.py) in the
 * same run.
 *
 *   distill_gpu [--batch B] [--seq S] [--layers L] [--iters N] [--device cuda:K] [--recompute]
 *
 * Shape: V 151936, H 4096, F 12288, n_h 32, n_g 8, d 128, q/k RMSNorm, untied LM head. The
 * step is the trainer's own: zero gradients, forward with saved activations, the LM head and
 * cross-entropy in row chunks, backward, global gradient norm, AdamW on fp32 master weights
 * with the bf16 working copy refreshed (AUTO precision), the update through the distillation
 * run's own (lms_distill_update: the schedule's rate, computed once per step). The model (a
 * host IR whose tensors all view one zero-filled buffer) only gives the trainer its shapes; the
 * weights are then drawn on the device: uniform(-0.02, 0.02) matrices, norm weights 1.
 *
 * FLOPs counted per step (N = B S tokens):
 *   matmul    = 6 N (L (H (n_h + 2 n_g) d + n_h d H + 3 F H) + V H)   (forward 2, backward 4)
 *   attention = 3 x 4 L B n_h d S (S + 1) / 2                          (forward 1, backward 2)
 * Timing: wall clock around whole steps (each ends in a device sync), after one warm-up step;
 * the median of --iters steps, and of the optimiser's part (norm and AdamW) alone. Prints one
 * JSON object on stdout. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/backend_impl.h"
#include "kernels/cuda/lms_cuda.h"
#include "lms/distill_run.h"
#include "lms/storage.h"
#include "lms/train.h"

#define V 151936
#define H 4096
#define F 12288
#define NH 32
#define NG 8
#define D 128

static void die(const char *what, const struct lms_error *err)
{
    fprintf(stderr, "distill_gpu: %s: %s\n", what, err ? err->msg : "failed");
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The IR of the benchmark model: every tensor a view of the start of one zero-filled storage. */
static void build_model(struct lms_model *m, int64_t L)
{
    struct lms_error err;
    lms_model_init(m);
    m->arch = (struct lms_arch){.family = LMS_FAMILY_QWEN3, .n_layers = L, .hidden = H,
                                .ffn = F, .n_heads = NH, .n_groups = NG, .head_dim = D,
                                .vocab = V, .padded_vocab = V, .max_position = 40960,
                                .norm_eps = 1e-6, .qk_norm = true, .dtype = LMS_DTYPE_BF16};
    m->arch.rope.theta = 1e6;
    m->arch.rope.factor = 1.0;
    struct lms_storage *s;
    if (lms_storage_new_host((size_t)V * H * 2, &s, &err))
        die("allocating the host model", &err);
    for (int r = LMS_ROLE_EMBED; r < LMS_ROLE_COUNT; r++) {
        int ndim;
        int64_t shape[2];
        bool per_layer = lms_role_is_per_layer((enum lms_role)r);
        for (int64_t l = 0; l < (per_layer ? L : 1); l++) {
            if (!lms_role_expected((enum lms_role)r, &m->arch) ||
                !lms_role_shape((enum lms_role)r, &m->arch, &ndim, shape))
                continue;
            char name[128];
            struct lms_view *v;
            if (!lms_role_hf_name((enum lms_role)r, per_layer ? l : -1, name, sizeof name))
                continue;
            if (lms_view_new_storage(s, 0, LMS_DTYPE_BF16, ndim, shape, &v, &err) ||
                lms_model_add(m, name, (enum lms_role)r, per_layer ? l : -1, v, &err))
                die(name, &err);
            lms_view_release(v);
        }
    }
    lms_storage_release(s);
    if (lms_model_validate(m, &err))
        die("the benchmark model", &err);
}

int main(int argc, char **argv)
{
    int64_t B = 2, S = 4096, L = 4, iters = 3;
    bool recompute = false;
    const char *device = "cuda";
    static const struct option opts[] = {
        {"batch", required_argument, NULL, 'b'}, {"seq", required_argument, NULL, 's'},
        {"layers", required_argument, NULL, 'l'}, {"iters", required_argument, NULL, 'i'},
        {"device", required_argument, NULL, 'd'}, {"recompute", no_argument, NULL, 'r'},
        {NULL, 0, NULL, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'r') {
            recompute = true;
            continue;
        }
        char *end = NULL;
        long long v = c == 'd' ? 0 : strtoll(optarg, &end, 10);
        if (c != 'd' && (!end || *end || v <= 0 || v > (1 << 20))) {
            fprintf(stderr, "distill_gpu: bad value '%s'\n", optarg);
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
    struct lms_model model;
    build_model(&model, L);
    struct lms_backend *be;
    struct lms_backend_opts bo = {.precision = LMS_PRECISION_AUTO};
    if (lms_backend_open_name(device, &bo, &be, &err))
        die("opening the device", &err);
    struct lms_train_opts to = {.max_batch = B, .max_seq = S, .recompute = recompute};
    struct lms_trainer *tr;
    double t0 = now();
    if (lms_trainer_new(&model, be, &to, &tr, &err))
        die("creating the trainer", &err);
    double t_setup = now() - t0;

    /* random weights on the device, through a bf16 scratch as large as the largest tensor */
    cudaStream_t st = lms__cuda_stream(be);
    struct lms_buf tmp;
    if (lms_buf_alloc(be, (size_t)V * H * 2, &tmp, &err))
        die("allocating the weight scratch", &err);
    for (size_t i = 0; i < lms_trainer_n_params(tr); i++) {
        const struct lms_train_param *p = lms_trainer_param(tr, i);
        if (p->ndim == 1) {
            if (lms_cuda_fill_f32(st, p->w, p->numel, 1.0f) != cudaSuccess)
                die("filling norm weights", NULL);
            continue;
        }
        if (lms_cuda_fill_uniform_bf16(st, tmp.ptr, p->numel, 1234 + i, 0.02f) != cudaSuccess)
            die("drawing weights", NULL);
        if (be->ops->cast(be, p->w, LMS_DTYPE_F32, tmp.ptr, LMS_DTYPE_BF16, p->numel, &err))
            die("casting weights", &err);
    }
    lms_buf_free(be, &tmp);
    if (lms_trainer_weights_updated(tr, &err))
        die("refreshing the working copy", &err);

    int64_t N = B * S;
    int32_t *ids = malloc((size_t)N * sizeof *ids), *tgt = malloc((size_t)N * sizeof *tgt);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int64_t i = 0; i < N; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        ids[i] = (int32_t)(x % V);
    }
    for (int64_t i = 0; i < N; i++)
        tgt[i] = (i + 1) % S ? ids[i + 1] : -1;
    struct lms_train_batch b = {.ids = ids, .batch = B, .seq = S, .targets = tgt};
    struct lms_loss_opts lo;
    lms_loss_opts_default(&lo);
    lo.kd_weight = 0;
    lo.ce_weight = 1;
    lo.combine = LMS_COMBINE_WEIGHTED;
    struct lms_adamw_opts ao;
    lms_adamw_megatron(&ao);
    /* a constant rate through the run's schedule: the update is the distillation run's own */
    struct lms_lr_schedule sched = {.lr = 1e-5, .min_lr = 1e-5, .warmup = 0,
                                    .max_steps = iters + 1};
    double *times = calloc((size_t)iters + 1, sizeof *times);
    double *t_opt = calloc((size_t)iters + 1, sizeof *t_opt);
    struct lms_loss_parts parts = {0};
    double first_loss = 0, norm = 0;
    for (int64_t it = 0; it <= iters; it++) {
        double a = now();
        if (lms_trainer_zero_grads(tr, &err) ||
            lms_trainer_micro_step(tr, &b, &lo, 1.0, &parts, &err) || lms_backend_sync(be, &err))
            die("training step", &err);
        double m = now();
        double lr;
        if (lms_distill_update(tr, &sched, &ao, it, &lr, &norm, &err) ||
            lms_backend_sync(be, &err))
            die("optimiser step", &err);
        times[it] = now() - a;
        t_opt[it] = now() - m;
        if (it == 0)
            first_loss = parts.total;
    }
    double warm = times[0];
    qsort(times + 1, (size_t)iters, sizeof *times, cmp_double);
    qsort(t_opt + 1, (size_t)iters, sizeof *t_opt, cmp_double);
    double med = times[1 + iters / 2];
    double P_mm = (double)L * ((double)H * (NH + 2 * NG) * D + (double)NH * D * H + 3.0 * F * H) +
                  (double)V * H;
    double mm = 6.0 * (double)N * P_mm;
    double at = 3.0 * 4.0 * (double)L * (double)B * NH * D * (double)S * (double)(S + 1) / 2;
    const struct lms_train_plan *tp = lms_trainer_plan(tr);
    printf("{\"impl\": \"lmsurgeon\", \"batch\": %lld, \"seq\": %lld, \"layers\": %lld, "
           "\"iters\": %lld, \"recompute\": %s, \"seconds_median\": %.6f, "
           "\"seconds_warmup\": %.6f, \"seconds_setup\": %.3f, \"tokens_per_second\": %.1f, "
           "\"model_tflops\": %.2f, \"matmul_tflops\": %.2f, \"loss_first\": %.5f, "
           "\"loss_last\": %.5f, \"grad_norm_last\": %.5f, \"trainer_bytes\": %zu, "
           "\"seconds_optimizer_median\": %.6f}\n",
           (long long)B, (long long)S, (long long)L, (long long)iters,
           recompute ? "true" : "false", med, warm, t_setup, (double)N / med,
           (mm + at) / med / 1e12, mm / med / 1e12, first_loss, parts.total, norm, tp->total,
           t_opt[1 + iters / 2]);
    lms_trainer_free(tr);
    lms_model_release(&model);
    lms_backend_free(be);
    free(ids);
    free(tgt);
    free(times);
    free(t_opt);
    return 0;
}
