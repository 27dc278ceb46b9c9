/* lmsurgeon distill, inside the command: its parsed options and one run's state, shared by the
 * command (cli/cmd_distill.c: options, opening, the memory plan) and its steps
 * (cli/distill_steps.c: the training loop, validation, saving and resuming, the reports). */
#ifndef LMS_CLI_DISTILL_RUN_H
#define LMS_CLI_DISTILL_RUN_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "cli/cli.h"
#include "lms/dataset.h"
#include "lms/distill.h"
#include "lms/json.h"
#include "lms/train.h"

/* --save-state: what a save writes besides the student. */
enum distill_save_state {
    DISTILL_SAVE_STATE_INTERVAL, /* the training state at every save (default) */
    DISTILL_SAVE_STATE_END,      /* the training state only when the process stops */
    DISTILL_SAVE_STATE_NEVER,    /* never: the student alone, no resume */
};

struct distill_args {
    struct cli_args base; /* --json, --quiet, --to, --dtype, --max-shard-size, --force, --device,
                           * --threads, --precision */
    const char *student, *teacher, *out, *name, *log_dir, *split, *dump_rows;
    char **data_args; /* --data-paths' words (owned) */
    int n_data_args;
    int64_t gbs, mbs, max_steps, warmup, seq, log_interval, val_interval, val_batches,
        save_interval, exit_interval, seed, top_k;
    uint64_t max_memory;
    double lr, min_lr, temperature, lm_loss_scale, kd_loss_scale;
    enum lms_kd_kind kd_kind;
    enum lms_optim_preset preset;
    enum distill_save_state save_state;
    struct lms_adamw_opts adam; /* the preset with the overrides applied */
    struct lms_adamw_opts over; /* --adam-beta1/-beta2/-eps, --weight-decay, --clip-grad as
                                 * given; NAN: the preset's */
    bool resume, dry_run, recompute, legacy_ckpt;
    int64_t devices, num_nodes, tp_size, pp_size; /* 0: not given */
    int64_t skip_nonfinite; /* --skip-nonfinite: steps that may be skipped for a loss or a
                             * gradient norm that is not finite (default 0: stop at the first) */
};

/* A file a run created where nothing was (the metrics file, --dump-rows), and which file that
 * is: a failed run removes it, and only it, never one that was there before. */
struct made_file {
    bool created;
    uint64_t dev, ino;
};

struct distill_run {
    struct distill_args *a;
    const char *out, *name;
    char out_buf[4096], state_dir[4096], metrics_path[4096];
    const struct lms_format *out_fmt;
    enum lms_dtype out_dtype;
    struct lms_blend_source *src;
    int n_src;
    struct lms_model student, teacher;
    bool have_student, have_teacher;
    /* content fingerprints of the inputs (lms_model_fingerprint, lms_data_fingerprint): the
     * student as given (the run's initial weights), the teacher, each data source; "" for the
     * models of a --dry-run that resumes nothing (they are not read through) */
    char student_fp[LMS_HASH64_HEX], teacher_fp[LMS_HASH64_HEX];
    char (*data_fp)[LMS_HASH64_HEX]; /* n_src entries */
    struct lms_backend *be; /* both models run on it */
    struct lms_engine *te;  /* the teacher's */
    struct lms_blend *train, *val;
    struct lms_trainer *tr;
    struct lms_train_opts to;
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
    bool student_written, state_written; /* by this process: later saves replace them */
    struct lms_distill_memory mem; /* the memory plan, and what it was checked against */
    uint64_t mem_limit;
    FILE *dump; /* --dump-rows */
    struct made_file metrics_made, dump_made; /* whether this run created them, and which */
    struct cli_progress bar;
    struct lms_comm *comm; /* NULL: one process */
    int rank, world;
    bool agreed; /* every rank knows of the failure being reported (no abort needed) */
    double t0;      /* when the command started */
    double t_train; /* when the first step of this process started */
    int64_t skipped;    /* steps skipped as not finite, the whole run (the state keeps it) */
    int64_t applied;    /* optimiser updates applied by this process */
    bool step_skipped;  /* the last step was skipped */
    bool weights_nonfinite; /* a save found weights or moments that are not finite */
};

/* Everything that shapes the numbers of a run; --resume refuses a state made with another. */
json_t *distill_config(const struct distill_run *r);
/* The first difference between two configurations, "key was X, now Y" (nested keys joined by
 * dots, array items as key[i]; "absent" for a missing key), into dst; false when both hold the
 * same keys with the same values. */
bool distill_config_diff(const json_t *was, const json_t *now, const char *prefix, char *dst,
                         size_t cap);
/* Loads master weights and moments from the state (its configuration checked already). */
enum lms_status distill_restore(struct distill_run *r, const struct lms_train_state *s,
                                struct lms_error *err);
/* Keeps the metrics lines of steps up to step (a run killed after its last save logged steps
 * that the resumed run computes again), through a temporary file renamed into place. A missing
 * file is fine; a failed read or write is LMS_EIO. */
enum lms_status distill_metrics_truncate(const char *path, int64_t step, struct lms_error *err);
/* Trains from r->step to --max-steps (or the next --exit-interval), validating, logging and
 * saving on the way; saves at the end. LMS_EINTERRUPTED after SIGINT or SIGTERM, with the state
 * saved; LMS_ENONFINITE after a step that was not finite beyond --skip-nonfinite, with the state
 * of the last finished step saved (unless its weights are not finite either). */
enum lms_status distill_train(struct distill_run *r, struct lms_error *err);
/* The memory plan as a table (stdout; stderr with --json). */
void distill_print_plan(const struct distill_run *r, const struct lms_train_plan *tp,
                        const struct lms_distill_memory *m, uint64_t limit);
/* The --json summary line (dry: nothing was trained). */
void distill_summary_json(const struct distill_run *r, double secs, bool dry);
/* The human summary after training. */
void distill_summary_text(const struct distill_run *r, double secs);
/* Frees what the run opened (files still open are closed unchecked: the run failed). */
void distill_run_release(struct distill_run *r);

#endif
