/* The distillation run as a library call, on the tiny fixtures (the reference student and the
 * qwen3-tiny teacher, the held-out corpus ids folded into their 512-entry vocabulary): the
 * command `lmsurgeon distill` with the same options logs the same losses bit for bit and writes
 * the same student bytes, so the command is a shell over the library; a stop asked for through
 * the callback saves the state and resumes to the uninterrupted run's student; the KD loss
 * table names the losses the command offers. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check_main.h"
#include "lms/distill_run.h"
#include "lms/outdir.h"

#define STEPS 3

static char tmp[4096];
static char student[4096], teacher[4096], data[4096];

/* A scratch directory holding the data: the corpus' first 40000 ids mod 512 as raw int32. */
static void setup(void)
{
    const char *fx = getenv("LMS_FIXTURES"), *t = getenv("TMPDIR");
    ck_assert_msg(fx != NULL, "LMS_FIXTURES is not set");
    snprintf(tmp, sizeof tmp, "%s/lms-distill-run.XXXXXX", t ? t : "/tmp");
    ck_assert_ptr_nonnull(mkdtemp(tmp));
    snprintf(student, sizeof student, "%s/models/qwen3-tiny-distill-reference/student", fx);
    snprintf(teacher, sizeof teacher, "%s/models/qwen3-tiny", fx);
    snprintf(data, sizeof data, "%s/data.i32", tmp);
    char src[4096];
    snprintf(src, sizeof src, "%s/corpus/val.ids.u16", fx);
    FILE *in = fopen(src, "rb"), *out = fopen(data, "wb");
    ck_assert(in && out);
    for (int i = 0; i < 40000; i++) {
        uint16_t v;
        ck_assert_int_eq(fread(&v, 2, 1, in), 1);
        int32_t w = v % 512;
        ck_assert_int_eq(fwrite(&w, 4, 1, out), 1);
    }
    fclose(in);
    ck_assert_int_eq(fclose(out), 0);
}

static void teardown(void)
{
    lms_remove_tree(tmp);
}

/* What the callbacks saw: the logged losses, and when to ask for a stop. */
struct seen {
    double loss[STEPS + 1], lm_loss[STEPS + 1], lr[STEPS + 1];
    int n_logged, n_started, n_finished;
    int64_t stop_after; /* ask for a stop once this many steps finished (0: never) */
    const struct lms_distill_run *run;
};

static void on_started(void *ctx, const struct lms_distill_run *r)
{
    struct seen *s = ctx;
    s->n_started++;
    s->run = r;
}

static void on_logged(void *ctx, const struct lms_distill_run *r, const struct lms_distill_log *l)
{
    struct seen *s = ctx;
    ck_assert_int_le(r->step, STEPS);
    s->loss[r->step] = r->last_loss;
    s->lm_loss[r->step] = r->last_lm_loss;
    s->lr[r->step] = l->lr;
    s->n_logged++;
}

static void on_finished(void *ctx, const struct lms_distill_run *r, enum lms_status st)
{
    struct seen *s = ctx;
    s->n_finished++;
}

static struct seen *stop_ctx;
static const char *stop_requested(void *ctx)
{
    (void)ctx;
    return stop_ctx && stop_ctx->stop_after && stop_ctx->run &&
                   stop_ctx->run->step >= stop_ctx->stop_after
               ? "stopped by the test"
               : NULL;
}

/* The options the command's flags below give (tests must keep the two in step). */
static void opts_for(const char *name, struct lms_distill_opts *o, struct lms_blend_source *src,
                     char paths[3][4096], struct seen *seen)
{
    snprintf(paths[0], 4096, "%s/%s", tmp, name);
    snprintf(paths[1], 4096, "%s/%s.state", tmp, name);
    snprintf(paths[2], 4096, "%s/logs/%s.metrics.jsonl", tmp, name);
    static char log_dir[4096];
    snprintf(log_dir, sizeof log_dir, "%s/logs", tmp);
    *src = (struct lms_blend_source){.path = data, .weight = 1};
    *o = (struct lms_distill_opts){
        .student = student, .teacher = teacher, .src = src, .n_src = 1, .split = "1",
        .seq = 32, .gbs = 4, .mbs = 2, .max_steps = STEPS, .warmup = 1, .seed = 1234,
        .lr = 1e-3, .min_lr = 1e-4,
        .loss = {.kind = LMS_KD_FORWARD_KL, .temperature = 1, .lm_loss_scale = 0.5,
                 .kd_loss_scale = 1},
        .log_interval = 1, .val_batches = 0, .save_state = LMS_DISTILL_SAVE_STATE_INTERVAL,
        .out = paths[0], .state_dir = paths[1], .log_dir = log_dir, .metrics_path = paths[2],
        .write = {.dtype = LMS_DTYPE_COUNT}, .fingerprint_models = true, .threads = 1,
        .device = {.kind = LMS_DEVICE_CPU}};
    lms_optim_preset_apply(LMS_OPTIM_GPT, &o->adam);
    o->ev = (struct lms_distill_events){.ctx = seen, .started = on_started,
                                        .logged = on_logged, .finished = on_finished,
                                        .stop_requested = stop_requested};
}

/* One library run (lms_distill_run_all: open, configure, resuming when asked, train). */
static enum lms_status library_run(const char *name, struct seen *seen, bool resume,
                                   struct lms_error *err)
{
    struct lms_distill_opts o;
    struct lms_blend_source src;
    static char paths[3][4096];
    opts_for(name, &o, &src, paths, seen);
    o.resume = resume;
    stop_ctx = seen;
    enum lms_status st = lms_distill_run_all(&o, err);
    stop_ctx = NULL;
    return st;
}

/* The whole content of path into a malloc'd buffer (*n bytes). */
static char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)len + 1);
    ck_assert_int_eq(fread(b, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    b[len] = '\0';
    *n = (size_t)len;
    return b;
}

static void assert_same_file(const char *a, const char *b)
{
    size_t na, nb;
    char *x = slurp(a, &na), *y = slurp(b, &nb);
    ck_assert_msg(na == nb && memcmp(x, y, na) == 0, "%s and %s differ", a, b);
    free(x);
    free(y);
}

START_TEST(cli_is_a_shell_over_the_library)
{
    struct seen seen = {0};
    struct lms_error err;
    lms_error_clear(&err);
    ck_assert_msg(library_run("lib", &seen, false, &err) == LMS_OK, "%s", err.msg);
    ck_assert_int_eq(seen.n_started, 1);
    ck_assert_int_eq(seen.n_finished, 1);
    ck_assert_int_eq(seen.n_logged, STEPS);

    const char *bin = getenv("LMSURGEON");
    ck_assert_msg(bin != NULL, "LMSURGEON is not set");
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "'%s' distill --student '%s' --teacher '%s' --data-paths '%s' "
             "--split 1 --seq-length 32 --gbs 4 --mbs 2 --max-steps %d --warmup-steps 1 "
             "--lr 1e-3 --min-lr 1e-4 --optim-preset gpt --lm-loss-scale 0.5 "
             "--limit-val-batches 0 --threads 1 --log-dir '%s/logs' --out '%s/cli' --quiet",
             bin, student, teacher, data, STEPS, tmp, tmp);
    ck_assert_int_eq(system(cmd), 0);

    /* the command's metrics: the same losses and rates, bit for bit */
    char path[4200];
    snprintf(path, sizeof path, "%s/logs/cli.metrics.jsonl", tmp);
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        json_t *o = json_loads(line, 0, NULL);
        ck_assert_ptr_nonnull(o);
        if (!strcmp(json_string_value(json_object_get(o, "event")), "train")) {
            int64_t k = json_integer_value(json_object_get(o, "step"));
            ck_assert(k >= 1 && k <= STEPS);
            ck_assert(isfinite(seen.loss[k]) && seen.loss[k] > 0);
            ck_assert(json_real_value(json_object_get(o, "loss")) == seen.loss[k]);
            ck_assert(json_real_value(json_object_get(o, "lm_loss")) == seen.lm_loss[k]);
            ck_assert(json_real_value(json_object_get(o, "lr")) == seen.lr[k]);
            n++;
        }
        json_decref(o);
    }
    fclose(f);
    ck_assert_int_eq(n, STEPS);
    /* the same student and the same training state, byte for byte */
    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s/lib/model.safetensors", tmp);
    snprintf(b, sizeof b, "%s/cli/model.safetensors", tmp);
    assert_same_file(a, b);
    snprintf(a, sizeof a, "%s/lib.state/optimizer.safetensors", tmp);
    snprintf(b, sizeof b, "%s/cli.state/optimizer.safetensors", tmp);
    assert_same_file(a, b);
}
END_TEST

START_TEST(stop_saves_and_resumes)
{
    struct seen whole = {0}, part = {.stop_after = 1}, rest = {0};
    struct lms_error err;
    lms_error_clear(&err);
    ck_assert_msg(library_run("whole", &whole, false, &err) == LMS_OK, "%s", err.msg);
    /* stopped after the first step: the state of step 1 is saved, the message says where */
    ck_assert_int_eq(library_run("part", &part, false, &err), LMS_EINTERRUPTED);
    ck_assert_msg(strstr(err.msg, "stopped by the test: the state after step 1 is in") != NULL,
                  "%s", err.msg);
    ck_assert_int_eq(part.n_logged, 1);
    lms_error_clear(&err);
    ck_assert_msg(library_run("part", &rest, true, &err) == LMS_OK, "%s", err.msg);
    ck_assert_int_eq(rest.n_logged, STEPS - 1);
    for (int k = 2; k <= STEPS; k++)
        ck_assert(rest.loss[k] == whole.loss[k]);
    char a[4200], b[4200];
    snprintf(a, sizeof a, "%s/whole/model.safetensors", tmp);
    snprintf(b, sizeof b, "%s/part/model.safetensors", tmp);
    assert_same_file(a, b);
}
END_TEST

START_TEST(kd_loss_table)
{
    /* the names the command has always taken, in its order, each its engine kind */
    static const char *const names[] = {"forward-kl", "reverse-kl", "top-k"};
    static const enum lms_kd_kind kinds[] = {LMS_KD_FORWARD_KL, LMS_KD_REVERSE_KL, LMS_KD_TOP_K};
    for (int i = 0; i < 3; i++) {
        const struct lms_kd_loss_def *d = lms_kd_loss_at(i);
        ck_assert_ptr_nonnull(d);
        ck_assert_str_eq(d->name, names[i]);
        ck_assert_int_eq(d->kind, kinds[i]);
        ck_assert_ptr_eq(lms_kd_loss_find(names[i]), d);
        ck_assert_ptr_eq(lms_kd_loss_of(kinds[i]), d);
    }
    ck_assert_ptr_null(lms_kd_loss_at(3));
    ck_assert_ptr_null(lms_kd_loss_find("kl"));
    char buf[64];
    lms_kd_loss_names(", ", buf, sizeof buf);
    ck_assert_str_eq(buf, "forward-kl, reverse-kl, top-k");
    struct lms_distill_loss l = {.kind = LMS_KD_TOP_K};
    ck_assert_ptr_nonnull(lms_kd_loss_find("top-k")->check(&l));
    l.top_k = 5;
    ck_assert_ptr_null(lms_kd_loss_find("top-k")->check(&l));
}
END_TEST

/* The pairs --feature-every makes follow prune's kept-layer map (a student pruned in memory):
 * student layer i against the teacher layer it was taken from; the default leaves a depth- and
 * a width-pruned student alike on the logits, and says which kind it saw. */
START_TEST(feature_pairs_follow_the_kept_layer_map)
{
    struct lms_distill_opts o;
    lms_distill_opts_default(&o);
    o.loss.features = LMS_FEATURES_EVERY;
    o.loss.feature_every = 1;
    struct lms_distill_run r;
    lms_distill_run_init(&r, &o);
    struct lms_arch t = {.n_layers = 6, .hidden = 64, .ffn = 160, .n_heads = 4, .n_groups = 2,
                         .head_dim = 16};
    int64_t kept[3] = {0, 2, 5};
    r.teacher.arch = t;
    r.student.arch = t;
    r.student.arch.n_layers = 3;
    r.student.layer_src = kept;
    r.student.n_layers_src = 6;
    r.have_teacher = true; /* as lms_distill_open_models leaves it */
    struct lms_error err;
    ck_assert_int_eq(lms_distill_features_resolve(&r, &err), LMS_OK);
    ck_assert_uint_eq(r.n_pairs, 3);
    for (size_t k = 0; k < 3; k++) {
        ck_assert_int_eq(r.pairs[k].student_layer, (int64_t)k);
        ck_assert_int_eq(r.pairs[k].teacher_layer, kept[k]);
        ck_assert_int_eq(r.pairs[k].student_point, LMS_HOOK_MLP_NORM_OUT);
    }
    ck_assert(!r.width_pruned);
    /* the default: none for this depth-pruned student, and none once a width differs */
    r.o.loss.features = LMS_FEATURES_AUTO;
    r.features_resolved = false;
    ck_assert_int_eq(lms_distill_features_resolve(&r, &err), LMS_OK);
    ck_assert_uint_eq(r.n_pairs, 0);
    ck_assert_str_eq(r.features_why, "depth-pruned student: logits only (default)");
    r.student.arch.ffn = 128;
    r.features_resolved = false;
    ck_assert_int_eq(lms_distill_features_resolve(&r, &err), LMS_OK);
    ck_assert(r.width_pruned);
    ck_assert_uint_eq(r.n_pairs, 0);
    ck_assert_str_eq(r.features_why, "width-pruned student: logits only (default)");
    /* ... and every layer with its source layer when asked, widths differing or not */
    r.o.loss.features = LMS_FEATURES_EVERY;
    r.features_resolved = false;
    ck_assert_int_eq(lms_distill_features_resolve(&r, &err), LMS_OK);
    ck_assert_uint_eq(r.n_pairs, 3);
    ck_assert_int_eq(r.pairs[2].teacher_layer, 5);
    /* a list naming a teacher layer past the teacher's 6 */
    r.o.loss.features = LMS_FEATURES_LIST;
    r.o.loss.feature_pairs = "1:1,3:7";
    r.features_resolved = false;
    ck_assert_int_eq(lms_distill_features_resolve(&r, &err), LMS_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "--feature-pairs: teacher layer 7 outside 1..6"));
    /* a run without a teacher has no pairs: pairs asked for are refused, the default is none */
    r.have_teacher = false;
    r.features_resolved = false;
    ck_assert_int_eq(lms_distill_features_resolve(&r, &err), LMS_EINVAL);
    ck_assert_ptr_nonnull(strstr(err.msg, "--feature-pairs: intermediate-state pairs compare"));
    r.o.loss.features = LMS_FEATURES_AUTO;
    r.features_resolved = false;
    ck_assert_int_eq(lms_distill_features_resolve(&r, &err), LMS_OK);
    ck_assert_uint_eq(r.n_pairs, 0);
    ck_assert(!r.width_pruned);
    ck_assert_ptr_nonnull(strstr(r.features_why, "no teacher"));
    r.student.layer_src = NULL; /* the test's */
    lms_distill_run_release(&r);
}
END_TEST

Suite *suite(void)
{
    Suite *s = suite_create("distill_run");
    TCase *tc = tcase_create("run");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, cli_is_a_shell_over_the_library);
    tcase_add_test(tc, stop_saves_and_resumes);
    tcase_add_test(tc, kd_loss_table);
    tcase_add_test(tc, feature_pairs_follow_the_kept_layer_map);
    suite_add_tcase(s, tc);
    return s;
}
