/* The content fingerprint of a model (include/lms/ir.h): what distill records of its student
 * and teacher so that a resumed run, or every rank of one, knows it holds the same weights
 * wherever the files are. Tensors are hashed under their Hugging Face names, in name order,
 * so that the fingerprint does not depend on the file layout (shards, NeMo or HF) the model
 * was read from, only on its architecture and values. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lms/alloc.h"
#include "lms/dtype.h"
#include "lms/hash.h"
#include "lms/ir.h"

#define CHUNK_BYTES ((uint64_t)4 << 20) /* read a tensor this much at a time */

struct keyed {
    char key[160];
    const struct lms_tensor *t;
};

static int by_key(const void *a, const void *b)
{
    return strcmp(((const struct keyed *)a)->key, ((const struct keyed *)b)->key);
}

static void hash_string(struct lms_hash64 *h, const char *s)
{
    lms_hash64_update(h, s, strlen(s) + 1); /* the NUL separates consecutive strings */
}

static void hash_double(struct lms_hash64 *h, double v)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    lms_hash64_update_u64(h, bits);
}

/* The fields of the architecture that change what the weights compute. */
static void hash_arch(struct lms_hash64 *h, const struct lms_arch *a)
{
    hash_string(h, lms_family_name(a->family));
    const int64_t dims[] = {a->n_layers, a->hidden, a->ffn, a->n_heads, a->n_groups, a->head_dim,
                            a->vocab, a->padded_vocab, a->sliding_window,
                            (int64_t)a->rope.type, a->rope.original_max_position,
                            a->tie_embeddings, a->qkv_bias, a->o_bias, a->qk_norm};
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        lms_hash64_update_u64(h, (uint64_t)dims[i]);
    const double reals[] = {a->norm_eps, a->rope.theta, a->rope.factor, a->rope.low_freq_factor,
                            a->rope.high_freq_factor};
    for (size_t i = 0; i < sizeof reals / sizeof reals[0]; i++)
        hash_double(h, reals[i]);
}

/* A tensor's name, dtype, shape and bytes, read chunk by chunk (sub-byte dtypes whole). */
static enum lms_status hash_tensor(struct lms_hash64 *h, const struct keyed *k,
                                   unsigned char **buf, size_t *cap, struct lms_error *err)
{
    const struct lms_view *v = k->t->view;
    hash_string(h, k->key);
    hash_string(h, lms_dtype_name(v->dtype));
    lms_hash64_update_u64(h, (uint64_t)v->ndim);
    for (int d = 0; d < v->ndim; d++)
        lms_hash64_update_u64(h, (uint64_t)v->shape[d]);
    int64_t numel = lms_view_numel(v);
    size_t esize = lms_dtype_size(v->dtype);
    int64_t per = esize ? (int64_t)(CHUNK_BYTES / esize) : numel;
    uint64_t want = esize ? (numel < per ? (uint64_t)numel : (uint64_t)per) * esize
                          : lms_view_nbytes(v);
    if (want > *cap) {
        unsigned char *nb = lms_realloc(*buf, want ? want : 1);
        if (!nb)
            return lms_error_set(err, LMS_ENOMEM, "out of memory reading tensor '%s'",
                                 k->t->name);
        *buf = nb;
        *cap = want;
    }
    for (int64_t e = 0; e < numel; e += per) {
        int64_t n = numel - e < per ? numel - e : per;
        enum lms_status rc = lms_view_read(v, e, n, *buf, err);
        if (rc)
            return lms_error_wrap(err, "tensor '%s': ", k->t->name);
        lms_hash64_update(h, *buf, esize ? (size_t)n * esize : (size_t)want);
    }
    lms_view_drop_pages(v); /* a large model streams through, it is not kept resident */
    return LMS_OK;
}

enum lms_status lms_model_fingerprint(const struct lms_model *m, char out[LMS_HASH64_HEX],
                                      struct lms_error *err)
{
    struct keyed *ks = lms_calloc(m->n_tensors ? m->n_tensors : 1, sizeof *ks);
    if (!ks)
        return lms_error_set(err, LMS_ENOMEM, "out of memory fingerprinting the model");
    /* tensors the IR carries only by name (format bookkeeping such as Megatron's extra state)
     * are left out: no computation reads them, and a converted checkpoint need not have them */
    size_t n = 0;
    for (size_t i = 0; i < m->n_tensors; i++) {
        const struct lms_tensor *t = &m->tensors[i];
        if (t->role == LMS_ROLE_OTHER)
            continue;
        if (!lms_role_hf_name(t->role, t->layer, ks[n].key, sizeof ks[n].key))
            snprintf(ks[n].key, sizeof ks[n].key, "%s", t->name);
        ks[n++].t = t;
    }
    qsort(ks, n, sizeof *ks, by_key);
    struct lms_hash64 h;
    lms_hash64_init(&h, 0);
    hash_arch(&h, &m->arch);
    lms_hash64_update_u64(&h, (uint64_t)n);
    unsigned char *buf = NULL;
    size_t cap = 0;
    enum lms_status rc = LMS_OK;
    for (size_t i = 0; i < n && !rc; i++)
        rc = hash_tensor(&h, &ks[i], &buf, &cap, err);
    lms_free(buf);
    lms_free(ks);
    if (!rc)
        lms_hash64_hex(lms_hash64_digest(&h), out);
    return rc;
}
