/* A distillation run's opening: the models, the data, the configuration (checked against the
 * state on resume), the trainer, the teacher's engine and the run's own files (the metrics file
 * and --dump-rows); and the release. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "distill/run_impl.h"
#include "lms/alloc.h"
#include "lms/comm.h"
#include "lms/engine.h"

void lms_distill_run_init(struct lms_distill_run *r, const struct lms_distill_opts *o)
{
    *r = (struct lms_distill_run){.o = *o, .last_val_loss = NAN, .world = 1};
}

/* The content fingerprints of both models: what the state records and a resume and the ranks
 * compare. Every weight is read once (seconds for billions of parameters), which a plan that
 * resumes nothing skips. */
static enum lms_status fingerprint_models(struct lms_distill_run *r, struct lms_error *err)
{
    if (!r->o.fingerprint_models)
        return LMS_OK;
    if (lms_model_fingerprint(&r->student, r->student_fp, err))
        return lms_error_wrap(err, "student '%s': ", r->o.student);
    if (r->have_teacher && lms_model_fingerprint(&r->teacher, r->teacher_fp, err))
        return lms_error_wrap(err, "teacher '%s': ", r->o.teacher);
    return LMS_OK;
}

enum lms_status lms_distill_open_models(struct lms_distill_run *r, struct lms_error *err)
{
    const struct lms_distill_opts *a = &r->o;
    r->rank = lms_comm_rank(a->comm); /* the options are complete by now */
    r->world = lms_comm_world(a->comm);
    r->out_fmt = a->out_format ? a->out_format : lms_format_detect(a->student, err);
    if (!r->out_fmt)
        return err->status;
    if (a->write.format_opts &&
        (!a->write.format_opts_for || strcmp(a->write.format_opts_for, r->out_fmt->name) != 0))
        return lms_error_set(err, LMS_EINVAL, "'%s': options for the %s format given to the %s "
                             "writer", a->out,
                             a->write.format_opts_for ? a->write.format_opts_for : "(unnamed)",
                             r->out_fmt->name);
    if (a->write.dtype != LMS_DTYPE_COUNT && !lms_format_writes_dtype(r->out_fmt, a->write.dtype))
        return lms_error_set(err, LMS_EINVAL, "'%s': the %s writer cannot write dtype %s",
                             a->out, r->out_fmt->name, lms_dtype_name(a->write.dtype));
    if (lms_checkpoint_read(a->student, &r->student, err))
        return lms_error_wrap(err, "student: ");
    r->have_student = true;
    if (a->teacher && lms_checkpoint_read(a->teacher, &r->teacher, err))
        return lms_error_wrap(err, "teacher: ");
    r->have_teacher = a->teacher != NULL;
    enum lms_status st = fingerprint_models(r, err);
    if (st)
        return st;
    const struct lms_arch *s = &r->student.arch, *t = &r->teacher.arch;
    if (r->have_teacher && (s->padded_vocab != t->padded_vocab || s->vocab != t->vocab))
        return lms_error_set(err, LMS_EFORMAT, "student '%s' has a vocabulary of %lld (%lld "
                             "rows), teacher '%s' %lld (%lld rows): distillation compares the "
                             "two distributions token by token, so both must use the same "
                             "vocabulary", a->student, (long long)s->vocab,
                             (long long)s->padded_vocab, a->teacher, (long long)t->vocab,
                             (long long)t->padded_vocab);
    /* the student's own dtype unless one is given; a non-float one is exported as f32 (for FP8
     * the writer then quantises that export) */
    r->out_dtype = a->write.dtype != LMS_DTYPE_COUNT ? a->write.dtype : s->dtype;
    if (r->out_dtype != LMS_DTYPE_F32 && r->out_dtype != LMS_DTYPE_BF16 &&
        r->out_dtype != LMS_DTYPE_F16)
        r->out_dtype = LMS_DTYPE_F32;
    return LMS_OK;
}

enum lms_status lms_distill_open_data(struct lms_distill_run *r, struct lms_error *err)
{
    const struct lms_distill_opts *a = &r->o;
    int64_t n_val = a->val_batches * a->gbs;
    struct lms_blend_opts bo = {.row_len = a->seq + 1, .stride = a->seq,
                                .n_rows = a->max_steps * a->gbs, .min_tokens = a->gbs * a->seq + 1,
                                .seed = (uint64_t)a->seed, .split = a->split,
                                .which = LMS_SPLIT_TRAIN, .shuffle = true};
    enum lms_status st = lms_blend_open(a->src, a->n_src, &bo, &r->train, err);
    if (st)
        return st;
    r->data_fp = lms_calloc((size_t)a->n_src, sizeof *r->data_fp);
    if (!r->data_fp)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    for (int i = 0; i < a->n_src; i++)
        if ((st = lms_data_fingerprint(a->src[i].path, r->data_fp[i], err)))
            return st;
    if (!n_val)
        return LMS_OK;
    bo.n_rows = n_val;
    bo.which = LMS_SPLIT_VALID;
    bo.shuffle = false;
    if ((st = lms_blend_open(a->src, a->n_src, &bo, &r->val, err))) {
        size_t len = strlen(err->msg);
        snprintf(err->msg + len, sizeof err->msg - len, " (--limit-val-batches 0 turns "
                 "validation off)");
    }
    return st;
}

enum lms_status lms_distill_configure(struct lms_distill_run *r,
                                      const struct lms_train_state *state, struct lms_error *err)
{
    const struct lms_distill_opts *a = &r->o;
    /* on a GPU, bf16 GEMMs read a bf16 working copy unless fp32 is asked for; the trainer
     * keeps the teacher's final-norm output for the teacher's logits: as wide as the teacher,
     * which a student pruned on hidden channels is not */
    bool bf16 = a->device.kind != LMS_DEVICE_CPU && a->precision != LMS_PRECISION_FP32;
    enum lms_status fst = lms_distill_features_resolve(r, err);
    if (fst)
        return fst;
    /* the pairs size the trainer's captures (and, across widths, add the learned map) */
    r->to = (struct lms_train_opts){.max_batch = a->mbs, .max_seq = a->seq,
                                    .recompute = a->recompute, .bf16_working = bf16,
                                    .teacher_hidden = r->have_teacher ? r->teacher.arch.hidden
                                                                      : 0,
                                    .max_hidden_pairs = r->n_pairs, .comm = a->comm};
    r->config = lms_distill_config(r);
    r->history = json_array();
    if (!r->config || !r->history)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    if (!state)
        return LMS_OK;
    char diff[1024];
    json_t *was = json_object_get(state->meta, "config");
    if (lms_distill_config_diff(was, r->config, "", diff, sizeof diff))
        return lms_error_set(err, LMS_EINVAL, "--resume: the state '%s' was made with another "
                             "configuration (%s); resume with the same options, or start over "
                             "with --force", a->state_dir, diff);
    json_t *s = json_object_get(state->meta, "step");
    r->step = json_is_integer(s) ? json_integer_value(s) : -1;
    if (r->step < 0 || r->step > a->max_steps)
        return lms_error_set(err, LMS_EFORMAT, "'%s': bad step count", a->state_dir);
    json_t *h = json_object_get(state->meta, "history");
    if (json_is_array(h))
        json_array_extend(r->history, h);
    r->start_step = r->saved_step = r->step;
    return LMS_OK;
}

enum lms_status lms_distill_plan(const struct lms_distill_run *r, struct lms_train_plan *tp,
                                 struct lms_distill_memory *mem, struct lms_error *err)
{
    const struct lms_distill_opts *a = &r->o;
    enum lms_status st = lms_train_plan_make(&r->student.arch, r->student.arch.padded_vocab,
                                             &r->to, tp, err);
    if (st)
        return st;
    bool on_gpu = a->device.kind != LMS_DEVICE_CPU;
    struct lms_distill_shape shape = {
        .trainer = tp, .student = &r->student.arch,
        .teacher = r->have_teacher ? &r->teacher.arch : NULL,
        .teacher_params = r->have_teacher ? lms_model_n_params(&r->teacher) : 0,
        .teacher_weight_bytes = r->to.bf16_working ? lms_dtype_size(r->teacher.arch.dtype) : 4,
        .out_bytes = lms_dtype_size(r->out_dtype), .mbs = a->mbs, .seq = a->seq,
        .n_rows_planned = (a->max_steps + a->val_batches) * a->gbs, .device = on_gpu};
    return lms_distill_memory_plan(&shape, mem, err);
}

/* A log the run writes as it goes: appended to (resume), created where nothing is (excl), or
 * replaced. */
static FILE *open_log(const char *path, bool append, bool excl)
{
    int how = append ? O_APPEND : excl ? O_EXCL : O_TRUNC;
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | how, 0666);
    if (fd < 0)
        return NULL;
    FILE *f = fdopen(fd, append ? "a" : "w");
    if (!f)
        close(fd);
    return f;
}

/* Whether nothing is at path, so that a file opened there next is this run's own (a resume
 * appends to what is there). */
static bool path_free(const char *path, bool resume)
{
    struct stat sb;
    return !resume && lstat(path, &sb) != 0;
}

/* Records f as created by this run when its path was free. */
static void note_made(FILE *f, bool was_free, struct lms_made_file *m)
{
    struct stat sb;
    m->created = was_free && fstat(fileno(f), &sb) == 0;
    if (m->created) {
        m->dev = (uint64_t)sb.st_dev;
        m->ino = (uint64_t)sb.st_ino;
    }
}

/* The metrics file (rank 0) and --dump-rows: appended to on resume, replaced with force, else
 * created where nothing is (replacing nothing, even what appeared during the checks). */
static enum lms_status open_outputs(struct lms_distill_run *r, struct lms_error *err)
{
    const struct lms_distill_opts *a = &r->o;
    if (a->log_dir && mkdir(a->log_dir, 0755) != 0 && errno != EEXIST)
        return lms_error_set(err, LMS_EIO, "creating --log-dir '%s': %s", a->log_dir,
                             strerror(errno));
    bool keep = !a->write.force && !a->resume;
    if (r->rank == 0 && a->metrics_path) {
        bool was_free = path_free(a->metrics_path, a->resume);
        if (!(r->metrics = open_log(a->metrics_path, a->resume, keep)))
            return lms_error_set(err, errno == EEXIST ? LMS_EEXIST : LMS_EIO,
                                 "opening '%s': %s", a->metrics_path, strerror(errno));
        note_made(r->metrics, was_free, &r->metrics_made);
    }
    if (a->dump_rows) {
        bool was_free = path_free(a->dump_rows, a->resume);
        if (!(r->dump = open_log(a->dump_rows, false, keep)))
            return lms_error_set(err, errno == EEXIST ? LMS_EEXIST : LMS_EIO, "opening "
                                 "--dump-rows '%s': %s", a->dump_rows, strerror(errno));
        note_made(r->dump, was_free, &r->dump_made);
    }
    return LMS_OK;
}

enum lms_status lms_distill_open_training(struct lms_distill_run *r,
                                          const struct lms_train_state *state,
                                          struct lms_error *err)
{
    const struct lms_distill_opts *a = &r->o;
    enum lms_status st;
    struct lms_backend_opts bko = {.n_threads = a->threads, .precision = a->precision};
    if (!r->be && (st = lms_backend_open(&a->device, &bko, &r->be, err)))
        return st;
    if ((st = lms_comm_attach_device(a->comm, lms_backend_name(r->be), err)))
        return st;
    if ((st = lms_trainer_new(&r->student, r->be, &r->to, &r->tr, err)))
        return lms_error_wrap(err, "student '%s': ", a->student);
    struct lms_engine_opts eo = {.max_batch = a->mbs, .max_seq = a->seq};
    if (r->have_teacher && (st = lms_engine_new(&r->teacher, r->be, &eo, &r->te, err)))
        return lms_error_wrap(err, "teacher '%s': ", a->teacher);
    if (r->have_teacher)
        lms_distill_loss_opts(&a->loss, &r->loss);
    else
        lms_distill_ce_loss_opts(&r->loss);
    r->loss.pairs = r->pairs;
    r->loss.n_pairs = r->n_pairs;
    r->sched = (struct lms_lr_schedule){.lr = a->lr, .min_lr = a->min_lr, .warmup = a->warmup,
                                        .max_steps = a->max_steps};
    r->row = lms_malloc((size_t)(a->seq + 1) * sizeof(int32_t));
    r->ids = lms_malloc((size_t)(a->mbs * a->seq) * sizeof(int32_t));
    r->tgt = lms_malloc((size_t)(a->mbs * a->seq) * sizeof(int32_t));
    if (!r->row || !r->ids || !r->tgt)
        return lms_error_set(err, LMS_ENOMEM, "out of memory for the batch buffers");
    if (state) {
        if ((st = lms__distill_restore(r, state, err)))
            return st;
        if (r->rank == 0 && a->metrics_path &&
            (st = lms_distill_metrics_truncate(a->metrics_path, r->step, err)))
            return st;
    }
    return open_outputs(r, err);
}

/* A failed run leaves neither an empty metrics file nor a --dump-rows file that it created
 * (rows of a run that did not finish are no record of one); a file that was there before, one
 * a resume wrote to, and metrics lines already logged stay. */
static void discard_made(FILE **f, const char *path, const struct lms_made_file *m,
                         bool only_if_empty)
{
    if (!m->created)
        return;
    if (*f) {
        if (only_if_empty && ftell(*f) != 0)
            return;
        fclose(*f);
        *f = NULL;
    } else if (only_if_empty) { /* closed already (its close failed): what it holds is unknown */
        return;
    }
    struct stat sb;
    if (lstat(path, &sb) == 0 && (uint64_t)sb.st_dev == m->dev && (uint64_t)sb.st_ino == m->ino)
        unlink(path);
}

void lms_distill_discard_outputs(struct lms_distill_run *r)
{
    discard_made(&r->metrics, r->o.metrics_path, &r->metrics_made, true);
    discard_made(&r->dump, r->o.dump_rows, &r->dump_made, false);
}

void lms_distill_run_release(struct lms_distill_run *r)
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
    lms_free(r->pairs);
    lms_comm_close(r->o.comm);
    lms_backend_free(r->be);
    lms_blend_free(r->train);
    lms_blend_free(r->val);
    if (r->have_student)
        lms_model_release(&r->student);
    if (r->have_teacher)
        lms_model_release(&r->teacher);
    lms_free(r->data_fp);
    json_decref(r->config);
    json_decref(r->history);
}
