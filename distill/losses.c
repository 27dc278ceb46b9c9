/* The KD losses a distillation run offers, one row each: its name, the check of its options,
 * whether it reads the teacher, and the engine's kernel for it. */
#include <stdio.h>
#include <string.h>

#include "lms/distill_run.h"

static const char *check_none(const struct lms_distill_loss *l)
{
    (void)l;
    return NULL;
}

static const char *check_top_k(const struct lms_distill_loss *l)
{
    return l->top_k ? NULL : "--kd-loss top-k needs --kd-top-k K";
}

static const struct lms_kd_loss_def losses[] = {
    {"forward-kl", LMS_KD_FORWARD_KL, true, check_none},
    {"reverse-kl", LMS_KD_REVERSE_KL, true, check_none},
    {"top-k", LMS_KD_TOP_K, true, check_top_k},
};

const struct lms_kd_loss_def *lms_kd_loss_at(int i)
{
    return i >= 0 && i < (int)(sizeof losses / sizeof losses[0]) ? &losses[i] : NULL;
}

const struct lms_kd_loss_def *lms_kd_loss_find(const char *name)
{
    const struct lms_kd_loss_def *d;
    for (int i = 0; (d = lms_kd_loss_at(i)); i++)
        if (!strcmp(d->name, name))
            return d;
    return NULL;
}

const struct lms_kd_loss_def *lms_kd_loss_of(enum lms_kd_kind kind)
{
    const struct lms_kd_loss_def *d;
    for (int i = 0; (d = lms_kd_loss_at(i)); i++)
        if (d->kind == kind)
            return d;
    return NULL;
}

void lms_kd_loss_names(const char *sep, char *dst, size_t cap)
{
    const struct lms_kd_loss_def *d;
    size_t len = 0;
    if (cap)
        dst[0] = '\0';
    for (int i = 0; (d = lms_kd_loss_at(i)) && len < cap; i++)
        len += (size_t)snprintf(dst + len, cap - len, "%s%s", i ? sep : "", d->name);
}

/* The run's loss as the engine takes it: the KD term scaled to the cross-entropy's size and
 * weighted (LMS_COMBINE_SCALED). */
void lms_distill_loss_opts(const struct lms_distill_loss *l, struct lms_loss_opts *out)
{
    lms_loss_opts_default(out);
    out->kd = l->kind;
    out->temperature = l->temperature;
    out->top_k = l->top_k;
    out->ce_weight = l->lm_loss_scale;
    out->kd_weight = l->kd_loss_scale;
    out->combine = LMS_COMBINE_SCALED;
    /* the pairs themselves are the run's (lms_distill_features_resolve); the scaled rule
     * rescales their loss to L_logits, which no weight changes */
    out->hidden_kind = l->feature_kind;
}

/* Without a teacher the loss is the cross-entropy alone, as a fine-tune computes it: the
 * weighted rule with no KD term (the scaled rule would need a KD value to scale). */
void lms_distill_ce_loss_opts(struct lms_loss_opts *out)
{
    lms_loss_opts_default(out);
    out->kd_weight = 0;
    out->ce_weight = 1;
    out->combine = LMS_COMBINE_WEIGHTED;
}
