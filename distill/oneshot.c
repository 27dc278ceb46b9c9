/* The distillation run for a caller that wants it whole (include/lms/distill_run.h): the
 * command's defaults as options, and one call that opens, configures (resuming when asked),
 * trains and releases. The command itself takes its defaults from here. */
#include "lms/distill_run.h"

void lms_distill_opts_default(struct lms_distill_opts *o)
{
    *o = (struct lms_distill_opts){
        .split = "969,30,1",
        .seq = 4096, .gbs = 768, .mbs = 8, .max_steps = 40, .warmup = 1, .seed = 1234,
        .lr = 1e-4, .min_lr = 1e-5,
        .loss = {.kind = LMS_KD_FORWARD_KL, .temperature = 1, .lm_loss_scale = 0,
                 .kd_loss_scale = 1, .features = LMS_FEATURES_AUTO, .feature_every = 1,
                 .feature_hook = LMS_FEATURE_HOOK_MLP_NORM, .feature_kind = LMS_HIDDEN_COSINE,
                 .feature_scale = 1},
        .log_interval = 1, .val_batches = 1,
        .save_state = LMS_DISTILL_SAVE_STATE_INTERVAL,
        .write = {.dtype = LMS_DTYPE_COUNT},
        .fingerprint_models = true,
        .device = {.kind = LMS_DEVICE_CPU},
    };
    lms_optim_preset_apply(LMS_OPTIM_PARITY, &o->adam);
}

enum lms_status lms_distill_run_all(const struct lms_distill_opts *o, struct lms_error *err)
{
    struct lms_distill_run r;
    lms_distill_run_init(&r, o);
    struct lms_train_state state = {0};
    bool have_state = false;
    enum lms_status st = LMS_OK;
    if (o->resume && !(st = lms_train_state_read(o->state_dir, &state, err)))
        have_state = true;
    if (!st)
        st = lms_distill_open_models(&r, err);
    if (!st)
        st = lms_distill_open_data(&r, err);
    if (!st)
        st = lms_distill_configure(&r, have_state ? &state : NULL, err);
    if (!st)
        st = lms_distill_open_training(&r, have_state ? &state : NULL, err);
    if (have_state)
        lms_train_state_release(&state);
    if (!st)
        st = lms_distill_train(&r, err);
    if (st)
        lms_distill_discard_outputs(&r);
    lms_distill_run_release(&r);
    return st;
}
