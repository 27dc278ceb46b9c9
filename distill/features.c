/* Feature (intermediate-state) distillation: which student layers are compared with which
 * teacher layers, chosen by the user (--feature-pairs, --feature-every). By default there are
 * none, for a width- and a depth-pruned student alike: logits-only distillation was as good or
 * better in every paired comparison we measured on width-pruned students, and cheaper (the
 * README's quality section has the figures). */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lms/alloc.h"
#include "lms/distill_run.h"

const char *lms_feature_hook_name(enum lms_feature_hook h)
{
    switch (h) {
    case LMS_FEATURE_HOOK_MLP_NORM:
        return "mlp-norm";
    case LMS_FEATURE_HOOK_ATTN_NORM:
        return "attn-norm";
    }
    return NULL;
}

const char *lms_feature_kind_name(enum lms_hidden_loss_kind k)
{
    switch (k) {
    case LMS_HIDDEN_COSINE:
        return "cosine";
    case LMS_HIDDEN_MSE:
        return "mse";
    }
    return NULL;
}

/* Whether any width of the student differs from the teacher's (hidden channels, FFN neurons,
 * heads, query groups, head size): the students Minitron distills with intermediate states. */
static bool widths_differ(const struct lms_arch *s, const struct lms_arch *t)
{
    return s->hidden != t->hidden || s->ffn != t->ffn || s->n_heads != t->n_heads ||
           s->n_groups != t->n_groups || s->head_dim != t->head_dim;
}

/* The teacher layer student layer i came from: prune's kept-layer map when the student has one
 * for a model as deep as the teacher, else the same index. */
static int64_t source_layer(const struct lms_model *student, int64_t teacher_layers, int64_t i)
{
    if (student->layer_src && student->n_layers_src == teacher_layers)
        return student->layer_src[i];
    return i;
}

static enum lms_status add_pair(struct lms_distill_run *r, int64_t s, int64_t t,
                                const char *flag, struct lms_error *err)
{
    const int64_t ns = r->student.arch.n_layers, nt = r->teacher.arch.n_layers;
    if (s < 0 || s >= ns)
        return lms_error_set(err, LMS_EINVAL, "%s: student layer %lld outside 1..%lld", flag,
                             (long long)(s + 1), (long long)ns);
    if (t < 0 || t >= nt)
        return lms_error_set(err, LMS_EINVAL, "%s: teacher layer %lld outside 1..%lld", flag,
                             (long long)(t + 1), (long long)nt);
    for (size_t k = 0; k < r->n_pairs; k++)
        if (r->pairs[k].student_layer == s && r->pairs[k].teacher_layer == t)
            return lms_error_set(err, LMS_EINVAL, "%s: pair %lld:%lld given twice", flag,
                                 (long long)(s + 1), (long long)(t + 1));
    enum lms_hook_point p = r->o.loss.feature_hook == LMS_FEATURE_HOOK_ATTN_NORM
                                ? LMS_HOOK_ATTN_NORM_OUT
                                : LMS_HOOK_MLP_NORM_OUT;
    r->pairs[r->n_pairs++] = (struct lms_hidden_pair){p, s, p, t};
    return LMS_OK;
}

/* One number of a pair list: digits (no sign, no space) up to the next ':' / ',' / end. */
static bool parse_layer(const char **cur, int64_t *out)
{
    char *end;
    if (!isdigit((unsigned char)**cur))
        return false;
    errno = 0;
    long long v = strtoll(*cur, &end, 10);
    if (end == *cur || errno || (*end && *end != ':' && *end != ','))
        return false;
    *cur = end;
    *out = v - 1;
    return true;
}

static enum lms_status parse_list(struct lms_distill_run *r, const char *list,
                                  struct lms_error *err)
{
    const char *flag = "--feature-pairs";
    const char *cur = list;
    while (*cur) {
        int64_t s, t;
        if (!parse_layer(&cur, &s) || *cur != ':')
            return lms_error_set(err, LMS_EINVAL, "%s: '%s' is not a list of STUDENT:TEACHER "
                                 "layers (1-based, e.g. 2:3,4:6) or none", flag, list);
        cur++;
        if (!parse_layer(&cur, &t) || (*cur == ',' && !cur[1]))
            return lms_error_set(err, LMS_EINVAL, "%s: '%s' is not a list of STUDENT:TEACHER "
                                 "layers (1-based, e.g. 2:3,4:6) or none", flag, list);
        enum lms_status st = add_pair(r, s, t, flag, err);
        if (st)
            return st;
        if (*cur == ',')
            cur++;
    }
    if (!r->n_pairs)
        return lms_error_set(err, LMS_EINVAL, "%s: empty list (none turns the pairs off)", flag);
    return LMS_OK;
}

static enum lms_status pairs_every(struct lms_distill_run *r, int64_t k, const char *flag,
                                   struct lms_error *err)
{
    const int64_t ns = r->student.arch.n_layers, nt = r->teacher.arch.n_layers;
    if (k > ns)
        return lms_error_set(err, LMS_EINVAL, "%s %lld: the student has %lld layers", flag,
                             (long long)k, (long long)ns);
    for (int64_t i = k - 1; i < ns; i += k) {
        enum lms_status st = add_pair(r, i, source_layer(&r->student, nt, i), flag, err);
        if (st)
            return st;
    }
    return LMS_OK;
}

/* A run without a teacher has no pairs: the cross-entropy is its whole loss. */
static enum lms_status no_teacher(struct lms_distill_run *r, struct lms_error *err)
{
    enum lms_feature_mode mode = r->o.loss.features;
    if (mode == LMS_FEATURES_LIST || mode == LMS_FEATURES_EVERY)
        return lms_error_set(err, LMS_EINVAL, "%s: intermediate-state pairs compare the "
                             "student with a teacher, and this run has none",
                             mode == LMS_FEATURES_LIST ? "--feature-pairs" : "--feature-every");
    r->width_pruned = false;
    lms_free(r->pairs);
    r->pairs = NULL;
    r->n_pairs = 0;
    snprintf(r->features_why, sizeof r->features_why,
             "cross-entropy on the data's next tokens (no teacher)");
    r->features_resolved = true;
    return LMS_OK;
}

enum lms_status lms_distill_features_resolve(struct lms_distill_run *r, struct lms_error *err)
{
    if (r->features_resolved)
        return LMS_OK;
    const struct lms_distill_loss *l = &r->o.loss;
    const int64_t ns = r->student.arch.n_layers;
    if (!r->have_teacher)
        return no_teacher(r, err);
    r->width_pruned = widths_differ(&r->student.arch, &r->teacher.arch);
    lms_free(r->pairs);
    r->pairs = NULL;
    r->n_pairs = 0;
    const enum lms_feature_mode mode = l->features == LMS_FEATURES_AUTO ? LMS_FEATURES_NONE
                                                                        : l->features;
    if (l->feature_scale != 0 && l->feature_scale != 1)
        return lms_error_set(err, LMS_EINVAL, "--feature-loss-scale %g: the scaled combine rule "
                             "rescales the feature loss to the logits loss, so only 1 is "
                             "accepted", l->feature_scale);
    if (mode == LMS_FEATURES_EVERY && l->feature_every < 1)
        return lms_error_set(err, LMS_EINVAL, "--feature-every: K must be at least 1");
    size_t cap = mode == LMS_FEATURES_LIST ? strlen(l->feature_pairs ? l->feature_pairs : "") / 2 + 1
                                           : (size_t)ns;
    if (mode != LMS_FEATURES_NONE && !(r->pairs = lms_calloc(cap, sizeof *r->pairs)))
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    enum lms_status st = LMS_OK;
    if (mode == LMS_FEATURES_LIST)
        st = parse_list(r, l->feature_pairs ? l->feature_pairs : "", err);
    else if (mode == LMS_FEATURES_EVERY)
        st = pairs_every(r, l->feature_every, "--feature-every", err);
    if (st)
        return st;
    const char *what = l->features == LMS_FEATURES_AUTO
                           ? (r->width_pruned ? "width-pruned student: logits only (default)"
                                              : "depth-pruned student: logits only (default)")
                           : (r->n_pairs ? "logits + intermediate states" : "logits only");
    if (r->n_pairs)
        snprintf(r->features_why, sizeof r->features_why, "%s, %zu pairs at %s, %s loss", what,
                 r->n_pairs, lms_feature_hook_name(l->feature_hook),
                 lms_feature_kind_name(l->feature_kind));
    else
        snprintf(r->features_why, sizeof r->features_why, "%s", what);
    /* a depth-cut student read from disk carries no kept-layer map: say how it was paired */
    if (mode == LMS_FEATURES_EVERY && r->n_pairs && !r->student.layer_src &&
        r->student.arch.n_layers != r->teacher.arch.n_layers) {
        size_t len = strlen(r->features_why);
        snprintf(r->features_why + len, sizeof r->features_why - len,
                 " (no kept-layer map: layer i pairs with teacher layer i)");
    }
    r->features_resolved = true;
    return LMS_OK;
}
