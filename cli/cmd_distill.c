/* lmsurgeon distill: train a pruned student to match its teacher's next-token distribution on a
 * token corpus (logit distillation), with the reference workflow's flags as written. This file
 * parses and checks the options, opens the data, plans memory and prints; distill/run.c runs the
 * steps. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "lms/alloc.h"
#include "lms/comm.h"
#include "lms/distill.h"
#include "lms/format.h"
#include "lms/json.h"
#include "lms/outdir.h"
#include "lms/train.h"

static const char *cmd = "distill";

static const char usage_text[] =
    "usage: lmsurgeon distill --student S --teacher T --data-paths P... [--out DIR] [options]\n"
    "\n"
    "Trains the student S (a pruned model) to match the teacher T on the token data P: forward\n"
    "KL(teacher || student) over the whole vocabulary per position (temperature 1), AdamW with\n"
    "fp32 master weights and moments, linear warm-up then cosine decay to --min-lr, global-norm\n"
    "clipping, and gradient accumulation over --gbs / --mbs micro-batches. The student is\n"
    "written to DIR in its own format (or --to) atomically, at the end and every\n"
    "--save-interval steps, with a resumable training state beside it (DIR.state/).\n"
    "\n"
    "Models and data:\n"
    "  --student S, --model-path S    the student checkpoint (any format lmsurgeon reads)\n"
    "  --teacher T, --teacher-path T  the teacher; its vocabulary must equal the student's\n"
    "  --data-paths P...              Megatron indexed dataset prefixes (PREFIX.bin/.idx, or raw\n"
    "                                 .u16/.i32 id files): one prefix, several (weighted by\n"
    "                                 size), or WEIGHT PREFIX pairs: --data-paths 0.3 a 0.7 b\n"
    "  --split W[,W[,W]]              train,validation,test shares of each dataset's documents\n"
    "                                 (default 969,30,1, megatron-core's arithmetic)\n"
    "  --seq-length S                 tokens per row (default 4096); rows hold S + 1 ids\n"
    "  --seed N                       data order (default 1234); the run is deterministic\n"
    "Batch and schedule:\n"
    "  --gbs N, --global-batch-size   rows per optimiser step (default 768)\n"
    "  --mbs N, --micro-batch-size    rows per forward/backward pass; gbs must be a multiple\n"
    "                                 (default 8); gradients accumulate over gbs / mbs passes\n"
    "  --max-steps N                  optimiser steps (default 40)\n"
    "  --lr X, --min-lr X             peak and floor learning rate (default 1e-4, 1e-5)\n"
    "  --warmup-steps N               linear warm-up steps (default 1), then cosine decay:\n"
    "                                 lr(s) = lr (s+1)/(W+1) for s <= W, then\n"
    "                                 min_lr + (lr - min_lr)(1 + cos(pi (s-W)/(M-W)))/2\n"
    "Optimiser:\n"
    "  --optim-preset P               parity (default: betas 0.9/0.999, eps 1e-8, weight decay\n"
    "                                 0.01), megatron (betas 0.9/0.95, eps 1e-5, weight decay\n"
    "                                 0.1) or gpt (as megatron with eps 1e-8: the recipe the\n"
    "                                 shipped teacher was trained with); all clip the global\n"
    "                                 gradient norm at 1.0\n"
    "  --adam-beta1 X, --adam-beta2 X, --adam-eps X, --weight-decay X, --clip-grad X\n"
    "                                 override one setting of the preset (--clip-grad 0: none).\n"
    "                                 Weight decay skips biases and 1-D norm weights\n"
    "Loss:\n"
    "  --kd-loss KIND                 forward-kl (default), reverse-kl, or top-k (forward KL\n"
    "                                 over the teacher's --kd-top-k K largest entries)\n"
    "  --kd-temperature T             softmax temperature of both distributions (default 1)\n"
    "  --lm-loss-scale W              add W x cross-entropy on the data's next tokens (default 0:\n"
    "                                 logits-only distillation); the distillation term is then\n"
    "                                 rescaled to the cross-entropy's magnitude and weighted by\n"
    "                                 --kd-loss-scale (default 1)\n"
    "  --recompute                    keep only each layer's input for the backward and\n"
    "                                 recompute the rest (less memory, about 1/3 more time)\n"
    ;
static const char usage_text2[] =
    "Logging, validation, saving:\n"
    "  --out DIR                      where the student goes (default LOG_DIR/NAME)\n"
    "  --to FORMAT, --dtype TYPE      output format and dtype (default: the student's)\n"
    "  --name NAME                    run name (default: the last component of --out, else\n"
    "                                 'distill')\n"
    "  --log-dir DIR                  where NAME.metrics.jsonl goes (default .): one JSON line\n"
    "                                 per logged step and per validation\n"
    "  --log-interval N               a log line every N steps (default 1): step, lr, loss,\n"
    "                                 gradient norm, tokens/s, ETA\n"
    "  --val-check-interval N         validation loss every N steps (default 0: only at the end)\n"
    "  --limit-val-batches N          global batches of the validation split per validation\n"
    "                                 (default 1; 0 = no validation)\n"
    "  --save-interval N              save the student and the training state every N steps\n"
    "                                 (default 0: only at the end)\n"
    "  --resume                       continue from DIR.state/ exactly where it stopped; the\n"
    "                                 result is bit-identical to an uninterrupted run. Refused\n"
    "                                 when any option that shapes the run has changed\n"
    "  --exit-interval N              save and exit (status 0) after a step that is a multiple\n"
    "                                 of N, to split a run into jobs; continue with --resume\n"
    "  --force                        replace an existing DIR (and DIR.state/) without --resume\n"
    "Machine:\n"
    "  --device DEV                   cpu (default) or cuda[:N]\n"
    "  --precision P                  auto (default), fp32 or bf16. On cuda, auto and bf16 keep a\n"
    "                                 bf16 working copy of the weights and run every GEMM in bf16\n"
    "                                 with fp32 accumulation (master weights, moments, gradients,\n"
    "                                 norms, softmax and the losses stay fp32); fp32 is the exact\n"
    "                                 mode that matches the CPU. The CPU always computes in fp32\n"
    "  --threads N                    CPU threads (default: all cores)\n"
    "  --max-memory SIZE              plan against SIZE instead of the memory available (on\n"
    "                                 cuda: instead of the device's total memory)\n"
    "  --dry-run                      print the memory plan and the run, train nothing\n"
    "  --dump-rows FILE               write every training row this process reads (int32,\n"
    "                                 seq_length + 1 ids each, in step order), to reproduce\n"
    "                                 the run with another trainer\n"
    "  --json, --quiet, -h/--help\n"
    "Several processes (data parallelism, started by mpirun or srun): every rank runs its\n"
    "share of each global batch (--gbs = --mbs x accumulation x ranks), gradients are summed\n"
    "in fp32, the optimiser state is split over the ranks, rank 0 logs and saves; one GPU per\n"
    "local rank with --device cuda. E.g. mpirun -np 8 lmsurgeon distill ... --devices 8\n"
    "Reference workflow flags, accepted as written:\n"
    "  --devices N, --num-nodes N, --tp-size N, --pp-size N\n"
    "                                 under a launcher, --devices x --num-nodes must equal its\n"
    "                                 number of processes; without one the run trains on the\n"
    "                                 one --device. --gbs rows per step, so every number of the\n"
    "                                 run is the same as with parallelism over N devices\n"
    "  --legacy-ckpt                  no effect: every checkpoint layout is detected on reading\n"
    "  --name, --model_path, --teacher_path, --data_paths, --log_dir ...: underscores work as\n"
    "                                 hyphens\n"
    "SIGINT (Ctrl-C) saves the training state at the last finished step and exits with 130.\n";

struct distill_args {
    const char *student, *teacher, *out, *to, *name, *log_dir, *split, *device, *dtype_name,
        *dump_rows;
    char **data_args;
    int n_data_args;
    int64_t gbs, mbs, max_steps, warmup, seq, log_interval, val_interval, val_batches,
        save_interval, exit_interval, threads;
    uint64_t seed, max_memory;
    enum lms_precision precision;
    double lr, min_lr, temperature, lm_loss_scale, kd_loss_scale;
    int64_t top_k;
    enum lms_kd_kind kd_kind;
    struct lms_adamw_opts adam;
    enum lms_optim_preset preset;
    bool resume, force, dry_run, recompute;
    int64_t devices, num_nodes; /* 0: not given */
    struct cli_common co;
};

/* --data-paths takes every value up to the next option (nargs="+", as the reference scripts
 * declare it), which getopt cannot express: the values are taken out of argv first. */
static int take_data_paths(int *argc, char **argv, struct distill_args *a)
{
    int w = 0;
    for (int i = 0; i < *argc; i++) {
        if (!strcmp(argv[i], "--")) {
            while (i < *argc)
                argv[w++] = argv[i++];
            break;
        }
        if (!strcmp(argv[i], "--data-paths") || !strncmp(argv[i], "--data-paths=", 13)) {
            /* given again: the last one counts, as with every other option */
            lms_free(a->data_args);
            a->n_data_args = 0;
            a->data_args = lms_calloc((size_t)*argc, sizeof(char *));
            if (!a->data_args)
                return cli_usage_error(cmd, "out of memory");
            if (argv[i][12] == '=')
                a->data_args[a->n_data_args++] = argv[i] + 13;
            while (i + 1 < *argc && strncmp(argv[i + 1], "--", 2) != 0)
                a->data_args[a->n_data_args++] = argv[++i];
            if (!a->n_data_args)
                return cli_usage_error(cmd, "--data-paths needs at least one dataset prefix");
            continue;
        }
        argv[w++] = argv[i];
    }
    *argc = w;
    return CLI_EXIT_OK;
}

static bool parse_real(const char *s, double *out, bool allow_zero)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !isfinite(v) || v < 0 || (!allow_zero && v == 0))
        return false;
    *out = v;
    return true;
}

static bool parse_count0(const char *s, int64_t *out)
{
    if (!strcmp(s, "0")) {
        *out = 0;
        return true;
    }
    return cli_parse_count(s, out);
}

enum {
    OPT_STUDENT = 256, OPT_TEACHER, OPT_OUT, OPT_TO, OPT_DTYPE, OPT_NAME, OPT_LOG_DIR, OPT_SPLIT,
    OPT_SEQ, OPT_SEED, OPT_GBS, OPT_MBS, OPT_MAX_STEPS, OPT_LR, OPT_MIN_LR, OPT_WARMUP,
    OPT_PRESET, OPT_BETA1, OPT_BETA2, OPT_EPS, OPT_WD, OPT_CLIP, OPT_TEMP, OPT_LOG_INTERVAL,
    OPT_VAL_INTERVAL, OPT_VAL_BATCHES, OPT_SAVE_INTERVAL, OPT_RESUME, OPT_FORCE, OPT_DEVICE,
    OPT_THREADS, OPT_MAX_MEMORY, OPT_DRY_RUN, OPT_JSON, OPT_DEVICES, OPT_NUM_NODES, OPT_TP,
    OPT_PP, OPT_LEGACY, OPT_DUMP_ROWS, OPT_EXIT_INTERVAL, OPT_KD_LOSS, OPT_TOP_K, OPT_LM_SCALE,
    OPT_KD_SCALE, OPT_RECOMPUTE, OPT_PRECISION,
};

static int parse_args(int argc, char **argv, struct distill_args *a)
{
    static const struct option opts[] = {
        {"student", required_argument, NULL, OPT_STUDENT},
        {"model-path", required_argument, NULL, OPT_STUDENT},
        {"teacher", required_argument, NULL, OPT_TEACHER},
        {"teacher-path", required_argument, NULL, OPT_TEACHER},
        {"out", required_argument, NULL, OPT_OUT},
        {"to", required_argument, NULL, OPT_TO},
        {"dtype", required_argument, NULL, OPT_DTYPE},
        {"name", required_argument, NULL, OPT_NAME},
        {"log-dir", required_argument, NULL, OPT_LOG_DIR},
        {"split", required_argument, NULL, OPT_SPLIT},
        {"seq-length", required_argument, NULL, OPT_SEQ},
        {"seed", required_argument, NULL, OPT_SEED},
        {"gbs", required_argument, NULL, OPT_GBS},
        {"global-batch-size", required_argument, NULL, OPT_GBS},
        {"mbs", required_argument, NULL, OPT_MBS},
        {"micro-batch-size", required_argument, NULL, OPT_MBS},
        {"max-steps", required_argument, NULL, OPT_MAX_STEPS},
        {"lr", required_argument, NULL, OPT_LR},
        {"min-lr", required_argument, NULL, OPT_MIN_LR},
        {"warmup-steps", required_argument, NULL, OPT_WARMUP},
        {"optim-preset", required_argument, NULL, OPT_PRESET},
        {"adam-beta1", required_argument, NULL, OPT_BETA1},
        {"adam-beta2", required_argument, NULL, OPT_BETA2},
        {"adam-eps", required_argument, NULL, OPT_EPS},
        {"weight-decay", required_argument, NULL, OPT_WD},
        {"clip-grad", required_argument, NULL, OPT_CLIP},
        {"kd-temperature", required_argument, NULL, OPT_TEMP},
        {"kd-loss", required_argument, NULL, OPT_KD_LOSS},
        {"kd-top-k", required_argument, NULL, OPT_TOP_K},
        {"lm-loss-scale", required_argument, NULL, OPT_LM_SCALE},
        {"kd-loss-scale", required_argument, NULL, OPT_KD_SCALE},
        {"recompute", no_argument, NULL, OPT_RECOMPUTE},
        {"dump-rows", required_argument, NULL, OPT_DUMP_ROWS},
        {"exit-interval", required_argument, NULL, OPT_EXIT_INTERVAL},
        {"log-interval", required_argument, NULL, OPT_LOG_INTERVAL},
        {"val-check-interval", required_argument, NULL, OPT_VAL_INTERVAL},
        {"limit-val-batches", required_argument, NULL, OPT_VAL_BATCHES},
        {"save-interval", required_argument, NULL, OPT_SAVE_INTERVAL},
        {"resume", no_argument, NULL, OPT_RESUME},
        {"force", no_argument, NULL, OPT_FORCE},
        {"device", required_argument, NULL, OPT_DEVICE},
        {"precision", required_argument, NULL, OPT_PRECISION},
        {"threads", required_argument, NULL, OPT_THREADS},
        {"max-memory", required_argument, NULL, OPT_MAX_MEMORY},
        {"dry-run", no_argument, NULL, OPT_DRY_RUN},
        {"json", no_argument, NULL, OPT_JSON},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {"devices", required_argument, NULL, OPT_DEVICES},
        {"num-nodes", required_argument, NULL, OPT_NUM_NODES},
        {"tp-size", required_argument, NULL, OPT_TP},
        {"pp-size", required_argument, NULL, OPT_PP},
        {"legacy-ckpt", no_argument, NULL, OPT_LEGACY},
        {NULL, 0, NULL, 0},
    };
    int64_t n;
    bool set_beta1 = false, set_beta2 = false, set_eps = false, set_wd = false, set_clip = false;
    struct lms_adamw_opts over = {0};
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "hq", opts, NULL)) != -1) {
        switch (c) {
        case OPT_STUDENT: a->student = optarg; break;
        case OPT_TEACHER: a->teacher = optarg; break;
        case OPT_OUT: a->out = optarg; break;
        case OPT_TO: a->to = optarg; break;
        case OPT_DTYPE: a->dtype_name = optarg; break;
        case OPT_DUMP_ROWS: a->dump_rows = optarg; break;
        case OPT_NAME: a->name = optarg; break;
        case OPT_LOG_DIR: a->log_dir = optarg; break;
        case OPT_SPLIT: a->split = optarg; break;
        case OPT_DEVICE: a->device = optarg; break;
        case OPT_PRECISION:
            if (lms_precision_parse(optarg, &a->precision, NULL))
                return cli_usage_error(cmd, "invalid --precision '%s' (auto, fp32 or bf16)",
                                       optarg);
            break;
        case OPT_SEQ:
            if (!cli_parse_count(optarg, &a->seq) || a->seq > (1 << 20))
                return cli_usage_error(cmd, "invalid --seq-length '%s' (1 to 1048576)", optarg);
            break;
        case OPT_SEED:
            if (!parse_count0(optarg, &n))
                return cli_usage_error(cmd, "invalid --seed '%s'", optarg);
            a->seed = (uint64_t)n;
            break;
        case OPT_GBS:
            if (!cli_parse_count(optarg, &a->gbs) || a->gbs > (1 << 24))
                return cli_usage_error(cmd, "invalid --gbs '%s'", optarg);
            break;
        case OPT_MBS:
            if (!cli_parse_count(optarg, &a->mbs) || a->mbs > (1 << 16))
                return cli_usage_error(cmd, "invalid --mbs '%s'", optarg);
            break;
        case OPT_MAX_STEPS:
            if (!cli_parse_count(optarg, &a->max_steps) || a->max_steps > (1ll << 40))
                return cli_usage_error(cmd, "invalid --max-steps '%s'", optarg);
            break;
        case OPT_WARMUP:
            if (!parse_count0(optarg, &a->warmup))
                return cli_usage_error(cmd, "invalid --warmup-steps '%s'", optarg);
            break;
        case OPT_LR:
            if (!parse_real(optarg, &a->lr, false))
                return cli_usage_error(cmd, "invalid --lr '%s'", optarg);
            break;
        case OPT_MIN_LR:
            if (!parse_real(optarg, &a->min_lr, true))
                return cli_usage_error(cmd, "invalid --min-lr '%s'", optarg);
            break;
        case OPT_PRESET:
            if (!lms_optim_preset_parse(optarg, &a->preset))
                return cli_usage_error(cmd, "unknown --optim-preset '%s' (parity, megatron, gpt)",
                                       optarg);
            break;
        case OPT_BETA1:
            if (!parse_real(optarg, &over.beta1, true) || over.beta1 >= 1)
                return cli_usage_error(cmd, "invalid --adam-beta1 '%s' (0 <= beta < 1)", optarg);
            set_beta1 = true;
            break;
        case OPT_BETA2:
            if (!parse_real(optarg, &over.beta2, true) || over.beta2 >= 1)
                return cli_usage_error(cmd, "invalid --adam-beta2 '%s' (0 <= beta < 1)", optarg);
            set_beta2 = true;
            break;
        case OPT_EPS:
            if (!parse_real(optarg, &over.eps, false))
                return cli_usage_error(cmd, "invalid --adam-eps '%s'", optarg);
            set_eps = true;
            break;
        case OPT_WD:
            if (!parse_real(optarg, &over.weight_decay, true))
                return cli_usage_error(cmd, "invalid --weight-decay '%s'", optarg);
            set_wd = true;
            break;
        case OPT_CLIP:
            if (!parse_real(optarg, &over.clip_norm, true))
                return cli_usage_error(cmd, "invalid --clip-grad '%s'", optarg);
            set_clip = true;
            break;
        case OPT_TEMP:
            if (!parse_real(optarg, &a->temperature, false))
                return cli_usage_error(cmd, "invalid --kd-temperature '%s'", optarg);
            break;
        case OPT_KD_LOSS:
            if (!strcmp(optarg, "forward-kl"))
                a->kd_kind = LMS_KD_FORWARD_KL;
            else if (!strcmp(optarg, "reverse-kl"))
                a->kd_kind = LMS_KD_REVERSE_KL;
            else if (!strcmp(optarg, "top-k"))
                a->kd_kind = LMS_KD_TOP_K;
            else
                return cli_usage_error(cmd, "unknown --kd-loss '%s' (forward-kl, reverse-kl, "
                                       "top-k)", optarg);
            break;
        case OPT_TOP_K:
            if (!cli_parse_count(optarg, &a->top_k))
                return cli_usage_error(cmd, "invalid --kd-top-k '%s'", optarg);
            break;
        case OPT_LM_SCALE:
            if (!parse_real(optarg, &a->lm_loss_scale, true))
                return cli_usage_error(cmd, "invalid --lm-loss-scale '%s'", optarg);
            break;
        case OPT_KD_SCALE:
            if (!parse_real(optarg, &a->kd_loss_scale, false))
                return cli_usage_error(cmd, "invalid --kd-loss-scale '%s'", optarg);
            break;
        case OPT_RECOMPUTE: a->recompute = true; break;
        case OPT_LOG_INTERVAL:
            if (!cli_parse_count(optarg, &a->log_interval))
                return cli_usage_error(cmd, "invalid --log-interval '%s'", optarg);
            break;
        case OPT_VAL_INTERVAL:
            if (!parse_count0(optarg, &a->val_interval))
                return cli_usage_error(cmd, "invalid --val-check-interval '%s'", optarg);
            break;
        case OPT_VAL_BATCHES:
            if (!parse_count0(optarg, &a->val_batches))
                return cli_usage_error(cmd, "invalid --limit-val-batches '%s'", optarg);
            break;
        case OPT_SAVE_INTERVAL:
            if (!parse_count0(optarg, &a->save_interval))
                return cli_usage_error(cmd, "invalid --save-interval '%s'", optarg);
            break;
        case OPT_EXIT_INTERVAL:
            if (!cli_parse_count(optarg, &a->exit_interval))
                return cli_usage_error(cmd, "invalid --exit-interval '%s'", optarg);
            break;
        case OPT_THREADS:
            if (!cli_parse_count(optarg, &a->threads) || a->threads > 4096)
                return cli_usage_error(cmd, "invalid --threads '%s'", optarg);
            break;
        case OPT_MAX_MEMORY:
            if (!cli_parse_size(optarg, &a->max_memory) || !a->max_memory)
                return cli_usage_error(cmd, "invalid --max-memory '%s'", optarg);
            break;
        case OPT_DEVICES:
            if (!cli_parse_count(optarg, &a->devices))
                return cli_usage_error(cmd, "invalid --devices '%s'", optarg);
            break;
        case OPT_NUM_NODES:
            if (!cli_parse_count(optarg, &a->num_nodes))
                return cli_usage_error(cmd, "invalid --num-nodes '%s'", optarg);
            break;
        case OPT_TP:
        case OPT_PP:
            if (!cli_parse_count(optarg, &n))
                return cli_usage_error(cmd, "invalid device, node or parallel size '%s'", optarg);
            break;
        case OPT_LEGACY: break;
        case OPT_RESUME: a->resume = true; break;
        case OPT_FORCE: a->force = true; break;
        case OPT_DRY_RUN: a->dry_run = true; break;
        case OPT_JSON: a->co.json = true; break;
        case 'q': a->co.quiet = true; break;
        case 'h':
            fputs(usage_text, stdout);
            fputs(usage_text2, stdout);
            return -1;
        default:
            return cli_usage_error(cmd, "unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    if (!a->student)
        return cli_usage_error(cmd, "--student (or --model-path) is required");
    if (!a->teacher)
        return cli_usage_error(cmd, "--teacher (or --teacher-path) is required");
    if (!a->data_args)
        return cli_usage_error(cmd, "--data-paths is required");
    if (a->gbs % a->mbs)
        return cli_usage_error(cmd, "--gbs %lld is not a multiple of --mbs %lld", (long long)a->gbs,
                               (long long)a->mbs);
    if (a->min_lr > a->lr)
        return cli_usage_error(cmd, "--min-lr %g is above --lr %g", a->min_lr, a->lr);
    if (a->resume && a->force)
        return cli_usage_error(cmd, "--resume and --force exclude each other");
    if (a->kd_kind == LMS_KD_TOP_K && !a->top_k)
        return cli_usage_error(cmd, "--kd-loss top-k needs --kd-top-k K");
    lms_optim_preset_apply(a->preset, &a->adam);
    if (set_beta1)
        a->adam.beta1 = over.beta1;
    if (set_beta2)
        a->adam.beta2 = over.beta2;
    if (set_eps)
        a->adam.eps = over.eps;
    if (set_wd)
        a->adam.weight_decay = over.weight_decay;
    if (set_clip)
        a->adam.clip_norm = over.clip_norm;
    return CLI_EXIT_OK;
}

/* ---- the run -------------------------------------------------------------------------------- */

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    interrupted = 1;
}

struct run {
    struct distill_args *a;
    const char *out, *name;
    char state_dir[4096], metrics_path[4096];
    const struct lms_format *out_fmt;
    enum lms_dtype out_dtype;
    struct lms_blend_source *src;
    int n_src;
    struct lms_model student, teacher;
    bool have_student, have_teacher;
    struct lms_blend *train, *val;
    struct lms_backend *be;
    struct lms_trainer *tr;
    struct lms_engine *te;
    struct lms_loss_opts loss;
    struct lms_lr_schedule sched;
    json_t *config;  /* what must not change on resume */
    json_t *history; /* per-step metrics so far, for the state and the summary */
    int32_t *row, *ids, *tgt;
    int64_t step;       /* finished optimiser steps */
    int64_t start_step; /* where this process started */
    int64_t saved_step; /* last step whose state is on disk */
    double last_loss, last_lm_loss, last_grad_norm, last_val_loss, last_val_lm_loss;
    FILE *metrics;
    FILE *dump; /* --dump-rows */
    struct cli_progress bar;
    struct lms_comm *comm; /* NULL: one process */
    int rank, world;
    bool agreed; /* every rank knows of the failure being reported (no abort needed) */
};

/* Micro-batches of one global batch, all ranks together. */
static int64_t n_micro(const struct run *r)
{
    return r->a->gbs / r->a->mbs;
}

/* Every rank's verdict on a phase: the largest flag wins (0 go on, 1 interrupted, 2 failed), so
 * that all ranks stop together instead of waiting in a collective for one that left. */
static enum lms_status agree(struct run *r, int64_t *flag, struct lms_error *err)
{
    enum lms_status st = lms_comm_max(r->comm, flag, 1, err);
    r->agreed = !st && *flag != 0;
    return st;
}

static json_t *arch_json(const struct lms_model *m)
{
    const struct lms_arch *x = &m->arch;
    return json_pack("{s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "family", lms_family_name(x->family),
                     "num_layers", (json_int_t)x->n_layers, "hidden_size", (json_int_t)x->hidden,
                     "ffn_hidden_size", (json_int_t)x->ffn, "num_attention_heads",
                     (json_int_t)x->n_heads, "num_query_groups", (json_int_t)x->n_groups,
                     "head_dim", (json_int_t)x->head_dim, "padded_vocab",
                     (json_int_t)x->padded_vocab, "n_params",
                     (json_int_t)lms_model_n_params(m));
}

/* Everything that shapes the numbers of a run; --resume refuses a state made with another. */
static json_t *make_config(const struct run *r)
{
    const struct distill_args *a = r->a;
    json_t *data = json_array();
    for (int i = 0; i < r->n_src; i++)
        json_array_append_new(data, json_pack("{s:s,s:f}", "name",
                                              lms_path_basename(r->src[i].path), "weight",
                                              r->src[i].weight));
    return json_pack(
        "{s:o,s:o,s:o,s:s,s:I,s:I,s:I,s:I,s:I,s:f,s:f,s:I,s:{s:f,s:f,s:f,s:f,s:f},"
        "s:{s:i,s:f,s:I,s:f,s:f}}",
        "student", arch_json(&r->student), "teacher", arch_json(&r->teacher), "data", data,
        "split", a->split, "seq_length", (json_int_t)a->seq, "gbs", (json_int_t)a->gbs, "mbs",
        (json_int_t)a->mbs, "max_steps", (json_int_t)a->max_steps, "warmup_steps",
        (json_int_t)a->warmup, "lr", a->lr, "min_lr", a->min_lr, "seed", (json_int_t)a->seed,
        "adamw", "beta1", a->adam.beta1, "beta2", a->adam.beta2, "eps", a->adam.eps,
        "weight_decay", a->adam.weight_decay, "clip_grad", a->adam.clip_norm, "loss", "kd",
        (int)a->kd_kind, "temperature", a->temperature, "top_k", (json_int_t)a->top_k,
        "lm_loss_scale", a->lm_loss_scale, "kd_loss_scale", a->kd_loss_scale);
}

/* First difference between two configurations, as "key: was X, now Y". */
static bool config_diff(const json_t *was, const json_t *now, const char *prefix, char *dst,
                        size_t cap)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)now, key, v) {
        json_t *w = json_object_get(was, key);
        char path[256];
        snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", key);
        if (json_is_object(v) && json_is_object(w)) {
            if (config_diff(w, v, path, dst, cap))
                return true;
            continue;
        }
        if (w && json_equal(w, v))
            continue;
        char *ws = w ? json_dumps(w, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
        char *vs = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        snprintf(dst, cap, "%s was %s, now %s", path, ws ? ws : "absent", vs ? vs : "?");
        free(ws);
        free(vs);
        return true;
    }
    return false;
}

/* Reads rows [first, first + n) of blend into ids / targets (n x seq each). */
static enum lms_status load_rows(struct run *r, const struct lms_blend *b, int64_t first, int64_t n,
                                 struct lms_error *err)
{
    int64_t S = r->a->seq;
    for (int64_t i = 0; i < n; i++) {
        enum lms_status st = lms_blend_row(b, first + i, r->row, (size_t)(S + 1), err);
        if (st)
            return st;
        if (r->dump && b == r->train &&
            fwrite(r->row, sizeof(int32_t), (size_t)(S + 1), r->dump) != (size_t)(S + 1))
            return lms_error_set(err, LMS_EIO, "writing --dump-rows '%s' failed", r->a->dump_rows);
        memcpy(r->ids + i * S, r->row, (size_t)S * sizeof(int32_t));
        memcpy(r->tgt + i * S, r->row + 1, (size_t)S * sizeof(int32_t));
    }
    return LMS_OK;
}

static void bar_clear(struct run *r)
{
    if (r->bar.enabled) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
    }
}

static void metrics_write(struct run *r, json_t *o)
{
    if (r->metrics) {
        char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(17));
        if (s) {
            fprintf(r->metrics, "%s\n", s);
            fflush(r->metrics);
            free(s);
        }
    }
    json_decref(o);
}

/* Validation: the mean loss over limit_val_batches global batches of the validation split (the
 * same rows every time, so the values compare across steps). */
static enum lms_status validate(struct run *r, struct lms_error *err)
{
    int64_t n_rows = r->a->val_batches * r->a->gbs, mbs = r->a->mbs;
    /* ranks take micro-batches k / mbs = rank, rank + world, ...; the sums are added */
    double acc[4] = {0, 0, 0, 0}; /* loss, lm loss, micro-batches, failed */
    enum lms_status st = LMS_OK;
    for (int64_t k = (int64_t)r->rank * mbs; k < n_rows && !st; k += (int64_t)r->world * mbs) {
        if ((st = load_rows(r, r->val, k, mbs, err)))
            break;
        struct lms_train_batch b = {.ids = r->ids, .batch = mbs, .seq = r->a->seq,
                                    .targets = r->tgt, .teacher = r->te};
        struct lms_loss_parts p;
        if ((st = lms_trainer_eval(r->tr, &b, &r->loss, &p, err)))
            lms_error_wrap(err, "validation: ");
        acc[0] += p.total;
        acc[1] += p.ce;
        acc[2] += 1;
    }
    acc[3] = st != LMS_OK;
    enum lms_status cst = lms_comm_sum(r->comm, acc, 4, err);
    if (cst)
        return cst;
    r->agreed = st || acc[3] > 0;
    if (st)
        return st;
    if (acc[3] > 0)
        return lms_error_set(err, LMS_EIO, "validation: another rank failed (its message says "
                             "why)");
    r->last_val_loss = acc[0] / acc[2];
    r->last_val_lm_loss = acc[1] / acc[2];
    if (r->rank)
        return LMS_OK;
    bar_clear(r);
    if (!r->a->co.quiet && !r->a->co.json)
        printf("validation at step %lld: loss %.5f, lm loss %.5f (%lld rows)\n",
               (long long)r->step, r->last_val_loss, r->last_val_lm_loss, (long long)n_rows);
    metrics_write(r, json_pack("{s:s,s:I,s:f,s:f,s:I}", "event", "validation", "step",
                               (json_int_t)r->step, "val_loss", r->last_val_loss, "val_lm_loss",
                               r->last_val_lm_loss, "rows", (json_int_t)n_rows));
    return LMS_OK;
}

/* Saves the state, then the student (both atomically; the state alone is enough to resume, so a
 * crash between the two loses nothing). With several ranks every rank takes part (the moments
 * are gathered from their shards, one moment at a time through the gradient buffer), rank 0
 * writes, and all learn whether it succeeded. The state is the same file whatever the number
 * of ranks, so a run resumes on any other number. */
static enum lms_status save_rank0(struct run *r, struct lms_error *err);

static enum lms_status save(struct run *r, struct lms_error *err)
{
    enum lms_status st = save_rank0(r, err);
    if (!r->comm)
        return st;
    int64_t flag = st ? 2 : 0;
    enum lms_status cst = agree(r, &flag, err);
    if (cst || st)
        return cst ? cst : st;
    if (flag)
        return lms_error_set(err, LMS_EIO, "rank 0 could not save the training state (its "
                             "message says why)");
    r->saved_step = r->step;
    return LMS_OK;
}

static enum lms_status save_rank0(struct run *r, struct lms_error *err)
{
    size_t n = lms_trainer_n_params(r->tr);
    bool writer = r->rank == 0;
    struct lms_state_tensor *t = lms_calloc(3 * n, sizeof *t);
    float **host = lms_calloc(3 * n, sizeof *host);
    enum lms_status st = LMS_OK;
    if (!t || !host) /* no early return: the gathers below are collectives */
        st = lms_error_set(err, LMS_ENOMEM, "out of memory saving the training state");
    /* j = 0 weights, 1 first moment, 2 second moment; sharded moments are gathered first (a
     * collective: every rank runs this loop, whatever failed on rank 0) */
    for (int j = 0; j < 3; j++) {
        if (r->comm && j > 0) {
            enum lms_status gst = lms_trainer_gather_moment(r->tr, j - 1, err);
            if (gst) {
                st = gst; /* the other ranks see it as well */
                goto out;
            }
        }
        static const char *const suffix[3] = {"", ".exp_avg", ".exp_avg_sq"};
        for (size_t i = 0; i < n && !st && writer; i++) {
            const struct lms_train_param *p = lms_trainer_param(r->tr, i);
            const float *dev[3] = {p->w, r->comm ? p->g : p->m, r->comm ? p->g : p->v};
            struct lms_state_tensor *x = &t[3 * i + (size_t)j];
            snprintf(x->name, sizeof x->name, "%s%s", p->name, suffix[j]);
            x->ndim = p->ndim;
            memcpy(x->shape, p->shape, sizeof p->shape);
            size_t bytes = (size_t)p->numel * sizeof(float);
            if (!(host[3 * i + (size_t)j] = lms_malloc(bytes ? bytes : 1))) {
                st = lms_error_set(err, LMS_ENOMEM, "out of memory saving the training state");
                break;
            }
            st = lms_buf_download(r->be, host[3 * i + (size_t)j], bytes, dev[j], bytes, err);
            x->data = host[3 * i + (size_t)j];
        }
    }
    if (st || !writer)
        goto out;
    json_t *meta = json_pack("{s:s,s:i,s:I,s:I,s:I,s:{s:s,s:I},s:O,s:s,s:s,s:O}", "format",
                             LMS_TRAIN_STATE_FORMAT, "version", LMS_TRAIN_STATE_VERSION, "step",
                             (json_int_t)r->step, "consumed_samples",
                             (json_int_t)(r->step * r->a->gbs), "consumed_tokens",
                             (json_int_t)(r->step * r->a->gbs * r->a->seq), "rng", "kind",
                             "every random choice (data order) derives from the seed and the "
                             "consumed samples",
                             "seed", (json_int_t)r->a->seed, "config", r->config, "student",
                             r->a->student, "teacher", r->a->teacher, "history", r->history);
    if (!meta) {
        st = lms_error_set(err, LMS_ENOMEM, "out of memory saving the training state");
        goto out;
    }
    st = lms_train_state_write(r->state_dir, meta, t, 3 * n, err);
    json_decref(meta);
    if (st)
        goto out;
    struct lms_model m;
    if ((st = lms_trainer_export(r->tr, r->out_dtype, &m, err)))
        goto out;
    struct lms_write_opts wo = {.dtype = LMS_DTYPE_COUNT, .force = true};
    struct lms_write_result res;
    st = r->out_fmt->write(&m, r->out, &wo, &res, err);
    lms_model_release(&m);
    if (st)
        lms_error_wrap(err, "saving the student '%s': ", r->out);
    else
        r->saved_step = r->step;
out:
    if (host)
        for (size_t i = 0; i < 3 * n; i++)
            lms_free(host[i]);
    lms_free(host);
    lms_free(t);
    return st;
}

/* Loads master weights and moments from the state (the configuration was checked already). */
static enum lms_status restore(struct run *r, const struct lms_train_state *s,
                               struct lms_error *err)
{
    size_t n = lms_trainer_n_params(r->tr);
    enum lms_status st = LMS_OK;
    for (size_t i = 0; i < n && !st; i++) {
        const struct lms_train_param *p = lms_trainer_param(r->tr, i);
        size_t bytes = (size_t)p->numel * sizeof(float);
        float *host = lms_malloc(bytes ? bytes : 1);
        if (!host)
            return lms_error_set(err, LMS_ENOMEM, "out of memory reading the training state");
        static const char *const suffix[3] = {"", ".exp_avg", ".exp_avg_sq"};
        for (int j = 0; j < 3 && !st; j++) {
            char name[300];
            snprintf(name, sizeof name, "%s%s", p->name, suffix[j]);
            if ((st = lms_train_state_get(s, r->state_dir, name, p->ndim, p->shape, host, err)))
                break;
            /* moments: this rank's shard of them (all without a communicator) */
            st = j == 0 ? lms_buf_upload(r->be, p->w, host, bytes, err)
                        : lms_trainer_load_moment(r->tr, i, j - 1, host, err);
        }
        lms_free(host);
    }
    return st ? st : lms_trainer_weights_updated(r->tr, err);
}

/* Keeps the metrics lines of steps up to the resumed one (a run killed after its last save
 * logged steps that the resumed run computes again). */
static void metrics_truncate(const char *path, int64_t step)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *g = fopen(tmp, "w");
    if (!g) {
        fclose(f);
        return;
    }
    char line[8192];
    while (fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, NULL);
        json_t *s = o ? json_object_get(o, "step") : NULL;
        if (s && json_is_integer(s) && json_integer_value(s) <= step)
            fputs(line, g);
        json_decref(o);
    }
    fclose(f);
    if (fclose(g) == 0)
        rename(tmp, path);
    else
        remove(tmp);
}

static void print_plan(const struct run *r, const struct lms_train_plan *tp,
                       const struct lms_distill_memory *m, uint64_t limit)
{
    char b[32];
    FILE *f = r->a->co.json ? stderr : stdout;
    int64_t P = tp->n_params;
    bool dev = m->runtime > 0;
    fprintf(f, "%s memory plan (%s, micro-batch %lld x %lld tokens, %lld student parameters%s):\n",
            dev ? "device" : "host", r->a->device, (long long)r->a->mbs, (long long)r->a->seq,
            (long long)P, r->world > 1 ? ", per rank" : "");
#define LINE(label, v, ...)                                                                       \
    do {                                                                                          \
        cli_format_bytes(v, b, sizeof b);                                                         \
        fprintf(f, "  %-26s %12s  ", label, b);                                                   \
        fprintf(f, __VA_ARGS__);                                                                  \
        fputc('\n', f);                                                                           \
    } while (0)
    if (tp->working)
        LINE("student weights", m->weights, "%lld x (4 + 2) B: the fp32 master copy the steps "
             "update and the bf16 copy the GEMMs read", (long long)P);
    else
        LINE("student weights (fp32)", m->weights, "%lld x 4 B, the master copy the steps update",
             (long long)P);
    if (r->world > 1)
        LINE("AdamW moments", m->moments, "2 x %lld x 4 B / %d ranks (ZeRO-1)", (long long)P,
             r->world);
    else
        LINE("AdamW moments", m->moments, "2 x %lld x 4 B", (long long)P);
    LINE("gradients", m->gradients, "%lld x 4 B", (long long)P);
    LINE("activations", m->activations, "saved for backward%s, logits chunks of %lld rows",
         r->a->recompute ? " (recomputed per layer)" : "", (long long)tp->logits_rows);
    LINE("teacher", m->teacher, "%lld parameters + forward workspace",
         (long long)lms_model_n_params(&r->teacher));
    if (dev) {
        LINE("runtime and GEMM scratch", m->runtime, "CUDA context, cuBLASLt workspace, bf16 "
             "operands of the largest GEMM");
    } else {
        LINE("saving", m->save, "%lld x %zu B (%s)", (long long)P, lms_dtype_size(r->out_dtype),
             lms_dtype_name(r->out_dtype));
        LINE("data", m->data, "one micro-batch of ids + the row order of %lld steps",
             (long long)r->a->max_steps);
    }
    cli_format_bytes(m->total, b, sizeof b);
    char av[32];
    cli_format_bytes(limit, av, sizeof av);
    if (limit)
        fprintf(f, "  %-26s %12s  of %s %s: %s\n", "total", b, av,
                r->a->max_memory ? "allowed (--max-memory)"
                                 : dev ? "on the device" : "available",
                m->total <= limit ? "fits" : "does NOT fit");
    else
        fprintf(f, "  %-26s %12s  (no device to compare with: give --max-memory)\n", "total", b);
    if (dev) {
        cli_format_bytes(m->host, b, sizeof b);
        fprintf(f, "  %-26s %12s  saving (%s) and data, in host memory\n", "host", b,
                lms_dtype_name(r->out_dtype));
    }
#undef LINE
}

static bool dir_nonempty(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0; /* a file or any directory entry counts as taken */
}

/* One optimiser step: gbs / mbs micro-batches, then AdamW. Returns LMS_EINTERRUPTED (nothing
 * applied) when SIGINT arrives in between. */
static enum lms_status train_step(struct run *r, struct lms_error *err)
{
    const struct distill_args *a = r->a;
    enum lms_status st = lms_trainer_zero_grads(r->tr, err);
    double sums[4] = {0, 0, 0, 0}; /* loss, lm loss, failed, interrupted (summed over ranks) */
    int64_t nm = n_micro(r), per_rank = nm / r->world, first = (int64_t)r->rank * per_rank;
    /* rank k runs micro-batches [k x per_rank, (k + 1) x per_rank) of the global batch; each
     * gradient counts 1 / nm, so the sum over ranks is the one-process gradient */
    for (int64_t i = first; i < first + per_rank && !st; i++) {
        if (interrupted)
            break;
        if ((st = load_rows(r, r->train, r->step * a->gbs + i * a->mbs, a->mbs, err)))
            break;
        struct lms_train_batch b = {.ids = r->ids, .batch = a->mbs, .seq = a->seq,
                                    .targets = r->tgt, .teacher = r->te};
        struct lms_loss_parts p;
        st = lms_trainer_micro_step(r->tr, &b, &r->loss, 1.0 / (double)nm, &p, err);
        sums[0] += p.total;
        sums[1] += p.ce;
    }
    sums[2] = st != LMS_OK;
    sums[3] = interrupted != 0;
    if (r->comm) {
        enum lms_status cst = lms_comm_sum(r->comm, sums, 4, err);
        if (cst)
            return cst;
        r->agreed = sums[2] > 0;
        if (!st && sums[2] > 0)
            st = lms_error_set(err, LMS_EIO, "another rank failed (its message says why)");
    }
    if (st)
        return lms_error_wrap(err, "step %lld: ", (long long)r->step + 1);
    if (sums[3] > 0 || interrupted)
        return LMS_EINTERRUPTED;
    double loss = sums[0], lm = sums[1];
    struct lms_adamw_opts o = a->adam;
    o.lr = lms_lr_at(&r->sched, r->step);
    o.step = r->step + 1;
    double gn;
    if ((st = lms_trainer_adamw(r->tr, &o, &gn, err)))
        return lms_error_wrap(err, "step %lld: ", (long long)r->step + 1);
    r->last_loss = loss / (double)nm;
    r->last_lm_loss = lm / (double)nm;
    r->last_grad_norm = gn;
    if (!isfinite(r->last_loss) || !isfinite(gn))
        return lms_error_set(err, LMS_EFORMAT, "step %lld: the loss (%g) or gradient norm (%g) is "
                             "not finite; lower --lr", (long long)r->step + 1, r->last_loss, gn);
    r->step++;
    return LMS_OK;
}

static void summary_json(struct run *r, double secs, bool dry)
{
    json_t *o = json_pack("{s:b,s:s,s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:f,s:s,s:s}", "ok", 1,
                          "student", r->a->student, "teacher", r->a->teacher, "out", r->out,
                          "format", r->out_fmt->name, "dtype", lms_dtype_name(r->out_dtype),
                          "steps", (json_int_t)r->step, "start_step", (json_int_t)r->start_step,
                          "max_steps", (json_int_t)r->a->max_steps, "tokens",
                          (json_int_t)(r->step * r->a->gbs * r->a->seq), "seconds", secs,
                          "state", r->state_dir, "metrics", r->metrics_path);
    if (dry)
        json_object_set_new(o, "dry_run", json_true());
    json_object_set_new(o, "ranks", json_integer(r->world));
    json_object_set_new(o, "comm", json_string(lms_comm_backend(r->comm)));
    if (r->step > r->start_step) {
        double tps = secs > 0 ? (double)((r->step - r->start_step) * r->a->gbs * r->a->seq) / secs
                              : 0;
        json_object_set_new(o, "loss", json_real(r->last_loss));
        json_object_set_new(o, "lm_loss", json_real(r->last_lm_loss));
        json_object_set_new(o, "grad_norm", json_real(r->last_grad_norm));
        json_object_set_new(o, "tokens_per_second", json_real(tps));
    }
    if (isfinite(r->last_val_loss)) {
        json_object_set_new(o, "val_loss", json_real(r->last_val_loss));
        json_object_set_new(o, "val_lm_loss", json_real(r->last_val_lm_loss));
    }
    json_object_set(o, "history", r->history);
    cli_print_json(o);
}

static void run_release(struct run *r)
{
    if (r->metrics)
        fclose(r->metrics);
    if (r->dump)
        fclose(r->dump);
    lms_free(r->row);
    lms_free(r->ids);
    lms_free(r->tgt);
    lms_trainer_free(r->tr);
    lms_engine_free(r->te);
    lms_comm_close(r->comm);
    lms_backend_free(r->be);
    lms_blend_free(r->train);
    lms_blend_free(r->val);
    if (r->have_student)
        lms_model_release(&r->student);
    if (r->have_teacher)
        lms_model_release(&r->teacher);
    lms_blend_sources_free(r->src, r->n_src);
    json_decref(r->config);
    json_decref(r->history);
}

int cmd_distill(int argc, char **argv)
{
    struct distill_args a = {
        .gbs = 768, .mbs = 8, .max_steps = 40, .warmup = 1, .seq = 4096, .lr = 1e-4,
        .min_lr = 1e-5, .log_interval = 1, .val_batches = 1, .seed = 1234, .split = "969,30,1",
        .device = "cpu", .log_dir = ".", .temperature = 1, .kd_loss_scale = 1,
    };
    int rc = take_data_paths(&argc, argv, &a);
    if (rc == CLI_EXIT_OK) {
        rc = parse_args(argc, argv, &a);
        if (rc < 0)
            rc = CLI_EXIT_OK; /* --help */
        else if (rc == CLI_EXIT_OK)
            rc = -2; /* go on */
    }
    if (rc != -2) {
        lms_free(a.data_args);
        return rc;
    }
    struct run r = {.a = &a, .last_val_loss = NAN, .world = 1};
    struct lms_error err;
    lms_error_clear(&err);
    char out_buf[4096], tmp[4096];
    enum lms_status st = LMS_OK;
    rc = CLI_EXIT_OK;
    double t0 = cli_now();

    /* ---- ranks: a launcher's processes, or this one alone ---- */
    if ((st = lms_comm_open(&r.comm, &err))) {
        lms_free(a.data_args);
        return cli_fail(cmd, &a.co, &err);
    }
    r.rank = lms_comm_rank(r.comm);
    r.world = lms_comm_world(r.comm);
    int64_t expect = (a.devices ? a.devices : 1) * (a.num_nodes ? a.num_nodes : 1);
    if (r.comm && (a.devices || a.num_nodes) && expect != r.world) {
        rc = cli_usage_error(cmd, "--devices %lld x --num-nodes %lld = %lld processes, but the "
                             "launcher started %d (e.g. mpirun -np %lld, or srun --ntasks %lld)",
                             (long long)(a.devices ? a.devices : 1),
                             (long long)(a.num_nodes ? a.num_nodes : 1), (long long)expect,
                             r.world, (long long)expect, (long long)expect);
        lms_free(a.data_args);
        lms_comm_close(r.comm);
        return rc;
    }
    if (a.gbs % (a.mbs * r.world)) {
        rc = cli_usage_error(cmd, "--gbs %lld is not a multiple of --mbs %lld x %d ranks",
                             (long long)a.gbs, (long long)a.mbs, r.world);
        lms_free(a.data_args);
        lms_comm_close(r.comm);
        return rc;
    }
    if (r.world > 1 && a.dump_rows) {
        rc = cli_usage_error(cmd, "--dump-rows needs a single process (each rank reads its "
                             "own rows)");
        lms_free(a.data_args);
        lms_comm_close(r.comm);
        return rc;
    }
    if (r.rank > 0) { /* logs come from rank 0; the others speak only to report an error */
        a.co.quiet = true;
        a.co.json = false;
    }

    /* ---- names: OUT, NAME, the state beside OUT, the metrics in LOG_DIR ---- */
    if (a.out) {
        snprintf(out_buf, sizeof out_buf, "%s", a.out);
    } else {
        snprintf(out_buf, sizeof out_buf, "%s/%s", a.log_dir, a.name ? a.name : "distill");
    }
    for (size_t n = strlen(out_buf); n > 1 && out_buf[n - 1] == '/'; n--)
        out_buf[n - 1] = '\0';
    r.out = out_buf;
    r.name = a.name ? a.name : lms_path_basename(r.out);
    snprintf(r.state_dir, sizeof r.state_dir, "%s.state", r.out);
    snprintf(r.metrics_path, sizeof r.metrics_path, "%s/%s.metrics.jsonl", a.log_dir, r.name);

    st = lms_blend_sources_parse(a.data_args, a.n_data_args, &r.src, &r.n_src, &err);
    lms_free(a.data_args);
    a.data_args = NULL;
    if (st) {
        rc = cli_usage_error(cmd, "%s", err.msg);
        goto out;
    }
    if ((st = lms_path_check_not_input(r.out, a.student, &err)) ||
        (st = lms_path_check_not_input(r.out, a.teacher, &err))) {
        rc = cli_usage_error(cmd, "%s", err.msg);
        goto out;
    }
    if (!a.resume && !a.force && !a.dry_run) {
        if (dir_nonempty(r.state_dir)) {
            rc = cli_usage_error(cmd, "a training state '%s' exists: continue it with --resume, "
                                 "or start over with --force", r.state_dir);
            goto out;
        }
        if (dir_nonempty(r.out)) {
            rc = cli_usage_error(cmd, "refusing to overwrite '%s' (use --force)", r.out);
            goto out;
        }
    }
    struct lms_train_state state = {0};
    bool have_state = false;
    if (a.resume) {
        if (!dir_nonempty(r.state_dir)) {
            rc = cli_usage_error(cmd, "--resume: no training state '%s'", r.state_dir);
            goto out;
        }
        if ((st = lms_train_state_read(r.state_dir, &state, &err)))
            goto fail;
        have_state = true;
    }

    /* ---- models ---- */
    r.out_fmt = a.to ? lms_format_find(a.to) : lms_format_detect(a.student, &err);
    if (!r.out_fmt) {
        if (a.to) {
            rc = cli_usage_error(cmd, "unknown --to '%s'", a.to);
            goto out_state;
        }
        goto fail;
    }
    if ((st = lms_checkpoint_read(a.student, &r.student, &err))) {
        lms_error_wrap(&err, "student: ");
        goto fail;
    }
    r.have_student = true;
    if ((st = lms_checkpoint_read(a.teacher, &r.teacher, &err))) {
        lms_error_wrap(&err, "teacher: ");
        goto fail;
    }
    r.have_teacher = true;
    if (r.student.arch.padded_vocab != r.teacher.arch.padded_vocab ||
        r.student.arch.vocab != r.teacher.arch.vocab) {
        st = lms_error_set(&err, LMS_EFORMAT, "student '%s' has a vocabulary of %lld (%lld rows), "
                           "teacher '%s' %lld (%lld rows): distillation compares the two "
                           "distributions token by token, so both must use the same vocabulary",
                           a.student, (long long)r.student.arch.vocab,
                           (long long)r.student.arch.padded_vocab, a.teacher,
                           (long long)r.teacher.arch.vocab, (long long)r.teacher.arch.padded_vocab);
        goto fail;
    }
    r.out_dtype = r.student.arch.dtype;
    if (a.dtype_name && !lms_dtype_parse_user(a.dtype_name, &r.out_dtype)) {
        rc = cli_usage_error(cmd, "unknown --dtype '%s'", a.dtype_name);
        goto out_state;
    }
    if (r.out_dtype != LMS_DTYPE_F32 && r.out_dtype != LMS_DTYPE_BF16 &&
        r.out_dtype != LMS_DTYPE_F16)
        r.out_dtype = LMS_DTYPE_F32;

    /* ---- data ---- */
    int64_t n_train = a.max_steps * a.gbs, n_val = a.val_batches * a.gbs;
    struct lms_blend_opts bo = {.row_len = a.seq + 1, .stride = a.seq, .n_rows = n_train,
                                .min_tokens = a.gbs * a.seq + 1, .seed = a.seed,
                                .split = a.split, .which = LMS_SPLIT_TRAIN, .shuffle = true};
    if ((st = lms_blend_open(r.src, r.n_src, &bo, &r.train, &err)))
        goto fail;
    if (n_val) {
        bo.n_rows = n_val;
        bo.which = LMS_SPLIT_VALID;
        bo.shuffle = false;
        if ((st = lms_blend_open(r.src, r.n_src, &bo, &r.val, &err))) {
            size_t len = strlen(err.msg);
            snprintf(err.msg + len, sizeof err.msg - len, " (--limit-val-batches 0 turns "
                     "validation off)");
            goto fail;
        }
    }

    /* ---- the configuration, checked against the state on resume ---- */
    r.config = make_config(&r);
    r.history = json_array();
    if (!r.config || !r.history) {
        st = lms_error_set(&err, LMS_ENOMEM, "out of memory");
        goto fail;
    }
    if (have_state) {
        char diff[1024];
        json_t *was = json_object_get(state.meta, "config");
        if (config_diff(was, r.config, "", diff, sizeof diff) ||
            config_diff(r.config, was, "", diff, sizeof diff)) {
            st = lms_error_set(&err, LMS_EINVAL, "--resume: the state '%s' was made with another "
                               "configuration (%s); resume with the same options, or start over "
                               "with --force", r.state_dir, diff);
            rc = cli_fail(cmd, &a.co, &err);
            goto out_state;
        }
        json_t *s = json_object_get(state.meta, "step");
        r.step = json_is_integer(s) ? json_integer_value(s) : -1;
        if (r.step < 0 || r.step > a.max_steps) {
            st = lms_error_set(&err, LMS_EFORMAT, "'%s': bad step count", r.state_dir);
            goto fail;
        }
        json_t *h = json_object_get(state.meta, "history");
        if (json_is_array(h))
            json_array_extend(r.history, h);
        r.start_step = r.saved_step = r.step;
    }

    /* ---- memory plan ---- */
    struct lms_device dev;
    if (lms_device_parse(a.device, &dev, &err)) {
        rc = cli_usage_error(cmd, "%s", err.msg);
        goto out_state;
    }
    if (r.comm && dev.kind != LMS_DEVICE_CPU && !strchr(a.device, ':')) {
        struct lms_launch launch; /* one GPU per process of a host */
        lms_launch_detect(&launch);
        dev.index = launch.local_rank;
    }
    bool on_gpu = dev.kind != LMS_DEVICE_CPU;
    bool bf16 = on_gpu && a.precision != LMS_PRECISION_FP32;
    struct lms_train_opts to = {.max_batch = a.mbs, .max_seq = a.seq, .recompute = a.recompute,
                                .bf16_working = bf16, .comm = r.comm};
    struct lms_train_plan tp;
    if ((st = lms_train_plan_make(&r.student.arch, r.student.arch.padded_vocab, &to, &tp, &err)))
        goto fail;
    size_t twb = bf16 ? lms_dtype_size(r.teacher.arch.dtype) : 4;
    struct lms_distill_shape shape = {.trainer = &tp, .teacher = &r.teacher.arch,
                                      .teacher_params = lms_model_n_params(&r.teacher),
                                      .teacher_weight_bytes = twb,
                                      .out_bytes = lms_dtype_size(r.out_dtype), .mbs = a.mbs,
                                      .seq = a.seq, .n_rows_planned = n_train + n_val,
                                      .device = on_gpu};
    struct lms_distill_memory mem;
    if ((st = lms_distill_memory_plan(&shape, &mem, &err)))
        goto fail;
    /* on a GPU the plan is device memory, checked against the device's total (other processes
     * may hold some of it: the allocations then report what they could not get) */
    struct lms_backend_opts bko = {.n_threads = (int)a.threads, .precision = a.precision};
    if (on_gpu && !a.max_memory) {
        struct lms_error derr = {0};
        uint64_t dfree, dtotal;
        if (!lms_backend_open(&dev, &bko, &r.be, &derr) &&
            !lms_backend_memory(r.be, &dfree, &dtotal, &derr))
            mem.available = dtotal;
        else if (!a.dry_run) {
            err = derr;
            st = err.status ? err.status : LMS_EDEVICE;
            goto fail;
        }
    }
    uint64_t limit = a.max_memory ? a.max_memory : mem.available;
    if ((a.dry_run && r.rank == 0) || !a.co.quiet)
        print_plan(&r, &tp, &mem, limit);
    if (limit && mem.total > limit) {
        char need[32], have[32], act[32];
        cli_format_bytes(mem.total, need, sizeof need);
        cli_format_bytes(limit, have, sizeof have);
        cli_format_bytes(mem.activations, act, sizeof act);
        st = lms_error_set(&err, LMS_ENOMEM, "the run needs %s (weights, moments and gradients "
                           "%llu B + activations %s + teacher %llu B + the rest) but %s is %s; "
                           "lower --mbs or --seq-length, or add --recompute",
                           need, (unsigned long long)(mem.weights + mem.moments + mem.gradients),
                           act, (unsigned long long)mem.teacher, have,
                           a.max_memory ? "allowed" : "available");
        goto fail;
    }
    if (a.dry_run) {
        FILE *f = a.co.json ? stderr : stdout;
        if (r.world > 1 && r.rank == 0)
            fprintf(f, "%d ranks (%s): %lld micro-batches of each global batch per rank\n",
                    r.world, lms_comm_backend(r.comm), (long long)(a.gbs / a.mbs / r.world));
        if (r.rank == 0) {
            fprintf(f, "dry run: %lld steps of %lld rows x %lld tokens (%lld micro-batches of "
                    "%lld), lr %g -> %g after %lld warm-up steps; student to '%s' (%s, %s); nothing "
                    "trained\n",
                    (long long)a.max_steps, (long long)a.gbs, (long long)a.seq,
                    (long long)(a.gbs / a.mbs), (long long)a.mbs, a.lr, a.min_lr,
                    (long long)a.warmup, r.out, r.out_fmt->name, lms_dtype_name(r.out_dtype));
        }
        if (a.co.json)
            summary_json(&r, cli_now() - t0, true);
        goto out_state;
    }

    /* ---- engine ---- */
    if (!r.be && (st = lms_backend_open(&dev, &bko, &r.be, &err)))
        goto fail;
    if ((st = lms_comm_attach_device(r.comm, r.be, &err)))
        goto fail;
    if ((st = lms_trainer_new(&r.student, r.be, &to, &r.tr, &err))) {
        lms_error_wrap(&err, "student '%s': ", a.student);
        goto fail;
    }
    struct lms_engine_opts eo = {.max_batch = a.mbs, .max_seq = a.seq};
    if ((st = lms_engine_new(&r.teacher, r.be, &eo, &r.te, &err))) {
        lms_error_wrap(&err, "teacher '%s': ", a.teacher);
        goto fail;
    }
    lms_loss_opts_default(&r.loss);
    r.loss.kd = a.kd_kind;
    r.loss.temperature = a.temperature;
    r.loss.top_k = a.top_k;
    r.loss.ce_weight = a.lm_loss_scale;
    r.loss.kd_weight = a.kd_loss_scale;
    r.loss.combine = LMS_COMBINE_SCALED;
    r.sched = (struct lms_lr_schedule){.lr = a.lr, .min_lr = a.min_lr, .warmup = a.warmup,
                                       .max_steps = a.max_steps};
    r.row = lms_malloc((size_t)(a.seq + 1) * sizeof(int32_t));
    r.ids = lms_malloc((size_t)(a.mbs * a.seq) * sizeof(int32_t));
    r.tgt = lms_malloc((size_t)(a.mbs * a.seq) * sizeof(int32_t));
    if (!r.row || !r.ids || !r.tgt) {
        st = lms_error_set(&err, LMS_ENOMEM, "out of memory for the batch buffers");
        goto fail;
    }
    if (have_state) {
        if ((st = restore(&r, &state, &err)))
            goto fail;
        lms_train_state_release(&state);
        have_state = false;
        if (r.rank == 0)
            metrics_truncate(r.metrics_path, r.step);
    }
    snprintf(tmp, sizeof tmp, "%s", a.log_dir);
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) {
        st = lms_error_set(&err, LMS_EIO, "creating --log-dir '%s': %s", tmp, strerror(errno));
        goto fail;
    }
    r.metrics = r.rank ? NULL : fopen(r.metrics_path, have_state || a.resume ? "a" : "w");
    if (!r.metrics && r.rank == 0) {
        st = lms_error_set(&err, LMS_EIO, "opening '%s': %s", r.metrics_path, strerror(errno));
        goto fail;
    }

    if (a.dump_rows && !(r.dump = fopen(a.dump_rows, "wb"))) {
        st = lms_error_set(&err, LMS_EIO, "opening --dump-rows '%s': %s", a.dump_rows,
                           strerror(errno));
        goto fail;
    }

    /* ---- steps ---- */
    struct sigaction sa = {.sa_handler = on_sigint}, old_sa;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_sa);
    bool human = !a.co.quiet && !a.co.json;
    if (human)
        printf("distilling '%s' from '%s': %lld steps of %lld x %lld tokens%s\n", a.student,
               a.teacher, (long long)a.max_steps, (long long)a.gbs, (long long)a.seq,
               r.start_step ? " (resumed)" : "");
    uint64_t step_tokens = (uint64_t)(a.gbs * a.seq);
    cli_progress_begin(&r.bar, "distilling", (uint64_t)(a.max_steps - r.start_step) * step_tokens,
                       false, a.co.quiet || a.co.json);
    double t_train = cli_now(), t_log = t_train;
    int64_t log_from = r.step;
    while (r.step < a.max_steps) {
        double lr = lms_lr_at(&r.sched, r.step);
        st = train_step(&r, &err);
        if (st)
            break;
        cli_progress_update(&r.bar, (uint64_t)(r.step - r.start_step) * step_tokens);
        bool last = r.step == a.max_steps;
        json_array_append_new(r.history, json_pack("{s:I,s:f,s:f}", "step", (json_int_t)r.step,
                                                   "loss", r.last_loss, "lr", lr));
        if (r.step % a.log_interval == 0 || last) {
            double now = cli_now();
            double tps = now > t_log ? (double)((r.step - log_from) * (int64_t)step_tokens) /
                                           (now - t_log) : 0;
            double per_step = (now - t_train) / (double)(r.step - r.start_step);
            double eta = per_step * (double)(a.max_steps - r.step);
            bar_clear(&r);
            if (human)
                printf("step %lld/%lld  lr %.3e  loss %.5f  lm loss %.5f  grad norm %.4f  "
                       "%.0f tokens/s  ETA %02d:%02d\n",
                       (long long)r.step, (long long)a.max_steps, lr, r.last_loss,
                       r.last_lm_loss, r.last_grad_norm, tps, (int)eta / 60, (int)eta % 60);
            fflush(stdout);
            metrics_write(&r, json_pack("{s:s,s:I,s:f,s:f,s:f,s:f,s:f,s:I,s:f}", "event",
                                        "train", "step", (json_int_t)r.step, "lr", lr, "loss",
                                        r.last_loss, "lm_loss", r.last_lm_loss, "grad_norm",
                                        r.last_grad_norm, "tokens_per_second", tps,
                                        "consumed_samples", (json_int_t)(r.step * a.gbs),
                                        "elapsed_s", now - t_train));
            t_log = now;
            log_from = r.step;
        }
        if (r.val && ((a.val_interval && r.step % a.val_interval == 0) || last) &&
            (st = validate(&r, &err)))
            break;
        if (!last && a.save_interval && r.step % a.save_interval == 0 && (st = save(&r, &err)))
            break;
        if (!last && a.exit_interval && r.step % a.exit_interval == 0)
            break;
    }
    if (!st)
        cli_progress_end(&r.bar);
    else
        bar_clear(&r);
    if (st == LMS_EINTERRUPTED) {
        enum lms_status s2 = r.step > r.saved_step ? save(&r, &err) : LMS_OK;
        sigaction(SIGINT, &old_sa, NULL);
        if (s2)
            goto fail;
        if (r.step == 0)
            lms_error_set(&err, LMS_EINTERRUPTED, "interrupted before the first step finished: "
                          "nothing saved");
        else
            lms_error_set(&err, LMS_EINTERRUPTED, "interrupted: the state after step %lld is in "
                          "'%s' (continue with --resume)", (long long)r.step, r.state_dir);
        r.agreed = true; /* every rank stopped at the same step */
        goto fail;
    }
    if (!st)
        st = save(&r, &err);
    sigaction(SIGINT, &old_sa, NULL);
    if (st)
        goto fail;
    double secs = cli_now() - t_train;
    if (a.co.json) {
        summary_json(&r, secs, false);
    } else if (!a.co.quiet) {
        if (r.step < a.max_steps)
            printf("stopped after step %lld of %lld (--exit-interval; continue with --resume): ",
                   (long long)r.step, (long long)a.max_steps);
        printf("distilled %lld steps (%lld tokens) in %.1f s", (long long)r.step,
               (long long)(r.step * a.gbs * a.seq), secs);
        if (r.step > r.start_step)
            printf(": loss %.5f", r.last_loss);
        if (isfinite(r.last_val_loss))
            printf(", validation loss %.5f", r.last_val_loss);
        printf("; student written to '%s' (%s, %s), state in '%s', metrics in '%s'\n", r.out,
               r.out_fmt->name, lms_dtype_name(r.out_dtype), r.state_dir, r.metrics_path);
    }
    goto out_state;
fail:
    if (r.world > 1)
        lms_error_wrap(&err, "rank %d of %d: ", r.rank, r.world);
    rc = cli_fail(cmd, &a.co, &err);
    if (r.world > 1 && !r.agreed) {
        /* the other ranks do not know and may wait in a collective: end them all */
        fflush(NULL);
        lms_comm_abort(r.comm, rc);
    }
out_state:
    if (have_state)
        lms_train_state_release(&state);
out:
    (void)st;
    run_release(&r);
    return rc;
}
