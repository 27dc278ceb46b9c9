/* Optimiser settings around the engine's AdamW update: presets, which parameters decay, and the
 * global-norm clipping factor (include/lms/distill.h). */
#include <math.h>
#include <string.h>

#include "lms/distill.h"

static const struct {
    const char *name;
    struct lms_adamw_opts o;
} presets[LMS_OPTIM_PRESET_COUNT] = {
    [LMS_OPTIM_PARITY] = {"parity", {0.9, 0.999, 1e-8, 0.01, 1.0}},
    [LMS_OPTIM_GPT] = {"gpt", {0.9, 0.95, 1e-8, 0.1, 1.0}},
};

void lms_adamw_preset(enum lms_optim_preset p, struct lms_adamw_opts *o)
{
    *o = presets[p].o;
}

bool lms_optim_preset_parse(const char *s, enum lms_optim_preset *out)
{
    for (int i = 0; i < LMS_OPTIM_PRESET_COUNT; i++) {
        if (!strcmp(s, presets[i].name)) {
            *out = (enum lms_optim_preset)i;
            return true;
        }
    }
    return false;
}

const char *lms_optim_preset_name(enum lms_optim_preset p)
{
    return presets[p].name;
}

bool lms_param_decays(enum lms_role role, int ndim)
{
    switch (role) {
    case LMS_ROLE_Q_BIAS:
    case LMS_ROLE_K_BIAS:
    case LMS_ROLE_V_BIAS:
    case LMS_ROLE_O_BIAS:
    case LMS_ROLE_ATTN_NORM:
    case LMS_ROLE_MLP_NORM:
    case LMS_ROLE_Q_NORM:
    case LMS_ROLE_K_NORM:
    case LMS_ROLE_FINAL_NORM:
        return false;
    default:
        /* anything else (the learned map of intermediate losses included): matrices decay,
         * vectors do not */
        return ndim >= 2;
    }
}

double lms_clip_factor(double sq_norm, double clip_norm)
{
    if (!(clip_norm > 0))
        return 1.0;
    double f = clip_norm / (sqrt(sq_norm) + 1e-6);
    return f < 1.0 ? f : 1.0;
}
