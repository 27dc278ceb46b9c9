/* lmsurgeon distill's steps: the training loop over the global batches, validation, saving the
 * student and the training state (and restoring it on --resume), the metrics file and the
 * reports. With several ranks every collective here is reached by every rank, whatever failed
 * on one of them, so that no rank waits for one that left. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/distill_run.h"
#include "lms/alloc.h"
#include "lms/comm.h"
#include "lms/format.h"
#include "lms/outdir.h"

/* A parameter's three tensors in the training state: its master weight, then AdamW's first and
 * second moment under these suffixes (torch's exp_avg / exp_avg_sq). */
static const char *const state_suffix[3] = {"", ".exp_avg", ".exp_avg_sq"};

/* The signal that asked the run to stop (SIGINT, or SIGTERM: what Slurm sends before it kills a
 * job); 0 while none has. */
static volatile sig_atomic_t interrupted;

static void on_sigint(int sig)
{
    interrupted = sig;
    cli_interrupt_note(sig); /* the exit code: 128 + sig */
}

/* Micro-batches of one global batch, all ranks together. */
static int64_t n_micro(const struct distill_run *r)
{
    return r->a->gbs / r->a->mbs;
}

/* Every rank's verdict on a phase: the largest flag wins (0 go on, 1 interrupted, 2 failed), so
 * that all ranks stop together instead of waiting in a collective for one that left. */
static enum lms_status agree(struct distill_run *r, int64_t *flag, struct lms_error *err)
{
    enum lms_status st = lms_comm_max(r->comm, flag, 1, err);
    r->agreed = !st && *flag != 0;
    return st;
}

/* A model's shape and the fingerprint of its weights (its content, not its path). */
static json_t *model_json(const struct lms_model *m, const char *fingerprint)
{
    const struct lms_arch *x = &m->arch;
    return json_pack("{s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:s}", "family",
                     lms_family_name(x->family), "num_layers", (json_int_t)x->n_layers,
                     "hidden_size", (json_int_t)x->hidden, "ffn_hidden_size", (json_int_t)x->ffn,
                     "num_attention_heads", (json_int_t)x->n_heads, "num_query_groups",
                     (json_int_t)x->n_groups, "head_dim", (json_int_t)x->head_dim,
                     "padded_vocab", (json_int_t)x->padded_vocab, "n_params",
                     (json_int_t)lms_model_n_params(m), "fingerprint", fingerprint);
}

/* Everything that shapes the numbers of a run; --resume refuses a state made with another.
 * Inputs are named by their content fingerprints, never by their paths, so that moved files
 * resume and other files with the old names do not. */
json_t *distill_config(const struct distill_run *r)
{
    const struct distill_args *a = r->a;
    json_t *data = json_array();
    for (int i = 0; i < r->n_src; i++)
        json_array_append_new(data, json_pack("{s:f,s:s}", "weight", r->src[i].weight,
                                              "fingerprint", r->data_fp[i]));
    return json_pack(
        "{s:o,s:o,s:o,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:f,s:f,s:I,s:{s:f,s:f,s:f,s:f,s:f},"
        "s:{s:i,s:f,s:I,s:f,s:f}}",
        "student", model_json(&r->student, r->student_fp), "teacher",
        model_json(&r->teacher, r->teacher_fp), "data", data, "row_order", LMS_SAMPLER_ORDER,
        "split", a->split, "seq_length", (json_int_t)a->seq, "gbs", (json_int_t)a->gbs, "mbs",
        (json_int_t)a->mbs, "max_steps", (json_int_t)a->max_steps, "warmup_steps",
        (json_int_t)a->warmup, "lr", a->lr, "min_lr", a->min_lr, "seed", (json_int_t)a->seed,
        "adamw", "beta1", a->adam.beta1, "beta2", a->adam.beta2, "eps", a->adam.eps,
        "weight_decay", a->adam.weight_decay, "clip_grad", a->adam.clip_norm, "loss", "kd",
        (int)a->kd_kind, "temperature", a->temperature, "top_k", (json_int_t)a->top_k,
        "lm_loss_scale", a->lm_loss_scale, "kd_loss_scale", a->kd_loss_scale);
}

/* "key was X, now Y" into dst (X or Y "absent" when NULL). */
static void say_diff(const char *path, const json_t *was, const json_t *now, char *dst,
                     size_t cap)
{
    char *ws = was ? json_dumps(was, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    char *vs = now ? json_dumps(now, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    snprintf(dst, cap, "%s was %s, now %s", path, was ? (ws ? ws : "?") : "absent",
             now ? (vs ? vs : "?") : "absent");
    free(ws);
    free(vs);
}

/* Two values under path: objects key by key, arrays of the same length item by item (so that
 * the message names "data[1].fingerprint"), anything else whole. */
static bool value_diff(const char *path, const json_t *was, const json_t *now, char *dst,
                       size_t cap)
{
    if (json_is_object(was) && json_is_object(now))
        return distill_config_diff(was, now, path, dst, cap);
    if (json_is_array(was) && json_is_array(now) && json_array_size(was) == json_array_size(now)) {
        for (size_t i = 0; i < json_array_size(now); i++) {
            char item[256];
            snprintf(item, sizeof item, "%s[%zu]", path, i);
            if (value_diff(item, json_array_get(was, i), json_array_get(now, i), dst, cap))
                return true;
        }
        return false;
    }
    if (was && now && json_equal(was, now))
        return false;
    say_diff(path, was, now, dst, cap);
    return true;
}

/* First difference between two configurations, as "key was X, now Y": the keys of now in
 * order, then a key of was that now lacks. */
bool distill_config_diff(const json_t *was, const json_t *now, const char *prefix, char *dst,
                         size_t cap)
{
    const char *key;
    json_t *v;
    char path[256];
    json_object_foreach((json_t *)now, key, v) {
        snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", key);
        if (value_diff(path, json_object_get(was, key), v, dst, cap))
            return true;
    }
    json_object_foreach((json_t *)was, key, v) {
        if (json_object_get(now, key))
            continue;
        snprintf(path, sizeof path, "%s%s%s", prefix, *prefix ? "." : "", key);
        say_diff(path, v, NULL, dst, cap);
        return true;
    }
    return false;
}

/* Reads rows [first, first + n) of blend into ids / targets (n x seq each). */
static enum lms_status load_rows(struct distill_run *r, const struct lms_blend *b,
                                 int64_t first, int64_t n, struct lms_error *err)
{
    int64_t S = r->a->seq;
    for (int64_t i = 0; i < n; i++) {
        enum lms_status st = lms_blend_row(b, first + i, r->row, (size_t)(S + 1), err);
        if (st)
            return st;
        if (r->dump && b == r->train &&
            fwrite(r->row, sizeof(int32_t), (size_t)(S + 1), r->dump) != (size_t)(S + 1))
            return lms_error_set(err, LMS_EIO, "writing --dump-rows '%s': %s", r->a->dump_rows,
                                 strerror(errno));
        memcpy(r->ids + i * S, r->row, (size_t)S * sizeof(int32_t));
        memcpy(r->tgt + i * S, r->row + 1, (size_t)S * sizeof(int32_t));
    }
    return LMS_OK;
}

static void bar_clear(struct distill_run *r)
{
    if (r->bar.enabled) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
    }
}

/* Appends o (consumed) as one line of the metrics file and flushes it, so that the file can
 * be followed while the run goes on; a failed write stops the run. */
static enum lms_status metrics_write(struct distill_run *r, json_t *o, struct lms_error *err)
{
    if (!r->metrics) {
        json_decref(o);
        return LMS_OK;
    }
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(o);
    if (!s)
        return lms_error_set(err, LMS_ENOMEM, "out of memory writing '%s'", r->metrics_path);
    bool ok = fputs(s, r->metrics) >= 0 && fputc('\n', r->metrics) != EOF &&
              fflush(r->metrics) == 0 && !ferror(r->metrics);
    free(s);
    if (!ok)
        return lms_error_set(err, LMS_EIO, "writing '%s': %s", r->metrics_path, strerror(errno));
    return LMS_OK;
}

/* Closes fp (NULLed) and reports a write that failed on the way or at the close. */
static enum lms_status close_checked(FILE **fp, const char *what, const char *path,
                                     struct lms_error *err)
{
    FILE *f = *fp;
    *fp = NULL;
    if (!f)
        return LMS_OK;
    bool earlier = ferror(f) != 0;
    if (fclose(f) != 0) /* it flushes what is buffered: a full disk shows here */
        return lms_error_set(err, LMS_EIO, "writing %s'%s': %s", what, path, strerror(errno));
    if (earlier)
        return lms_error_set(err, LMS_EIO, "writing %s'%s': a write failed", what, path);
    return LMS_OK;
}

/* Validation: the mean loss over limit_val_batches global batches of the validation split (the
 * same rows every time, so the values compare across steps). */
static enum lms_status validate(struct distill_run *r, struct lms_error *err)
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
    if (!r->a->base.co.quiet && !r->a->base.co.json)
        printf("validation at step %lld: loss %.5f, lm loss %.5f (%lld rows)\n",
               (long long)r->step, r->last_val_loss, r->last_val_lm_loss, (long long)n_rows);
    return metrics_write(r, json_pack("{s:s,s:I,s:f,s:f,s:I}", "event", "validation", "step",
                                      (json_int_t)r->step, "val_loss", r->last_val_loss,
                                      "val_lm_loss", r->last_val_lm_loss, "rows",
                                      (json_int_t)n_rows), err);
}

/* Saves the state, then the student (both atomically; the state alone is enough to resume, so a
 * crash between the two loses nothing); --save-state end or never leaves the state out of some
 * or all saves (save_writes_state). With several ranks every rank takes part (the moments
 * are gathered from their shards, one moment at a time through the gradient buffer), rank 0
 * writes, and all learn whether it succeeded. The state is the same file whatever the number
 * of ranks, so a run resumes on any other number. */
static enum lms_status save_rank0(struct distill_run *r, bool with_state, struct lms_error *err);

/* Whether a save writes the training state (--save-state): every save with interval, only the
 * last one of the process with end (final: at the end, at --exit-interval, after a signal),
 * none with never. The same on every rank (the options agree). */
static bool save_writes_state(const struct distill_run *r, bool final)
{
    enum distill_save_state m = r->a->save_state;
    return m == DISTILL_SAVE_STATE_INTERVAL || (m == DISTILL_SAVE_STATE_END && final);
}

static enum lms_status save(struct distill_run *r, bool final, struct lms_error *err)
{
    bool with_state = save_writes_state(r, final);
    enum lms_status st = save_rank0(r, with_state, err);
    if (r->comm) {
        int64_t flag = st == LMS_ENONFINITE ? 3 : st ? 2 : 0;
        enum lms_status cst = agree(r, &flag, err);
        if (cst || st)
            return cst ? cst : st;
        if (flag == 3) {
            r->weights_nonfinite = true;
            return lms_error_set(err, LMS_ENONFINITE, "the weights after step %lld are not "
                                 "finite (rank 0's message says where)", (long long)r->step);
        }
        if (flag)
            return lms_error_set(err, LMS_EIO, "rank 0 could not save the training state (its "
                                 "message says why)");
    } else if (st) {
        return st;
    }
    /* what a stop would write is on disk: the state (with never, the student alone) */
    if (with_state || r->a->save_state == DISTILL_SAVE_STATE_NEVER)
        r->saved_step = r->step;
    return LMS_OK;
}

/* A state must resume: weights or moments that are no longer finite (an update that
 * overflowed fp32) are LMS_ENONFINITE, and the previous save stays. */
static enum lms_status check_finite(struct distill_run *r, const struct lms_state_tensor *x,
                                    int64_t numel, struct lms_error *err)
{
    for (int64_t k = 0; k < numel; k++)
        if (!isfinite(x->data[k])) {
            r->weights_nonfinite = true;
            return lms_error_set(err, LMS_ENONFINITE, "the weights after step %lld are not "
                                 "finite ('%s' holds %g at element %lld)", (long long)r->step,
                                 x->name, isnan(x->data[k]) ? NAN : (double)x->data[k],
                                 (long long)k);
        }
    return LMS_OK;
}

/* trainer_state.json and the tensors t[0..n) into DIR.state/, atomically. It replaces this
 * process's previous state, or what --force or --resume named; the first state of a new run
 * replaces nothing, not even what appeared during the run. */
static enum lms_status write_state(struct distill_run *r, const struct lms_state_tensor *t,
                                   size_t n, struct lms_error *err)
{
    json_t *meta = json_pack("{s:s,s:i,s:I,s:I,s:I,s:{s:s,s:I},s:O,s:s,s:s,s:O}", "format",
                             LMS_TRAIN_STATE_FORMAT, "version", LMS_TRAIN_STATE_VERSION, "step",
                             (json_int_t)r->step, "consumed_samples",
                             (json_int_t)(r->step * r->a->gbs), "consumed_tokens",
                             (json_int_t)(r->step * r->a->gbs * r->a->seq), "rng", "kind",
                             "every random choice (data order) derives from the seed and the "
                             "consumed samples",
                             "seed", (json_int_t)r->a->seed, "config", r->config, "student",
                             r->a->student, "teacher", r->a->teacher, "history", r->history);
    if (meta && r->skipped &&
        json_object_set_new(meta, "skipped_steps", json_integer(r->skipped)) != 0) {
        json_decref(meta);
        meta = NULL;
    }
    if (!meta)
        return lms_error_set(err, LMS_ENOMEM, "out of memory saving the training state");
    bool replace = r->a->base.wo.force || r->a->resume || r->state_written;
    enum lms_status st = lms_train_state_write(r->state_dir, meta, t, n, replace, err);
    json_decref(meta);
    if (!st)
        r->state_written = true;
    return st;
}

static enum lms_status save_rank0(struct distill_run *r, bool with_state, struct lms_error *err)
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
    for (int j = 0; j < 3 && with_state; j++) {
        if (r->comm && j > 0) {
            enum lms_status gst = lms_trainer_gather_moment(r->tr, j - 1, err);
            if (gst) {
                st = gst; /* the other ranks see it as well */
                goto out;
            }
        }
        for (size_t i = 0; i < n && !st && writer; i++) {
            const struct lms_train_param *p = lms_trainer_param(r->tr, i);
            const float *dev[3] = {p->w, r->comm ? p->g : p->m, r->comm ? p->g : p->v};
            struct lms_state_tensor *x = &t[3 * i + (size_t)j];
            snprintf(x->name, sizeof x->name, "%s%s", p->name, state_suffix[j]);
            x->ndim = p->ndim;
            memcpy(x->shape, p->shape, sizeof p->shape);
            size_t bytes = (size_t)p->numel * sizeof(float);
            if (!(host[3 * i + (size_t)j] = lms_malloc(bytes ? bytes : 1))) {
                st = lms_error_set(err, LMS_ENOMEM, "out of memory saving the training state");
                break;
            }
            st = lms_buf_download(r->be, host[3 * i + (size_t)j], bytes, dev[j], bytes, err);
            x->data = host[3 * i + (size_t)j];
            if (!st)
                st = check_finite(r, x, p->numel, err);
        }
    }
    if (st || !writer || (with_state && (st = write_state(r, t, 3 * n, err))))
        goto out;
    struct lms_model m;
    if ((st = lms_trainer_export(r->tr, r->out_dtype, &m, err)))
        goto out;
    struct lms_write_opts wo = r->a->base.wo; /* --max-shard-size; the dtype is exported */
    wo.dtype = LMS_DTYPE_COUNT;
    /* like the state: this process's previous student, or what --force or --resume named */
    wo.force = r->a->base.wo.force || r->a->resume || r->student_written;
    struct lms_write_result res;
    st = r->out_fmt->write(&m, r->out, &wo, &res, err);
    lms_model_release(&m);
    if (st) {
        lms_error_wrap(err, "saving the student '%s': ", r->out);
    } else {
        r->student_written = true;
        if (r->a->save_state == DISTILL_SAVE_STATE_NEVER)
            lms_remove_tree(r->state_dir); /* an earlier run's (--force), older than this one */
    }
out:
    if (host)
        for (size_t i = 0; i < 3 * n; i++)
            lms_free(host[i]);
    lms_free(host);
    lms_free(t);
    return st;
}

/* Loads master weights and moments from the state (the configuration was checked already). */
enum lms_status distill_restore(struct distill_run *r, const struct lms_train_state *s,
                               struct lms_error *err)
{
    size_t n = lms_trainer_n_params(r->tr);
    enum lms_status st = LMS_OK;
    /* steps skipped before (absent: none), which the schedule and AdamW do not count */
    json_t *k = json_object_get(s->meta, "skipped_steps");
    r->skipped = k ? (json_is_integer(k) ? json_integer_value(k) : -1) : 0;
    if (r->skipped < 0 || r->skipped > r->step)
        return lms_error_set(err, LMS_EFORMAT, "'%s': bad skipped_steps", r->state_dir);
    for (size_t i = 0; i < n && !st; i++) {
        const struct lms_train_param *p = lms_trainer_param(r->tr, i);
        size_t bytes = (size_t)p->numel * sizeof(float);
        float *host = lms_malloc(bytes ? bytes : 1);
        if (!host)
            return lms_error_set(err, LMS_ENOMEM, "out of memory reading the training state");
        for (int j = 0; j < 3 && !st; j++) {
            char name[300];
            snprintf(name, sizeof name, "%s%s", p->name, state_suffix[j]);
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
enum lms_status distill_metrics_truncate(const char *path, int64_t step, struct lms_error *err)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return errno == ENOENT ? LMS_OK
                               : lms_error_set(err, LMS_EIO, "opening '%s': %s", path,
                                               strerror(errno));
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *g = fopen(tmp, "w");
    if (!g) {
        enum lms_status st = lms_error_set(err, LMS_EIO, "creating '%s': %s", tmp,
                                           strerror(errno));
        fclose(f);
        return st;
    }
    char line[8192];
    bool ok = true;
    while (ok && fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, NULL);
        json_t *s = o ? json_object_get(o, "step") : NULL;
        if (s && json_is_integer(s) && json_integer_value(s) <= step)
            ok = fputs(line, g) >= 0;
        json_decref(o);
    }
    enum lms_status st = LMS_OK;
    if (!ok)
        st = lms_error_set(err, LMS_EIO, "writing '%s': %s", tmp, strerror(errno));
    else if (ferror(f))
        st = lms_error_set(err, LMS_EIO, "reading '%s': %s", path, strerror(errno));
    fclose(f);
    if (!st)
        st = close_checked(&g, "", tmp, err);
    else
        fclose(g);
    if (!st && rename(tmp, path) != 0)
        st = lms_error_set(err, LMS_EIO, "renaming '%s' to '%s': %s", tmp, path,
                           strerror(errno));
    if (st)
        remove(tmp);
    return st;
}

void distill_print_plan(const struct distill_run *r, const struct lms_train_plan *tp,
                       const struct lms_distill_memory *m, uint64_t limit)
{
    char b[32];
    FILE *f = r->a->base.co.json ? stderr : stdout;
    int64_t P = tp->n_params;
    bool dev = m->runtime > 0;
    fprintf(f, "%s memory plan (%s, micro-batch %lld x %lld tokens, %lld student parameters%s):\n",
            dev ? "device" : "host", r->a->base.device ? r->a->base.device : "cpu",
            (long long)r->a->mbs, (long long)r->a->seq,
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

/* Optimiser updates applied so far: the finished steps less the skipped ones. As in Megatron,
 * the learning-rate schedule and AdamW's step count (its bias correction) advance only with an
 * update; a skipped step consumes its batch and nothing else. */
static int64_t n_updates(const struct distill_run *r)
{
    return r->step - r->skipped;
}

/* A step whose loss or gradient norm is not finite: nothing was updated. While --skip-nonfinite
 * allows, the step is skipped (its rows are consumed, r->step advances) with a warning and a
 * metrics record; otherwise LMS_ENONFINITE, the step not counted. Every rank decides alike (the
 * loss and the norm are sums over all ranks). */
static enum lms_status skip_nonfinite(struct distill_run *r, double loss, double gn,
                                      struct lms_error *err)
{
    const struct distill_args *a = r->a;
    long long k = (long long)r->step + 1;
    bool bad_loss = !isfinite(loss);
    double v = bad_loss ? loss : gn;
    v = isnan(v) ? NAN : v; /* NaN's sign means nothing: "nan", never "-nan" */
    if (r->skipped >= a->skip_nonfinite)
        return lms_error_set(err, LMS_ENONFINITE, "step %lld: the %s is not finite (%g)", k,
                             bad_loss ? "loss" : "gradient norm", v);
    r->skipped++;
    r->step++;
    r->step_skipped = true;
    if (r->rank == 0 && !a->base.co.quiet) {
        bar_clear(r);
        fprintf(stderr, "lmsurgeon distill: warning: step %lld: the %s is not finite (%g): "
                "skipped (%lld of --skip-nonfinite %lld)\n", k,
                bad_loss ? "loss" : "gradient norm", v,
                (long long)r->skipped, (long long)a->skip_nonfinite);
    }
    return metrics_write(r, json_pack("{s:s,s:I,s:s,s:I}", "event", "skipped", "step",
                                      (json_int_t)r->step, "reason",
                                      bad_loss ? "loss not finite" : "gradient norm not finite",
                                      "skipped_steps", (json_int_t)r->skipped), err);
}

/* One optimiser step: gbs / mbs micro-batches, then AdamW. Returns LMS_EINTERRUPTED (nothing
 * applied) when SIGINT arrives in between; a loss or gradient norm that is not finite applies
 * nothing and goes to skip_nonfinite. */
static enum lms_status train_step(struct distill_run *r, struct lms_error *err)
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
    double loss = sums[0] / (double)nm, lm = sums[1] / (double)nm, gn = NAN;
    r->step_skipped = false;
    if (!isfinite(loss)) /* its gradient is no better: no update */
        return skip_nonfinite(r, loss, gn, err);
    struct lms_adamw_opts o = a->adam;
    o.lr = lms_lr_at(&r->sched, n_updates(r));
    o.step = n_updates(r) + 1;
    st = lms_trainer_adamw(r->tr, &o, &gn, err);
    if (st == LMS_ENONFINITE)
        return skip_nonfinite(r, loss, gn, err);
    if (st)
        return lms_error_wrap(err, "step %lld: ", (long long)r->step + 1);
    r->last_loss = loss;
    r->last_lm_loss = lm;
    r->last_grad_norm = gn;
    r->applied++;
    r->step++;
    return LMS_OK;
}

/* A log line and a metrics record for the steps since the last one; *t_log and *log_from
 * mark where the next one counts from. */
static enum lms_status log_steps(struct distill_run *r, double lr, double *t_log,
                                 int64_t *log_from, struct lms_error *err)
{
    const struct distill_args *a = r->a;
    double now = cli_now(), step_tokens = (double)(a->gbs * a->seq);
    double tps = now > *t_log ? (double)(r->step - *log_from) * step_tokens / (now - *t_log) : 0;
    double per_step = (now - r->t_train) / (double)(r->step - r->start_step);
    double eta = per_step * (double)(a->max_steps - r->step);
    bar_clear(r);
    if (!a->base.co.quiet && !a->base.co.json)
        printf("step %lld/%lld  lr %.3e  loss %.5f  lm loss %.5f  grad norm %.4f  "
               "%.0f tokens/s  ETA %02d:%02d\n",
               (long long)r->step, (long long)a->max_steps, lr, r->last_loss, r->last_lm_loss,
               r->last_grad_norm, tps, (int)eta / 60, (int)eta % 60);
    fflush(stdout);
    *t_log = now;
    *log_from = r->step;
    return metrics_write(r, json_pack("{s:s,s:I,s:f,s:f,s:f,s:f,s:f,s:I,s:f}", "event", "train",
                                      "step", (json_int_t)r->step, "lr", lr, "loss",
                                      r->last_loss, "lm_loss", r->last_lm_loss, "grad_norm",
                                      r->last_grad_norm, "tokens_per_second", tps,
                                      "consumed_samples", (json_int_t)(r->step * a->gbs),
                                      "elapsed_s", now - r->t_train), err);
}

/* After SIGINT or SIGTERM: saves the steps finished since the last save, and says where they
 * are. */
static enum lms_status stop_interrupted(struct distill_run *r, struct lms_error *err)
{
    enum lms_status st = r->step > r->saved_step ? save(r, true, err) : LMS_OK;
    if (st)
        return st;
    r->agreed = true; /* every rank stopped at the same step */
    const char *how = interrupted == SIGTERM ? "interrupted by SIGTERM" : "interrupted";
    if (r->step == 0)
        return lms_error_set(err, LMS_EINTERRUPTED, "%s before the first step finished: nothing "
                             "saved", how);
    if (r->a->save_state == DISTILL_SAVE_STATE_NEVER)
        return lms_error_set(err, LMS_EINTERRUPTED, "%s: the student after step %lld is in '%s' "
                             "(--save-state never: no training state to resume from)", how,
                             (long long)r->step, r->out);
    return lms_error_set(err, LMS_EINTERRUPTED, "%s: the state after step %lld is in '%s' "
                         "(continue with --resume)", how, (long long)r->step, r->state_dir);
}

/* What most likely made a step not finite, for the message that stops the run. */
static void nonfinite_cause(const struct distill_run *r, char *dst, size_t cap)
{
    const struct distill_args *a = r->a;
    if (a->temperature < 1e-3) /* the KD loss divides both models' logits by T */
        snprintf(dst, cap, "--kd-temperature %g divides the logits by %g, so the scaled logits, "
                 "the loss or its gradient (which grows as 1/T) overflow fp32; use a "
                 "temperature near 1", a->temperature, a->temperature);
    else if (n_updates(r) == 0) /* no learning rate has acted on these weights yet */
        snprintf(dst, cap, "the weights as loaded give logits that are not finite: check the "
                 "student and the teacher");
    else
        snprintf(dst, cap, "the run diverged after %lld updates: lower --lr (now %g) or raise "
                 "--warmup-steps", (long long)n_updates(r), a->lr);
}

/* After a step that was not finite with no skip left, or weights that are no longer finite
 * at a save: saves the steps finished since the last save (the weights of the last update
 * applied) unless the weights themselves went bad, and says why the run stopped. */
static enum lms_status stop_nonfinite(struct distill_run *r, struct lms_error *err)
{
    char what[LMS_ERROR_MSG_CAP / 2], cause[320], where[LMS_ERROR_MSG_CAP / 4];
    snprintf(what, sizeof what, "%s", err->msg);
    nonfinite_cause(r, cause, sizeof cause);
    if (!r->weights_nonfinite && r->step > r->saved_step) {
        enum lms_status st = save(r, true, err);
        if (st && st != LMS_ENONFINITE)
            return st;
        size_t n = strlen(what);
        if (st)
            snprintf(what + n, sizeof what - n, "; %s", err->msg);
    }
    r->agreed = true; /* every rank saw the same sums */
    if (r->weights_nonfinite && r->saved_step > 0)
        snprintf(where, sizeof where, "the last state saved, after step %lld, is in '%s'",
                 (long long)r->saved_step, r->state_dir);
    else if (r->weights_nonfinite || r->step == 0)
        snprintf(where, sizeof where, "nothing saved");
    else
        snprintf(where, sizeof where, "the state after step %lld is in '%s' (%lld steps "
                 "skipped; --resume with a larger --skip-nonfinite skips such steps)",
                 (long long)r->step, r->state_dir, (long long)r->skipped);
    return lms_error_set(err, LMS_ENONFINITE, "%s: %s; %s", what, cause, where);
}

/* Closes the metrics file and --dump-rows, reporting a write that failed. */
static enum lms_status close_outputs(struct distill_run *r, struct lms_error *err)
{
    enum lms_status st = close_checked(&r->metrics, "", r->metrics_path, err);
    enum lms_status dst = close_checked(&r->dump, "--dump-rows ", r->a->dump_rows,
                                        st ? NULL : err);
    return st ? st : dst;
}

enum lms_status distill_train(struct distill_run *r, struct lms_error *err)
{
    const struct distill_args *a = r->a;
    struct sigaction sa = {.sa_handler = on_sigint}, old_int, old_term;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    if (!a->base.co.quiet && !a->base.co.json)
        printf("distilling '%s' from '%s': %lld steps of %lld x %lld tokens%s\n", a->student,
               a->teacher, (long long)a->max_steps, (long long)a->gbs, (long long)a->seq,
               r->start_step ? " (resumed)" : "");
    uint64_t step_tokens = (uint64_t)(a->gbs * a->seq);
    cli_progress_begin(&r->bar, "distilling",
                       (uint64_t)(a->max_steps - r->start_step) * step_tokens, false,
                       a->base.co.quiet || a->base.co.json);
    r->t_train = cli_now();
    double t_log = r->t_train;
    int64_t log_from = r->step;
    enum lms_status st = LMS_OK;
    while (r->step < a->max_steps) {
        double lr = lms_lr_at(&r->sched, n_updates(r));
        if ((st = train_step(r, err)))
            break;
        cli_progress_update(&r->bar, (uint64_t)(r->step - r->start_step) * step_tokens);
        bool last = r->step == a->max_steps;
        if (!r->step_skipped)
            json_array_append_new(r->history, json_pack("{s:I,s:f,s:f}", "step",
                                                        (json_int_t)r->step, "loss",
                                                        r->last_loss, "lr", lr));
        if (!r->step_skipped && (r->step % a->log_interval == 0 || last) &&
            (st = log_steps(r, lr, &t_log, &log_from, err)))
            break;
        if (r->val && ((a->val_interval && r->step % a->val_interval == 0) || last) &&
            (st = validate(r, err)))
            break;
        if (!last && a->save_interval && r->step % a->save_interval == 0 &&
            (st = save(r, false, err)))
            break;
        if (!last && a->exit_interval && r->step % a->exit_interval == 0)
            break;
    }
    if (!st)
        cli_progress_end(&r->bar);
    else
        bar_clear(r);
    if (!st)
        st = save(r, true, err); /* the last step, or --exit-interval */
    if (st == LMS_EINTERRUPTED)
        st = stop_interrupted(r, err);
    else if (st == LMS_ENONFINITE)
        st = stop_nonfinite(r, err);
    if (!st)
        st = close_outputs(r, err);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    return st;
}

void distill_summary_text(const struct distill_run *r, double secs)
{
    const struct distill_args *a = r->a;
    if (r->step < a->max_steps)
        printf("stopped after step %lld of %lld (--exit-interval; continue with --resume): ",
               (long long)r->step, (long long)a->max_steps);
    printf("distilled %lld steps (%lld tokens) in %.1f s", (long long)r->step,
           (long long)(r->step * a->gbs * a->seq), secs);
    if (r->applied)
        printf(": loss %.5f", r->last_loss);
    if (r->skipped)
        printf(" (%lld steps skipped: not finite)", (long long)r->skipped);
    if (isfinite(r->last_val_loss))
        printf(", validation loss %.5f", r->last_val_loss);
    printf("; student written to '%s' (%s, %s), ", r->out, r->out_fmt->name,
           lms_dtype_name(r->out_dtype));
    if (r->a->save_state == DISTILL_SAVE_STATE_NEVER)
        printf("no training state (--save-state never)");
    else
        printf("state in '%s'", r->state_dir);
    printf(", metrics in '%s'\n", r->metrics_path);
}

void distill_summary_json(const struct distill_run *r, double secs, bool dry)
{
    json_t *o = json_pack("{s:b,s:s,s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:f,s:s,s:s}", "ok", 1,
                          "student", r->a->student, "teacher", r->a->teacher, "out", r->out,
                          "format", r->out_fmt->name, "dtype", lms_dtype_name(r->out_dtype),
                          "steps", (json_int_t)r->step, "start_step", (json_int_t)r->start_step,
                          "max_steps", (json_int_t)r->a->max_steps, "tokens",
                          (json_int_t)(r->step * r->a->gbs * r->a->seq), "seconds", secs,
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
    if (r->a->save_state == DISTILL_SAVE_STATE_NEVER) /* none was written */
        json_object_set_new(o, "state", json_null());
    json_object_set_new(o, "ranks", json_integer(r->world));
    json_object_set_new(o, "comm", json_string(lms_comm_backend(r->comm)));
    if (r->skipped)
        json_object_set_new(o, "skipped_steps", json_integer(r->skipped));
    if (r->applied) {
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

void distill_run_release(struct distill_run *r)
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
    lms_free(r->data_fp);
    json_decref(r->config);
    json_decref(r->history);
}
