/* prune's calibration glue (see prune_calib.h). */
#include "cli/prune_calib.h"

#include <jansson.h>
#include <math.h>

#include "lms/alloc.h"

struct prune_calib {
    char describe[512];
};

void prune_calib_defaults(struct prune_calib_opts *o)
{
    *o = (struct prune_calib_opts){.n_samples = 1024, .seq_len = 4096, .mbs = 4, .seed = 1234,
                                   .device = "cpu", .eval_samples = 16};
}

enum lms_status prune_calib_run(const struct lms_model *m, const struct prune_calib_opts *o,
                                struct prune_calib **out, struct lms_importance *imp,
                                struct lms_error *err)
{
    (void)m, (void)o, (void)imp;
    *out = NULL;
    return lms_error_set(err, LMS_EUNSUPPORTED, "calibration is not available");
}

enum lms_status prune_calib_scores_for(struct prune_calib *c, const struct lms_model *m,
                                       const struct lms_importance *imp, int64_t n_keep,
                                       struct lms_importance *view, struct lms_error *err)
{
    (void)c, (void)m, (void)n_keep, (void)err;
    *view = *imp;
    return LMS_OK;
}

enum lms_status prune_calib_eval(struct prune_calib *c, const struct lms_model *m, double *loss,
                                 struct lms_error *err)
{
    (void)c, (void)m, (void)err;
    *loss = NAN;
    return LMS_OK;
}

const char *prune_calib_describe(const struct prune_calib *c)
{
    return c->describe;
}

json_t *prune_calib_json(const struct prune_calib *c)
{
    (void)c;
    return json_object();
}

void prune_calib_free(struct prune_calib *c)
{
    lms_free(c);
}
