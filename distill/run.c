/* A distillation run's steps: the training loop over the global batches, validation, saving
 * the student and the training state (and restoring it on resume), the metrics file and
 * --dump-rows, and the configuration fingerprint that resume checks. With several ranks every
 * collective here is reached by every rank, whatever failed on one of them, so that no rank
 * waits for one that left. What the run has to say goes to the caller's callbacks. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "distill/run_impl.h"
#include "lms/alloc.h"
#include "lms/comm.h"
#include "lms/format.h"
#include "lms/outdir.h"

/* A parameter's three tensors in the training state: its master weight, then AdamW's first and
 * second moment under these suffixes (torch's exp_avg / exp_avg_sq). */
static const char *const state_suffix[3] = {"", ".exp_avg", ".exp_avg_sq"};

/* Seconds on a monotonic clock (rates and durations). */
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Micro-batches of one global batch, all ranks together. */
static int64_t n_micro(const struct lms_distill_run *r)
{
    return r->o.gbs / r->o.mbs;
}

/* Every rank's verdict on a phase: the largest flag wins (0 go on, 1 interrupted, 2 failed), so
 * that all ranks stop together instead of waiting in a collective for one that left. */
static enum lms_status agree(struct lms_distill_run *r, int64_t *flag, struct lms_error *err)
{
    enum lms_status st = lms_comm_max(r->o.comm, flag, 1, err);
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
/* The feature pairs and how they are compared (1-based layers, as the flags take them). */
static json_t *features_json(const struct lms_distill_run *r)
{
    const struct lms_distill_loss *l = &r->o.loss;
    json_t *pairs = json_array();
    for (size_t k = 0; pairs && k < r->n_pairs; k++)
        json_array_append_new(pairs, json_pack("[I,I]", (json_int_t)(r->pairs[k].student_layer + 1),
                                               (json_int_t)(r->pairs[k].teacher_layer + 1)));
    return json_pack("{s:o,s:s,s:s,s:f}", "pairs", pairs, "hook",
                     lms_feature_hook_name(l->feature_hook), "loss",
                     lms_feature_kind_name(l->feature_kind), "scale",
                     l->feature_scale ? l->feature_scale : 1.0);
}

/* The loss of the run: without a teacher the cross-entropy alone; with one the KD term and its
 * options, and the feature pairs when there are some (a logits-only run's configuration is the
 * one states saved before feature distillation existed hold). */
static json_t *loss_json(const struct lms_distill_run *r)
{
    const struct lms_distill_loss *l = &r->o.loss;
    if (!r->have_teacher)
        return json_pack("{s:s}", "objective", "cross-entropy");
    json_t *o = json_pack("{s:i,s:f,s:I,s:f,s:f}", "kd", (int)l->kind, "temperature",
                          l->temperature, "top_k", (json_int_t)l->top_k, "lm_loss_scale",
                          l->lm_loss_scale, "kd_loss_scale", l->kd_loss_scale);
    /* a cross-entropy weight other than 0 and 1 has weighted the cross-entropy term only since
     * this key exists (before, the term entered with weight 1): a state without it was trained
     * with another loss and is not resumed with this one */
    if (o && l->lm_loss_scale != 0 && l->lm_loss_scale != 1 &&
        json_object_set_new(o, "lm_loss_weighted", json_true())) {
        json_decref(o);
        return NULL;
    }
    if (o && r->n_pairs) {
        json_t *f = features_json(r);
        if (!f || json_object_set_new(o, "features", f)) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

json_t *lms_distill_config(const struct lms_distill_run *r)
{
    const struct lms_distill_opts *a = &r->o;
    json_t *data = json_array();
    for (int i = 0; i < a->n_src; i++)
        json_array_append_new(data, json_pack("{s:f,s:s}", "weight", a->src[i].weight,
                                              "fingerprint", r->data_fp[i]));
    /* a run without a teacher records none (null), so that neither kind of state resumes as
     * the other */
    json_t *teacher = r->have_teacher ? model_json(&r->teacher, r->teacher_fp) : json_null();
    return json_pack(
        "{s:o,s:o,s:o,s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:f,s:f,s:I,s:{s:f,s:f,s:f,s:f,s:f},s:o}",
        "student", model_json(&r->student, r->student_fp), "teacher", teacher, "data", data,
        "row_order", LMS_SAMPLER_ORDER, "split", a->split, "seq_length", (json_int_t)a->seq,
        "gbs", (json_int_t)a->gbs, "mbs", (json_int_t)a->mbs, "max_steps",
        (json_int_t)a->max_steps, "warmup_steps", (json_int_t)a->warmup, "lr", a->lr, "min_lr",
        a->min_lr, "seed", (json_int_t)a->seed, "adamw", "beta1", a->adam.beta1, "beta2",
        a->adam.beta2, "eps", a->adam.eps, "weight_decay", a->adam.weight_decay, "clip_grad",
        a->adam.clip_norm, "loss", loss_json(r));
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
        return lms_distill_config_diff(was, now, path, dst, cap);
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
bool lms_distill_config_diff(const json_t *was, const json_t *now, const char *prefix, char *dst,
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

/* The teacher's engine when the run's KD loss reads the teacher (its row in the table says). */
static struct lms_engine *loss_teacher(const struct lms_distill_run *r)
{
    const struct lms_kd_loss_def *d = lms_kd_loss_of(r->o.loss.kind);
    return d && d->needs_teacher ? r->te : NULL;
}

/* Reads rows [first, first + n) of blend into ids / targets (n x seq each). */
static enum lms_status load_rows(struct lms_distill_run *r, const struct lms_blend *b,
                                 int64_t first, int64_t n, struct lms_error *err)
{
    int64_t S = r->o.seq;
    for (int64_t i = 0; i < n; i++) {
        enum lms_status st = lms_blend_row(b, first + i, r->row, (size_t)(S + 1), err);
        if (st)
            return st;
        if (r->dump && b == r->train &&
            fwrite(r->row, sizeof(int32_t), (size_t)(S + 1), r->dump) != (size_t)(S + 1))
            return lms_error_set(err, LMS_EIO, "writing --dump-rows '%s': %s", r->o.dump_rows,
                                 strerror(errno));
        memcpy(r->ids + i * S, r->row, (size_t)S * sizeof(int32_t));
        memcpy(r->tgt + i * S, r->row + 1, (size_t)S * sizeof(int32_t));
    }
    return LMS_OK;
}

/* Appends o (consumed) as one line of the metrics file and flushes it, so that the file can
 * be followed while the run goes on; a failed write stops the run. */
static enum lms_status metrics_write(struct lms_distill_run *r, json_t *o, struct lms_error *err)
{
    if (!r->metrics) {
        json_decref(o);
        return LMS_OK;
    }
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(o);
    if (!s)
        return lms_error_set(err, LMS_ENOMEM, "out of memory writing '%s'", r->o.metrics_path);
    bool ok = fputs(s, r->metrics) >= 0 && fputc('\n', r->metrics) != EOF &&
              fflush(r->metrics) == 0 && !ferror(r->metrics);
    free(s);
    if (!ok)
        return lms_error_set(err, LMS_EIO, "writing '%s': %s", r->o.metrics_path, strerror(errno));
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
static enum lms_status validate(struct lms_distill_run *r, struct lms_error *err)
{
    int64_t n_rows = r->o.val_batches * r->o.gbs, mbs = r->o.mbs;
    /* ranks take micro-batches k / mbs = rank, rank + world, ...; the sums are added */
    double acc[4] = {0, 0, 0, 0}; /* loss, lm loss, micro-batches, failed */
    enum lms_status st = LMS_OK;
    for (int64_t k = (int64_t)r->rank * mbs; k < n_rows && !st; k += (int64_t)r->world * mbs) {
        if ((st = load_rows(r, r->val, k, mbs, err)))
            break;
        struct lms_train_batch b = {.ids = r->ids, .batch = mbs, .seq = r->o.seq,
                                    .targets = r->tgt, .teacher = loss_teacher(r)};
        struct lms_loss_parts p;
        if ((st = lms_trainer_eval(r->tr, &b, &r->loss, &p, err)))
            lms_error_wrap(err, "validation: ");
        acc[0] += p.total;
        acc[1] += p.ce;
        acc[2] += 1;
    }
    acc[3] = st != LMS_OK;
    enum lms_status cst = lms_comm_sum(r->o.comm, acc, 4, err);
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
    if (r->o.ev.validated)
        r->o.ev.validated(r->o.ev.ctx, r, n_rows);
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
static enum lms_status save_rank0(struct lms_distill_run *r, bool with_state,
                                  struct lms_error *err);

/* Whether a save writes the training state (--save-state): every save with interval, only the
 * last one of the process with end (final: at the end, at --exit-interval, after a stop),
 * none with never. The same on every rank (the options agree). */
static bool save_writes_state(const struct lms_distill_run *r, bool final)
{
    enum lms_distill_save_state m = r->o.save_state;
    return m == LMS_DISTILL_SAVE_STATE_INTERVAL || (m == LMS_DISTILL_SAVE_STATE_END && final);
}

static enum lms_status save(struct lms_distill_run *r, bool final, struct lms_error *err)
{
    bool with_state = save_writes_state(r, final);
    enum lms_status st = save_rank0(r, with_state, err);
    if (r->o.comm) {
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
    if (with_state || r->o.save_state == LMS_DISTILL_SAVE_STATE_NEVER)
        r->saved_step = r->step;
    if (r->rank == 0 && r->o.ev.saved)
        r->o.ev.saved(r->o.ev.ctx, r, with_state);
    return LMS_OK;
}

/* A state must resume: weights or moments that are no longer finite (an update that
 * overflowed fp32) are LMS_ENONFINITE, and the previous save stays. */
static enum lms_status check_finite(struct lms_distill_run *r, const struct lms_state_tensor *x,
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
static enum lms_status write_state(struct lms_distill_run *r, const struct lms_state_tensor *t,
                                   size_t n, struct lms_error *err)
{
    json_t *meta = json_pack("{s:s,s:i,s:I,s:I,s:I,s:{s:s,s:I},s:O,s:s,s:s?,s:O}", "format",
                             LMS_TRAIN_STATE_FORMAT, "version", LMS_TRAIN_STATE_VERSION, "step",
                             (json_int_t)r->step, "consumed_samples",
                             (json_int_t)(r->step * r->o.gbs), "consumed_tokens",
                             (json_int_t)(r->step * r->o.gbs * r->o.seq), "rng", "kind",
                             "every random choice (data order) derives from the seed and the "
                             "consumed samples",
                             "seed", (json_int_t)r->o.seed, "config", r->config, "student",
                             r->o.student, "teacher", r->o.teacher, "history", r->history);
    if (meta && r->skipped &&
        json_object_set_new(meta, "skipped_steps", json_integer(r->skipped)) != 0) {
        json_decref(meta);
        meta = NULL;
    }
    if (!meta)
        return lms_error_set(err, LMS_ENOMEM, "out of memory saving the training state");
    bool replace = r->o.write.force || r->o.resume || r->state_written;
    enum lms_status st = lms_train_state_write(r->o.state_dir, meta, t, n, replace, err);
    json_decref(meta);
    if (!st)
        r->state_written = true;
    return st;
}

static enum lms_status save_rank0(struct lms_distill_run *r, bool with_state,
                                  struct lms_error *err)
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
        if (r->o.comm && j > 0) {
            enum lms_status gst = lms_trainer_gather_moment(r->tr, j - 1, err);
            if (gst) {
                st = gst; /* the other ranks see it as well */
                goto out;
            }
        }
        for (size_t i = 0; i < n && !st && writer; i++) {
            const struct lms_train_param *p = lms_trainer_param(r->tr, i);
            const float *dev[3] = {p->w, r->o.comm ? p->g : p->m, r->o.comm ? p->g : p->v};
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
    /* --max-shard-size; a float dtype is the export's, FP8 blocks are the writer's (it quantises
     * the f32 export) */
    struct lms_write_opts wo = r->o.write;
    if (wo.dtype != LMS_DTYPE_F8_E4M3)
        wo.dtype = LMS_DTYPE_COUNT;
    /* like the state: this process's previous student, or what --force or --resume named */
    wo.force = r->o.write.force || r->o.resume || r->student_written;
    struct lms_write_result res;
    st = lms_checkpoint_write(r->out_fmt, &m, r->o.out, &wo, &res, err);
    lms_model_release(&m);
    if (st) {
        lms_error_wrap(err, "saving the student '%s': ", r->o.out);
    } else {
        r->student_written = true;
        if (r->o.save_state == LMS_DISTILL_SAVE_STATE_NEVER)
            lms_remove_tree(r->o.state_dir); /* an earlier run's (--force), older than this one */
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
enum lms_status lms__distill_restore(struct lms_distill_run *r, const struct lms_train_state *s,
                               struct lms_error *err)
{
    size_t n = lms_trainer_n_params(r->tr);
    enum lms_status st = LMS_OK;
    /* steps skipped before (absent: none), which the schedule and AdamW do not count */
    json_t *k = json_object_get(s->meta, "skipped_steps");
    r->skipped = k ? (json_is_integer(k) ? json_integer_value(k) : -1) : 0;
    if (r->skipped < 0 || r->skipped > r->step)
        return lms_error_set(err, LMS_EFORMAT, "'%s': bad skipped_steps", r->o.state_dir);
    for (size_t i = 0; i < n && !st; i++) {
        const struct lms_train_param *p = lms_trainer_param(r->tr, i);
        size_t bytes = (size_t)p->numel * sizeof(float);
        float *host = lms_malloc(bytes ? bytes : 1);
        if (!host)
            return lms_error_set(err, LMS_ENOMEM, "out of memory reading the training state");
        for (int j = 0; j < 3 && !st; j++) {
            char name[300];
            snprintf(name, sizeof name, "%s%s", p->name, state_suffix[j]);
            if ((st = lms_train_state_get(s, r->o.state_dir, name, p->ndim, p->shape, host, err)))
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
enum lms_status lms_distill_metrics_truncate(const char *path, int64_t step, struct lms_error *err)
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

/* Optimiser updates applied so far: the finished steps less the skipped ones. As in Megatron,
 * the learning-rate schedule and AdamW's step count (its bias correction) advance only with an
 * update; a skipped step consumes its batch and nothing else. */
static int64_t n_updates(const struct lms_distill_run *r)
{
    return r->step - r->skipped;
}

/* A step whose loss or gradient norm is not finite: nothing was updated. While --skip-nonfinite
 * allows, the step is skipped (its rows are consumed, r->step advances) with a warning and a
 * metrics record; otherwise LMS_ENONFINITE, the step not counted. Every rank decides alike (the
 * loss and the norm are sums over all ranks). */
static enum lms_status skip_nonfinite(struct lms_distill_run *r, double loss, double gn,
                                      struct lms_error *err)
{
    const struct lms_distill_opts *a = &r->o;
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
    if (r->rank == 0 && a->ev.warning) {
        char msg[256];
        snprintf(msg, sizeof msg, "step %lld: the %s is not finite (%g): skipped (%lld of "
                 "--skip-nonfinite %lld)", k, bad_loss ? "loss" : "gradient norm", v,
                 (long long)r->skipped, (long long)a->skip_nonfinite);
        a->ev.warning(a->ev.ctx, r, msg);
    }
    return metrics_write(r, json_pack("{s:s,s:I,s:s,s:I}", "event", "skipped", "step",
                                      (json_int_t)r->step, "reason",
                                      bad_loss ? "loss not finite" : "gradient norm not finite",
                                      "skipped_steps", (json_int_t)r->skipped), err);
}

/* Whether the caller asked the run to stop (its reason kept for the message). */
static bool stop_asked(struct lms_distill_run *r)
{
    const char *why = r->o.ev.stop_requested ? r->o.ev.stop_requested(r->o.ev.ctx) : NULL;
    if (why)
        r->stop_reason = why;
    return why != NULL;
}

enum lms_status lms_distill_update(struct lms_trainer *tr, const struct lms_lr_schedule *sched,
                                   const struct lms_adamw_opts *adam, int64_t k, double *lr,
                                   double *grad_norm, struct lms_error *err)
{
    struct lms_adamw_opts o = *adam;
    o.lr = *lr = lms_lr_at(sched, k);
    o.step = k + 1;
    return lms_trainer_adamw(tr, &o, grad_norm, err);
}

/* One optimiser step: gbs / mbs micro-batches, then AdamW. Returns LMS_EINTERRUPTED (nothing
 * applied) when a stop is asked for in between; a loss or gradient norm that is not finite applies
 * nothing and goes to skip_nonfinite. */
static enum lms_status train_step(struct lms_distill_run *r, struct lms_error *err)
{
    const struct lms_distill_opts *a = &r->o;
    enum lms_status st = lms_trainer_zero_grads(r->tr, err);
    double sums[4] = {0, 0, 0, 0}; /* loss, lm loss, failed, interrupted (summed over ranks) */
    int64_t nm = n_micro(r), per_rank = nm / r->world, first = (int64_t)r->rank * per_rank;
    /* rank k runs micro-batches [k x per_rank, (k + 1) x per_rank) of the global batch; each
     * gradient counts 1 / nm, so the sum over ranks is the one-process gradient */
    for (int64_t i = first; i < first + per_rank && !st; i++) {
        if (stop_asked(r))
            break;
        if ((st = load_rows(r, r->train, r->step * a->gbs + i * a->mbs, a->mbs, err)))
            break;
        struct lms_train_batch b = {.ids = r->ids, .batch = a->mbs, .seq = a->seq,
                                    .targets = r->tgt, .teacher = loss_teacher(r)};
        struct lms_loss_parts p;
        st = lms_trainer_micro_step(r->tr, &b, &r->loss, 1.0 / (double)nm, &p, err);
        sums[0] += p.total;
        sums[1] += p.ce;
    }
    sums[2] = st != LMS_OK;
    sums[3] = r->stop_reason != NULL;
    if (r->o.comm) {
        enum lms_status cst = lms_comm_sum(r->o.comm, sums, 4, err);
        if (cst)
            return cst;
        r->agreed = sums[2] > 0;
        if (!st && sums[2] > 0)
            st = lms_error_set(err, LMS_EIO, "another rank failed (its message says why)");
    }
    if (st)
        return lms_error_wrap(err, "step %lld: ", (long long)r->step + 1);
    if (sums[3] > 0 || stop_asked(r))
        return LMS_EINTERRUPTED;
    double loss = sums[0] / (double)nm, lm = sums[1] / (double)nm, gn = NAN;
    r->step_skipped = false;
    if (!isfinite(loss)) /* its gradient is no better: no update */
        return skip_nonfinite(r, loss, gn, err);
    st = lms_distill_update(r->tr, &r->sched, &a->adam, n_updates(r), &r->last_lr, &gn, err);
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
static enum lms_status log_steps(struct lms_distill_run *r, double *t_log, int64_t *log_from,
                                 struct lms_error *err)
{
    const struct lms_distill_opts *a = &r->o;
    double now = now_s(), step_tokens = (double)(a->gbs * a->seq);
    double tps = now > *t_log ? (double)(r->step - *log_from) * step_tokens / (now - *t_log) : 0;
    double per_step = (now - r->t_train) / (double)(r->step - r->start_step);
    struct lms_distill_log l = {.lr = r->last_lr, .tokens_per_second = tps,
                                .eta_s = per_step * (double)(a->max_steps - r->step),
                                .elapsed_s = now - r->t_train};
    if (r->rank == 0 && a->ev.logged)
        a->ev.logged(a->ev.ctx, r, &l);
    *t_log = now;
    *log_from = r->step;
    return metrics_write(r, json_pack("{s:s,s:I,s:f,s:f,s:f,s:f,s:f,s:I,s:f}", "event", "train",
                                      "step", (json_int_t)r->step, "lr", l.lr, "loss",
                                      r->last_loss, "lm_loss", r->last_lm_loss, "grad_norm",
                                      r->last_grad_norm, "tokens_per_second", tps,
                                      "consumed_samples", (json_int_t)(r->step * a->gbs),
                                      "elapsed_s", l.elapsed_s), err);
}

/* After a stop was asked for (the command's SIGINT or SIGTERM): saves the steps finished since
 * the last save, and says where they are. */
static enum lms_status stop_interrupted(struct lms_distill_run *r, struct lms_error *err)
{
    enum lms_status st = r->step > r->saved_step ? save(r, true, err) : LMS_OK;
    if (st)
        return st;
    r->agreed = true; /* every rank stopped at the same step */
    stop_asked(r); /* another rank's stop stops this one too, as "interrupted" */
    const char *how = r->stop_reason ? r->stop_reason : "interrupted";
    if (r->step == 0)
        return lms_error_set(err, LMS_EINTERRUPTED, "%s before the first step finished: nothing "
                             "saved", how);
    if (r->o.save_state == LMS_DISTILL_SAVE_STATE_NEVER)
        return lms_error_set(err, LMS_EINTERRUPTED, "%s: the student after step %lld is in '%s' "
                             "(--save-state never: no training state to resume from)", how,
                             (long long)r->step, r->o.out);
    return lms_error_set(err, LMS_EINTERRUPTED, "%s: the state after step %lld is in '%s' "
                         "(continue with --resume)", how, (long long)r->step, r->o.state_dir);
}

/* What most likely made a step not finite, for the message that stops the run. */
static void nonfinite_cause(const struct lms_distill_run *r, char *dst, size_t cap)
{
    const struct lms_distill_opts *a = &r->o;
    if (a->loss.temperature < 1e-3) /* the KD loss divides both models' logits by T */
        snprintf(dst, cap, "--kd-temperature %g divides the logits by %g, so the scaled logits, "
                 "the loss or its gradient (which grows as 1/T) overflow fp32; use a "
                 "temperature near 1", a->loss.temperature, a->loss.temperature);
    else if (n_updates(r) == 0) /* no learning rate has acted on these weights yet */
        snprintf(dst, cap, "the weights as loaded give logits that are not finite: check the "
                 "%s", r->have_teacher ? "student and the teacher" : "model");
    else
        snprintf(dst, cap, "the run diverged after %lld updates: lower --lr (now %g) or raise "
                 "--warmup-steps", (long long)n_updates(r), a->lr);
}

/* After a step that was not finite with no skip left, or weights that are no longer finite
 * at a save: saves the steps finished since the last save (the weights of the last update
 * applied) unless the weights themselves went bad, and says why the run stopped. */
static enum lms_status stop_nonfinite(struct lms_distill_run *r, struct lms_error *err)
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
                 (long long)r->saved_step, r->o.state_dir);
    else if (r->weights_nonfinite || r->step == 0)
        snprintf(where, sizeof where, "nothing saved");
    else
        snprintf(where, sizeof where, "the state after step %lld is in '%s' (%lld steps "
                 "skipped; --resume with a larger --skip-nonfinite skips such steps)",
                 (long long)r->step, r->o.state_dir, (long long)r->skipped);
    return lms_error_set(err, LMS_ENONFINITE, "%s: %s; %s", what, cause, where);
}

/* Closes the metrics file and --dump-rows, reporting a write that failed. */
static enum lms_status close_outputs(struct lms_distill_run *r, struct lms_error *err)
{
    enum lms_status st = close_checked(&r->metrics, "", r->o.metrics_path, err);
    enum lms_status dst = close_checked(&r->dump, "--dump-rows ", r->o.dump_rows,
                                        st ? NULL : err);
    return st ? st : dst;
}

enum lms_status lms_distill_train(struct lms_distill_run *r, struct lms_error *err)
{
    const struct lms_distill_opts *a = &r->o;
    const struct lms_distill_events *ev = r->rank == 0 ? &a->ev : &(struct lms_distill_events){0};
    if (ev->started)
        ev->started(ev->ctx, r);
    r->t_train = now_s();
    double t_log = r->t_train;
    int64_t log_from = r->step;
    enum lms_status st = LMS_OK;
    while (r->step < a->max_steps) {
        if ((st = train_step(r, err)))
            break;
        if (ev->stepped)
            ev->stepped(ev->ctx, r);
        bool last = r->step == a->max_steps;
        if (!r->step_skipped)
            json_array_append_new(r->history, json_pack("{s:I,s:f,s:f}", "step",
                                                        (json_int_t)r->step, "loss",
                                                        r->last_loss, "lr", r->last_lr));
        if (!r->step_skipped && (r->step % a->log_interval == 0 || last) &&
            (st = log_steps(r, &t_log, &log_from, err)))
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
    if (ev->finished)
        ev->finished(ev->ctx, r, st);
    if (!st)
        st = save(r, true, err); /* the last step, or --exit-interval */
    if (st == LMS_EINTERRUPTED)
        st = stop_interrupted(r, err);
    else if (st == LMS_ENONFINITE)
        st = stop_nonfinite(r, err);
    if (!st)
        st = close_outputs(r, err);
    return st;
}
