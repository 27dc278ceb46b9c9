/* lmsurgeon distill (and train, its run without a teacher), inside the command: its parsed
 * options and its side of a run, shared by the command (cli/cmd_distill.c: options, opening,
 * the memory plan) and its reports (cli/distill_report.c: what the library's run reports,
 * printed). */
#ifndef LMS_CLI_DISTILL_RUN_H
#define LMS_CLI_DISTILL_RUN_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "cli/cli.h"
#include "lms/dataset.h"
#include "lms/distill.h"
#include "lms/distill_run.h"
#include "lms/json.h"
#include "lms/train.h"

struct distill_args {
    struct cli_args base; /* --json, --quiet, --to, --dtype, --max-shard-size, --force, --device,
                           * --threads, --precision */
    const char *cmd;      /* "distill" or "train", as messages name the command */
    bool train_cmd;       /* lmsurgeon train: no --teacher is taken */
    const char *teacher_opt; /* the first option given that only a teacher gives a meaning
                              * (--kd-*, --feature-*, --lm-loss-scale), by name; NULL: none */
    /* teacher NULL: training on the data alone (train, or distill without --teacher) */
    const char *student, *teacher, *out, *name, *log_dir, *split, *dump_rows;
    char **data_args; /* --data-paths' words (owned) */
    int n_data_args;
    int64_t gbs, mbs, max_steps, warmup, seq, log_interval, val_interval, val_batches,
        save_interval, exit_interval, seed, top_k;
    uint64_t max_memory;
    double lr, min_lr, temperature, lm_loss_scale, kd_loss_scale;
    enum lms_kd_kind kd_kind;
    /* --feature-pairs / --feature-every (features), --feature-hook, --feature-loss,
     * --feature-loss-scale */
    enum lms_feature_mode features;
    const char *feature_pairs;
    int64_t feature_every;
    enum lms_feature_hook feature_hook;
    enum lms_hidden_loss_kind feature_kind;
    double feature_scale;
    enum lms_optim_preset preset;
    enum lms_distill_save_state save_state;
    struct lms_adamw_opts adam; /* the preset with the overrides applied */
    struct lms_adamw_opts over; /* --adam-beta1/-beta2/-eps, --weight-decay, --clip-grad as
                                 * given; NAN: the preset's */
    bool resume, dry_run, recompute, legacy_ckpt;
    int64_t devices, num_nodes, tp_size, pp_size; /* 0: not given */
    int64_t skip_nonfinite; /* --skip-nonfinite: steps that may be skipped for a loss or a
                             * gradient norm that is not finite (default 0: stop at the first) */
};

/* The command's side of a run: the library's run (include/lms/distill_run.h) and what the
 * command keeps beside it to name its outputs and print. */
struct distill_run {
    struct distill_args *a;
    struct lms_distill_run run;
    const char *out, *name;
    char out_buf[4096], state_dir[4096], metrics_path[4096];
    struct lms_blend_source *src; /* --data-paths, parsed */
    int n_src;
    struct lms_distill_memory mem; /* the memory plan, and what it was checked against */
    uint64_t mem_limit;
    struct cli_progress bar;
    double t0; /* when the command started */
};

/* The callbacks that print what the run reports, as the command always has (ev->ctx = r). */
void distill_events(struct distill_run *r, struct lms_distill_events *ev);
/* The memory plan as a table (stdout; stderr with --json). */
void distill_print_plan(const struct distill_run *r, const struct lms_train_plan *tp,
                        const struct lms_distill_memory *m, uint64_t limit);
/* The --json summary line (dry: nothing was trained). */
void distill_summary_json(const struct distill_run *r, double secs, bool dry);
/* The human summary after training. */
void distill_summary_text(const struct distill_run *r, double secs);

#endif
