/* The optimiser presets the distill command offers (include/lms/distill.h), on top of the
 * engine's AdamW settings (include/lms/train.h). */
#include <string.h>

#include "lms/distill.h"
#include "lms/train.h"

static const char *const names[LMS_OPTIM_PRESET_COUNT] = {
    [LMS_OPTIM_PARITY] = "parity",
    [LMS_OPTIM_MEGATRON] = "megatron",
    [LMS_OPTIM_GPT] = "gpt",
};

void lms_optim_preset_apply(enum lms_optim_preset p, struct lms_adamw_opts *o)
{
    if (p == LMS_OPTIM_PARITY) {
        lms_adamw_defaults(o);
        return;
    }
    lms_adamw_megatron(o);
    if (p == LMS_OPTIM_GPT)
        o->eps = 1e-8; /* PyTorch's AdamW default, what the GPT recipe ran with */
}

bool lms_optim_preset_parse(const char *s, enum lms_optim_preset *out)
{
    for (int i = 0; i < LMS_OPTIM_PRESET_COUNT; i++) {
        if (!strcmp(s, names[i])) {
            *out = (enum lms_optim_preset)i;
            return true;
        }
    }
    return false;
}

