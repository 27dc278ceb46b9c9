/* The Minitron pipeline as a batch script would write it against the installed library
 * (liblmsurgeon.so, pkg-config lmsurgeon), using only the public headers:
 *
 *   1. convert a Hugging Face checkpoint to NeMo 2;
 *   2. prune it with calibration: activation scores of the FFN neurons and a depth metric on
 *      a few windows of the data, a plan to the target shape, the pruned student written as
 *      a Hugging Face checkpoint;
 *   3. distill the student from the teacher for a few steps.
 *
 * usage: pipeline TEACHER DATA OUT_DIR
 *   TEACHER  a Hugging Face checkpoint directory
 *   DATA     token ids: a Megatron indexed dataset prefix or a raw .u16/.i32 id file
 *   OUT_DIR  an existing directory; teacher-nemo/, student/ and distilled/ are written there
 *
 * Prints one line per step and exits 0 on success, 1 with the library's message otherwise. */
#include <stdio.h>
#include <string.h>

#include "lms/distill_run.h"
#include "lms/format.h"
#include "lms/importance.h"
#include "lms/score.h"
#include "lms/surgery.h"

static int failed(const char *step, const struct lms_error *err)
{
    fprintf(stderr, "pipeline: %s: %s\n", step, err->msg);
    return 1;
}

static int convert_to_nemo(const struct lms_model *teacher, const char *out)
{
    struct lms_error err;
    lms_error_clear(&err);
    struct lms_write_result res;
    if (lms_checkpoint_write(lms_format_find("nemo"), teacher, out, NULL, &res, &err))
        return failed("convert", &err);
    printf("converted to NeMo 2: %s (%d tensors)\n", out, res.n_tensors);
    return 0;
}

/* Calibrates on 8 windows of 64 tokens, then keeps 3/4 of the FFN neurons and drops the two
 * layers the Block Influence metric ranks lowest. */
static int prune_with_calibration(const struct lms_model *teacher, const char *data,
                                  const char *out)
{
    struct lms_error err;
    lms_error_clear(&err);
    struct lms_prune_targets t = {.ffn = teacher->arch.ffn * 3 / 4,
                                  .n_layers = teacher->arch.n_layers - 2,
                                  .selection = LMS_LAYERS_METRIC,
                                  .metric = LMS_LAYER_METRIC_BI};
    if (lms_prune_targets_check(&t, &teacher->arch, &err))
        return failed("targets", &err);
    struct lms_calib_opts co;
    lms_calib_opts_default(&co);
    co.data = data;
    co.n_samples = 8;
    co.seq_len = 64;
    co.threads = 1;
    lms_prune_calib_setup(&teacher->arch, &t, false, &co);

    struct lms_importance imp;
    lms_importance_init(&imp, &teacher->arch);
    struct lms_calib *cal = NULL;
    struct lms_prune_plan plan;
    struct lms_model student;
    lms_model_init(&student);
    bool have_plan = false;
    enum lms_status st = lms_calib_run(teacher, &co, &cal, &imp, &err);
    if (!st)
        have_plan = !(st = lms_prune_plan_calibrated(teacher, &t, &imp, cal, &plan, NULL, &err));
    if (!st)
        st = lms_prune_apply(teacher, &plan, &student, &err);
    struct lms_write_result res;
    if (!st)
        st = lms_checkpoint_write(lms_format_find("hf"), &student, out, NULL, &res, &err);
    if (!st)
        printf("pruned with calibration (%s): %lld layers, FFN %lld -> %s\n",
               lms_calib_describe(cal), (long long)student.arch.n_layers,
               (long long)student.arch.ffn, out);
    lms_model_release(&student);
    if (have_plan)
        lms_prune_plan_release(&plan);
    lms_calib_free(cal);
    lms_importance_release(&imp);
    return st ? failed("prune", &err) : 0;
}

static void on_logged(void *ctx, const struct lms_distill_run *r, const struct lms_distill_log *l)
{
    (void)ctx;
    printf("distill step %lld: loss %.4f, lr %.2e\n", (long long)r->step, r->last_loss, l->lr);
}

static int distill_few_steps(const char *teacher, const char *student, const char *data,
                             const char *out_dir)
{
    struct lms_error err;
    lms_error_clear(&err);
    char out[4096], state[4096];
    snprintf(out, sizeof out, "%s/distilled", out_dir);
    snprintf(state, sizeof state, "%s/distilled.state", out_dir);
    struct lms_blend_source src = {.path = (char *)data, .weight = 1};
    struct lms_distill_opts o;
    lms_distill_opts_default(&o);
    o.student = student;
    o.teacher = teacher;
    o.src = &src;
    o.n_src = 1;
    o.split = "1";
    o.seq = 32;
    o.gbs = 4;
    o.mbs = 2;
    o.max_steps = 3;
    o.lr = 1e-3;
    o.min_lr = 1e-4;
    o.val_batches = 0;
    o.out = out;
    o.state_dir = state;
    o.threads = 1;
    o.ev = (struct lms_distill_events){.logged = on_logged};
    if (lms_distill_run_all(&o, &err))
        return failed("distill", &err);
    printf("distilled: %s\n", out);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: pipeline TEACHER DATA OUT_DIR\n");
        return 2;
    }
    const char *teacher_path = argv[1], *data = argv[2], *out_dir = argv[3];
    char nemo[4096], student[4096];
    snprintf(nemo, sizeof nemo, "%s/teacher-nemo", out_dir);
    snprintf(student, sizeof student, "%s/student", out_dir);

    struct lms_error err;
    lms_error_clear(&err);
    struct lms_model teacher;
    if (lms_checkpoint_read(teacher_path, &teacher, &err))
        return failed("read", &err);
    int rc = convert_to_nemo(&teacher, nemo);
    if (!rc)
        rc = prune_with_calibration(&teacher, data, student);
    lms_model_release(&teacher);
    if (!rc)
        rc = distill_few_steps(teacher_path, student, data, out_dir);
    return rc;
}
