/* lmsurgeon: a distillation run as a library call. A run trains a student to match a teacher on
 * blended token data (include/lms/distill.h) through the training engine
 * (include/lms/train.h): it opens the models and the data, fingerprints what shapes its numbers,
 * trains step by step with validation, saves the student and a resumable training state, and
 * resumes from one. What it has to say (a logged step, a validation, a warning) goes to the
 * caller's callbacks; it prints nothing itself. The metrics file and --dump-rows are its own
 * outputs. `lmsurgeon distill` is a thin shell over this: options in, callbacks printing out.
 *
 * Order of calls: lms_distill_run_init, lms_distill_open_models, lms_distill_open_data,
 * lms_distill_configure (with a state read by lms_train_state_read to resume), the caller's
 * memory plan if it wants one (it may set r->to and r->be), lms_distill_open_training,
 * lms_distill_train; on failure lms_distill_discard_outputs; always lms_distill_run_release.
 * With several ranks (o.comm) every rank makes the same calls: each collective inside is
 * reached by every rank whatever failed on one of them. */
#ifndef LMS_DISTILL_RUN_H
#define LMS_DISTILL_RUN_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "lms/backend.h"
#include "lms/dataset.h"
#include "lms/distill.h"
#include "lms/format.h"
#include "lms/hash.h"
#include "lms/json.h"
#include "lms/train.h"

/* ---- the KD losses -------------------------------------------------------------------- */

/* What the loss of a run is: the KD term by name (a row of the table below), its options, and
 * the weight of a cross-entropy term on the data's next tokens. */
/* Which student layers get an intermediate-state loss against the teacher (feature KD). */
enum lms_feature_mode {
    LMS_FEATURES_AUTO = 0, /* the default: logits only, for a width-pruned student (a width
                            * of the student differs from the teacher's) and a depth-pruned one
                            * alike; the run's summary names which kind it saw */
    LMS_FEATURES_NONE,     /* logits only */
    LMS_FEATURES_LIST,     /* feature_pairs, "S:T,S:T" (1-based student:teacher layers) */
    LMS_FEATURES_EVERY,    /* every feature_every-th student layer, with its source layer */
};

/* Where in a layer the pairs compare the two models (the trainer compares normalisation
 * outputs: the residual stream as the layer's sublayers read it). */
enum lms_feature_hook {
    LMS_FEATURE_HOOK_MLP_NORM = 0, /* post_attention_layernorm output of layer i (default) */
    LMS_FEATURE_HOOK_ATTN_NORM,    /* input_layernorm output of layer i */
};

struct lms_distill_loss {
    enum lms_kd_kind kind;
    double temperature;   /* of both distributions */
    int64_t top_k;        /* K, for the losses that read it (0: not given) */
    double lm_loss_scale; /* weight of the cross-entropy (0: logits only) */
    double kd_loss_scale; /* weight of the KD term once rescaled to the cross-entropy's size */
    /* intermediate-state (feature) loss: which pairs, where, and how they are compared */
    enum lms_feature_mode features;
    const char *feature_pairs;  /* LMS_FEATURES_LIST: "2:3,4:6" (borrowed) */
    int64_t feature_every;      /* LMS_FEATURES_EVERY: K >= 1 */
    enum lms_feature_hook feature_hook;
    enum lms_hidden_loss_kind feature_kind; /* cosine (default) or MSE */
    double feature_scale; /* weight of the feature loss inside the scaled rule (0 means 1; the
                           * rule rescales it to L_logits, so only 1 is accepted) */
};

/* One KD loss the runs offer: adding a loss is adding a row (and its kernel in the engine). */
struct lms_kd_loss_def {
    const char *name;          /* as --kd-loss takes it */
    enum lms_kd_kind kind;     /* the engine's gradient hook for it (lms_loss_opts.kd) */
    bool needs_teacher;        /* whether a step runs the teacher's forward for it */
    /* Checks the options of l for this loss; NULL when fine, else why not (a usage message). */
    const char *(*check)(const struct lms_distill_loss *l);
};

/* Row i of the table (in the order --help lists them); NULL past its end. */
const struct lms_kd_loss_def *lms_kd_loss_at(int i);
/* The row named name, or the one of kind; NULL when none. */
const struct lms_kd_loss_def *lms_kd_loss_find(const char *name);
const struct lms_kd_loss_def *lms_kd_loss_of(enum lms_kd_kind kind);
/* The names joined by sep ("forward-kl, reverse-kl, top-k") into dst. */
void lms_kd_loss_names(const char *sep, char *dst, size_t cap);
/* The engine's loss options for l (the scaled combination distill uses). */
void lms_distill_loss_opts(const struct lms_distill_loss *l, struct lms_loss_opts *out);
/* The engine's loss options of a run without a teacher: the cross-entropy on the targets
 * alone, weight 1. */
void lms_distill_ce_loss_opts(struct lms_loss_opts *out);

/* The names of the feature options, as the command takes them (NULL past the end). */
const char *lms_feature_hook_name(enum lms_feature_hook h);
const char *lms_feature_kind_name(enum lms_hidden_loss_kind k);

/* The feature pairs of run r (its student and teacher open) into r->pairs / r->n_pairs, and
 * why they are what they are (r->features_why). LMS_EINVAL with a one-line message naming the
 * flag (--feature-pairs, --feature-every) for a layer outside either model or a duplicate. */
struct lms_distill_run;
enum lms_status lms_distill_features_resolve(struct lms_distill_run *r, struct lms_error *err);

/* ---- options ----------------------------------------------------------------------------- */

/* When a save writes the training state besides the student. */
enum lms_distill_save_state {
    LMS_DISTILL_SAVE_STATE_INTERVAL, /* at every save (default) */
    LMS_DISTILL_SAVE_STATE_END,      /* only the last save of the process (end, exit, stop) */
    LMS_DISTILL_SAVE_STATE_NEVER,    /* never: the student alone, no resume */
};

struct lms_distill_run;

/* What a logged step reports (the same numbers go to the metrics file). */
struct lms_distill_log {
    double lr;                /* the rate the step was taken with */
    double tokens_per_second; /* since the previous log */
    double eta_s;             /* to --max-steps at the pace so far */
    double elapsed_s;         /* since this process started training */
};

/* The run's callbacks (any may be NULL); all but stop_requested run on rank 0 only. The run is
 * passed read-only. */
struct lms_distill_events {
    void *ctx;
    /* before the first step of this process */
    void (*started)(void *ctx, const struct lms_distill_run *r);
    /* after every step, skipped ones included */
    void (*stepped)(void *ctx, const struct lms_distill_run *r);
    /* a logged step (every log_interval steps and the last) */
    void (*logged)(void *ctx, const struct lms_distill_run *r, const struct lms_distill_log *l);
    /* a validation: r->last_val_loss, r->last_val_lm_loss over rows rows */
    void (*validated)(void *ctx, const struct lms_distill_run *r, int64_t rows);
    /* something the user should know that does not stop the run (a skipped step) */
    void (*warning)(void *ctx, const struct lms_distill_run *r, const char *msg);
    /* the loop ended (st: how), before the last save */
    void (*finished)(void *ctx, const struct lms_distill_run *r, enum lms_status st);
    /* a save finished: the student, and the state when with_state */
    void (*saved)(void *ctx, const struct lms_distill_run *r, bool with_state);
    /* NULL to go on; else why the run should stop ("interrupted"), which the message that
     * stops it begins with. Asked before every micro-batch, on every rank (signal-safe flags
     * are the caller's business). */
    const char *(*stop_requested)(void *ctx);
};

struct lms_distill_opts {
    /* checkpoints (as given). teacher NULL: training without a teacher (lmsurgeon train, e.g.
     * correcting a teacher on the distillation data before pruning it): the loss is the
     * cross-entropy on the data's next tokens alone, the KD and feature options of loss are
     * not read (feature pairs other than the default are LMS_EINVAL), and the state records no
     * teacher */
    const char *student, *teacher;
    const struct lms_blend_source *src; /* the data (borrowed) */
    int n_src;
    const char *split;                 /* megatron-core --split */
    int64_t seq, gbs, mbs, max_steps, warmup, seed;
    double lr, min_lr;
    struct lms_adamw_opts adam;        /* the settings (lr and step are the run's) */
    struct lms_distill_loss loss;
    bool recompute;
    int64_t log_interval;              /* >= 1 */
    int64_t val_interval, val_batches; /* 0: validate only at the end; 0 batches: never */
    int64_t save_interval, exit_interval; /* 0: none */
    int64_t skip_nonfinite;            /* steps that may be skipped as not finite */
    enum lms_distill_save_state save_state;
    /* outputs: the student, its state directory, the directory of the metrics file (created
     * when missing; NULL: none) and the file itself (NULL: no metrics file), --dump-rows
     * (NULL: none) */
    const char *out, *state_dir, *log_dir, *metrics_path, *dump_rows;
    const struct lms_format *out_format; /* NULL: the student's own */
    struct lms_write_opts write;       /* dtype (COUNT: the student's), shard size, force */
    bool resume;                       /* continue the state in state_dir */
    bool fingerprint_models;           /* false only for a plan that resumes nothing */
    struct lms_device device;          /* where both models run */
    int threads;                       /* CPU threads (0: all cores) */
    enum lms_precision precision;
    struct lms_comm *comm;             /* NULL: one process; the run closes it on release */
    struct lms_distill_events ev;
};

/* A file a run created where nothing was (the metrics file, --dump-rows), and which file that
 * is: a failed run removes it, and only it, never one that was there before. */
struct lms_made_file {
    bool created;
    uint64_t dev, ino;
};

/* One run's state; the caller reads it (for its reports), and sets only r->to and r->be
 * between lms_distill_configure and lms_distill_open_training. */
struct lms_distill_run {
    struct lms_distill_opts o;
    const struct lms_format *out_fmt;
    enum lms_dtype out_dtype;
    struct lms_model student, teacher;
    bool have_student, have_teacher;
    /* content fingerprints (lms_model_fingerprint, lms_data_fingerprint); "" for models not
     * fingerprinted */
    char student_fp[LMS_HASH64_HEX], teacher_fp[LMS_HASH64_HEX];
    char (*data_fp)[LMS_HASH64_HEX]; /* n_src entries */
    struct lms_backend *be;          /* both models run on it (the run frees it) */
    struct lms_engine *te;           /* the teacher's */
    struct lms_blend *train, *val;
    struct lms_trainer *tr;
    struct lms_train_opts to;        /* the trainer's options (lms_distill_configure) */
    struct lms_loss_opts loss;
    struct lms_lr_schedule sched;
    json_t *config;  /* what must not change on resume */
    json_t *history; /* per-step metrics so far */
    int32_t *row, *ids, *tgt;
    int64_t step;       /* finished optimiser steps */
    int64_t start_step; /* where this process started */
    int64_t saved_step; /* last step whose state is on disk */
    double last_lr; /* the rate of the last update */
    double last_loss, last_lm_loss, last_grad_norm, last_val_loss, last_val_lm_loss;
    FILE *metrics, *dump;
    struct lms_made_file metrics_made, dump_made;
    bool student_written, state_written; /* by this process: later saves replace them */
    int rank, world;
    bool agreed;        /* every rank knows of the failure being reported */
    double t_train;     /* when the first step of this process started (monotonic s) */
    int64_t skipped;    /* steps skipped as not finite, the whole run */
    int64_t applied;    /* optimiser updates applied by this process */
    bool step_skipped;  /* the last step was skipped */
    bool weights_nonfinite; /* a save found weights or moments that are not finite */
    const char *stop_reason; /* what stop_requested last said (NULL: nothing) */
    /* the intermediate-state pairs (lms_distill_features_resolve; 0-based layers) */
    struct lms_hidden_pair *pairs;
    size_t n_pairs;
    bool features_resolved;
    bool width_pruned;        /* a width of the student differs from the teacher's */
    char features_why[224];   /* what was chosen and why, for the start summary */
};

/* Zeroes r and takes the options (copied; the strings and src stay the caller's). A caller may
 * complete r->o until lms_distill_open_models (the command sets comm as its ranks open, src once
 * it has parsed the data and device once it knows the rank's GPU). */
void lms_distill_run_init(struct lms_distill_run *r, const struct lms_distill_opts *o);
/* This process' rank and the number of ranks (from o.comm), the output format, the student and
 * the teacher (same vocabulary; none without o.teacher), their fingerprints, the output
 * dtype. */
enum lms_status lms_distill_open_models(struct lms_distill_run *r, struct lms_error *err);
/* The training and validation rows of the blend and the data fingerprints. */
enum lms_status lms_distill_open_data(struct lms_distill_run *r, struct lms_error *err);
/* The configuration fingerprint and the trainer's options; with state (o.resume), checks the
 * state's configuration (LMS_EINVAL naming the first difference) and takes its step and
 * history. */
enum lms_status lms_distill_configure(struct lms_distill_run *r,
                                      const struct lms_train_state *state, struct lms_error *err);
/* The memory plan of the configured run (lms_distill_memory_plan on the trainer's plan, the
 * teacher, the output dtype and the data tables); mem->available is the host's on the CPU and
 * 0 on a device (the caller asks the device, lms_backend_memory). */
enum lms_status lms_distill_plan(const struct lms_distill_run *r, struct lms_train_plan *tp,
                                 struct lms_distill_memory *mem, struct lms_error *err);
/* The backend (unless r->be), trainer, teacher engine, loss, schedule and buffers; with state
 * the weights and moments from it and the metrics file cut back to its step; the metrics file
 * (rank 0) and --dump-rows opened. */
enum lms_status lms_distill_open_training(struct lms_distill_run *r,
                                          const struct lms_train_state *state,
                                          struct lms_error *err);
/* Trains from r->step to max_steps (or the next exit_interval), validating, logging and saving
 * on the way, and saves at the end. LMS_EINTERRUPTED when stop_requested said so, with the
 * state saved; LMS_ENONFINITE after a step that was not finite beyond skip_nonfinite, with the
 * state of the last finished step saved (unless its weights are not finite either). */
enum lms_status lms_distill_train(struct lms_distill_run *r, struct lms_error *err);
/* After a failure: removes the metrics file if this run created it and it is empty, and the
 * --dump-rows file this run created. */
void lms_distill_discard_outputs(struct lms_distill_run *r);
/* Frees what the run opened (files still open are closed unchecked). */
void lms_distill_run_release(struct lms_distill_run *r);

/* The command's defaults (lmsurgeon distill --help): 969,30,1 split, 4096-token rows, gbs 768,
 * mbs 8, 40 steps, lr 1e-4 to 1e-5 after 1 warm-up step, forward KL at temperature 1 without
 * cross-entropy, no feature pairs (LMS_FEATURES_AUTO: logits only; pairs asked for compare
 * mlp-norm outputs by cosine), the parity optimiser preset, a log line per step, one
 * validation batch at the end, the state saved at every save, the CPU. Paths, data and
 * callbacks are left NULL. */
void lms_distill_opts_default(struct lms_distill_opts *o);
/* The whole run: init, (o->resume: the state in o->state_dir), open the models and data,
 * configure, open training, train; on failure the outputs this run created are removed; then
 * release. What lms_distill_train returns. */
enum lms_status lms_distill_run_all(const struct lms_distill_opts *o, struct lms_error *err);

/* Everything that shapes the numbers of a run; --resume refuses a state made with another. */
json_t *lms_distill_config(const struct lms_distill_run *r);
/* The first difference between two configurations, "key was X, now Y" (nested keys joined by
 * dots, array items as key[i]; "absent" for a missing key), into dst; false when both hold the
 * same keys with the same values. */
bool lms_distill_config_diff(const json_t *was, const json_t *now, const char *prefix,
                             char *dst, size_t cap);
/* Keeps the metrics lines of steps up to step, through a temporary file renamed into place. A
 * missing file is fine; a failed read or write is LMS_EIO. */
enum lms_status lms_distill_metrics_truncate(const char *path, int64_t step,
                                             struct lms_error *err);

/* One optimiser update after the micro-batches' gradients are in: AdamW at the schedule's
 * rate for update k (counted from 0; computed once and returned in *lr), AdamW's step k + 1.
 * The global gradient norm goes to *grad_norm; LMS_ENONFINITE when it is not finite (nothing
 * applied). The run's steps use it, and so does a caller that makes its own batches. */
enum lms_status lms_distill_update(struct lms_trainer *tr, const struct lms_lr_schedule *sched,
                                   const struct lms_adamw_opts *adam, int64_t k, double *lr,
                                   double *grad_norm, struct lms_error *err);

#endif
