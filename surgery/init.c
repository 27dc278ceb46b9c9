/* Models of random weights (include/lms/init.h): every tensor of an arch as a generated view,
 * initialised by the rules of Hugging Face's _init_weights for the supported families. */
#include <string.h>

#include "lms/alloc.h"
#include "lms/init.h"

/* FNV-1a over the name, then two splitmix64 finalisers with the seed between them: a change
 * of one character or of the seed gives an unrelated key. */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

uint64_t lms_init_key(uint64_t seed, const char *name)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * UINT64_C(0x100000001b3);
    return mix64(mix64(h) ^ mix64(seed + UINT64_C(0x9e3779b97f4a7c15)));
}

/* What _init_weights gives a tensor of role r: RMSNorm weights are ones, biases zeros, every
 * Linear and Embedding weight a normal draw. */
static void role_distribution(enum lms_role r, double range, double *mean, double *std)
{
    switch (r) {
    case LMS_ROLE_ATTN_NORM:
    case LMS_ROLE_MLP_NORM:
    case LMS_ROLE_FINAL_NORM:
    case LMS_ROLE_Q_NORM:
    case LMS_ROLE_K_NORM:
        *mean = 1, *std = 0;
        return;
    case LMS_ROLE_Q_BIAS:
    case LMS_ROLE_K_BIAS:
    case LMS_ROLE_V_BIAS:
    case LMS_ROLE_O_BIAS:
        *mean = 0, *std = 0;
        return;
    default:
        *mean = 0, *std = range;
        return;
    }
}

/* The embedding with row pad zeroed, as nn.Embedding's padding_idx is after the normal draw:
 * the rows around it keep the values they have without padding. OUT: *v. */
static enum lms_status zero_row(struct lms_view **v, int64_t pad, const struct lms_init_opts *o,
                                struct lms_error *err)
{
    struct lms_view *src = *v, *parts[3] = {NULL, NULL, NULL}, *cat = NULL;
    int64_t rows = src->shape[0], shape[2] = {1, src->shape[1]};
    int n = 0;
    enum lms_status rc = LMS_OK;
    if (pad > 0)
        rc = lms_view_new_range(src, 0, 0, pad, &parts[n++], err);
    if (!rc)
        rc = lms_view_new_generated(o->dtype, 2, shape, 0, 0, 0, o->n_threads, &parts[n++], err);
    if (!rc && pad + 1 < rows)
        rc = lms_view_new_range(src, 0, pad + 1, rows - pad - 1, &parts[n++], err);
    if (!rc)
        rc = lms_view_new_concat(parts, n, 0, &cat, err);
    for (int i = 0; i < 3; i++)
        lms_view_release(parts[i]);
    if (!rc) {
        lms_view_release(src);
        *v = cat;
    }
    return rc;
}

/* Appends the tensor of role r and layer (-1: global) to m. */
static enum lms_status add_role(struct lms_model *m, enum lms_role r, int64_t layer,
                                const struct lms_init_opts *o, struct lms_error *err)
{
    char name[128];
    int ndim;
    int64_t shape[LMS_MAX_DIMS];
    if (!lms_role_hf_name(r, layer, name, sizeof name) || !lms_role_shape(r, &m->arch, &ndim, shape))
        return lms_error_set(err, LMS_EINVAL, "role %s has no tensor name or shape",
                             lms_role_name(r));
    double mean, std;
    role_distribution(r, o->init_range, &mean, &std);
    struct lms_view *v = NULL;
    enum lms_status rc = lms_view_new_generated(o->dtype, ndim, shape, lms_init_key(o->seed, name),
                                                mean, std, o->n_threads, &v, err);
    if (!rc && r == LMS_ROLE_EMBED && o->pad_row >= 0 && o->pad_row < shape[0])
        rc = zero_row(&v, o->pad_row, o, err);
    if (!rc)
        rc = lms_model_add(m, name, r, layer, v, err);
    lms_view_release(v);
    return rc;
}

enum lms_status lms_model_new_random(const struct lms_arch *a, const struct lms_init_opts *o,
                                     struct lms_model *m, struct lms_error *err)
{
    lms_model_init(m);
    if (!(o->init_range >= 0 && o->init_range < 1e6))
        return lms_error_set(err, LMS_EINVAL, "initializer_range %g is not a standard deviation",
                             o->init_range);
    m->arch = *a;
    m->arch.dtype = o->dtype;
    enum lms_status rc = lms_arch_validate(&m->arch, err);
    m->source_format = rc ? NULL : lms_strdup("init");
    if (!rc && !m->source_format)
        rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
    if (!rc)
        rc = add_role(m, LMS_ROLE_EMBED, -1, o, err);
    for (int64_t l = 0; l < a->n_layers && !rc; l++)
        for (int r = 0; r < LMS_ROLE_COUNT && !rc; r++)
            if (lms_role_is_per_layer((enum lms_role)r) && lms_role_expected((enum lms_role)r, a))
                rc = add_role(m, (enum lms_role)r, l, o, err);
    if (!rc)
        rc = add_role(m, LMS_ROLE_FINAL_NORM, -1, o, err);
    if (!rc && lms_role_expected(LMS_ROLE_LM_HEAD, a))
        rc = add_role(m, LMS_ROLE_LM_HEAD, -1, o, err);
    if (rc)
        lms_model_release(m);
    return rc;
}
