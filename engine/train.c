/* The training engine: the student's forward with saved activations and its backward (the
 * model of engine/model.c, the same decoder block the inference engine runs), the distillation
 * losses and AdamW, written once against the backend op table (kernels/backend_impl.h). Legend
 * as in include/lms/engine.h.
 *
 * Parameters live in four device allocations of one layout: fp32 master weights, gradients and
 * the two AdamW moments; tensor i sits at the same offset in each. Parts of one fused projection
 * (q | k | v and their biases, gate | up) are placed back to back, so the forward runs one GEMM
 * per projection as the inference engine does, while each part stays its own parameter.
 *
 * Activations live in one workspace planned by lms_train_plan_make. Every layer saves what its
 * backward needs (norm inputs and rstd, the pre-norm and rotated q | k | v, the attention output
 * and log-sum-exp, gate | up, the SwiGLU output); with recomputation only the residual stream
 * entering each layer is kept and the layer's activations are recomputed into one slot just
 * before its backward. The LM head and the losses run in chunks of R token rows: the student's
 * chunk of logits is overwritten by its own gradient, and the teacher's chunk is computed from
 * its captured final-norm output with its own head, so no (N, V) tensor ever exists. */
#include <math.h>
#include <string.h>

#include "engine/model.h"
#include "lms/alloc.h"
#include "lms/train.h"

/* Automatic logits chunk: 64 MiB on the CPU; 1 GiB where the GEMMs run in bf16 (a GPU), so that
 * the LM-head GEMMs have enough rows to fill the tensor cores (about 1,766 rows at V = 151,936)
 * and the head is not split into hundreds of small launches. */
#define LOGITS_AUTO_BYTES ((int64_t)64 << 20)
#define LOGITS_AUTO_BYTES_BF16 ((int64_t)1 << 30)
#define STAGING_ELEMS ((int64_t)1 << 20)

/* ---- plan --------------------------------------------------------------------------------- */

/* Activations of one layer. Offsets in bytes into the workspace. */
struct slot_off {
    size_t xn1, rstd1, qkv_pre, rstd_q, rstd_k, qkv, ctx, lse, x_mid, xn2, rstd2, gu, act;
};

struct plan {
    struct lms_train_plan pub;
    int64_t N, QKV, nq, R, V, Ht;
    int64_t n_slots;          /* L, or 1 with recomputation */
    size_t off_ids, off_pos, off_tgt, off_kdv, off_cos, off_sin;
    size_t off_res;           /* (L + 1) x (N, H) residual stream entering each layer, and out */
    size_t off_xnf, off_rstdf;
    size_t off_logits, off_tlogits, off_kdl, off_cel;
    size_t off_dx, off_dxn, off_dctx, off_dqkv, off_dgu, off_dact;
    size_t off_tfinal;        /* (N, Ht) teacher final-norm output */
    size_t off_tpairs;        /* n_pairs x (N, Ht) teacher norm outputs */
    size_t off_hmap, off_dhmap, off_hloss; /* (N, Ht) mapped student, its gradient; (N) loss */
    size_t off_scalar;        /* one float */
    struct slot_off *slots;   /* n_slots */
    size_t ws_bytes;
};

/* Trainable elements of the student (and the hidden map). */
static int64_t count_params(const struct lms_arch *a, int64_t V, int64_t Ht, bool map)
{
    int64_t H = a->hidden, d = a->head_dim, nq = a->n_heads * d, nkv = a->n_groups * d;
    int64_t per = (nq + 2 * nkv) * H + nq * H + 2 * H + 3 * a->ffn * H;
    if (a->qkv_bias)
        per += nq + 2 * nkv;
    if (a->qk_norm)
        per += 2 * d;
    if (a->o_bias)
        per += H;
    int64_t n = per * a->n_layers + V * H + H;
    if (!a->tie_embeddings)
        n += V * H;
    if (map)
        n += Ht * H + Ht;
    return n;
}

/* Fills p (slots allocated by the caller when slots_out, else only sizes). */
static enum lms_status plan_make(const struct lms_arch *a, int64_t V,
                                 const struct lms_train_opts *o, struct plan *p,
                                 struct lms_error *err)
{
    int64_t N, t, H = a->hidden, F = a->ffn, d = a->head_dim, L = a->n_layers;
    struct lms_train_plan *pub = &p->pub;
    if (o->max_batch <= 0 || o->max_seq <= 0 || o->logits_rows < 0 || V <= 0 || H <= 0 ||
        L <= 0 || o->teacher_hidden < 0)
        return lms_error_set(err, LMS_EINVAL,
                             "trainer: batch %lld x sequence %lld (or a model dimension) is not "
                             "positive",
                             (long long)o->max_batch, (long long)o->max_seq);
    if (!lms__mul_ok(o->max_batch, o->max_seq, &N) || N > INT32_MAX)
        return lms_error_set(err, LMS_EINVAL, "trainer: batch %lld x sequence %lld is too large",
                             (long long)o->max_batch, (long long)o->max_seq);
    p->N = N;
    p->nq = a->n_heads * d;
    p->QKV = (a->n_heads + 2 * a->n_groups) * d;
    p->V = V;
    p->Ht = o->teacher_hidden > 0 ? o->teacher_hidden : H;
    int64_t R = o->logits_rows;
    if (R == 0) {
        int64_t chunk = o->bf16_working ? LOGITS_AUTO_BYTES_BF16 : LOGITS_AUTO_BYTES;
        R = chunk / (V * 4) > 0 ? chunk / (V * 4) : 1;
    }
    if (R > N)
        R = N;
    p->R = R;
    pub->logits_rows = R;
    p->n_slots = o->recompute ? 1 : L;
    bool map = p->Ht != H && o->max_hidden_pairs > 0;
    pub->n_params = count_params(a, V, p->Ht, map);
    if (pub->n_params <= 0 || pub->n_params > INT64_MAX / 64)
        return lms_error_set(err, LMS_EINVAL, "trainer: parameter count overflows");
    pub->weights = pub->grads = (size_t)pub->n_params * 4 + 64 * 32 * (size_t)(L + 2);
    int shards = o->shards > 0 ? o->shards : lms_comm_world(o->comm);
    pub->moments = 2 * ((pub->weights + (size_t)shards - 1) / (size_t)shards); /* ZeRO-1 */
    pub->working = o->bf16_working ? (size_t)pub->n_params * 2 + 64 * 32 * (size_t)(L + 2) : 0;

    size_t cur = 0;
    bool ok = lms__reserve(&cur, N, 4, &p->off_ids) && lms__reserve(&cur, N, 4, &p->off_pos) &&
              lms__reserve(&cur, N, 4, &p->off_tgt) && lms__reserve(&cur, N, 1, &p->off_kdv) &&
              lms__mul_ok(o->max_seq, d / 2, &t) && lms__reserve(&cur, t, 4, &p->off_cos) &&
              lms__reserve(&cur, t, 4, &p->off_sin) && lms__reserve(&cur, 1, 4, &p->off_scalar);
    size_t fixed = cur;
    int64_t NH;
    ok = ok && lms__mul_ok(N, H, &NH) && lms__mul_ok(NH, L + 1, &t) && lms__reserve(&cur, t, 4, &p->off_res) &&
         lms__reserve(&cur, NH, 4, &p->off_xnf) && lms__reserve(&cur, N, 4, &p->off_rstdf);
    for (int64_t s = 0; ok && s < p->n_slots; s++) {
        struct slot_off so, *sp = p->slots ? &p->slots[s] : &so;
        ok = lms__reserve(&cur, NH, 4, &sp->xn1) && lms__reserve(&cur, N, 4, &sp->rstd1) &&
             lms__mul_ok(N, p->QKV, &t) && lms__reserve(&cur, a->qk_norm ? t : 0, 4, &sp->qkv_pre) &&
             lms__reserve(&cur, t, 4, &sp->qkv) && lms__mul_ok(N, a->n_heads, &t) &&
             lms__reserve(&cur, t, 4, &sp->rstd_q) && lms__reserve(&cur, t, 4, &sp->lse) &&
             lms__mul_ok(N, a->n_groups, &t) && lms__reserve(&cur, t, 4, &sp->rstd_k) &&
             lms__mul_ok(N, p->nq, &t) && lms__reserve(&cur, t, 4, &sp->ctx) &&
             lms__reserve(&cur, NH, 4, &sp->x_mid) && lms__reserve(&cur, NH, 4, &sp->xn2) &&
             lms__reserve(&cur, N, 4, &sp->rstd2) && lms__mul_ok(N, 2 * F, &t) &&
             lms__reserve(&cur, t, 4, &sp->gu) && lms__mul_ok(N, F, &t) && lms__reserve(&cur, t, 4, &sp->act);
    }
    size_t acts = cur - fixed;
    size_t c0 = cur;
    ok = ok && lms__mul_ok(R, V, &t) && lms__reserve(&cur, t, 4, &p->off_logits) &&
         lms__reserve(&cur, t, 4, &p->off_tlogits) && lms__reserve(&cur, R, 4, &p->off_kdl) &&
         lms__reserve(&cur, R, 4, &p->off_cel);
    pub->logits = cur - c0;
    c0 = cur;
    ok = ok && lms__reserve(&cur, NH, 4, &p->off_dx) && lms__reserve(&cur, NH, 4, &p->off_dxn) &&
         lms__mul_ok(N, p->nq, &t) && lms__reserve(&cur, t, 4, &p->off_dctx) && lms__mul_ok(N, p->QKV, &t) &&
         lms__reserve(&cur, t, 4, &p->off_dqkv) && lms__mul_ok(N, 2 * F, &t) &&
         lms__reserve(&cur, t, 4, &p->off_dgu) && lms__mul_ok(N, F, &t) &&
         lms__reserve(&cur, t, 4, &p->off_dact);
    acts += cur - c0;
    c0 = cur;
    int64_t NHt;
    size_t np = o->max_hidden_pairs;
    ok = ok && lms__mul_ok(N, p->Ht, &NHt) && lms__reserve(&cur, NHt, 4, &p->off_tfinal) &&
         np < (size_t)INT32_MAX && lms__mul_ok(NHt, (int64_t)np, &t) &&
         lms__reserve(&cur, t, 4, &p->off_tpairs) && lms__reserve(&cur, np ? NHt : 0, 4, &p->off_hmap) &&
         lms__reserve(&cur, np ? NHt : 0, 4, &p->off_dhmap) && lms__reserve(&cur, N, 4, &p->off_hloss);
    pub->hidden = cur - c0;
    if (!ok)
        return lms_error_set(err, LMS_EINVAL,
                             "trainer: memory plan for batch %lld x sequence %lld overflows",
                             (long long)o->max_batch, (long long)o->max_seq);
    p->ws_bytes = (cur + 63) & ~(size_t)63;
    pub->activations = acts + fixed;
    pub->total = pub->weights + pub->working + pub->grads + pub->moments + p->ws_bytes;
    return LMS_OK;
}

enum lms_status lms_train_plan_make(const struct lms_arch *a, int64_t logits_cols,
                                    const struct lms_train_opts *opts,
                                    struct lms_train_plan *plan, struct lms_error *err)
{
    struct plan p;
    memset(&p, 0, sizeof p);
    enum lms_status rc = plan_make(a, logits_cols, opts, &p, err);
    *plan = p.pub;
    return rc;
}

/* ---- trainer ------------------------------------------------------------------------------ */

/* A layer's parameters: float offsets by enum lms__param_field (ABSENT when missing). */
struct layer_p {
    size_t at[LMS__P_PART];
};

struct lms_trainer {
    const struct lms_model *student;
    struct lms_backend *be;
    const struct lms_backend_ops *ops;
    struct lms_arch a;
    struct lms_train_opts opts;
    struct plan plan;
    int64_t vocab_in, V;
    bool has_map;
    struct lms_buf bw, bg, bm, bv, ws, bw16;
    struct lms_buf norm_parts; /* (n_params) per-tensor sums of squares of the gradients */
    float *host_norm_parts;    /* (n_params) their host copy */
    float *W, *G, *M, *Vm;     /* base addresses */
    uint16_t *W16;             /* bf16 working copy of W that GEMMs read, on backends that
                                * compute in bf16 (lms__backend_weight_dtype gives BF16 for a
                                * BF16 checkpoint); NULL: GEMMs read the fp32 W itself */
    size_t n_floats;
    struct lms_train_param *params;
    char **names;              /* owned names of params */
    size_t n_params;
    size_t embed, lm_head, final_norm, map_w, map_b; /* float offsets */
    struct layer_p *layers;
    /* the model as engine/model.c reads it: weights, gradients, activation slots */
    struct lms__layer_weights *layer_w;
    struct lms__layer_grads *layer_g;
    struct lms__layer_acts *slot_acts; /* plan.n_slots */
    struct lms__model model;
    struct lms__model_grads model_g;
    int32_t *host_pos;
    float *host_rows;          /* (R) staging for per-row losses */
    float *host_stage;         /* STAGING_ELEMS */
    /* teacher captures of the current micro-step */
    const struct lms_hidden_pair *pairs;
    size_t n_pairs;
    int64_t teacher_H;
    /* data parallelism: this rank's chunk [shard0, shard0 + chunk) of the layout (floats) */
    struct lms_comm *comm;
    int64_t chunk, shard0;
};

#define ABSENT SIZE_MAX

static char *ws_at(const struct lms_trainer *tr, size_t off)
{
    return (char *)tr->ws.ptr + off;
}
static float *wsf(const struct lms_trainer *tr, size_t off)
{
    return (float *)ws_at(tr, off);
}
static float *Wp(const struct lms_trainer *tr, size_t off)
{
    return off == ABSENT ? NULL : tr->W + off;
}
static float *Gp(const struct lms_trainer *tr, size_t off)
{
    return off == ABSENT ? NULL : tr->G + off;
}
/* The weight at off as a GEMM operand: the bf16 working copy where there is one. */
static const void *Wmm(const struct lms_trainer *tr, size_t off, enum lms_dtype *dt)
{
    *dt = tr->W16 ? LMS_DTYPE_BF16 : LMS_DTYPE_F32;
    return tr->W16 ? (const void *)(tr->W16 + off) : (const void *)(tr->W + off);
}

/* Lists parameters in layout order. With list == NULL only counts and places (cursor in
 * floats). Fused parts follow each other without padding; groups start 16-float aligned. */
struct param_src {
    const struct lms_tensor *t; /* NULL for the hidden map */
    size_t off;
};

static size_t place(size_t *cur, int64_t n, bool group_start)
{
    if (group_start)
        *cur = (*cur + 15) & ~(size_t)15;
    size_t at = *cur;
    *cur += (size_t)n;
    return at;
}

/* Where the offset of parameter p is kept; NULL for a later part of a fused matrix. */
static size_t *offset_of(struct lms_trainer *tr, const struct lms__param *p)
{
    switch (p->field) {
    case LMS__P_EMBED: return &tr->embed;
    case LMS__P_LM_HEAD: return &tr->lm_head;
    case LMS__P_FINAL_NORM: return &tr->final_norm;
    case LMS__P_PART: return NULL;
    default: return &tr->layers[p->layer].at[p->field];
    }
}

static enum lms_status build_params(struct lms_trainer *tr, struct lms_error *err)
{
    const struct lms_model *m = tr->student;
    const struct lms_arch *a = &tr->a;
    size_t n_model = lms__model_params(a, NULL), n = 0, cur = 0;
    size_t cap = n_model + 2; /* and the hidden map's weight and bias */
    tr->params = lms_calloc(cap, sizeof *tr->params);
    tr->names = lms_calloc(cap, sizeof *tr->names);
    tr->layers = lms_calloc((size_t)a->n_layers, sizeof *tr->layers);
    struct lms__param *mp = lms_calloc(n_model, sizeof *mp);
    if (!tr->params || !tr->names || !tr->layers || !mp) {
        lms_free(mp);
        return lms_error_set(err, LMS_ENOMEM, "trainer: out of memory");
    }
    lms__model_params(a, mp);
    for (int64_t l = 0; l < a->n_layers; l++)
        for (int f = 0; f < LMS__P_PART; f++)
            tr->layers[l].at[f] = ABSENT;
    for (; n < n_model; n++) {
        const struct lms_tensor *t = lms_model_find(m, mp[n].role, mp[n].layer);
        struct lms_train_param *p = &tr->params[n];
        tr->names[n] = lms_strdup(t->name);
        if (!tr->names[n]) {
            lms_free(mp);
            return lms_error_set(err, LMS_ENOMEM, "trainer: out of memory");
        }
        p->name = tr->names[n];
        p->role = mp[n].role;
        p->layer = mp[n].layer;
        p->ndim = t->view->ndim;
        p->shape[0] = t->view->shape[0];
        p->shape[1] = t->view->ndim > 1 ? t->view->shape[1] : 1;
        p->numel = lms_view_numel(t->view);
        size_t off = place(&cur, p->numel, mp[n].field != LMS__P_PART);
        p->w = (float *)(uintptr_t)off; /* offsets until the buffers exist */
        p->decay = p->ndim >= 2;
        size_t *dst = offset_of(tr, &mp[n]);
        if (dst)
            *dst = off;
    }
    lms_free(mp);
    tr->map_w = tr->map_b = ABSENT;
    if (tr->has_map) {
        int64_t Ht = tr->plan.Ht, H = a->hidden;
        static const char *const map_names[2] = {"distill.hidden_map.weight",
                                                 "distill.hidden_map.bias"};
        for (int k = 0; k < 2; k++) {
            struct lms_train_param *p = &tr->params[n];
            p->name = map_names[k];
            p->role = LMS_ROLE_OTHER;
            p->layer = -1;
            p->ndim = k == 0 ? 2 : 1;
            p->shape[0] = Ht;
            p->shape[1] = k == 0 ? H : 1;
            p->numel = k == 0 ? Ht * H : Ht;
            size_t off = place(&cur, p->numel, true);
            p->w = (float *)(uintptr_t)off;
            p->decay = k == 0;
            *(k == 0 ? &tr->map_w : &tr->map_b) = off;
            n++;
        }
    }
    tr->n_params = n;
    tr->n_floats = (cur + 15) & ~(size_t)15;
    if (tr->comm) { /* world equal chunks, as the collectives want them */
        tr->chunk = lms_comm_chunk((int64_t)cur, lms_comm_world(tr->comm));
        tr->shard0 = tr->chunk * lms_comm_rank(tr->comm);
        tr->n_floats = (size_t)(tr->chunk * lms_comm_world(tr->comm));
    }
    return LMS_OK;
}

/* W16 = W rounded to bf16 (nearest even), in one pass over every parameter. */
static enum lms_status refresh_working_copy(struct lms_trainer *tr, struct lms_error *err)
{
    return tr->ops->cast(tr->be, tr->W16, LMS_DTYPE_BF16, tr->W, LMS_DTYPE_F32,
                         (int64_t)tr->n_floats, err);
}

/* Uploads the student's weights (and the hidden map: identity-like init, see below), zeroes
 * gradients and moments. */
static enum lms_status init_buffers(struct lms_trainer *tr, struct lms_error *err)
{
    size_t bytes = tr->n_floats * sizeof(float);
    size_t m_floats = tr->comm ? (size_t)tr->chunk : tr->n_floats; /* sharded moments */
    enum lms_status rc = lms_buf_alloc(tr->be, bytes, &tr->bw, err);
    if (!rc)
        rc = lms_buf_alloc(tr->be, bytes, &tr->bg, err);
    if (!rc)
        rc = lms_buf_alloc(tr->be, m_floats * sizeof(float), &tr->bm, err);
    if (!rc)
        rc = lms_buf_alloc(tr->be, m_floats * sizeof(float), &tr->bv, err);
    if (rc)
        return lms_error_wrap(err, "trainer: %zu bytes of parameters: ", bytes);
    tr->W = tr->bw.ptr;
    tr->G = tr->bg.ptr;
    tr->M = tr->bm.ptr;
    tr->Vm = tr->bv.ptr;
    int64_t nf = (int64_t)tr->n_floats;
    rc = tr->ops->scale(tr->be, tr->W, 0.0f, nf, err);
    if (!rc)
        rc = tr->ops->scale(tr->be, tr->G, 0.0f, nf, err);
    if (!rc)
        rc = tr->ops->scale(tr->be, tr->M, 0.0f, (int64_t)m_floats, err);
    if (!rc)
        rc = tr->ops->scale(tr->be, tr->Vm, 0.0f, (int64_t)m_floats, err);
    for (size_t i = 0; !rc && i < tr->n_params; i++) {
        struct lms_train_param *p = &tr->params[i];
        size_t off = (size_t)(uintptr_t)p->w;
        p->w = tr->W + off;
        p->g = tr->G + off;
        p->m = tr->comm ? NULL : tr->M + off;
        p->v = tr->comm ? NULL : tr->Vm + off;
        if (p->role == LMS_ROLE_OTHER) {
            /* hidden map W (Ht, H): ones on the diagonal, so that at the start the student's
             * channel c is compared with the teacher's channel c (the pruned student keeps a
             * subset of the teacher's channels in order); bias 0 */
            if (p->ndim == 2)
                for (int64_t r = 0; r < p->shape[0] && r < p->shape[1] && !rc; r++) {
                    float one = 1.0f;
                    rc = lms_buf_upload(tr->be, p->w + r * p->shape[1] + r, &one, sizeof one,
                                        err);
                }
            continue;
        }
        const struct lms_tensor *t = lms_model_find(tr->student, p->role, p->layer);
        rc = lms__upload_view(tr->be, t->view, LMS_DTYPE_F32, p->w, tr->host_stage,
                              STAGING_ELEMS, err);
        if (rc)
            lms_error_wrap(err, "trainer: uploading %s: ", p->name);
    }
    if (!rc)
        rc = lms_buf_alloc(tr->be, tr->n_params * sizeof(float), &tr->norm_parts, err);
    if (!rc && !(tr->host_norm_parts = lms_calloc(tr->n_params, sizeof(float))))
        rc = lms_error_set(err, LMS_ENOMEM, "trainer: out of memory");
    if (!rc && tr->opts.bf16_working) {
        rc = lms_buf_alloc(tr->be, tr->n_floats * sizeof(uint16_t), &tr->bw16, err);
        if (rc)
            return lms_error_wrap(err, "trainer: the bf16 working copy: ");
        tr->W16 = tr->bw16.ptr;
        rc = refresh_working_copy(tr, err);
    }
    return rc;
}

/* The descriptors engine/model.c reads, once the parameters and the workspace exist: each
 * layer's weights (GEMM operands from the bf16 working copy where there is one) and gradients,
 * and each slot's activations, all saved for the backward. */
static enum lms_status bind_model(struct lms_trainer *tr, struct lms_error *err)
{
    const struct lms_arch *a = &tr->a;
    const struct plan *p = &tr->plan;
    size_t L = (size_t)a->n_layers;
    tr->layer_w = lms_calloc(L, sizeof *tr->layer_w);
    tr->layer_g = lms_calloc(L, sizeof *tr->layer_g);
    tr->slot_acts = lms_calloc((size_t)p->n_slots, sizeof *tr->slot_acts);
    if (!tr->layer_w || !tr->layer_g || !tr->slot_acts)
        return lms_error_set(err, LMS_ENOMEM, "trainer: out of memory");
    for (size_t l = 0; l < L; l++) {
        const size_t *at = tr->layers[l].at;
        struct lms__layer_weights *w = &tr->layer_w[l];
        w->qkv = Wmm(tr, at[LMS__P_QKV], &w->wdt);
        w->o = Wmm(tr, at[LMS__P_O], &w->wdt);
        w->gu = Wmm(tr, at[LMS__P_GU], &w->wdt);
        w->down = Wmm(tr, at[LMS__P_DOWN], &w->wdt);
        w->qkv_bias = Wp(tr, at[LMS__P_QKV_BIAS]);
        w->q_norm = Wp(tr, at[LMS__P_Q_NORM]);
        w->k_norm = Wp(tr, at[LMS__P_K_NORM]);
        w->o_bias = Wp(tr, at[LMS__P_O_BIAS]);
        w->attn_norm = Wp(tr, at[LMS__P_ATTN_NORM]);
        w->mlp_norm = Wp(tr, at[LMS__P_MLP_NORM]);
        tr->layer_g[l] = (struct lms__layer_grads){
            .qkv = Gp(tr, at[LMS__P_QKV]), .qkv_bias = Gp(tr, at[LMS__P_QKV_BIAS]),
            .q_norm = Gp(tr, at[LMS__P_Q_NORM]), .k_norm = Gp(tr, at[LMS__P_K_NORM]),
            .o = Gp(tr, at[LMS__P_O]), .o_bias = Gp(tr, at[LMS__P_O_BIAS]),
            .attn_norm = Gp(tr, at[LMS__P_ATTN_NORM]), .mlp_norm = Gp(tr, at[LMS__P_MLP_NORM]),
            .gu = Gp(tr, at[LMS__P_GU]), .down = Gp(tr, at[LMS__P_DOWN]),
        };
    }
    for (int64_t k = 0; k < p->n_slots; k++) {
        const struct slot_off *so = &p->slots[k];
        tr->slot_acts[k] = (struct lms__layer_acts){
            .x_mid = wsf(tr, so->x_mid), .xn1 = wsf(tr, so->xn1), .xn2 = wsf(tr, so->xn2),
            .qkv = wsf(tr, so->qkv), .ctx = wsf(tr, so->ctx), .gu = wsf(tr, so->gu),
            .act = wsf(tr, so->act), .qkv_pre = a->qk_norm ? wsf(tr, so->qkv_pre) : NULL,
            .rstd1 = wsf(tr, so->rstd1), .rstd2 = wsf(tr, so->rstd2),
            .rstd_q = wsf(tr, so->rstd_q), .rstd_k = wsf(tr, so->rstd_k),
            .lse = wsf(tr, so->lse),
        };
    }
    tr->model = (struct lms__model){
        .a = a, .embed = Wp(tr, tr->embed), .embed_dt = LMS_DTYPE_F32, .vocab_in = tr->vocab_in,
        .final_norm = Wp(tr, tr->final_norm), .layers = tr->layer_w,
    };
    tr->model_g = (struct lms__model_grads){
        .embed = Gp(tr, tr->embed), .final_norm = Gp(tr, tr->final_norm), .layers = tr->layer_g,
    };
    return LMS_OK;
}

void lms_loss_opts_default(struct lms_loss_opts *lo)
{
    memset(lo, 0, sizeof *lo);
    lo->kd = LMS_KD_FORWARD_KL;
    lo->kd_weight = 1.0;
    lo->temperature = 1.0;
}

void lms_adamw_defaults(struct lms_adamw_opts *o)
{
    memset(o, 0, sizeof *o);
    o->beta1 = 0.9;
    o->beta2 = 0.999;
    o->eps = 1e-8;
    o->weight_decay = 0.01;
    o->clip_norm = 1.0;
}

void lms_adamw_megatron(struct lms_adamw_opts *o)
{
    memset(o, 0, sizeof *o);
    o->beta1 = 0.9;
    o->beta2 = 0.95;
    o->eps = 1e-5;
    o->weight_decay = 0.1;
    o->clip_norm = 1.0;
}

enum lms_status lms_trainer_new(const struct lms_model *student, struct lms_backend *be,
                                const struct lms_train_opts *opts, struct lms_trainer **out,
                                struct lms_error *err)
{
    enum lms_status rc;
    *out = NULL;
    const struct lms_backend_ops *ops = be->ops;
    if (ops->version < 2 || !ops->embedding_backward || !ops->rmsnorm_backward ||
        !ops->rope_backward || !ops->attention_backward || !ops->swiglu_backward ||
        !ops->bias_backward || !ops->logit_loss || !ops->hidden_loss || !ops->sum_squares ||
        !ops->adamw || !ops->scale)
        return lms_error_set(err, LMS_EUNSUPPORTED,
                             "trainer: the %s backend has no training support yet",
                             lms_backend_name(be));
    int64_t vocab_in, n_logits;
    rc = lms__model_check(student, "trainer", "student", &vocab_in, &n_logits, err);
    if (rc)
        return rc;
    struct lms_trainer *tr = lms_calloc(1, sizeof *tr);
    if (!tr)
        return lms_error_set(err, LMS_ENOMEM, "trainer: out of memory");
    tr->student = student;
    tr->be = be;
    tr->ops = ops;
    tr->a = student->arch;
    tr->opts = *opts;
    tr->opts.bf16_working = lms__backend_weight_dtype(be, LMS_DTYPE_BF16) == LMS_DTYPE_BF16;
    tr->comm = opts->comm;
    tr->vocab_in = vocab_in;
    tr->V = n_logits;
    rc = plan_make(&tr->a, tr->V, &tr->opts, &tr->plan, err);
    if (rc)
        goto fail;
    tr->plan.slots = lms_calloc((size_t)tr->plan.n_slots, sizeof *tr->plan.slots);
    if (!tr->plan.slots) {
        rc = lms_error_set(err, LMS_ENOMEM, "trainer: out of memory");
        goto fail;
    }
    rc = plan_make(&tr->a, tr->V, &tr->opts, &tr->plan, err);
    if (rc)
        goto fail;
    tr->has_map = tr->plan.Ht != tr->a.hidden && opts->max_hidden_pairs > 0;
    tr->host_pos = lms_malloc((size_t)tr->plan.N * sizeof(int32_t));
    tr->host_rows = lms_malloc((size_t)tr->plan.N * sizeof(float));
    tr->host_stage = lms_malloc((size_t)STAGING_ELEMS * sizeof(float));
    if (!tr->host_pos || !tr->host_rows || !tr->host_stage) {
        rc = lms_error_set(err, LMS_ENOMEM, "trainer: out of memory");
        goto fail;
    }
    rc = build_params(tr, err);
    if (!rc)
        rc = init_buffers(tr, err);
    if (rc)
        goto fail;
    rc = lms_buf_alloc(be, tr->plan.ws_bytes, &tr->ws, err);
    if (rc) {
        lms_error_wrap(err, "trainer: workspace of %zu bytes: ", tr->plan.ws_bytes);
        goto fail;
    }
    rc = lms__rope_table_upload(be, &tr->a, opts->max_seq, opts->rope_bf16,
                                ws_at(tr, tr->plan.off_cos), ws_at(tr, tr->plan.off_sin),
                                "trainer", err);
    if (!rc)
        rc = bind_model(tr, err);
    if (rc)
        goto fail;
    *out = tr;
    return LMS_OK;
fail:
    lms_trainer_free(tr);
    return rc;
}

void lms_trainer_free(struct lms_trainer *tr)
{
    if (!tr)
        return;
    lms_buf_free(tr->be, &tr->ws);
    lms_buf_free(tr->be, &tr->bw);
    lms_buf_free(tr->be, &tr->bw16);
    lms_buf_free(tr->be, &tr->norm_parts);
    lms_free(tr->host_norm_parts);
    lms_buf_free(tr->be, &tr->bg);
    lms_buf_free(tr->be, &tr->bm);
    lms_buf_free(tr->be, &tr->bv);
    if (tr->names)
        for (size_t i = 0; i < tr->n_params; i++)
            if (tr->params[i].role != LMS_ROLE_OTHER)
                lms_free(tr->names[i]);
    lms_free(tr->names);
    lms_free(tr->params);
    lms_free(tr->layers);
    lms_free(tr->layer_w);
    lms_free(tr->layer_g);
    lms_free(tr->slot_acts);
    lms_free(tr->plan.slots);
    lms_free(tr->host_pos);
    lms_free(tr->host_rows);
    lms_free(tr->host_stage);
    lms_free(tr);
}

const struct lms_train_plan *lms_trainer_plan(const struct lms_trainer *tr)
{
    return &tr->plan.pub;
}

int64_t lms_trainer_logits_cols(const struct lms_trainer *tr)
{
    return tr->V;
}

size_t lms_trainer_n_params(const struct lms_trainer *tr)
{
    return tr->n_params;
}

const struct lms_train_param *lms_trainer_param(const struct lms_trainer *tr, size_t i)
{
    return i < tr->n_params ? &tr->params[i] : NULL;
}

enum lms_status lms_trainer_weights_updated(struct lms_trainer *tr, struct lms_error *err)
{
    return tr->W16 ? refresh_working_copy(tr, err) : LMS_OK;
}

enum lms_status lms_trainer_zero_grads(struct lms_trainer *tr, struct lms_error *err)
{
    return tr->ops->scale(tr->be, tr->G, 0.0f, (int64_t)tr->n_floats, err);
}

/* ---- building blocks ---------------------------------------------------------------------- */

/* y (rows, n) = x (rows, k) W^T (+ bias) with the parameters at offsets w, bias. */
static enum lms_status linear(struct lms_trainer *tr, float *y, int64_t ldy, const float *x,
                              int64_t ldx, size_t w, size_t bias, int64_t rows, int64_t n,
                              int64_t k, float beta, struct lms_error *err)
{
    enum lms_dtype wdt;
    const void *wp = Wmm(tr, w, &wdt);
    return lms__linear(tr->be, y, ldy, x, ldx, wp, wdt, Wp(tr, bias), rows, n, k, beta, err);
}

/* Backward of linear: dx (rows, k) = dy W (beta: 0 writes, 1 adds); the gradients of w and bias
 * are added to. */
static enum lms_status linear_backward(struct lms_trainer *tr, float *dx, int64_t lddx,
                                       float dx_beta, const float *dy, int64_t lddy,
                                       const float *x, int64_t ldx, size_t w, size_t bias,
                                       int64_t rows, int64_t n, int64_t k, struct lms_error *err)
{
    enum lms_dtype wdt;
    const void *wp = Wmm(tr, w, &wdt);
    return lms__linear_backward(tr->be, dx, lddx, dx_beta, dy, lddy, x, ldx, wp, wdt, Gp(tr, w),
                                Gp(tr, bias), rows, n, k, err);
}

static enum lms_status copy(struct lms_trainer *tr, float *dst, const float *src, int64_t n,
                            struct lms_error *err)
{
    return lms__copy(tr->be, dst, src, n, err);
}

/* ---- per-step state ----------------------------------------------------------------------- */

struct step {
    const struct lms_train_batch *b;
    const struct lms_loss_opts *lo;
    int64_t B, S, N;
    /* loss sums (values) */
    double kd_sum, ce_sum, hid_sum;
    int64_t n_kd, n_ce;
    /* gradient coefficients of the mean losses */
    float c_kd, c_ce, c_hid;
    float grad_scale;
};

/* Does pair k take its student side at point p of layer? */
static bool pair_at(const struct step *st, size_t k, enum lms_hook_point p, int64_t layer)
{
    const struct lms_hidden_pair *hp = &st->lo->pairs[k];
    if (hp->student_point != p)
        return false;
    return p == LMS_HOOK_EMBED_OUT || p == LMS_HOOK_FINAL_NORM_OUT || hp->student_layer == layer;
}

/* The hidden losses of the pairs at student point (p, layer) on the student rows h (N, H):
 * the loss values are added to st->hid_sum; with dh != NULL, the gradient (times c_hid / pairs /
 * N) is added into dh (N, H). */
static enum lms_status hidden_pairs(struct lms_trainer *tr, struct step *st,
                                    enum lms_hook_point p, int64_t layer, const float *h,
                                    float *dh, struct lms_error *err)
{
    const struct lms_loss_opts *lo = st->lo;
    const struct plan *pl = &tr->plan;
    int64_t N = st->N, H = tr->a.hidden, Ht = tr->teacher_H;
    enum lms_status rc = LMS_OK;
    for (size_t k = 0; !rc && k < lo->n_pairs; k++) {
        if (!pair_at(st, k, p, layer))
            continue;
        const float *t = wsf(tr, pl->off_tpairs) + (size_t)k * (size_t)(pl->N * pl->Ht);
        float *loss = wsf(tr, pl->off_hloss);
        float gs = dh ? st->c_hid / (float)lo->n_pairs / (float)N : 0.0f;
        const float *s = h;
        float *mapped = NULL, *dmapped = NULL;
        if (tr->has_map) {
            mapped = wsf(tr, pl->off_hmap);
            dmapped = wsf(tr, pl->off_dhmap);
            rc = linear(tr, mapped, Ht, h, H, tr->map_w, tr->map_b, N, Ht, H, 0.0f, err);
            s = mapped;
            if (!rc && dh)
                rc = tr->ops->scale(tr->be, dmapped, 0.0f, N * Ht, err);
        }
        if (!rc)
            rc = tr->ops->hidden_loss(tr->be, loss, dh ? (tr->has_map ? dmapped : dh) : NULL, s,
                                      t, Ht, N, Ht, (int)lo->hidden_kind, gs, err);
        if (!rc && dh && tr->has_map)
            rc = linear_backward(tr, dh, H, 1.0f, dmapped, Ht, h, H, tr->map_w, tr->map_b, N,
                                 Ht, H, err);
        if (!rc && !dh) {
            rc = lms_buf_download(tr->be, tr->host_rows, (size_t)pl->N * 4, loss,
                                  (size_t)N * 4, err);
            double sum = 0;
            for (int64_t r = 0; r < N; r++)
                sum += tr->host_rows[r];
            st->hid_sum += sum / (double)N;
        }
    }
    return rc;
}

/* The model's observer for the student: the hidden losses of the pairs at each point. */
struct observer_ctx {
    struct lms_trainer *tr;
    struct step *st;
};

static enum lms_status observer(void *ctx, enum lms_hook_point p, int64_t layer,
                                const float *data, int64_t cols, float *grad,
                                struct lms_error *err)
{
    struct observer_ctx *oc = ctx;
    (void)cols; /* the student's rows are (N, H) at every point a pair may name */
    return hidden_pairs(oc->tr, oc->st, p, layer, data, grad, err);
}

/* ---- head and losses ---------------------------------------------------------------------- */

/* Teacher logits of rows [r0, r0 + nr) into the teacher chunk. */
static enum lms_status teacher_chunk(struct lms_trainer *tr, struct step *st, int64_t r0,
                                     int64_t nr, struct lms_error *err)
{
    const struct plan *p = &tr->plan;
    float *tl = wsf(tr, p->off_tlogits);
    int64_t V = tr->V;
    if (st->b->teacher_logits)
        return lms_buf_upload(tr->be, tl, st->b->teacher_logits + r0 * V,
                              (size_t)(nr * V) * sizeof(float), err);
    enum lms_dtype hdt;
    const void *head = lms_engine_lm_head(st->b->teacher, &hdt);
    int64_t Ht = tr->teacher_H;
    return lms__linear(tr->be, tl, V, wsf(tr, p->off_tfinal) + r0 * Ht, Ht, head, hdt, NULL, nr,
                       V, Ht, 0.0f, err);
}

/* One pass over the head in chunks: losses (sums into st) and, with grads, the gradient of the
 * combined loss into dxn_f (N, H) and the head weight. */
static enum lms_status head_pass(struct lms_trainer *tr, struct step *st, bool grads,
                                 struct lms_error *err)
{
    const struct plan *p = &tr->plan;
    const struct lms_loss_opts *lo = st->lo;
    struct lms_backend *be = tr->be;
    int64_t N = st->N, H = tr->a.hidden, V = tr->V, R = p->R;
    float *xnf = wsf(tr, p->off_xnf), *logits = wsf(tr, p->off_logits);
    float *dxn = wsf(tr, p->off_dxn);
    float *kdl = wsf(tr, p->off_kdl), *cel = wsf(tr, p->off_cel);
    size_t head = tr->a.tie_embeddings ? tr->embed : tr->lm_head;
    bool want_kd = (st->b->teacher || st->b->teacher_logits) &&
                   (lo->kd_weight != 0 || lo->combine == LMS_COMBINE_SCALED || !grads);
    bool has_tgt = st->b->targets != NULL;
    double T = lo->temperature > 0 ? lo->temperature : 1.0;
    enum lms_status rc = LMS_OK;
    st->kd_sum = st->ce_sum = 0;
    for (int64_t r0 = 0; !rc && r0 < N; r0 += R) {
        int64_t nr = N - r0 < R ? N - r0 : R;
        rc = linear(tr, logits, V, xnf + r0 * H, H, head, ABSENT, nr, V, H, 0.0f, err);
        if (!rc && want_kd)
            rc = teacher_chunk(tr, st, r0, nr, err);
        if (rc)
            break;
        struct lms_logit_loss ll = {
            .n_rows = nr, .vocab = V, .student = logits,
            .teacher = want_kd ? wsf(tr, p->off_tlogits) : NULL, .ld = V,
            .target = has_tgt ? (const int32_t *)ws_at(tr, p->off_tgt) + r0 : NULL,
            .kd_valid = st->b->kd_mask ? (const uint8_t *)ws_at(tr, p->off_kdv) + r0 : NULL,
            .kd_kind = (int)lo->kd, .top_k = lo->top_k, .temperature = (float)T,
            .kd_mul = lo->t2_scale ? (float)(T * T) : 1.0f, .kd_loss = kdl, .ce_loss = cel,
            .grad = grads ? logits : NULL,
            .kd_grad_scale = st->n_kd ? st->c_kd / (float)st->n_kd : 0.0f,
            .ce_grad_scale = st->n_ce ? st->c_ce / (float)st->n_ce : 0.0f,
        };
        rc = tr->ops->logit_loss(be, &ll, err);
        if (!rc)
            rc = lms_buf_download(be, tr->host_rows, (size_t)p->N * 4, kdl, (size_t)nr * 4, err);
        for (int64_t r = 0; !rc && r < nr; r++)
            st->kd_sum += tr->host_rows[r];
        if (!rc && has_tgt)
            rc = lms_buf_download(be, tr->host_rows, (size_t)p->N * 4, cel, (size_t)nr * 4, err);
        for (int64_t r = 0; !rc && has_tgt && r < nr; r++)
            st->ce_sum += tr->host_rows[r];
        if (!rc && grads)
            rc = linear_backward(tr, dxn + r0 * H, H, 0.0f, logits, V, xnf + r0 * H, H, head,
                                 ABSENT, nr, V, H, err);
    }
    return rc;
}

/* Gradient coefficients of the mean losses from the combine rule (values known when needed). */
static void coefficients(struct step *st, double kd, double ce, double hid)
{
    const struct lms_loss_opts *lo = st->lo;
    bool ce_on = lo->ce_weight != 0 && st->b->targets;
    if (lo->combine == LMS_COMBINE_WEIGHTED) {
        st->c_kd = (float)lo->kd_weight;
        st->c_ce = ce_on ? (float)lo->ce_weight : 0.0f;
        st->c_hid = (float)lo->hidden_weight;
        return;
    }
    double c_int = hid > 0 ? kd / hid : 0.0; /* L_int' = L_int * (L_logits / L_int) */
    double lam = lo->kd_weight;
    if (!ce_on) {
        st->c_kd = 1.0f;
        st->c_ce = 0.0f;
        st->c_hid = (float)c_int;
        return;
    }
    double sum = kd + (lo->n_pairs ? kd : 0.0); /* L_logits + L_int' */
    double r = sum > 0 ? ce / sum : 0.0;
    st->c_kd = (float)(lam * r);
    st->c_hid = (float)(lam * r * c_int);
    st->c_ce = (float)lo->ce_weight; /* L = ce_weight L_ce + kd_weight L_kd */
}

static double combined_total(const struct step *st, double kd, double ce, double hid)
{
    const struct lms_loss_opts *lo = st->lo;
    bool ce_on = lo->ce_weight != 0 && st->b->targets;
    if (lo->combine == LMS_COMBINE_WEIGHTED)
        return lo->kd_weight * kd + (ce_on ? lo->ce_weight * ce : 0.0) +
               lo->hidden_weight * hid;
    double hid_s = hid > 0 ? kd : 0.0;
    if (!ce_on)
        return kd + hid_s;
    return lo->ce_weight * ce + lo->kd_weight * ce; /* L_kd has L_ce's value by construction */
}

/* ---- teacher ------------------------------------------------------------------------------ */

struct teacher_ctx {
    struct lms_trainer *tr;
    const struct lms_loss_opts *lo;
};

static enum lms_status teacher_hook(void *ctx, struct lms_backend *be,
                                    const struct lms_activation *act, struct lms_error *err)
{
    struct teacher_ctx *tc = ctx;
    struct lms_trainer *tr = tc->tr;
    const struct plan *p = &tr->plan;
    int64_t n = act->batch * act->seq * act->cols;
    enum lms_status rc = LMS_OK;
    if (act->point == LMS_HOOK_FINAL_NORM_OUT)
        rc = copy(tr, wsf(tr, p->off_tfinal), act->data, n, err);
    for (size_t k = 0; !rc && k < tc->lo->n_pairs; k++) {
        const struct lms_hidden_pair *hp = &tc->lo->pairs[k];
        bool global = hp->teacher_point == LMS_HOOK_EMBED_OUT ||
                      hp->teacher_point == LMS_HOOK_FINAL_NORM_OUT;
        if (hp->teacher_point == act->point && (global || hp->teacher_layer == act->layer))
            rc = copy(tr, wsf(tr, p->off_tpairs) + (size_t)k * (size_t)(p->N * p->Ht),
                      act->data, n, err);
    }
    return rc;
}

static enum lms_status run_teacher(struct lms_trainer *tr, struct step *st,
                                   struct lms_error *err)
{
    struct lms_engine *te = st->b->teacher;
    const struct lms_arch *ta = lms_engine_arch(te);
    if (lms_engine_logits_cols(te) != tr->V)
        return lms_error_set(err, LMS_EINVAL,
                             "distill: the teacher has %lld logits per token and the student "
                             "%lld; the vocabularies must be equal",
                             (long long)lms_engine_logits_cols(te), (long long)tr->V);
    if (ta->hidden > tr->plan.Ht)
        return lms_error_set(err, LMS_EINVAL,
                             "trainer: the teacher's hidden size %lld exceeds the %lld planned "
                             "(lms_train_opts.teacher_hidden)",
                             (long long)ta->hidden, (long long)tr->plan.Ht);
    if (st->lo->n_pairs && ta->hidden != (tr->has_map ? tr->plan.Ht : tr->a.hidden))
        return lms_error_set(err, LMS_EINVAL,
                             "trainer: intermediate losses compare the teacher's %lld channels "
                             "with a planned width of %lld (lms_train_opts.teacher_hidden)",
                             (long long)ta->hidden,
                             (long long)(tr->has_map ? tr->plan.Ht : tr->a.hidden));
    tr->teacher_H = ta->hidden;
    struct teacher_ctx tc = {tr, st->lo};
    unsigned mask = 1u << LMS_HOOK_FINAL_NORM_OUT;
    for (size_t k = 0; k < st->lo->n_pairs; k++)
        mask |= 1u << st->lo->pairs[k].teacher_point;
    struct lms_forward f = {
        .ids = st->b->ids, .batch = st->B, .seq = st->S, .hook = teacher_hook, .hook_ctx = &tc,
        .hook_mask = mask,
    };
    return lms_engine_forward(te, &f, err);
}

/* ---- the step ----------------------------------------------------------------------------- */

static enum lms_status check_batch(struct lms_trainer *tr, const struct lms_train_batch *b,
                                   const struct lms_loss_opts *lo, bool grads,
                                   struct lms_error *err)
{
    if (b->batch <= 0 || b->seq <= 0 || b->batch > tr->opts.max_batch ||
        b->seq > tr->opts.max_seq)
        return lms_error_set(err, LMS_EINVAL,
                             "trainer: batch %lld x sequence %lld outside the planned %lld x %lld",
                             (long long)b->batch, (long long)b->seq,
                             (long long)tr->opts.max_batch, (long long)tr->opts.max_seq);
    if (b->teacher_logits && b->teacher)
        return lms_error_set(err, LMS_EINVAL,
                             "trainer: give the teacher as logits or as an engine, not both");
    if (!b->teacher_logits && !b->teacher && grads &&
        (lo->kd_weight != 0 || lo->combine == LMS_COMBINE_SCALED))
        return lms_error_set(err, LMS_EINVAL,
                             "trainer: the distillation loss needs a teacher (logits or engine)");
    if (lo->n_pairs > tr->opts.max_hidden_pairs)
        return lms_error_set(err, LMS_EINVAL,
                             "trainer: %zu intermediate-loss pairs, %zu planned", lo->n_pairs,
                             tr->opts.max_hidden_pairs);
    if (lo->n_pairs && !b->teacher)
        return lms_error_set(err, LMS_EINVAL,
                             "trainer: intermediate losses need a teacher engine");
    if (lo->kd == LMS_KD_TOP_K && lo->top_k < 1)
        return lms_error_set(err, LMS_EINVAL, "trainer: top-K loss with K = %lld",
                             (long long)lo->top_k);
    if (lo->temperature < 0)
        return lms_error_set(err, LMS_EINVAL, "trainer: temperature %g", lo->temperature);
    for (size_t k = 0; k < lo->n_pairs; k++) {
        const struct lms_hidden_pair *hp = &lo->pairs[k];
        enum lms_hook_point pts[2] = {hp->student_point, hp->teacher_point};
        for (int s = 0; s < 2; s++)
            if (pts[s] != LMS_HOOK_EMBED_OUT && pts[s] != LMS_HOOK_ATTN_NORM_OUT &&
                pts[s] != LMS_HOOK_MLP_NORM_OUT && pts[s] != LMS_HOOK_FINAL_NORM_OUT)
                return lms_error_set(err, LMS_EINVAL,
                                     "trainer: intermediate pair %zu: point %d is not a "
                                     "normalisation output or the embedding output",
                                     k, (int)pts[s]);
        if (hp->student_layer >= tr->a.n_layers)
            return lms_error_set(err, LMS_EINVAL,
                                 "trainer: intermediate pair %zu: student layer %lld of %lld", k,
                                 (long long)hp->student_layer, (long long)tr->a.n_layers);
    }
    int64_t N = b->batch * b->seq;
    for (int64_t i = 0; i < N; i++) {
        if (b->ids[i] < 0 || b->ids[i] >= tr->vocab_in)
            return lms_error_set(err, LMS_EINVAL,
                                 "trainer: token id %ld at position %lld is outside the "
                                 "vocabulary [0, %lld)",
                                 (long)b->ids[i], (long long)i, (long long)tr->vocab_in);
        if (b->targets && b->targets[i] >= tr->V)
            return lms_error_set(err, LMS_EINVAL,
                                 "trainer: target %ld at position %lld is outside [0, %lld)",
                                 (long)b->targets[i], (long long)i, (long long)tr->V);
    }
    return LMS_OK;
}

static enum lms_status run_step(struct lms_trainer *tr, const struct lms_train_batch *b,
                                const struct lms_loss_opts *lo, bool grads, double grad_scale,
                                struct lms_loss_parts *parts, struct lms_error *err)
{
    const struct plan *p = &tr->plan;
    struct lms_backend *be = tr->be;
    enum lms_status rc = check_batch(tr, b, lo, grads, err);
    if (rc)
        return rc;
    struct step st = {.b = b, .lo = lo, .B = b->batch, .S = b->seq,
                      .grad_scale = (float)grad_scale};
    int64_t N = st.N = b->batch * b->seq;
    for (int64_t i = 0; i < N; i++) {
        tr->host_pos[i] = (int32_t)(i % b->seq);
        if (!b->kd_mask || b->kd_mask[i])
            st.n_kd++;
        if (b->targets && b->targets[i] >= 0)
            st.n_ce++;
    }
    tr->teacher_H = tr->a.hidden;
    size_t nb = (size_t)N * sizeof(int32_t);
    rc = lms_buf_upload(be, ws_at(tr, p->off_ids), b->ids, nb, err);
    if (!rc)
        rc = lms_buf_upload(be, ws_at(tr, p->off_pos), tr->host_pos, nb, err);
    if (!rc && b->targets)
        rc = lms_buf_upload(be, ws_at(tr, p->off_tgt), b->targets, nb, err);
    if (!rc && b->kd_mask)
        rc = lms_buf_upload(be, ws_at(tr, p->off_kdv), b->kd_mask, (size_t)N, err);
    if (!rc && b->teacher)
        rc = run_teacher(tr, &st, err);
    if (rc)
        return rc;

    /* forward: residual stream res[0..L], activations per slot */
    struct observer_ctx oc = {tr, &st};
    struct lms__model_pass ps = {
        .be = be, .a = &tr->a, .batch = st.B, .seq = st.S,
        .pos = (const int32_t *)ws_at(tr, p->off_pos), .rope_cos = wsf(tr, p->off_cos),
        .rope_sin = wsf(tr, p->off_sin), .rope_rows = tr->opts.max_seq, .observe = observer,
        .observe_ctx = &oc,
    };
    struct lms__model_acts acts = {
        .res = wsf(tr, p->off_res), .res_step = p->N * tr->a.hidden, .slots = tr->slot_acts,
        .n_slots = p->n_slots, .xnf = wsf(tr, p->off_xnf), .rstdf = wsf(tr, p->off_rstdf),
    };
    const int32_t *ids = (const int32_t *)ws_at(tr, p->off_ids);
    rc = lms__model_forward(&ps, &tr->model, &acts, ids, NULL, err);
    if (rc)
        return rc;
    double hid = lo->n_pairs ? st.hid_sum / (double)lo->n_pairs : 0.0;

    /* losses: the scaled rule needs the loss values before any gradient */
    bool two_pass = grads && lo->combine == LMS_COMBINE_SCALED &&
                    ((lo->ce_weight != 0 && b->targets) || lo->n_pairs);
    if (two_pass || !grads) {
        rc = head_pass(tr, &st, false, err);
        if (rc)
            return rc;
    }
    double kd = st.n_kd ? st.kd_sum / (double)st.n_kd : 0.0;
    double ce = st.n_ce ? st.ce_sum / (double)st.n_ce : 0.0;
    if (grads) {
        /* single pass: WEIGHTED, or SCALED with the logit loss alone; neither reads values */
        coefficients(&st, kd, ce, hid);
        st.c_kd *= st.grad_scale;
        st.c_ce *= st.grad_scale;
        st.c_hid *= st.grad_scale;
        rc = head_pass(tr, &st, true, err);
        if (rc)
            return rc;
        kd = st.n_kd ? st.kd_sum / (double)st.n_kd : 0.0;
        ce = st.n_ce ? st.ce_sum / (double)st.n_ce : 0.0;
        struct lms__backward_scratch d = {
            wsf(tr, p->off_dx), wsf(tr, p->off_dxn), wsf(tr, p->off_dctx),
            wsf(tr, p->off_dqkv), wsf(tr, p->off_dgu), wsf(tr, p->off_dact),
        };
        rc = lms__model_backward(&ps, &tr->model, &tr->model_g, &acts, &d, ids,
                                 tr->opts.recompute, err);
    }
    if (!rc)
        rc = lms_backend_sync(be, err);
    if (rc)
        return rc;
    if (parts) {
        parts->kd = kd;
        parts->ce = ce;
        parts->hidden = hid;
        parts->n_kd = st.n_kd;
        parts->n_ce = st.n_ce;
        parts->total = combined_total(&st, kd, ce, hid);
    }
    return LMS_OK;
}

enum lms_status lms_trainer_micro_step(struct lms_trainer *tr, const struct lms_train_batch *b,
                                       const struct lms_loss_opts *lo, double grad_scale,
                                       struct lms_loss_parts *parts, struct lms_error *err)
{
    return run_step(tr, b, lo, true, grad_scale, parts, err);
}

enum lms_status lms_trainer_eval(struct lms_trainer *tr, const struct lms_train_batch *b,
                                 const struct lms_loss_opts *lo, struct lms_loss_parts *parts,
                                 struct lms_error *err)
{
    return run_step(tr, b, lo, false, 0.0, parts, err);
}

/* ---- optimiser ---------------------------------------------------------------------------- */

/* *total = the sum of squares of the gradients of parts[0..n) (at most n_params of them): one
 * fp32 sum per part on the device, one download for all of them, summed in double on the host
 * (the arithmetic of a per-tensor loop without a round trip per tensor). */
static enum lms_status grad_squares(struct lms_trainer *tr, const struct lms_adamw *parts,
                                    size_t n, double *total, struct lms_error *err)
{
    float *acc = tr->norm_parts.ptr;
    *total = 0;
    if (!n)
        return LMS_OK;
    enum lms_status rc = tr->ops->scale(tr->be, acc, 0.0f, (int64_t)n, err);
    for (size_t i = 0; !rc && i < n; i++)
        rc = tr->ops->sum_squares(tr->be, acc + i, parts[i].g, parts[i].n, err);
    if (!rc)
        rc = lms_buf_download(tr->be, tr->host_norm_parts, n * sizeof(float), acc,
                              n * sizeof(float), err);
    for (size_t i = 0; !rc && i < n; i++)
        *total += tr->host_norm_parts[i];
    return rc;
}

/* The AdamW list of every parameter (decay as o says; the bf16 working copy where there is
 * one). Caller frees. */
static struct lms_adamw *adamw_list(const struct lms_trainer *tr, const struct lms_adamw_opts *o)
{
    struct lms_adamw *list = lms_calloc(tr->n_params, sizeof *list);
    for (size_t i = 0; list && i < tr->n_params; i++) {
        const struct lms_train_param *p = &tr->params[i];
        list[i] = (struct lms_adamw){p->w, p->g, p->m, p->v, p->numel,
                                     o->decay_all || p->decay ? (float)o->weight_decay : 0.0f,
                                     tr->W16 ? tr->W16 + (p->w - tr->W) : NULL};
    }
    return list;
}

/* torch.nn.utils.clip_grad_norm_: coefficient clip / (norm + 1e-6), applied when < 1 */
static float clip_factor(const struct lms_adamw_opts *o, double norm)
{
    if (o->clip_norm <= 0)
        return 1.0f;
    double c = o->clip_norm / (norm + 1e-6);
    return c < 1.0 ? (float)c : 1.0f;
}

static enum lms_status adamw_sharded(struct lms_trainer *tr, const struct lms_adamw_opts *o,
                                     double *grad_norm, struct lms_error *err);

enum lms_status lms_trainer_adamw(struct lms_trainer *tr, const struct lms_adamw_opts *o,
                                  double *grad_norm, struct lms_error *err)
{
    if (o->step < 1 || !(o->lr >= 0) || !(o->beta1 >= 0 && o->beta1 < 1) ||
        !(o->beta2 >= 0 && o->beta2 < 1) || !(o->eps >= 0) || !(o->weight_decay >= 0))
        return lms_error_set(err, LMS_EINVAL,
                             "adamw: step %lld, lr %g, betas %g/%g, eps %g, weight decay %g out "
                             "of range",
                             (long long)o->step, o->lr, o->beta1, o->beta2, o->eps,
                             o->weight_decay);
    if (tr->comm)
        return adamw_sharded(tr, o, grad_norm, err);
    struct lms_adamw *list = adamw_list(tr, o);
    if (!list)
        return lms_error_set(err, LMS_ENOMEM, "adamw: out of memory");
    double total = 0;
    enum lms_status rc = LMS_OK;
    if (grad_norm || o->clip_norm > 0)
        rc = grad_squares(tr, list, tr->n_params, &total, err);
    double norm = sqrt(total);
    if (!rc && grad_norm)
        *grad_norm = norm;
    if (!rc && !isfinite(norm))
        rc = lms_error_set(err, LMS_ENONFINITE,
                           "adamw: the gradient norm is not finite (%g); nothing updated", norm);
    struct lms_adamw_hyper h = {(float)o->lr, (float)o->beta1, (float)o->beta2, (float)o->eps,
                                clip_factor(o, norm), o->step};
    if (!rc)
        rc = tr->ops->adamw(tr->be, list, (int64_t)tr->n_params, &h, err);
    lms_free(list); /* the update also wrote the bf16 working copy (w_bf16) */
    if (!rc)
        rc = lms_backend_sync(tr->be, err);
    return rc;
}

/* ---- data parallelism (ZeRO stage 1, include/lms/train.h) --------------------------------- */

/* The part [lo, hi) (elements of the tensor) of parameter p inside this rank's chunk; false
 * when none. */
static bool shard_part(const struct lms_trainer *tr, const struct lms_train_param *p, int64_t *lo,
                       int64_t *hi)
{
    int64_t off = p->w - tr->W, a = tr->shard0 - off, b = tr->shard0 + tr->chunk - off;
    *lo = a > 0 ? a : 0;
    *hi = b < p->numel ? b : p->numel;
    return *lo < *hi;
}

/* The optimiser step of a data-parallel run: reduce-scatter, norm, update of this rank's
 * chunk, all-gather. Every rank makes the same calls in the same order. */
static enum lms_status adamw_sharded(struct lms_trainer *tr, const struct lms_adamw_opts *o,
                                     double *grad_norm, struct lms_error *err)
{
    enum lms_status rc = lms_backend_sync(tr->be, err);
    if (!rc)
        rc = lms_comm_reduce_scatter(tr->comm, tr->G, tr->chunk, err);
    if (rc)
        return rc;
    struct lms_adamw *list = lms_calloc(tr->n_params, sizeof *list);
    if (!list)
        return lms_error_set(err, LMS_ENOMEM, "adamw: out of memory");
    /* the clipping norm: this chunk's sum of squares per tensor part, summed over ranks */
    double total = 0;
    size_t n = 0;
    for (size_t i = 0; i < tr->n_params; i++) {
        const struct lms_train_param *p = &tr->params[i];
        int64_t lo, hi;
        if (!shard_part(tr, p, &lo, &hi))
            continue;
        size_t m_off = (size_t)(p->w - tr->W + lo - tr->shard0);
        list[n] = (struct lms_adamw){p->w + lo, p->g + lo, tr->M + m_off, tr->Vm + m_off,
                                     hi - lo,
                                     o->decay_all || p->decay ? (float)o->weight_decay : 0.0f,
                                     NULL};
        n++;
    }
    if (grad_norm || o->clip_norm > 0)
        rc = grad_squares(tr, list, n, &total, err);
    if (!rc)
        rc = lms_comm_sum(tr->comm, &total, 1, err);
    double norm = sqrt(total);
    if (!rc && grad_norm)
        *grad_norm = norm;
    if (!rc && !isfinite(norm)) /* the same on every rank: all skip together */
        rc = lms_error_set(err, LMS_ENONFINITE,
                           "adamw: the gradient norm is not finite (%g); nothing updated", norm);
    struct lms_adamw_hyper h = {(float)o->lr, (float)o->beta1, (float)o->beta2, (float)o->eps,
                                clip_factor(o, norm), o->step};
    if (!rc && n)
        rc = tr->ops->adamw(tr->be, list, (int64_t)n, &h, err);
    lms_free(list);
    if (!rc)
        rc = lms_backend_sync(tr->be, err);
    if (!rc)
        rc = lms_comm_all_gather(tr->comm, tr->W, tr->chunk, err);
    if (!rc && tr->W16) /* every rank now holds all updated master weights */
        rc = refresh_working_copy(tr, err);
    return rc;
}

enum lms_status lms_trainer_gather_moment(struct lms_trainer *tr, int which,
                                          struct lms_error *err)
{
    const float *src = which ? tr->Vm : tr->M;
    size_t n = tr->comm ? (size_t)tr->chunk : tr->n_floats;
    float *dst = tr->comm ? tr->G + tr->shard0 : tr->G;
    enum lms_status rc = copy(tr, dst, src, (int64_t)n, err);
    if (!rc)
        rc = lms_backend_sync(tr->be, err);
    if (!rc && tr->comm)
        rc = lms_comm_all_gather(tr->comm, tr->G, tr->chunk, err);
    return rc;
}

enum lms_status lms_trainer_load_moment(struct lms_trainer *tr, size_t i, int which,
                                        const float *host, struct lms_error *err)
{
    const struct lms_train_param *p = &tr->params[i];
    float *base = which ? tr->Vm : tr->M;
    if (!tr->comm)
        return lms_buf_upload(tr->be, base + (p->w - tr->W), host, (size_t)p->numel * 4, err);
    int64_t lo, hi;
    if (!shard_part(tr, p, &lo, &hi))
        return LMS_OK;
    return lms_buf_upload(tr->be, base + (p->w - tr->W + lo - tr->shard0), host + lo,
                          (size_t)(hi - lo) * sizeof(float), err);
}

/* ---- export ------------------------------------------------------------------------------- */

enum lms_status lms_trainer_export(struct lms_trainer *tr, enum lms_dtype dt,
                                   struct lms_model *out, struct lms_error *err)
{
    if (dt != LMS_DTYPE_F32 && dt != LMS_DTYPE_BF16 && dt != LMS_DTYPE_F16)
        return lms_error_set(err, LMS_EINVAL, "trainer export: dtype %s (F32, BF16 or F16)",
                             lms_dtype_name(dt));
    enum lms_status rc = lms_model_clone(tr->student, out, err);
    if (rc)
        return rc;
    out->arch.dtype = dt;
    size_t es = lms_dtype_size(dt);
    for (size_t i = 0; !rc && i < tr->n_params; i++) {
        const struct lms_train_param *p = &tr->params[i];
        if (p->role == LMS_ROLE_OTHER)
            continue;
        struct lms_tensor *t = lms_model_find(out, p->role, p->layer);
        struct lms_storage *s = NULL;
        struct lms_view *v = NULL;
        rc = lms_storage_new_host((size_t)p->numel * es, &s, err);
        for (int64_t e0 = 0; !rc && e0 < p->numel; e0 += STAGING_ELEMS) {
            int64_t k = p->numel - e0 < STAGING_ELEMS ? p->numel - e0 : STAGING_ELEMS;
            rc = lms_buf_download(tr->be, tr->host_stage, (size_t)STAGING_ELEMS * 4, p->w + e0,
                                  (size_t)k * 4, err);
            if (!rc)
                lms_cast((char *)s->base + (size_t)e0 * es, dt, tr->host_stage, LMS_DTYPE_F32,
                         (size_t)k);
        }
        if (!rc)
            rc = lms_view_new_storage(s, 0, dt, t->view->ndim, t->view->shape, &v, err);
        lms_storage_release(s);
        if (!rc) {
            lms_view_release(t->view);
            t->view = v;
        }
    }
    /* tensors the trainer does not train (none in the modelled families) keep their views, cast
     * lazily by the writers */
    if (rc)
        lms_model_release(out);
    return rc;
}
