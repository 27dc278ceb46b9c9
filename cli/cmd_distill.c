/* lmsurgeon distill: train a pruned student to match its teacher's next-token distribution on a
 * token corpus (logit distillation), with the reference workflow's flags as written; and
 * lmsurgeon train, the same command without a teacher (the cross-entropy on the data alone).
 * This file parses and checks the options, opens the ranks, names the outputs and plans memory;
 * the run itself is the library's (include/lms/distill_run.h), and cli/distill_report.c prints
 * what it reports. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/distill_run.h"
#include "lms/alloc.h"
#include "lms/comm.h"
#include "lms/format.h"
#include "lms/outdir.h"
#include "lms/paths.h"

/* The command's name in messages: "distill", or "train" (its run without a teacher), set by
 * the entry point before anything is parsed (one command runs per process). */
static const char *cmd = "distill";

static const char usage_distill[] =
    "usage: lmsurgeon distill --student S --teacher T --data-paths P... [--out DIR] [options]\n"
    "\n"
    "Trains the student S (a pruned model) to match the teacher T on the token data P: forward\n"
    "KL(teacher || student) over the whole vocabulary per position (temperature 1), AdamW with\n"
    "fp32 master weights and moments, linear warm-up then cosine decay to --min-lr, global-norm\n"
    "clipping, and gradient accumulation over --gbs / --mbs micro-batches. The student is\n"
    "written to DIR in its own format (or --to) atomically, at the end and every\n"
    "--save-interval steps, with a resumable training state beside it (DIR.state/).\n"
    "Without --teacher the student is trained on the data alone, as lmsurgeon train does\n"
    "(cross-entropy on the next tokens; the loss and feature options below are then refused).\n"
    "\n"
    "Models and data:\n"
    "  --student S, --model-path S    the student checkpoint (any format lmsurgeon reads)\n"
    "  --teacher T, --teacher-path T  the teacher; its vocabulary must equal the student's\n";
static const char usage_train[] =
    "usage: lmsurgeon train --model S --data-paths P... [--out DIR] [options]\n"
    "\n"
    "Trains the model S on the token data P without a teacher: the loss is the cross-entropy\n"
    "on the data's next tokens (e.g. correcting a teacher on the distillation data before\n"
    "pruning it). The run is distill's without its teacher: the same rows, AdamW with fp32\n"
    "master weights and moments, linear warm-up then cosine decay to --min-lr, global-norm\n"
    "clipping, gradient accumulation over --gbs / --mbs micro-batches, resume, ranks. The\n"
    "model is written to DIR in its own format (or --to) atomically, at the end and every\n"
    "--save-interval steps, with a resumable training state beside it (DIR.state/).\n"
    "lmsurgeon distill without --teacher runs the same. Options that only mean something with\n"
    "a teacher (--teacher, --kd-*, --feature-*, --lm-loss-scale) are refused.\n"
    "\n"
    "Model and data:\n"
    "  --model S, --student S, --model-path S\n"
    "                                 the model to train (any format lmsurgeon reads)\n";
static const char usage_data[] =
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
    "                                 Weight decay skips biases and 1-D norm weights\n";
static const char usage_loss_distill[] =
    "Loss:\n"
    "  --kd-loss KIND                 forward-kl (default), reverse-kl, or top-k (forward KL\n"
    "                                 over the teacher's --kd-top-k K largest entries)\n"
    "  --kd-temperature T             softmax temperature of both distributions (default 1)\n"
    "  --lm-loss-scale W              add W x cross-entropy on the data's next tokens (default 0:\n"
    "                                 logits-only distillation); the distillation term is then\n"
    "                                 rescaled to the cross-entropy's magnitude and weighted by\n"
    "                                 --kd-loss-scale (default 1): L = W L_ce + kd_scale L_kd\n";
static const char usage_loss_train[] =
    "Loss: the cross-entropy of each next token, averaged over the positions of a batch\n";
static const char usage_loss_common[] =
    "  --recompute                    keep only each layer's input for the backward and\n"
    "                                 recompute the rest (less memory, about 1/3 more time)\n"
    "  --skip-nonfinite N             skip up to N steps whose loss or gradient norm is not\n"
    "                                 finite (default 0): such a step updates nothing and\n"
    "                                 consumes its batch; the schedule and AdamW count only\n"
    "                                 updates. One more stops the run with exit 7, the state\n"
    "                                 of the last finished step saved\n"
    ;
static const char usage_text_features[] =
    "  --feature-pairs LIST           intermediate-state (feature) distillation on these\n"
    "                                 STUDENT:TEACHER layer pairs (1-based, e.g. 2:3,4:6), or\n"
    "                                 none (logits only, the default for depth- and\n"
    "                                 width-pruned students alike: as good or better than\n"
    "                                 every-layer pairs in each comparison measured, and\n"
    "                                 cheaper). The start summary says which\n"
    "  --feature-every K              pair every K-th student layer with the teacher layer it was\n"
    "                                 pruned from (prune's kept-layer map; the same index without)\n"
    "  --feature-hook P               where a pair compares: mlp-norm (default: layer i's\n"
    "                                 post-attention norm output) or attn-norm (its input norm\n"
    "                                 output); a learned map joins when the hidden sizes differ\n"
    "  --feature-loss KIND            cosine (default: 1 - cos per token) or mse\n"
    "  --feature-loss-scale W         the feature loss L_f is scaled to the logits loss\n"
    "                                 (L_f' = L_f L_logits / L_f, added to it, the sum rescaled\n"
    "                                 to the cross-entropy with --lm-loss-scale, as above), so\n"
    "                                 its weight cancels: only 1 (the default) is accepted\n"
    ;
static const char usage_text2[] =
    "Logging, validation, saving:\n"
    "  --out DIR                      where the trained model goes (default LOG_DIR/NAME)\n"
    "  --to FORMAT, --dtype TYPE      output format and dtype (default: the student's)\n"
    "  --max-shard-size SIZE          split the student's weight files at SIZE (e.g. 5GB)\n"
    "  --name NAME                    run name (default: the last component of --out, else\n"
    "                                 the command's name: 'distill' or 'train')\n"
    "  --log-dir DIR                  where NAME.metrics.jsonl goes (default .): one JSON line\n"
    "                                 per logged step and per validation\n"
    "  --log-interval N               a log line every N steps (default 1): step, lr, loss,\n"
    "                                 gradient norm, tokens/s, ETA\n"
    "  --val-check-interval N         validation loss every N steps (default 0: only at the end)\n"
    "  --limit-val-batches N          global batches of the validation split per validation\n"
    "                                 (default 1; 0 = no validation)\n"
    "  --save-interval N              save the student and the training state every N steps\n"
    "                                 (default 0: only at the end)\n"
    "  --save-state WHEN              when the training state DIR.state/ (fp32 master weights\n"
    "                                 and both AdamW moments: 12 B per student parameter) is\n"
    "                                 written: interval (default: at every save), end (only\n"
    "                                 when the run stops: at the end, at --exit-interval, on\n"
    "                                 SIGINT; the saves in between write the student alone) or\n"
    "                                 never (the student alone: such a run cannot be resumed,\n"
    "                                 so --exit-interval and --resume are refused with it)\n"
    "  --resume                       continue from DIR.state/ exactly where it stopped; the\n"
    "                                 result is bit-identical to an uninterrupted run. Refused\n"
    "                                 when any option that shapes the run has changed, or the\n"
    "                                 content of the student, teacher or data (files may move)\n"
    "  --exit-interval N              save and exit (status 0) after a step that is a multiple\n"
    "                                 of N, to split a run into jobs; continue with --resume\n"
    "  --force                        replace an existing DIR (and DIR.state/, the metrics file,\n"
    "                                 --dump-rows) without --resume\n"
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
    "  --json, --quiet, -h/--help\n";
static const char usage_text3[] =
    "Several processes (data parallelism, started by mpirun or srun): every rank runs its\n"
    "share of each global batch (--gbs = --mbs x accumulation x ranks), gradients are summed\n"
    "in fp32, the optimiser state is split over the ranks, rank 0 logs and saves; one GPU per\n"
    "local rank with --device cuda. E.g. mpirun -np 8 lmsurgeon distill ... --devices 8\n"
    "Every rank must be given the same options and inputs: a difference ends all ranks before\n"
    "the first step, naming the option (--out, --name, --log-dir, --threads, --max-memory and\n"
    "the GPU index may differ)\n"
    "Reference workflow flags, accepted as written:\n"
    "  --devices N, --num-nodes N, --tp-size N, --pp-size N\n"
    "                                 under a launcher, --devices x --num-nodes must equal its\n"
    "                                 number of processes; without one the run trains on the\n"
    "                                 one --device. --gbs rows per step, so every number of the\n"
    "                                 run is the same as with parallelism over N devices\n"
    "  --legacy-ckpt                  no effect: every checkpoint layout is detected on reading\n"
    "  --name, --model_path, --teacher_path, --data_paths, --log_dir ...: underscores work as\n"
    "                                 hyphens\n"
    "SIGINT (Ctrl-C) saves the training state at the last finished step and exits with 130;\n"
    "SIGTERM (what Slurm sends before it kills a job) does the same and exits with 143.\n";

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
    return CLI_PARSED;
}

/* ---- options -------------------------------------------------------------------------------- */

enum { O_PRECISION, O_MAX_MEMORY, O_PRESET, O_KD_LOSS, O_BETA1, O_BETA2, O_SAVE_STATE,
       O_FEATURE_PAIRS, O_FEATURE_EVERY, O_FEATURE_HOOK, O_FEATURE_LOSS };
#define T struct distill_args
static const struct cli_opt opts[] = {
    /* the model is required (check says so, naming it as the command does); the teacher is
     * optional: without one the run trains on the data alone */
    CLI_STRING("student", T, student),
    CLI_STRING("model-path", T, student),
    CLI_STRING("model", T, student),
    CLI_STRING("teacher", T, teacher),
    CLI_STRING("teacher-path", T, teacher),
    CLI_STRING("out", T, out),
    CLI_STRING("name", T, name),
    CLI_STRING("log-dir", T, log_dir),
    CLI_STRING("split", T, split),
    CLI_STRING("dump-rows", T, dump_rows),
    CLI_COUNT("seq-length", T, seq, 1, 1 << 20, "invalid --seq-length '%s' (1 to 1048576)"),
    CLI_COUNT("seed", T, seed, 0, 0, "invalid --seed '%s'"),
    CLI_COUNT("gbs", T, gbs, 1, 1 << 24, "invalid --gbs '%s'"),
    CLI_COUNT("global-batch-size", T, gbs, 1, 1 << 24, "invalid --gbs '%s'"),
    CLI_COUNT("mbs", T, mbs, 1, 1 << 16, "invalid --mbs '%s'"),
    CLI_COUNT("micro-batch-size", T, mbs, 1, 1 << 16, "invalid --mbs '%s'"),
    CLI_COUNT("max-steps", T, max_steps, 1, 1ll << 40, "invalid --max-steps '%s'"),
    CLI_REAL("lr", T, lr, true, "invalid --lr '%s'"),
    CLI_REAL("min-lr", T, min_lr, false, "invalid --min-lr '%s'"),
    CLI_COUNT("warmup-steps", T, warmup, 0, 0, "invalid --warmup-steps '%s'"),
    CLI_CALL("optim-preset", O_PRESET),
    CLI_CALL("adam-beta1", O_BETA1),
    CLI_CALL("adam-beta2", O_BETA2),
    CLI_REAL("adam-eps", T, over.eps, true, "invalid --adam-eps '%s'"),
    CLI_REAL("weight-decay", T, over.weight_decay, false, "invalid --weight-decay '%s'"),
    CLI_REAL("clip-grad", T, over.clip_norm, false, "invalid --clip-grad '%s'"),
    CLI_REAL("kd-temperature", T, temperature, true, "invalid --kd-temperature '%s'"),
    CLI_CALL("kd-loss", O_KD_LOSS),
    CLI_COUNT("kd-top-k", T, top_k, 1, 0, "invalid --kd-top-k '%s'"),
    CLI_REAL("lm-loss-scale", T, lm_loss_scale, false, "invalid --lm-loss-scale '%s'"),
    CLI_REAL("kd-loss-scale", T, kd_loss_scale, true, "invalid --kd-loss-scale '%s'"),
    CLI_CALL("feature-pairs", O_FEATURE_PAIRS),
    CLI_CALL("feature-every", O_FEATURE_EVERY),
    CLI_CALL("feature-hook", O_FEATURE_HOOK),
    CLI_CALL("feature-loss", O_FEATURE_LOSS),
    CLI_REAL("feature-loss-scale", T, feature_scale, true, "invalid --feature-loss-scale '%s'"),
    CLI_FLAG("recompute", T, recompute),
    CLI_COUNT("skip-nonfinite", T, skip_nonfinite, 0, 0, "invalid --skip-nonfinite '%s'"),
    CLI_COUNT("log-interval", T, log_interval, 1, 0, "invalid --log-interval '%s'"),
    CLI_COUNT("val-check-interval", T, val_interval, 0, 0, "invalid --val-check-interval '%s'"),
    CLI_COUNT("limit-val-batches", T, val_batches, 0, 0, "invalid --limit-val-batches '%s'"),
    CLI_COUNT("save-interval", T, save_interval, 0, 0, "invalid --save-interval '%s'"),
    CLI_COUNT("exit-interval", T, exit_interval, 1, 0, "invalid --exit-interval '%s'"),
    CLI_CALL("save-state", O_SAVE_STATE),
    CLI_FLAG("resume", T, resume),
    CLI_CALL("precision", O_PRECISION),
    CLI_CALL("max-memory", O_MAX_MEMORY),
    CLI_FLAG("dry-run", T, dry_run),
    CLI_COUNT("devices", T, devices, 1, 0, "invalid --devices '%s'"),
    CLI_COUNT("num-nodes", T, num_nodes, 1, 0, "invalid --num-nodes '%s'"),
    CLI_COUNT("tp-size", T, tp_size, 1, 0, "invalid device, node or parallel size '%s'"),
    CLI_COUNT("pp-size", T, pp_size, 1, 0, "invalid device, node or parallel size '%s'"),
    CLI_FLAG("legacy-ckpt", T, legacy_ckpt), /* every layout is detected on reading */
    CLI_END,
};
#undef T

/* --feature-pairs LIST|none and --feature-every K: the last one given counts. The layers are
 * checked against the models once they are open. */
static int on_feature_pairs(struct distill_args *a, int id, const char *value)
{
    if (id == O_FEATURE_EVERY) {
        int64_t k;
        if (!cli_parse_count(value, &k) || k < 1)
            return cli_usage_error(cmd, "invalid --feature-every '%s' (K >= 1)", value);
        a->features = LMS_FEATURES_EVERY;
        a->feature_every = k;
        return 0;
    }
    if (!strcmp(value, "none")) {
        a->features = LMS_FEATURES_NONE;
        return 0;
    }
    a->features = LMS_FEATURES_LIST;
    a->feature_pairs = value;
    return 0;
}

static int on_option(void *args, int id, const char *value, const char *word)
{
    (void)word;
    struct distill_args *a = args;
    switch (id) {
    case O_PRECISION: {
        enum lms_precision p;
        if (lms_precision_parse(value, &p, NULL))
            return cli_usage_error(cmd, "invalid --precision '%s' (auto, fp32 or bf16)", value);
        a->base.precision = value;
        return 0;
    }
    case O_MAX_MEMORY:
        if (!cli_parse_size(value, &a->max_memory) || !a->max_memory)
            return cli_usage_error(cmd, "invalid --max-memory '%s'", value);
        return 0;
    case O_PRESET:
        if (!lms_optim_preset_parse(value, &a->preset))
            return cli_usage_error(cmd, "unknown --optim-preset '%s' (parity, megatron, gpt)",
                                   value);
        return 0;
    case O_KD_LOSS: {
        const struct lms_kd_loss_def *d = lms_kd_loss_find(value);
        if (d) {
            a->kd_kind = d->kind;
            return 0;
        }
        char names[256];
        lms_kd_loss_names(", ", names, sizeof names);
        return cli_usage_error(cmd, "unknown --kd-loss '%s' (%s)", value, names);
    }
    case O_SAVE_STATE: {
        static const char *const names[] = {"interval", "end", "never"};
        static const enum lms_distill_save_state modes[] = {
            LMS_DISTILL_SAVE_STATE_INTERVAL, LMS_DISTILL_SAVE_STATE_END,
            LMS_DISTILL_SAVE_STATE_NEVER};
        for (int i = 0; i < 3; i++)
            if (!strcmp(value, names[i])) {
                a->save_state = modes[i];
                return 0;
            }
        return cli_usage_error(cmd, "unknown --save-state '%s' (interval, end, never)", value);
    }
    case O_FEATURE_PAIRS:
    case O_FEATURE_EVERY:
        return on_feature_pairs(a, id, value);
    case O_FEATURE_HOOK:
        for (int h = 0; lms_feature_hook_name(h); h++)
            if (!strcmp(value, lms_feature_hook_name(h))) {
                a->feature_hook = h;
                return 0;
            }
        return cli_usage_error(cmd, "unknown --feature-hook '%s' (mlp-norm, attn-norm)", value);
    case O_FEATURE_LOSS:
        for (int k = 0; lms_feature_kind_name(k); k++)
            if (!strcmp(value, lms_feature_kind_name(k))) {
                a->feature_kind = k;
                return 0;
            }
        return cli_usage_error(cmd, "unknown --feature-loss '%s' (cosine, mse)", value);
    case O_BETA1:
    case O_BETA2: {
        double *beta = id == O_BETA1 ? &a->over.beta1 : &a->over.beta2;
        if (!cli_parse_real(value, beta) || *beta >= 1)
            return cli_usage_error(cmd, "invalid --adam-beta%d '%s' (0 <= beta < 1)",
                                   id == O_BETA1 ? 1 : 2, value);
        return 0;
    }
    }
    return 0;
}

/* Whether option name (a row's first name) only means something with a teacher: the KD loss,
 * its temperature, K and weight, the cross-entropy weight of the scaled rule, and the feature
 * (intermediate-state) options. */
static bool teacher_only(const char *name)
{
    return !strncmp(name, "kd-", 3) || !strncmp(name, "feature-", 8) ||
           !strcmp(name, "lm-loss-scale");
}

static void seen(void *args, const char *name)
{
    struct distill_args *a = args;
    if (!a->teacher_opt && teacher_only(name))
        a->teacher_opt = name;
}

/* The model, and the teacher's options against the mode: train takes no teacher, and a run
 * without one (train, or distill without --teacher) refuses the options only a teacher gives a
 * meaning, rather than ignoring them. */
static int check_mode(const struct distill_args *a)
{
    if (!a->student)
        return cli_usage_error(cmd, a->train_cmd ? "--model (or --student, --model-path) is "
                               "required" : "--student (or --model-path) is required");
    if (a->train_cmd && a->teacher)
        return cli_usage_error(cmd, "train takes no --teacher (it trains on the data alone); "
                               "to distill from '%s', run lmsurgeon distill", a->teacher);
    if (!a->teacher && a->teacher_opt)
        return cli_usage_error(cmd, "--%s needs a teacher: without one (lmsurgeon train, or "
                               "distill without --teacher) the loss is the cross-entropy alone",
                               a->teacher_opt);
    return CLI_PARSED;
}

/* The checks of the whole set, and the optimiser settings: the preset, then the overrides. */
static int check(void *args)
{
    struct distill_args *a = args;
    int rc = check_mode(a);
    if (rc != CLI_PARSED)
        return rc;
    if (!a->data_args)
        return cli_usage_error(cmd, "--data-paths is required");
    if (a->gbs % a->mbs)
        return cli_usage_error(cmd, "--gbs %lld is not a multiple of --mbs %lld", (long long)a->gbs,
                               (long long)a->mbs);
    if (a->min_lr > a->lr)
        return cli_usage_error(cmd, "--min-lr %g is above --lr %g", a->min_lr, a->lr);
    if (a->resume && a->base.wo.force)
        return cli_usage_error(cmd, "--resume and --force exclude each other");
    struct lms_distill_loss loss = {.kind = a->kd_kind, .temperature = a->temperature,
                                    .top_k = a->top_k, .lm_loss_scale = a->lm_loss_scale,
                                    .kd_loss_scale = a->kd_loss_scale};
    const char *why = lms_kd_loss_of(a->kd_kind)->check(&loss);
    if (why)
        return cli_usage_error(cmd, "%s", why);
    /* the scaled rule sets the feature loss to the logits loss's size, whatever its weight */
    if (a->feature_scale != 1)
        return cli_usage_error(cmd, "--feature-loss-scale %g: the scaled combine rule rescales "
                               "the feature loss to the logits loss, so only 1 is accepted",
                               a->feature_scale);
    /* without a training state on disk a stopped run could not go on, and a resumed one would
     * leave the state it read behind, older than the student */
    if (a->save_state == LMS_DISTILL_SAVE_STATE_NEVER && a->exit_interval)
        return cli_usage_error(cmd, "--exit-interval needs a training state to continue from: "
                               "use --save-state end (or interval), not never");
    if (a->save_state == LMS_DISTILL_SAVE_STATE_NEVER && a->resume)
        return cli_usage_error(cmd, "--resume with --save-state never would leave the state it "
                               "reads (DIR.state/) behind, older than the student: use "
                               "--save-state end");
    lms_optim_preset_apply(a->preset, &a->adam);
    const struct lms_adamw_opts *o = &a->over;
    a->adam.beta1 = isnan(o->beta1) ? a->adam.beta1 : o->beta1;
    a->adam.beta2 = isnan(o->beta2) ? a->adam.beta2 : o->beta2;
    a->adam.eps = isnan(o->eps) ? a->adam.eps : o->eps;
    a->adam.weight_decay = isnan(o->weight_decay) ? a->adam.weight_decay : o->weight_decay;
    a->adam.clip_norm = isnan(o->clip_norm) ? a->adam.clip_norm : o->clip_norm;
    return CLI_PARSED;
}

static int run(void *args);

/* distill and train: one option table, one parser, one run; only the help differs */
static const struct cli_spec spec = {
    .name = "distill",
    .help = {usage_distill, usage_data, usage_loss_distill, usage_loss_common,
             usage_text_features, usage_text2, usage_text3},
    .shorts = "hq", .groups = CLI_FORCE | CLI_WRITE | CLI_RUN, .positional = CLI_POS_NONE,
    .opts = opts, .on_option = on_option, .seen = seen, .check = check, .run = run,
};
static const struct cli_spec train_spec = {
    .name = "train",
    .help = {usage_train, usage_data, usage_loss_train, usage_loss_common, usage_text2,
             usage_text3},
    .shorts = "hq", .groups = CLI_FORCE | CLI_WRITE | CLI_RUN, .positional = CLI_POS_NONE,
    .opts = opts, .on_option = on_option, .seen = seen, .check = check, .run = run,
};

/* ---- the run -------------------------------------------------------------------------------- */

static int fail(struct distill_run *r, struct lms_error *err)
{
    return cli_fail_ranks(cmd, &r->a->base.co, err, r->run.o.comm, r->run.agreed);
}

static int agree_ranks(struct distill_run *r, const struct lms_train_state *state, bool inputs);

/* The launcher's processes, or this one alone, and the checks on their number. */
static int open_ranks(struct distill_run *r)
{
    struct distill_args *a = r->a;
    struct lms_error err;
    lms_error_clear(&err);
    if (lms_comm_open(&r->run.o.comm, &err))
        return cli_fail(cmd, &a->base.co, &err);
    r->run.rank = lms_comm_rank(r->run.o.comm);
    r->run.world = lms_comm_world(r->run.o.comm);
    int rc = agree_ranks(r, NULL, false); /* before any check that could part them */
    if (rc != CLI_PARSED)
        return rc;
    int64_t devices = a->devices ? a->devices : 1, nodes = a->num_nodes ? a->num_nodes : 1;
    if (r->run.o.comm && (a->devices || a->num_nodes) && devices * nodes != r->run.world)
        return cli_usage_error(cmd, "--devices %lld x --num-nodes %lld = %lld processes, but the "
                               "launcher started %d (e.g. mpirun -np %lld, or srun --ntasks %lld)",
                               (long long)devices, (long long)nodes, (long long)(devices * nodes),
                               r->run.world, (long long)(devices * nodes),
                               (long long)(devices * nodes));
    if (a->gbs % (a->mbs * r->run.world))
        return cli_usage_error(cmd, "--gbs %lld is not a multiple of --mbs %lld x %d ranks",
                               (long long)a->gbs, (long long)a->mbs, r->run.world);
    if (r->run.world > 1 && a->dump_rows)
        return cli_usage_error(cmd, "--dump-rows needs a single process (each rank reads its "
                               "own rows)");
    if (r->run.rank > 0) { /* logs come from rank 0; the others speak only to report an error */
        a->base.co.quiet = true;
        a->base.co.json = false;
        cli_interrupt_json(false);
    }
    cli_rank_device(&a->base, r->run.o.comm);
    return CLI_PARSED;
}

static bool path_taken(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0; /* a file or any directory entry counts as taken */
}

/* Every path the run writes (the student, its state, the metrics, --dump-rows) against the
 * others and against every path it reads (the models and the data). */
static enum lms_status check_paths(const struct distill_run *r, struct lms_error *err)
{
    const struct distill_args *a = r->a;
    size_t n = 6 + (size_t)r->n_src;
    struct lms_path_role *p = lms_calloc(n, sizeof *p);
    if (!p)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    p[0] = (struct lms_path_role){r->out, "--out", LMS_PATH_WRITE};
    p[1] = (struct lms_path_role){r->state_dir, "the training state", LMS_PATH_WRITE};
    p[2] = (struct lms_path_role){r->metrics_path, "the metrics file (--log-dir)", LMS_PATH_WRITE};
    p[3] = (struct lms_path_role){a->dump_rows, "--dump-rows", LMS_PATH_WRITE};
    p[4] = (struct lms_path_role){a->student, "the student", LMS_PATH_READ};
    p[5] = (struct lms_path_role){a->teacher, "the teacher", LMS_PATH_READ};
    for (int i = 0; i < r->n_src; i++)
        p[6 + i] = (struct lms_path_role){r->src[i].path, "the data", LMS_PATH_READ_DATA};
    enum lms_status st = lms_paths_check(p, n, err);
    lms_free(p);
    return st;
}

/* OUT, NAME, the state beside OUT, the metrics in LOG_DIR, the data sources; refuses to replace
 * a student, a state, a metrics file or --dump-rows without --force or --resume. */
static int name_outputs(struct distill_run *r)
{
    struct distill_args *a = r->a;
    struct lms_error err;
    lms_error_clear(&err);
    if (a->out)
        snprintf(r->out_buf, sizeof r->out_buf, "%s", a->out);
    else
        snprintf(r->out_buf, sizeof r->out_buf, "%s/%s", a->log_dir, a->name ? a->name : cmd);
    for (size_t n = strlen(r->out_buf); n > 1 && r->out_buf[n - 1] == '/'; n--)
        r->out_buf[n - 1] = '\0';
    r->out = r->out_buf;
    r->name = a->name ? a->name : lms_path_basename(r->out);
    snprintf(r->state_dir, sizeof r->state_dir, "%s.state", r->out);
    snprintf(r->metrics_path, sizeof r->metrics_path, "%s/%s.metrics.jsonl", a->log_dir, r->name);

    enum lms_status st = lms_blend_sources_parse(a->data_args, a->n_data_args, &r->src, &r->n_src,
                                                 &err);
    lms_free(a->data_args);
    a->data_args = NULL;
    if (st || check_paths(r, &err))
        return cli_usage_error(cmd, "%s", err.msg);
    if (a->resume && !path_taken(r->state_dir))
        return cli_usage_error(cmd, "--resume: no training state '%s'", r->state_dir);
    if (a->resume || a->base.wo.force || a->dry_run)
        return CLI_PARSED;
    if (path_taken(r->state_dir))
        return cli_usage_error(cmd, "a training state '%s' exists: continue it with --resume, "
                               "or start over with --force", r->state_dir);
    if (path_taken(r->out))
        return cli_usage_error(cmd, "refusing to overwrite '%s' (use --force)", r->out);
    if (path_taken(r->metrics_path))
        return cli_usage_error(cmd, "refusing to overwrite the metrics file '%s' (use --force, "
                               "or --resume to continue its run)", r->metrics_path);
    if (a->dump_rows && path_taken(a->dump_rows))
        return cli_usage_error(cmd, "refusing to overwrite --dump-rows '%s' (use --force)",
                               a->dump_rows);
    return CLI_PARSED;
}

/* The output format (--to, else the student's), the student and the teacher. */
static int open_models(struct distill_run *r)
{
    struct distill_args *a = r->a;
    struct lms_error err;
    lms_error_clear(&err);
    if (a->base.to && !(r->run.o.out_format = lms_format_find(a->base.to)))
        return cli_usage_error(cmd, "unknown --to '%s'", a->base.to);
    if (lms_distill_open_models(&r->run, &err))
        return fail(r, &err);
    /* a pair outside either model is a usage error, found by every rank alike */
    enum lms_status st = lms_distill_features_resolve(&r->run, &err);
    if (st == LMS_EINVAL)
        return cli_usage_error(cmd, "%s", err.msg);
    if (st)
        return fail(r, &err);
    return CLI_PARSED;
}

/* The training rows (and the validation rows) of the blend. */
static int open_data(struct distill_run *r)
{
    struct lms_error err;
    lms_error_clear(&err);
    if (lms_distill_open_data(&r->run, &err))
        return fail(r, &err);
    return CLI_PARSED;
}

/* The run's configuration; on --resume, checked against the state's, which gives the step to
 * continue from and the history so far. A configuration that differs is every rank's own
 * finding (no rank waits for another to say it). */
static int check_config(struct distill_run *r, const struct lms_train_state *state)
{
    struct lms_error err;
    lms_error_clear(&err);
    enum lms_status st = lms_distill_configure(&r->run, state, &err);
    if (st == LMS_EINVAL)
        return cli_fail(cmd, &r->a->base.co, &err);
    if (st)
        return fail(r, &err);
    return CLI_PARSED;
}

/* One option the ranks compare: its name as the user spells it, and its value. */
struct rank_item {
    const char *name;
    json_t *value;
};

/* Adds items to o (a JSON object keyed by option), taking every value; false when one could
 * not be made or added (o then holds what was added). */
static bool put_items(json_t *o, const struct rank_item *items, size_t n)
{
    bool ok = o != NULL;
    for (size_t i = 0; i < n; i++) {
        if (o && json_object_set_new(o, items[i].name, items[i].value)) /* takes the value */
            ok = false;
        else if (!o)
            json_decref(items[i].value);
    }
    return ok;
}

/* What every rank of a run must agree on before it opens anything (cli_ranks_agree): every
 * option that shapes the numbers or the course of the run (which steps validate, save or
 * stop), keyed by its name. Left out, as each rank's own business: --out, --name and --log-dir
 * (rank 0 alone writes; a resuming rank reads the state beside its own --out, whose record
 * rank_inputs compares), --threads, --max-memory, the device's index, --json and --quiet. */
static json_t *rank_options(const struct distill_args *a)
{
    /* --data-paths by its weights and the number of prefixes (the files, by content, later) */
    char data[4096] = "";
    for (int i = 0; i < a->n_data_args; i++) {
        double w;
        const char *word = cli_parse_real(a->data_args[i], &w) ? a->data_args[i] : "PREFIX";
        size_t len = strlen(data);
        snprintf(data + len, sizeof data - len, "%s%s", i ? " " : "", word);
    }
    const struct rank_item items[] = {
        {"--data-paths", json_string(data)},
        {"--split", json_string(a->split)},
        {"--seq-length", json_integer(a->seq)},
        {"--seed", json_integer(a->seed)},
        {"--gbs", json_integer(a->gbs)},
        {"--mbs", json_integer(a->mbs)},
        {"--max-steps", json_integer(a->max_steps)},
        {"--lr", json_real(a->lr)},
        {"--min-lr", json_real(a->min_lr)},
        {"--warmup-steps", json_integer(a->warmup)},
        {"--optim-preset", json_integer(a->preset)},
        {"--adam-beta1", json_real(a->adam.beta1)},
        {"--adam-beta2", json_real(a->adam.beta2)},
        {"--adam-eps", json_real(a->adam.eps)},
        {"--weight-decay", json_real(a->adam.weight_decay)},
        {"--clip-grad", json_real(a->adam.clip_norm)},
        {"--kd-loss", json_integer(a->kd_kind)},
        {"--kd-temperature", json_real(a->temperature)},
        {"--kd-top-k", json_integer(a->top_k)},
        {"--lm-loss-scale", json_real(a->lm_loss_scale)},
        {"--kd-loss-scale", json_real(a->kd_loss_scale)},
        {"--feature-pairs", json_string(a->features == LMS_FEATURES_LIST ? a->feature_pairs
                                        : a->features == LMS_FEATURES_NONE ? "none" : "")},
        {"--feature-every", json_integer(a->features == LMS_FEATURES_EVERY ? a->feature_every
                                                                            : 0)},
        {"--feature-hook", json_integer(a->feature_hook)},
        {"--feature-loss", json_integer(a->feature_kind)},
        {"--feature-loss-scale", json_real(a->feature_scale)},
        {"--recompute", json_boolean(a->recompute)},
        {"--log-interval", json_integer(a->log_interval)},
        {"--val-check-interval", json_integer(a->val_interval)},
        {"--limit-val-batches", json_integer(a->val_batches)},
        {"--save-interval", json_integer(a->save_interval)},
        {"--exit-interval", json_integer(a->exit_interval)},
        {"--save-state", json_integer(a->save_state)},
        {"--resume", json_boolean(a->resume)},
        {"--dry-run", json_boolean(a->dry_run)},
        {"--force", json_boolean(a->base.wo.force)},
        {"--to", json_string(a->base.to ? a->base.to : "")},
        {"--dtype", json_integer(a->base.wo.dtype)},
        {"--dtype q8_0", json_boolean(a->base.gguf.q8_0)},
        {"--max-shard-size", json_integer((json_int_t)a->base.wo.max_shard_size)},
        {"--device", json_integer(a->base.dev.kind)},
        {"--precision", json_integer(a->base.prec)},
        {"--devices", json_integer(a->devices)},
        {"--num-nodes", json_integer(a->num_nodes)},
        {"--tp-size", json_integer(a->tp_size)},
        {"--pp-size", json_integer(a->pp_size)},
    };
    json_t *o = json_object();
    if (!put_items(o, items, sizeof items / sizeof items[0])) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* What the ranks must agree on once the inputs are read: the student, the teacher and every
 * data source by content fingerprint and, on --resume, the state each rank read (its step and
 * a hash of its record). */
static json_t *rank_inputs(const struct distill_run *r, const struct lms_train_state *state)
{
    json_t *resumed = json_false();
    if (state) {
        char *s = json_dumps(state->meta, JSON_COMPACT | JSON_SORT_KEYS |
                                              JSON_REAL_PRECISION(17));
        char hex[LMS_HASH64_HEX] = "";
        if (s)
            lms_hash64_hex(lms_hash64(s, strlen(s), 0), hex);
        free(s);
        resumed = json_pack("{s:I,s:s}", "step", (json_int_t)r->run.step, "record", hex);
    }
    const struct rank_item items[] = {
        {"--student", json_string(r->run.student_fp)},
        {"--teacher", json_string(r->run.teacher_fp)},
        {"--data-paths", json_deep_copy(json_object_get(r->run.config, "data"))},
        {"--resume (the training state)", resumed},
    };
    json_t *o = json_object();
    if (!put_items(o, items, sizeof items / sizeof items[0])) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* With several ranks, all must run the same thing: the options (inputs NULL), then the inputs
 * (before anything is written or trained). */
static int agree_ranks(struct distill_run *r, const struct lms_train_state *state, bool inputs)
{
    if (r->run.world < 2)
        return CLI_PARSED;
    json_t *o = inputs ? rank_inputs(r, state) : rank_options(r->a);
    if (!o) {
        struct lms_error err;
        lms_error_set(&err, LMS_ENOMEM, "out of memory");
        return fail(r, &err);
    }
    int rc = cli_ranks_agree(cmd, &r->a->base.co, r->run.o.comm, o);
    json_decref(o);
    return rc;
}

/* The memory the run needs against what there is (the device's total on a GPU, unless
 * --max-memory), printed as a table; opens the backend on a GPU to ask it. */
static int plan_memory(struct distill_run *r)
{
    struct distill_args *a = r->a;
    struct lms_error err;
    lms_error_clear(&err);
    bool on_gpu = a->base.dev.kind != LMS_DEVICE_CPU;
    struct lms_train_plan tp;
    struct lms_distill_memory mem;
    if (lms_distill_plan(&r->run, &tp, &mem, &err))
        return fail(r, &err);
    /* on a GPU the plan is device memory, checked against the device's total (other processes
     * may hold some of it: the allocations then report what they could not get) */
    if (on_gpu && !a->max_memory) {
        struct lms_backend_opts bko = {.n_threads = (int)a->base.threads,
                                       .precision = a->base.prec};
        uint64_t dfree, dtotal;
        if (!lms_backend_open(&a->base.dev, &bko, &r->run.be, &err) &&
            !lms_backend_memory(r->run.be, &dfree, &dtotal, &err))
            mem.available = dtotal;
        else if (!a->dry_run)
            return fail(r, &err);
    }
    uint64_t limit = a->max_memory ? a->max_memory : mem.available;
    r->mem = mem;
    r->mem_limit = limit;
    if ((a->dry_run && r->run.rank == 0) || !a->base.co.quiet)
        distill_print_plan(r, &tp, &mem, limit);
    if (limit && mem.total > limit) {
        char need[32], have[32], act[32];
        cli_format_bytes(mem.total, need, sizeof need);
        cli_format_bytes(limit, have, sizeof have);
        cli_format_bytes(mem.activations, act, sizeof act);
        lms_error_set(&err, LMS_ENOMEM, "the run needs %s (weights, moments and gradients "
                      "%llu B + activations %s + teacher %llu B + the rest) but %s is %s; "
                      "lower --mbs or --seq-length, or add --recompute",
                      need, (unsigned long long)(mem.weights + mem.moments + mem.gradients), act,
                      (unsigned long long)mem.teacher, have,
                      a->max_memory ? "allowed" : "available");
        return fail(r, &err);
    }
    return CLI_PARSED;
}

/* Rows longer than the student's or the teacher's positions (which scores the same rows): the
 * warning every command gives, once the checks have passed and the run is about to start. */
static void warn_positions(const struct distill_run *r)
{
    const struct distill_args *a = r->a;
    if (r->run.rank)
        return;
    char what[64];
    snprintf(what, sizeof what, "--seq-length %lld", (long long)a->seq);
    cli_warn_positions(cmd, &a->base.co, a->student, &r->run.student.arch, a->seq, what);
    if (a->teacher && strcmp(a->student, a->teacher) != 0)
        cli_warn_positions(cmd, &a->base.co, a->teacher, &r->run.teacher.arch, a->seq, what);
}

/* --dry-run's account of the run that would be. */
static void print_dry_run(const struct distill_run *r)
{
    const struct distill_args *a = r->a;
    FILE *f = a->base.co.json ? stderr : stdout;
    if (r->run.rank)
        return;
    if (r->run.world > 1)
        fprintf(f, "%d ranks (%s): %lld micro-batches of each global batch per rank\n",
                r->run.world, lms_comm_backend(r->run.o.comm),
                (long long)(a->gbs / a->mbs / r->run.world));
    fprintf(f, "dry run: %lld steps of %lld rows x %lld tokens (%lld micro-batches of %lld), lr "
            "%g -> %g after %lld warm-up steps; student to '%s' (%s, %s); nothing trained\n",
            (long long)a->max_steps, (long long)a->gbs, (long long)a->seq,
            (long long)(a->gbs / a->mbs), (long long)a->mbs, a->lr, a->min_lr,
            (long long)a->warmup, r->out, r->run.out_fmt->name, lms_dtype_name(r->run.out_dtype));
    if (a->base.co.json)
        distill_summary_json(r, cli_now() - r->t0, true);
}

/* The backend, the student's trainer, the teacher's engine, the loss, the schedule, the batch
 * buffers, the metrics file; on --resume the weights and moments from the state. */
static int open_training(struct distill_run *r, const struct lms_train_state *state)
{
    struct lms_error err;
    lms_error_clear(&err);
    if (lms_distill_open_training(&r->run, state, &err))
        return fail(r, &err);
    return CLI_PARSED;
}

/* The signal that asked the run to stop (SIGINT, or SIGTERM: what Slurm sends before it kills a
 * job); 0 while none has. The run asks through stop_requested. */
static volatile sig_atomic_t interrupted;

static void on_stop_signal(int sig)
{
    interrupted = sig;
    cli_interrupt_note(sig); /* the exit code: 128 + sig */
}

static const char *stop_requested(void *ctx)
{
    (void)ctx;
    if (!interrupted)
        return NULL;
    return interrupted == SIGTERM ? "interrupted by SIGTERM" : "interrupted";
}

/* Trains with SIGINT and SIGTERM turned into a stop the run saves at. */
static enum lms_status train(struct distill_run *r, struct lms_error *err)
{
    struct sigaction sa = {.sa_handler = on_stop_signal}, old_int, old_term;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    enum lms_status st = lms_distill_train(&r->run, err);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    return st;
}

/* The library run's options from the command's (the paths and the data are filled in as the
 * command names and parses them, the device once the rank is known). */
static void run_opts(struct distill_run *r, struct lms_distill_opts *o)
{
    const struct distill_args *a = r->a;
    *o = (struct lms_distill_opts){
        .student = a->student, .teacher = a->teacher, .split = a->split, .seq = a->seq,
        .gbs = a->gbs, .mbs = a->mbs, .max_steps = a->max_steps, .warmup = a->warmup,
        .seed = a->seed, .lr = a->lr, .min_lr = a->min_lr, .adam = a->adam,
        .loss = {.kind = a->kd_kind, .temperature = a->temperature, .top_k = a->top_k,
                 .lm_loss_scale = a->lm_loss_scale, .kd_loss_scale = a->kd_loss_scale,
                 .features = a->features, .feature_pairs = a->feature_pairs,
                 .feature_every = a->feature_every, .feature_hook = a->feature_hook,
                 .feature_kind = a->feature_kind, .feature_scale = a->feature_scale},
        .recompute = a->recompute, .log_interval = a->log_interval,
        .val_interval = a->val_interval, .val_batches = a->val_batches,
        .save_interval = a->save_interval, .exit_interval = a->exit_interval,
        .skip_nonfinite = a->skip_nonfinite, .save_state = a->save_state, .out = r->out_buf,
        .state_dir = r->state_dir, .log_dir = a->log_dir, .metrics_path = r->metrics_path,
        .dump_rows = a->dump_rows, .write = cli_write_opts(&a->base), .resume = a->resume,
        .fingerprint_models = !a->dry_run || a->resume, .threads = (int)a->base.threads,
        .precision = a->base.prec, .device = a->base.dev};
    distill_events(r, &o->ev);
    o->ev.stop_requested = stop_requested;
}

static int run(void *args)
{
    struct distill_args *a = args;
    struct distill_run r = {.a = a, .t0 = cli_now()};
    struct lms_distill_opts o;
    run_opts(&r, &o);
    lms_distill_run_init(&r.run, &o);
    struct lms_train_state state = {0};
    bool have_state = false;
    struct lms_error err;
    lms_error_clear(&err);
    int rc = open_ranks(&r);
    r.run.o.device = a->base.dev; /* the local rank's GPU */
    if (rc == CLI_PARSED)
        rc = name_outputs(&r);
    r.run.o.src = r.src;
    r.run.o.n_src = r.n_src;
    if (rc == CLI_PARSED && a->resume) {
        if (lms_train_state_read(r.state_dir, &state, &err))
            rc = fail(&r, &err);
        have_state = rc == CLI_PARSED;
    }
    if (rc == CLI_PARSED)
        rc = open_models(&r);
    if (rc == CLI_PARSED)
        rc = open_data(&r);
    if (rc == CLI_PARSED)
        rc = check_config(&r, have_state ? &state : NULL);
    if (rc == CLI_PARSED)
        rc = agree_ranks(&r, have_state ? &state : NULL, true);
    if (rc == CLI_PARSED)
        rc = plan_memory(&r);
    if (rc == CLI_PARSED)
        warn_positions(&r);
    if (rc == CLI_PARSED && a->dry_run) {
        print_dry_run(&r);
        rc = CLI_EXIT_OK;
    }
    if (rc == CLI_PARSED)
        rc = open_training(&r, have_state ? &state : NULL);
    if (have_state) /* restored by now: the weights are on the backend */
        lms_train_state_release(&state);
    if (rc == CLI_PARSED) {
        if (train(&r, &err)) {
            rc = fail(&r, &err);
        } else {
            rc = CLI_EXIT_OK;
            if (a->base.co.json)
                distill_summary_json(&r, cli_now() - r.run.t_train, false);
            else if (!a->base.co.quiet)
                distill_summary_text(&r, cli_now() - r.run.t_train);
        }
    }
    if (rc != CLI_EXIT_OK)
        lms_distill_discard_outputs(&r.run);
    lms_distill_run_release(&r.run);
    lms_blend_sources_free(r.src, r.n_src);
    return rc;
}

/* distill and train: the same parse and run; train takes no teacher. */
static int distill_main(const struct cli_spec *sp, int argc, char **argv)
{
    cmd = sp->name;
    struct lms_distill_opts d; /* the library's defaults are the command's */
    lms_distill_opts_default(&d);
    struct distill_args a = {
        .cmd = sp->name, .train_cmd = sp == &train_spec,
        .gbs = d.gbs, .mbs = d.mbs, .max_steps = d.max_steps, .warmup = d.warmup, .seq = d.seq,
        .lr = d.lr, .min_lr = d.min_lr, .log_interval = d.log_interval,
        .val_batches = d.val_batches, .seed = d.seed, .split = d.split, .log_dir = ".",
        .temperature = d.loss.temperature, .lm_loss_scale = d.loss.lm_loss_scale,
        .kd_loss_scale = d.loss.kd_loss_scale, .features = d.loss.features,
        .feature_every = d.loss.feature_every, .feature_hook = d.loss.feature_hook,
        .feature_kind = d.loss.feature_kind, .feature_scale = d.loss.feature_scale,
        .over = {.beta1 = NAN, .beta2 = NAN, .eps = NAN, .weight_decay = NAN, .clip_norm = NAN},
    };
    int rc = take_data_paths(&argc, argv, &a);
    if (rc == CLI_PARSED)
        rc = cli_main(sp, argc, argv, &a);
    lms_free(a.data_args); /* still here when the run stopped before reading them */
    return rc;
}

int cmd_distill(int argc, char **argv)
{
    return distill_main(&spec, argc, argv);
}

int cmd_train(int argc, char **argv)
{
    return distill_main(&train_spec, argc, argv);
}
