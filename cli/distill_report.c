/* lmsurgeon distill's reports (and train's, its run without a teacher): the callbacks that
 * print what the library's run says (a step's log line, a validation, a skipped step, the
 * progress bar), the memory plan and the summaries, as the command has always printed them. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cli/distill_run.h"
#include "lms/comm.h"
#include "lms/format.h"

/* The progress bar's line, cleared so that a message can take it. */
static void bar_clear(struct distill_run *r)
{
    if (r->bar.enabled) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
    }
}

static bool speaks(const struct distill_run *r)
{
    return !r->a->base.co.quiet && !r->a->base.co.json;
}

/* What the run trains: the student against its teacher, or the model on the data alone (and
 * for distill without --teacher, that this is what it does). */
static void print_start(const struct distill_run *r, const struct lms_distill_run *run)
{
    const struct distill_args *a = r->a;
    if (a->teacher)
        printf("distilling '%s' from '%s'", a->student, a->teacher);
    else if (a->train_cmd)
        printf("training '%s' without a teacher", a->student);
    else
        printf("training '%s' without a teacher (no --teacher given: as lmsurgeon train)",
               a->student);
    printf(": %lld steps of %lld x %lld tokens%s\n", (long long)a->max_steps, (long long)a->gbs,
           (long long)a->seq, run->start_step ? " (resumed)" : "");
    printf("loss: %s\n", run->features_why);
}

static void on_started(void *ctx, const struct lms_distill_run *run)
{
    struct distill_run *r = ctx;
    const struct distill_args *a = r->a;
    if (speaks(r))
        print_start(r, run);
    cli_progress_begin(&r->bar, a->teacher ? "distilling" : "training",
                       (uint64_t)(a->max_steps - run->start_step) * (uint64_t)(a->gbs * a->seq),
                       false, a->base.co.quiet || a->base.co.json);
}

static void on_stepped(void *ctx, const struct lms_distill_run *run)
{
    struct distill_run *r = ctx;
    cli_progress_update(&r->bar, (uint64_t)(run->step - run->start_step) *
                                     (uint64_t)(r->a->gbs * r->a->seq));
}

static void on_logged(void *ctx, const struct lms_distill_run *run,
                      const struct lms_distill_log *l)
{
    struct distill_run *r = ctx;
    bar_clear(r);
    if (speaks(r))
        printf("step %lld/%lld  lr %.3e  loss %.5f  lm loss %.5f  grad norm %.4f  "
               "%.0f tokens/s  ETA %02d:%02d\n",
               (long long)run->step, (long long)r->a->max_steps, l->lr, run->last_loss,
               run->last_lm_loss, run->last_grad_norm, l->tokens_per_second, (int)l->eta_s / 60,
               (int)l->eta_s % 60);
    fflush(stdout);
}

static void on_validated(void *ctx, const struct lms_distill_run *run, int64_t rows)
{
    struct distill_run *r = ctx;
    bar_clear(r);
    if (speaks(r))
        printf("validation at step %lld: loss %.5f, lm loss %.5f (%lld rows)\n",
               (long long)run->step, run->last_val_loss, run->last_val_lm_loss, (long long)rows);
}

static void on_warning(void *ctx, const struct lms_distill_run *run, const char *msg)
{
    struct distill_run *r = ctx;
    (void)run;
    if (r->a->base.co.quiet)
        return;
    bar_clear(r);
    fprintf(stderr, "lmsurgeon %s: warning: %s\n", r->a->cmd, msg);
}

static void on_finished(void *ctx, const struct lms_distill_run *run, enum lms_status st)
{
    struct distill_run *r = ctx;
    (void)run;
    if (!st)
        cli_progress_end(&r->bar);
    else
        bar_clear(r);
}

void distill_events(struct distill_run *r, struct lms_distill_events *ev)
{
    *ev = (struct lms_distill_events){.ctx = r, .started = on_started, .stepped = on_stepped,
                                      .logged = on_logged, .validated = on_validated,
                                      .warning = on_warning, .finished = on_finished};
}

void distill_print_plan(const struct distill_run *r, const struct lms_train_plan *tp,
                       const struct lms_distill_memory *m, uint64_t limit)
{
    char b[32];
    FILE *f = r->a->base.co.json ? stderr : stdout;
    int64_t P = tp->n_params;
    bool dev = m->runtime > 0;
    /* without a teacher the model trained is no student of anything */
    const char *who = r->a->teacher ? "student" : "model";
    char label[32];
    fprintf(f, "%s memory plan (%s, micro-batch %lld x %lld tokens, %lld %s parameters%s):\n",
            dev ? "device" : "host", r->a->base.device ? r->a->base.device : "cpu",
            (long long)r->a->mbs, (long long)r->a->seq,
            (long long)P, who, r->run.world > 1 ? ", per rank" : "");
#define LINE(label, v, ...)                                                                       \
    do {                                                                                          \
        cli_format_bytes(v, b, sizeof b);                                                         \
        fprintf(f, "  %-26s %12s  ", label, b);                                                   \
        fprintf(f, __VA_ARGS__);                                                                  \
        fputc('\n', f);                                                                           \
    } while (0)
    snprintf(label, sizeof label, "%s weights%s", who, tp->working ? "" : " (fp32)");
    if (tp->working)
        LINE(label, m->weights, "%lld x (4 + 2) B: the fp32 master copy the steps "
             "update and the bf16 copy the GEMMs read", (long long)P);
    else
        LINE(label, m->weights, "%lld x 4 B, the master copy the steps update", (long long)P);
    if (r->run.world > 1)
        LINE("AdamW moments", m->moments, "2 x %lld x 4 B / %d ranks (ZeRO-1)", (long long)P,
             r->run.world);
    else
        LINE("AdamW moments", m->moments, "2 x %lld x 4 B", (long long)P);
    LINE("gradients", m->gradients, "%lld x 4 B", (long long)P);
    LINE("activations", m->activations, "saved for backward%s, logits chunks of %lld rows",
         r->a->recompute ? " (recomputed per layer)" : "", (long long)tp->logits_rows);
    if (r->a->teacher)
        LINE("teacher", m->teacher, "%lld parameters + forward workspace",
             (long long)lms_model_n_params(&r->run.teacher));
    if (dev) {
        LINE("runtime and GEMM scratch", m->runtime, "CUDA context, cuBLASLt workspace, bf16 "
             "operands of the largest GEMM");
    } else {
        LINE("saving", m->save, "%lld x %zu B (%s)", (long long)P, lms_dtype_size(r->run.out_dtype),
             lms_dtype_name(r->run.out_dtype));
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
                lms_dtype_name(r->run.out_dtype));
    }
#undef LINE
}

void distill_summary_text(const struct distill_run *r, double secs)
{
    const struct distill_args *a = r->a;
    if (r->run.step < a->max_steps)
        printf("stopped after step %lld of %lld (--exit-interval; continue with --resume): ",
               (long long)r->run.step, (long long)a->max_steps);
    printf("%s %lld steps (%lld tokens) in %.1f s", a->teacher ? "distilled" : "trained",
           (long long)r->run.step,
           (long long)(r->run.step * a->gbs * a->seq), secs);
    if (r->run.applied)
        printf(": loss %.5f", r->run.last_loss);
    if (r->run.skipped)
        printf(" (%lld steps skipped: not finite)", (long long)r->run.skipped);
    if (isfinite(r->run.last_val_loss))
        printf(", validation loss %.5f", r->run.last_val_loss);
    printf("; %s written to '%s' (%s, %s), ", a->teacher ? "student" : "model", r->out,
           r->run.out_fmt->name,
           lms_dtype_name(r->run.out_dtype));
    if (r->a->save_state == LMS_DISTILL_SAVE_STATE_NEVER)
        printf("no training state (--save-state never)");
    else
        printf("state in '%s'", r->state_dir);
    printf(", metrics in '%s'\n", r->metrics_path);
}

/* The feature distillation the run chose: by default (logits only) or as asked. */
static json_t *features_json(const struct lms_distill_run *run)
{
    const struct lms_distill_loss *l = &run->o.loss;
    json_t *pairs = json_array();
    for (size_t k = 0; k < run->n_pairs; k++)
        json_array_append_new(pairs, json_pack("[I,I]",
                                               (json_int_t)(run->pairs[k].student_layer + 1),
                                               (json_int_t)(run->pairs[k].teacher_layer + 1)));
    /* "student": how it was pruned from its teacher; null without one */
    const char *student = !run->have_teacher ? NULL
                          : run->width_pruned ? "width-pruned" : "depth-pruned";
    return json_pack("{s:b,s:s?,s:b,s:o,s:s,s:s,s:s}", "default",
                     l->features == LMS_FEATURES_AUTO, "student", student, "enabled",
                     run->n_pairs > 0, "pairs", pairs,
                     "hook", lms_feature_hook_name(l->feature_hook), "loss",
                     lms_feature_kind_name(l->feature_kind), "summary", run->features_why);
}

void distill_summary_json(const struct distill_run *r, double secs, bool dry)
{
    /* "teacher": null for a run without one */
    json_t *o = json_pack("{s:b,s:s,s:s?,s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:f,s:s,s:s}", "ok", 1,
                          "student", r->a->student, "teacher", r->a->teacher, "out", r->out,
                          "format", r->run.out_fmt->name, "dtype", lms_dtype_name(r->run.out_dtype),
                          "steps", (json_int_t)r->run.step, "start_step",
                          (json_int_t)r->run.start_step,
                          "max_steps", (json_int_t)r->a->max_steps, "tokens",
                          (json_int_t)(r->run.step * r->a->gbs * r->a->seq), "seconds", secs,
                          "state", r->state_dir, "metrics", r->metrics_path);
    if (dry) {
        const struct lms_distill_memory *m = &r->mem;
        json_object_set_new(o, "dry_run", json_true());
        json_object_set_new(o, "memory", json_pack(
            "{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "weights", (json_int_t)m->weights,
            "moments", (json_int_t)m->moments, "gradients", (json_int_t)m->gradients,
            "activations", (json_int_t)m->activations, "teacher", (json_int_t)m->teacher,
            "save", (json_int_t)m->save, "data", (json_int_t)m->data, "runtime",
            (json_int_t)m->runtime, "total", (json_int_t)m->total, "host", (json_int_t)m->host,
            "limit", (json_int_t)r->mem_limit));
    }
    json_object_set_new(o, "features", features_json(&r->run));
    if (r->a->save_state == LMS_DISTILL_SAVE_STATE_NEVER) /* none was written */
        json_object_set_new(o, "state", json_null());
    json_object_set_new(o, "ranks", json_integer(r->run.world));
    json_object_set_new(o, "comm", json_string(lms_comm_backend(r->run.o.comm)));
    if (r->run.skipped)
        json_object_set_new(o, "skipped_steps", json_integer(r->run.skipped));
    if (r->run.applied) {
        int64_t tokens = (r->run.step - r->run.start_step) * r->a->gbs * r->a->seq;
        double tps = secs > 0 ? (double)tokens / secs : 0;
        json_object_set_new(o, "loss", json_real(r->run.last_loss));
        json_object_set_new(o, "lm_loss", json_real(r->run.last_lm_loss));
        json_object_set_new(o, "grad_norm", json_real(r->run.last_grad_norm));
        json_object_set_new(o, "tokens_per_second", json_real(tps));
    }
    if (isfinite(r->run.last_val_loss)) {
        json_object_set_new(o, "val_loss", json_real(r->run.last_val_loss));
        json_object_set_new(o, "val_lm_loss", json_real(r->run.last_val_lm_loss));
    }
    json_object_set(o, "history", r->run.history);
    cli_print_json(o);
}

