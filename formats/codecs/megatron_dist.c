/* Megatron-Core torch_dist checkpoints: the .metadata interpreter, the chunk-tiling assembly into
 * lazy views, the torch.save tensor decoder and the one-rank writer (include/lms/dcp.h,
 * checkpoint-formats.md §2-§3). */
#include "formats/codecs/dcp.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lms/alloc.h"
#include "lms/json.h"
#include "lms/outdir.h"

#define META_MAX_BYTES (1u << 30) /* .metadata ceiling: 1 GiB */

/* ---- .metadata ---------------------------------------------------------------------------- */

/* The instance dict of a dataclass object (BUILD state), or NULL. */
static const struct lms_pkl *obj_state(const struct lms_pkl *o)
{
    if (!o || o->kind != LMS_PKL_OBJ || !o->u.obj.state)
        return NULL;
    const struct lms_pkl *s = o->u.obj.state;
    if (s->kind == LMS_PKL_TUPLE && s->u.seq.n == 2) /* (dict, slots) */
        s = s->u.seq.items[0];
    return s && s->kind == LMS_PKL_DICT ? s : NULL;
}

static const char *meta_mod = "torch.distributed.checkpoint.metadata";

static enum lms_status parse_properties(const struct lms_pkl *p, enum lms_dtype *dt,
                                        struct lms_error *err)
{
    if (!lms_pkl_is_obj(p, meta_mod, "TensorProperties") || !p->u.obj.state)
        return lms_error_set(err, LMS_EFORMAT, "properties is not a TensorProperties");
    const struct lms_pkl *s = p->u.obj.state, *d = NULL;
    if (s->kind == LMS_PKL_TUPLE && s->u.seq.n >= 1)
        d = s->u.seq.items[0];
    else if (s->kind == LMS_PKL_DICT)
        d = lms_pkl_dict_get(s, "dtype");
    if (!lms_pkl_torch_dtype(d, dt))
        return lms_error_set(err, LMS_EUNSUPPORTED, "unsupported tensor dtype");
    return LMS_OK;
}

static int64_t volume(int ndim, const int64_t *sizes)
{
    int64_t v = 1;
    for (int i = 0; i < ndim; i++)
        v *= sizes[i];
    return v;
}

/* §2.6 coverage: chunks inside the tensor, pairwise disjoint, volumes summing to numel. */
static enum lms_status check_tiling(const struct lms_dcp_tensor *t, struct lms_error *err)
{
    int64_t numel = volume(t->ndim, t->shape), sum = 0;
    for (size_t i = 0; i < t->n_chunks; i++) {
        const struct lms_dcp_chunk *c = &t->chunks[i];
        for (int a = 0; a < t->ndim; a++)
            if (c->offsets[a] < 0 || c->sizes[a] < 0 || c->offsets[a] > t->shape[a] ||
                c->sizes[a] > t->shape[a] - c->offsets[a])
                return lms_error_set(err, LMS_EFORMAT,
                                     "chunk %zu: axis %d range [%lld, +%lld) outside size %lld",
                                     i, a, (long long)c->offsets[a], (long long)c->sizes[a],
                                     (long long)t->shape[a]);
        sum += volume(t->ndim, c->sizes);
        for (size_t j = 0; j < i; j++) {
            const struct lms_dcp_chunk *o = &t->chunks[j];
            bool overlap = volume(t->ndim, c->sizes) > 0 && volume(t->ndim, o->sizes) > 0;
            for (int a = 0; a < t->ndim && overlap; a++)
                overlap = c->offsets[a] < o->offsets[a] + o->sizes[a] &&
                          o->offsets[a] < c->offsets[a] + c->sizes[a];
            if (overlap)
                return lms_error_set(err, LMS_EFORMAT, "chunks %zu and %zu overlap", j, i);
        }
    }
    if (sum != numel)
        return lms_error_set(err, LMS_EFORMAT,
                             "chunks cover %lld of %lld elements (they do not tile the tensor)",
                             (long long)sum, (long long)numel);
    return LMS_OK;
}

static bool size_eq(int n, const int64_t *a, const int64_t *b)
{
    for (int i = 0; i < n; i++)
        if (a[i] != b[i])
            return false;
    return true;
}

/* Attaches each storage_data entry to its chunk or bytes item. */
static enum lms_status parse_storage(const struct lms_pkl *sd, struct lms_dcp *d,
                                     struct lms_error *err)
{
    if (!sd || sd->kind != LMS_PKL_DICT)
        return lms_error_set(err, LMS_EFORMAT, "storage_data is not a dict");
    for (size_t i = 0; i + 1 < sd->u.seq.n; i += 2) {
        const struct lms_pkl *ks = obj_state(sd->u.seq.items[i]);
        const struct lms_pkl *vs = obj_state(sd->u.seq.items[i + 1]);
        if (!lms_pkl_is_obj(sd->u.seq.items[i], meta_mod, "MetadataIndex") || !ks)
            return lms_error_set(err, LMS_EFORMAT, "storage_data key %zu is not a MetadataIndex",
                                 i / 2);
        if (!lms_pkl_is_obj(sd->u.seq.items[i + 1], "torch.distributed.checkpoint.filesystem",
                            "_StorageInfo") || !vs)
            return lms_error_set(err, LMS_EFORMAT, "storage_data value %zu is not a _StorageInfo",
                                 i / 2);
        const struct lms_pkl *fqn = lms_pkl_dict_get(ks, "fqn");
        const struct lms_pkl *rp = lms_pkl_dict_get(vs, "relative_path");
        const struct lms_pkl *off = lms_pkl_dict_get(vs, "offset");
        const struct lms_pkl *len = lms_pkl_dict_get(vs, "length");
        if (!fqn || fqn->kind != LMS_PKL_STR || !rp || rp->kind != LMS_PKL_STR || !off ||
            off->kind != LMS_PKL_INT || !len || len->kind != LMS_PKL_INT || off->u.i < 0 ||
            len->u.i < 0)
            return lms_error_set(err, LMS_EFORMAT, "storage_data entry %zu is incomplete", i / 2);
        if (rp->u.s.len == 0 || strchr(rp->u.s.data, '/') || strcmp(rp->u.s.data, "..") == 0 ||
            strlen(rp->u.s.data) != rp->u.s.len)
            return lms_error_set(err, LMS_EFORMAT, "'%s': bad relative_path '%s'",
                                 fqn->u.s.data, rp->u.s.data);
        int64_t o[LMS_MAX_DIMS];
        int no = lms_pkl_int_tuple(lms_pkl_dict_get(ks, "offset"), o, LMS_MAX_DIMS);
        bool found = false;
        for (size_t t = 0; t < d->n_tensors && !found; t++) {
            struct lms_dcp_tensor *ten = &d->tensors[t];
            if (strcmp(ten->key, fqn->u.s.data) != 0)
                continue;
            for (size_t c = 0; c < ten->n_chunks; c++)
                if (no == ten->ndim && size_eq(no, o, ten->chunks[c].offsets)) {
                    if (ten->chunks[c].file)
                        return lms_error_set(err, LMS_EFORMAT,
                                             "'%s': two storage entries for one chunk",
                                             ten->key);
                    ten->chunks[c].file = rp->u.s.data;
                    ten->chunks[c].offset = (uint64_t)off->u.i;
                    ten->chunks[c].length = (uint64_t)len->u.i;
                    found = true;
                    break;
                }
            if (!found)
                return lms_error_set(err, LMS_EFORMAT,
                                     "'%s': storage entry for an offset no chunk has", ten->key);
        }
        for (size_t b = 0; b < d->n_bytes && !found; b++)
            if (strcmp(d->bytes[b].key, fqn->u.s.data) == 0) {
                d->bytes[b].file = rp->u.s.data;
                d->bytes[b].offset = (uint64_t)off->u.i;
                d->bytes[b].length = (uint64_t)len->u.i;
                found = true;
            }
        /* entries for keys absent from state_dict_metadata are ignored, as torch does */
    }
    for (size_t t = 0; t < d->n_tensors; t++)
        for (size_t c = 0; c < d->tensors[t].n_chunks; c++)
            if (!d->tensors[t].chunks[c].file)
                return lms_error_set(err, LMS_EFORMAT, "'%s': chunk %zu has no storage entry",
                                     d->tensors[t].key, c);
    return LMS_OK;
}

static enum lms_status parse_tensor_meta(const char *key, const struct lms_pkl *st,
                                         struct lms_dcp_tensor *t, struct lms_error *err)
{
    enum lms_status rc = parse_properties(lms_pkl_dict_get(st, "properties"), &t->dtype, err);
    if (rc)
        return rc;
    t->ndim = lms_pkl_int_tuple(lms_pkl_dict_get(st, "size"), t->shape, LMS_MAX_DIMS);
    if (t->ndim < 0)
        return lms_error_set(err, LMS_EFORMAT, "size is not a torch.Size of at most %d dims",
                             LMS_MAX_DIMS);
    for (int a = 0; a < t->ndim; a++)
        if (t->shape[a] < 0 || t->shape[a] > (INT64_C(1) << 40))
            return lms_error_set(err, LMS_EFORMAT, "size %lld on axis %d",
                                 (long long)t->shape[a], a);
    if (volume(t->ndim, t->shape) > (INT64_C(1) << 42))
        return lms_error_set(err, LMS_EFORMAT, "tensor of more than 2^42 elements");
    const struct lms_pkl *ch = lms_pkl_dict_get(st, "chunks");
    if (!ch || ch->kind != LMS_PKL_LIST)
        return lms_error_set(err, LMS_EFORMAT, "chunks is not a list");
    t->chunks = lms_calloc(ch->u.seq.n ? ch->u.seq.n : 1, sizeof(*t->chunks));
    if (!t->chunks)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    for (size_t i = 0; i < ch->u.seq.n; i++) {
        const struct lms_pkl *cs = obj_state(ch->u.seq.items[i]);
        struct lms_dcp_chunk *c = &t->chunks[i];
        int no = lms_pkl_int_tuple(lms_pkl_dict_get(cs, "offsets"), c->offsets, LMS_MAX_DIMS);
        int ns = lms_pkl_int_tuple(lms_pkl_dict_get(cs, "sizes"), c->sizes, LMS_MAX_DIMS);
        if (!lms_pkl_is_obj(ch->u.seq.items[i], meta_mod, "ChunkStorageMetadata") ||
            no != t->ndim || ns != t->ndim)
            return lms_error_set(err, LMS_EFORMAT, "chunk %zu is not a %d-d ChunkStorageMetadata",
                                 i, t->ndim);
        t->n_chunks++;
    }
    (void)key;
    return check_tiling(t, err);
}

enum lms_status lms_dcp_metadata_parse(const void *src, size_t src_len, struct lms_dcp *d,
                                       struct lms_error *err)
{
    memset(d, 0, sizeof(*d));
    enum lms_status rc = lms_pkl_parse(src, src_len, &d->doc, err);
    if (rc)
        return rc;
    const struct lms_pkl *root = d->doc.root;
    if (!lms_pkl_is_obj(root, meta_mod, "Metadata") &&
        !lms_pkl_is_obj(root, "megatron.core.dist_checkpointing.strategies.torch",
                        "MCoreMetadata"))
        return lms_error_set(err, LMS_EFORMAT, "top-level object is not a DCP Metadata");
    const struct lms_pkl *st = obj_state(root);
    const struct lms_pkl *sdm = lms_pkl_dict_get(st, "state_dict_metadata");
    if (!sdm || sdm->kind != LMS_PKL_DICT)
        return lms_error_set(err, LMS_EFORMAT, "state_dict_metadata is not a dict");
    size_t n = sdm->u.seq.n / 2;
    d->tensors = lms_calloc(n ? n : 1, sizeof(*d->tensors));
    d->bytes = lms_calloc(n ? n : 1, sizeof(*d->bytes));
    if (!d->tensors || !d->bytes)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const struct lms_pkl *k = sdm->u.seq.items[2 * i], *v = sdm->u.seq.items[2 * i + 1];
        if (k->kind != LMS_PKL_STR || strlen(k->u.s.data) != k->u.s.len)
            return lms_error_set(err, LMS_EFORMAT, "state_dict_metadata key %zu is not a string",
                                 i);
        for (size_t j = 0; j < d->n_tensors; j++)
            if (strcmp(d->tensors[j].key, k->u.s.data) == 0)
                return lms_error_set(err, LMS_EFORMAT, "duplicate key '%s'", k->u.s.data);
        if (lms_pkl_is_obj(v, meta_mod, "BytesStorageMetadata")) {
            struct lms_dcp_bytes *b = &d->bytes[d->n_bytes];
            b->key = lms_strdup(k->u.s.data);
            if (!b->key)
                return lms_error_set(err, LMS_ENOMEM, "out of memory");
            d->n_bytes++;
            continue;
        }
        if (!lms_pkl_is_obj(v, meta_mod, "TensorStorageMetadata") || !obj_state(v))
            return lms_error_set(err, LMS_EFORMAT, "'%s': unknown storage metadata", k->u.s.data);
        struct lms_dcp_tensor *t = &d->tensors[d->n_tensors];
        t->key = lms_strdup(k->u.s.data);
        if (!t->key)
            return lms_error_set(err, LMS_ENOMEM, "out of memory");
        d->n_tensors++;
        rc = parse_tensor_meta(t->key, obj_state(v), t, err);
        if (rc)
            return lms_error_wrap(err, "tensor '%s': ", t->key);
    }
    return parse_storage(lms_pkl_dict_get(st, "storage_data"), d, err);
}

void lms_dcp_release(struct lms_dcp *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->n_tensors; i++) {
        lms_free(d->tensors[i].key);
        lms_free(d->tensors[i].chunks);
        lms_view_release(d->tensors[i].view);
    }
    for (size_t i = 0; i < d->n_bytes; i++)
        lms_free(d->bytes[i].key);
    lms_free(d->tensors);
    lms_free(d->bytes);
    for (size_t i = 0; i < d->n_files; i++) {
        lms_storage_release(d->files[i]);
        lms_free(d->file_names[i]);
    }
    lms_free(d->files);
    lms_free(d->file_names);
    lms_free(d->file_base);
    lms_free(d->file_len);
    lms_pkl_doc_release(&d->doc);
    memset(d, 0, sizeof(*d));
}

const struct lms_dcp_tensor *lms_dcp_find(const struct lms_dcp *d, const char *key)
{
    for (size_t i = 0; i < d->n_tensors; i++)
        if (strcmp(d->tensors[i].key, key) == 0)
            return &d->tensors[i];
    return NULL;
}

/* ---- torch.save tensors ------------------------------------------------------------------- */

/* Decodes one _rebuild_tensor_v2 call (§3.2) against the zip's records. */
static enum lms_status tensor_from_call(const struct lms_pkl *call, const struct lms_zip *z,
                                        const unsigned char *src, struct lms_storage *s,
                                        uint64_t base_off, struct lms_view **out,
                                        struct lms_error *err)
{
    if (lms_pkl_is_obj(call, "torch._utils", "_rebuild_parameter") &&
        call->u.obj.args->u.seq.n >= 1)
        call = call->u.obj.args->u.seq.items[0];
    if (!lms_pkl_is_obj(call, "torch._utils", "_rebuild_tensor_v2") ||
        call->u.obj.args->u.seq.n < 4)
        return lms_error_set(err, LMS_EFORMAT, "data.pkl does not hold a _rebuild_tensor_v2 call");
    struct lms_pkl **a = call->u.obj.args->u.seq.items;
    const struct lms_pkl *pid = a[0]->kind == LMS_PKL_PERSID ? a[0]->u.persid.pid : NULL;
    if (!pid || pid->kind != LMS_PKL_TUPLE || pid->u.seq.n != 5 ||
        pid->u.seq.items[0]->kind != LMS_PKL_STR ||
        strcmp(pid->u.seq.items[0]->u.s.data, "storage") != 0 ||
        pid->u.seq.items[2]->kind != LMS_PKL_STR || pid->u.seq.items[4]->kind != LMS_PKL_INT)
        return lms_error_set(err, LMS_EFORMAT, "tensor storage is not a ('storage', ...) id");
    enum lms_dtype dt;
    if (!lms_pkl_storage_dtype(pid->u.seq.items[1], &dt))
        return lms_error_set(err, LMS_EUNSUPPORTED, "unsupported storage class");
    const char *skey = pid->u.seq.items[2]->u.s.data;
    int64_t numel_storage = pid->u.seq.items[4]->u.i;
    char rel[300];
    snprintf(rel, sizeof(rel), "data/%s", skey);
    const struct lms_zip_entry *rec = lms_zip_find(z, rel);
    if (!rec)
        return lms_error_set(err, LMS_EFORMAT, "no record '%s' for storage '%.100s'", rel, skey);
    size_t es = lms_dtype_size(dt);
    if (numel_storage < 0 || (uint64_t)numel_storage > rec->size / es)
        return lms_error_set(err, LMS_EFORMAT, "storage of %lld elements in a %llu-byte record",
                             (long long)numel_storage, (unsigned long long)rec->size);
    int64_t shape[LMS_MAX_DIMS], stride[LMS_MAX_DIMS];
    int nd = lms_pkl_int_tuple(a[2], shape, LMS_MAX_DIMS);
    int ns = lms_pkl_int_tuple(a[3], stride, LMS_MAX_DIMS);
    if (a[1]->kind != LMS_PKL_INT || nd < 0 || ns != nd)
        return lms_error_set(err, LMS_EFORMAT, "bad tensor offset, size or stride");
    int64_t soff = a[1]->u.i, expect = 1, numel = 1;
    for (int i = nd - 1; i >= 0; i--) {
        if (shape[i] < 0 || (shape[i] && numel > INT64_MAX / shape[i]))
            return lms_error_set(err, LMS_EFORMAT, "bad tensor shape");
        if (shape[i] > 1 && stride[i] != expect)
            return lms_error_set(err, LMS_EUNSUPPORTED, "non-contiguous tensor (stride %lld on "
                                 "axis %d)", (long long)stride[i], i);
        expect *= shape[i];
        numel *= shape[i];
    }
    if (soff < 0 || soff > numel_storage || numel > numel_storage - soff)
        return lms_error_set(err, LMS_EFORMAT,
                             "tensor of %lld elements at offset %lld of a %lld-element storage",
                             (long long)numel, (long long)soff, (long long)numel_storage);
    (void)src;
    return lms_view_new_storage(s, base_off + rec->data_off + (uint64_t)soff * es, dt, nd, shape,
                                out, err);
}

enum lms_status lms_torch_tensor_view(const void *src, size_t src_len, struct lms_storage *s,
                                      uint64_t base_off, int list_index, struct lms_view **out,
                                      struct lms_error *err)
{
    struct lms_zip z;
    struct lms_pkl_doc doc = {0};
    enum lms_status rc = lms_zip_parse(src, src_len, &z, err);
    if (rc)
        goto out;
    const struct lms_zip_entry *pk = lms_zip_find(&z, "data.pkl");
    if (!pk) {
        rc = lms_error_set(err, LMS_EFORMAT, "no data.pkl record");
        goto out;
    }
    rc = lms_zip_check_crc(src, pk, err);
    if (!rc)
        rc = lms_pkl_parse((const unsigned char *)src + pk->data_off, (size_t)pk->size, &doc,
                           err);
    if (rc) {
        lms_error_wrap(err, "data.pkl: ");
        goto out;
    }
    const struct lms_pkl *v = doc.root;
    if (list_index >= 0) {
        if (v->kind != LMS_PKL_LIST || (size_t)list_index >= v->u.seq.n) {
            rc = lms_error_set(err, LMS_EFORMAT, "data.pkl is not a list of %d+ items",
                               list_index + 1);
            goto out;
        }
        v = v->u.seq.items[list_index];
    }
    rc = tensor_from_call(v, &z, src, s, base_off, out, err);
out:
    lms_pkl_doc_release(&doc);
    lms_zip_release(&z);
    return rc;
}

/* Renames a pre-mcore NeMo 1 / Megatron-LM key (language_model.encoder.layers.N....) to its
 * Megatron-Core equivalent (§4.1), into dst; false when key is not a legacy name. */
static bool legacy_key(const char *key, char *dst, size_t dst_cap)
{
    static const struct {
        const char *from, *to;
    } map[] = {
        {"self_attention.query_key_value.weight", "self_attention.linear_qkv.weight"},
        {"self_attention.query_key_value.bias", "self_attention.linear_qkv.bias"},
        {"self_attention.dense.weight", "self_attention.linear_proj.weight"},
        {"input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight"},
        {"post_attention_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"},
        {"mlp.dense_h_to_4h.weight", "mlp.linear_fc1.weight"},
        {"mlp.dense_4h_to_h.weight", "mlp.linear_fc2.weight"},
    };
    const char *lm = strstr(key, "language_model.");
    if (!lm)
        return false;
    int pl = (int)(lm - key);
    const char *rest = lm + 15;
    if (strcmp(rest, "embedding.word_embeddings.weight") == 0 ||
        strcmp(rest, "output_layer.weight") == 0)
        return (size_t)snprintf(dst, dst_cap, "%.*s%s", pl, key, rest) < dst_cap;
    if (strcmp(rest, "encoder.final_layernorm.weight") == 0)
        return (size_t)snprintf(dst, dst_cap, "%.*sdecoder.final_layernorm.weight", pl, key) <
               dst_cap;
    long long l;
    int used = 0;
    if (sscanf(rest, "encoder.layers.%lld.%n", &l, &used) != 1 || used == 0)
        return false;
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(rest + used, map[i].from) == 0)
            return (size_t)snprintf(dst, dst_cap, "%.*sdecoder.layers.%lld.%s", pl, key, l,
                                    map[i].to) < dst_cap;
    return false;
}

enum lms_status lms_torch_state_dict_open(struct lms_storage *s, uint64_t base, uint64_t len,
                                          struct lms_dcp *d, struct lms_error *err)
{
    memset(d, 0, sizeof(*d));
    if (base > s->size || len > s->size - base)
        return lms_error_set(err, LMS_EFORMAT, "state dict past the end of its file");
    const unsigned char *src = (const unsigned char *)s->base + base;
    struct lms_zip z;
    enum lms_status rc = lms_zip_parse(src, (size_t)len, &z, err);
    if (rc)
        goto out;
    const struct lms_zip_entry *pk = lms_zip_find(&z, "data.pkl");
    if (!pk) {
        rc = lms_error_set(err, LMS_EFORMAT, "no data.pkl record");
        goto out;
    }
    rc = lms_zip_check_crc(src, pk, err);
    if (!rc)
        rc = lms_pkl_parse(src + pk->data_off, (size_t)pk->size, &d->doc, err);
    if (rc) {
        lms_error_wrap(err, "data.pkl: ");
        goto out;
    }
    const struct lms_pkl *root = d->doc.root, *inner = lms_pkl_dict_get(root, "state_dict");
    if (inner && inner->kind == LMS_PKL_DICT)
        root = inner; /* a Lightning checkpoint: {"state_dict": {...}, ...} */
    if (!root || root->kind != LMS_PKL_DICT) {
        rc = lms_error_set(err, LMS_EFORMAT, "data.pkl does not hold a state dict");
        goto out;
    }
    size_t n_pairs = root->u.seq.n / 2;
    d->tensors = lms_calloc(n_pairs ? n_pairs : 1, sizeof(*d->tensors));
    if (!d->tensors) {
        rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n_pairs && !rc; i++) {
        const struct lms_pkl *k = root->u.seq.items[2 * i], *v = root->u.seq.items[2 * i + 1];
        if (k->kind != LMS_PKL_STR) {
            rc = lms_error_set(err, LMS_EFORMAT, "state dict key %zu is not a string", i);
            break;
        }
        /* _extra_state (BytesIO, None), rotary inv_freq buffers and other values carry no
         * weights we model; only tensors are taken */
        if (!lms_pkl_is_obj(v, "torch._utils", "_rebuild_tensor_v2") &&
            !lms_pkl_is_obj(v, "torch._utils", "_rebuild_parameter"))
            continue;
        struct lms_view *view;
        rc = tensor_from_call(v, &z, src, s, base, &view, err);
        if (rc) {
            lms_error_wrap(err, "tensor '%s': ", k->u.s.data);
            break;
        }
        char renamed[512];
        struct lms_dcp_tensor *t = &d->tensors[d->n_tensors];
        t->key = lms_strdup(legacy_key(k->u.s.data, renamed, sizeof(renamed)) ? renamed
                                                                                : k->u.s.data);
        if (!t->key) {
            lms_view_release(view);
            rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
            break;
        }
        if (lms_dcp_find(d, t->key)) {
            rc = lms_error_set(err, LMS_EFORMAT, "tensor '%s' appears twice", t->key);
            lms_free(t->key);
            t->key = NULL;
            lms_view_release(view);
            break;
        }
        d->n_tensors++;
        t->view = view;
        t->dtype = view->dtype;
        t->ndim = view->ndim;
        memcpy(t->shape, view->shape, sizeof(t->shape));
    }
out:
    lms_zip_release(&z);
    return rc;
}

/* ---- assembling a tensor from its chunks ------------------------------------------------- */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Builds the view of the region [lo, lo + ext) covered exactly by the chunks idx[0..n), whose
 * views are cv[]. Recursively cuts the region along an axis where no chunk straddles a cut
 * (every grid tiling, i.e. any TP/PP layout, is cut this way). */
static enum lms_status assemble(const struct lms_dcp_tensor *t, struct lms_view **cv,
                                const size_t *idx, size_t n, const int64_t *lo,
                                const int64_t *ext, int depth, struct lms_view **out,
                                struct lms_error *err)
{
    if (n == 1) {
        *out = lms_view_ref(cv[idx[0]]);
        return LMS_OK;
    }
    if (depth > 64)
        return lms_error_set(err, LMS_EUNSUPPORTED, "chunk tiling nested too deeply");
    enum lms_status rc = LMS_OK;
    int64_t *cuts = lms_malloc((n + 1) * sizeof(int64_t));
    size_t *sub = lms_malloc(n * sizeof(size_t));
    struct lms_view **parts = lms_calloc(n, sizeof(*parts));
    if (!cuts || !sub || !parts) {
        rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
        goto out;
    }
    for (int a = 0; a < t->ndim; a++) {
        /* candidate cuts: chunk starts on axis a */
        size_t nc = 0;
        for (size_t i = 0; i < n; i++)
            if (t->chunks[idx[i]].offsets[a] > lo[a])
                cuts[nc++] = t->chunks[idx[i]].offsets[a];
        if (nc == 0)
            continue;
        qsort(cuts, nc, sizeof(int64_t), cmp_i64);
        size_t u = 0;
        for (size_t i = 0; i < nc; i++)
            if (u == 0 || cuts[u - 1] != cuts[i])
                cuts[u++] = cuts[i];
        /* keep cuts no chunk straddles */
        size_t k = 0;
        for (size_t i = 0; i < u; i++) {
            bool ok = true;
            for (size_t j = 0; j < n && ok; j++) {
                const struct lms_dcp_chunk *c = &t->chunks[idx[j]];
                ok = !(c->offsets[a] < cuts[i] && cuts[i] < c->offsets[a] + c->sizes[a]);
            }
            if (ok)
                cuts[k++] = cuts[i];
        }
        if (k == 0)
            continue;
        cuts[k] = lo[a] + ext[a];
        int64_t start = lo[a];
        int n_parts = 0;
        for (size_t s = 0; s <= k && !rc; s++) {
            size_t m = 0;
            for (size_t j = 0; j < n; j++)
                if (t->chunks[idx[j]].offsets[a] >= start && t->chunks[idx[j]].offsets[a] < cuts[s])
                    sub[m++] = idx[j];
            int64_t slo[LMS_MAX_DIMS], sext[LMS_MAX_DIMS];
            memcpy(slo, lo, sizeof(slo));
            memcpy(sext, ext, sizeof(sext));
            slo[a] = start;
            sext[a] = cuts[s] - start;
            start = cuts[s];
            if (m == 0)
                continue; /* an empty slab (zero-size extent): nothing to join */
            rc = assemble(t, cv, sub, m, slo, sext, depth + 1, &parts[n_parts], err);
            if (!rc)
                n_parts++;
        }
        if (!rc)
            rc = n_parts == 1 ? (*out = lms_view_ref(parts[0]), LMS_OK)
                              : lms_view_new_concat(parts, n_parts, a, out, err);
        for (int i = 0; i < n_parts; i++)
            lms_view_release(parts[i]);
        goto out;
    }
    rc = lms_error_set(err, LMS_EUNSUPPORTED, "chunk tiling that is not a grid");
out:
    lms_free(cuts);
    lms_free(sub);
    lms_free(parts);
    return rc;
}

/* The bytes of file name of the checkpoint: a whole mapped file of a directory, or an archive
 * member inside the mapped archive. OUT: *out (borrowed from d), *base (offset of the file's
 * first byte in *out), *len. */
static enum lms_status map_file(struct lms_dcp *d, const struct lms_dcp_source *src,
                                const char *name, struct lms_storage **out, uint64_t *base,
                                uint64_t *len, struct lms_error *err)
{
    for (size_t i = 0; i < d->n_files; i++)
        if (strcmp(d->file_names[i], name) == 0) {
            *out = d->files[i];
            *base = d->file_base[i];
            *len = d->file_len[i];
            return LMS_OK;
        }
    size_t n = d->n_files + 1;
    struct lms_storage **f = lms_realloc(d->files, n * sizeof(*f));
    if (f)
        d->files = f;
    char **fn = f ? lms_realloc(d->file_names, n * sizeof(*fn)) : NULL;
    if (fn)
        d->file_names = fn;
    uint64_t *fb = fn ? lms_realloc(d->file_base, n * sizeof(*fb)) : NULL;
    if (fb)
        d->file_base = fb;
    uint64_t *fl = fb ? lms_realloc(d->file_len, n * sizeof(*fl)) : NULL;
    if (fl)
        d->file_len = fl;
    char *nm = fl ? lms_strdup(name) : NULL;
    if (!nm)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    struct lms_storage *s;
    uint64_t b = 0, l;
    if (src->archive) {
        const struct lms_dcp_member *m = lms_dcp_source_find(src, name);
        if (!m) {
            lms_free(nm);
            return lms_error_set(err, LMS_EFORMAT, "no member '%s/%s' in '%s'", src->dir, name,
                                 src->archive->path ? src->archive->path : "(archive)");
        }
        s = lms_storage_ref(src->archive);
        b = m->offset;
        l = m->size;
    } else {
        char path[4096];
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", src->dir, name) >= sizeof(path)) {
            lms_free(nm);
            return lms_error_set(err, LMS_EINVAL, "path too long");
        }
        enum lms_status rc = lms_storage_map_file(path, &s, err);
        if (rc) {
            lms_free(nm);
            return rc;
        }
        l = s->size;
    }
    d->files[d->n_files] = s;
    d->file_names[d->n_files] = nm;
    d->file_base[d->n_files] = b;
    d->file_len[d->n_files] = l;
    d->n_files++;
    *out = s;
    *base = b;
    *len = l;
    return LMS_OK;
}

static enum lms_status open_tensor(struct lms_dcp *d, const struct lms_dcp_source *src,
                                   struct lms_dcp_tensor *t, struct lms_error *err)
{
    enum lms_status rc = LMS_OK;
    struct lms_view **cv = lms_calloc(t->n_chunks ? t->n_chunks : 1, sizeof(*cv));
    size_t *idx = lms_malloc((t->n_chunks ? t->n_chunks : 1) * sizeof(size_t));
    if (!cv || !idx) {
        rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < t->n_chunks && !rc; i++) {
        const struct lms_dcp_chunk *c = &t->chunks[i];
        struct lms_storage *s;
        uint64_t base, len;
        idx[i] = i;
        rc = map_file(d, src, c->file, &s, &base, &len, err);
        if (rc)
            break;
        if (c->offset > len || c->length > len - c->offset) {
            rc = lms_error_set(err, LMS_EFORMAT,
                               "chunk %zu: bytes [%llu, +%llu) past the end of '%s' (%llu bytes)",
                               i, (unsigned long long)c->offset, (unsigned long long)c->length,
                               c->file, (unsigned long long)len);
            break;
        }
        rc = lms_torch_tensor_view((const unsigned char *)s->base + base + c->offset,
                                   (size_t)c->length, s, base + c->offset, -1, &cv[i], err);
        if (rc) {
            lms_error_wrap(err, "chunk %zu in '%s' at %llu: ", i, c->file,
                           (unsigned long long)c->offset);
            break;
        }
        if (cv[i]->dtype != t->dtype || cv[i]->ndim != t->ndim ||
            !size_eq(t->ndim, cv[i]->shape, c->sizes))
            rc = lms_error_set(err, LMS_EFORMAT,
                               "chunk %zu: stored tensor is %s of %d dims, metadata says %s",
                               i, lms_dtype_name(cv[i]->dtype), cv[i]->ndim,
                               lms_dtype_name(t->dtype));
    }
    if (!rc) {
        /* zero-volume chunks carry nothing; drop them before assembling */
        size_t n = 0;
        for (size_t i = 0; i < t->n_chunks; i++)
            if (volume(t->ndim, t->chunks[i].sizes) > 0)
                idx[n++] = i;
        int64_t lo[LMS_MAX_DIMS] = {0};
        if (n == 0) {
            struct lms_storage *empty;
            rc = lms_storage_new_host(0, &empty, err);
            if (!rc) {
                rc = lms_view_new_storage(empty, 0, t->dtype, t->ndim, t->shape, &t->view, err);
                lms_storage_release(empty);
            }
        } else {
            rc = assemble(t, cv, idx, n, lo, t->shape, 0, &t->view, err);
        }
    }
out:
    if (cv)
        for (size_t i = 0; i < t->n_chunks; i++)
            lms_view_release(cv[i]);
    lms_free(cv);
    lms_free(idx);
    return rc;
}

static enum lms_status read_whole(const char *path, size_t max, unsigned char **dst,
                                  size_t *dst_len, struct lms_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lms_error_set(err, errno == ENOENT ? LMS_EFORMAT : LMS_EIO, "'%s': %s", path,
                             strerror(errno));
    struct stat st;
    enum lms_status rc = LMS_OK;
    unsigned char *b = NULL;
    if (fstat(fd, &st) != 0) {
        rc = lms_error_set(err, LMS_EIO, "'%s': %s", path, strerror(errno));
        goto out;
    }
    if ((uint64_t)st.st_size > max) {
        rc = lms_error_set(err, LMS_EFORMAT, "'%s' is larger than %zu bytes", path, max);
        goto out;
    }
    size_t n = (size_t)st.st_size, got = 0;
    b = lms_malloc(n ? n : 1);
    if (!b) {
        rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
        goto out;
    }
    while (got < n) {
        ssize_t r = read(fd, b + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            rc = lms_error_set(err, LMS_EIO, "reading '%s': %s", path,
                               r < 0 ? strerror(errno) : "file shrank");
            goto out;
        }
        got += (size_t)r;
    }
    *dst = b;
    *dst_len = n;
    b = NULL;
out:
    lms_free(b);
    close(fd);
    return rc;
}

const struct lms_dcp_member *lms_dcp_source_find(const struct lms_dcp_source *src,
                                                 const char *name)
{
    size_t pl = strlen(src->dir);
    for (size_t i = 0; i < src->n_members; i++) {
        const char *m = src->members[i].name;
        if (pl == 0 ? strcmp(m, name) == 0
                    : strncmp(m, src->dir, pl) == 0 && m[pl] == '/' && strcmp(m + pl + 1, name) == 0)
            return &src->members[i];
    }
    return NULL;
}

/* A whole small file of the checkpoint (metadata.json, .metadata), copied. */
static enum lms_status read_small(const struct lms_dcp_source *src, const char *name, size_t max,
                                  unsigned char **dst, size_t *dst_len, char *label,
                                  size_t label_cap, struct lms_error *err)
{
    if (!src->archive) {
        snprintf(label, label_cap, "%s/%s", src->dir, name);
        return read_whole(label, max, dst, dst_len, err);
    }
    snprintf(label, label_cap, "%s:%s%s%s", src->archive->path ? src->archive->path : "(archive)",
             src->dir, src->dir[0] ? "/" : "", name);
    const struct lms_dcp_member *m = lms_dcp_source_find(src, name);
    if (!m)
        return lms_error_set(err, LMS_EFORMAT, "'%s': no such member", label);
    if (m->size > max)
        return lms_error_set(err, LMS_EFORMAT, "'%s' is larger than %zu bytes", label, max);
    if (m->offset > src->archive->size || m->size > src->archive->size - m->offset)
        return lms_error_set(err, LMS_EFORMAT, "'%s' lies past the end of the archive", label);
    unsigned char *b = lms_malloc(m->size ? (size_t)m->size : 1);
    if (!b)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    memcpy(b, (const unsigned char *)src->archive->base + m->offset, (size_t)m->size);
    *dst = b;
    *dst_len = (size_t)m->size;
    return LMS_OK;
}

enum lms_status lms_dcp_open(const char *dir, struct lms_dcp *d, struct lms_error *err)
{
    struct lms_dcp_source src = {.dir = dir};
    return lms_dcp_open_source(&src, d, err);
}

enum lms_status lms_dcp_open_source(const struct lms_dcp_source *src, struct lms_dcp *d,
                                    struct lms_error *err)
{
    char path[4096], where[4096];
    memset(d, 0, sizeof(*d));
    if (src->archive)
        snprintf(where, sizeof(where), "%s:%s", src->archive->path ? src->archive->path
                                                                   : "(archive)", src->dir);
    else
        snprintf(where, sizeof(where), "%s", src->dir);
    unsigned char *text = NULL;
    size_t text_len = 0;
    enum lms_status rc = read_small(src, "metadata.json", 1 << 20, &text, &text_len, path,
                                    sizeof(path), err);
    if (rc)
        return rc;
    json_t *mj = NULL;
    rc = lms_json_load_buffer(path, (const char *)text, text_len, &mj, err);
    lms_free(text);
    if (rc)
        return rc;
    const char *backend = json_string_value(json_object_get(mj, "sharded_backend"));
    if (!backend || strcmp(backend, "torch_dist") != 0) {
        rc = lms_error_set(err, LMS_EUNSUPPORTED, "'%s': sharded_backend '%s' (only torch_dist "
                           "is supported)", path, backend ? backend : "(missing)");
        json_decref(mj);
        return rc;
    }
    json_decref(mj);
    unsigned char *meta = NULL;
    size_t meta_len = 0;
    rc = read_small(src, ".metadata", META_MAX_BYTES, &meta, &meta_len, path, sizeof(path), err);
    if (rc)
        return rc;
    rc = lms_dcp_metadata_parse(meta, meta_len, d, err);
    lms_free(meta);
    if (rc)
        return lms_error_wrap(err, "'%s': ", path);
    for (size_t i = 0; i < d->n_tensors && !rc; i++) {
        rc = open_tensor(d, src, &d->tensors[i], err);
        if (rc)
            lms_error_wrap(err, "'%s': tensor '%s': ", where, d->tensors[i].key);
    }
    for (size_t i = 0; i < d->n_bytes && !rc; i++) {
        struct lms_dcp_bytes *b = &d->bytes[i];
        if (!b->file)
            continue; /* no payload recorded: ignored like any unrequested key */
        struct lms_storage *s;
        uint64_t base, len;
        rc = map_file(d, src, b->file, &s, &base, &len, err);
        if (!rc && (b->offset > len || b->length > len - b->offset))
            rc = lms_error_set(err, LMS_EFORMAT, "'%s': item '%s' past the end of '%s'", where,
                               b->key, b->file);
    }
    return rc;
}

/* ---- writer ------------------------------------------------------------------------------- */

static const char *dcp_fs_mod = "torch.distributed.checkpoint.filesystem";

/* Instance of a dataclass: GLOBAL, EMPTY_TUPLE, NEWOBJ, EMPTY_DICT, MARK (caller: key value
 * pairs), then close_obj. */
static void open_obj(struct lms_pkl_writer *w, const char *mod, const char *cls)
{
    lms_pkl_w_global(w, mod, cls);
    lms_pkl_w_op(w, LMS_PKL_OP_EMPTY_TUPLE);
    lms_pkl_w_op(w, LMS_PKL_OP_NEWOBJ);
    lms_pkl_w_op(w, LMS_PKL_OP_EMPTY_DICT);
    lms_pkl_w_op(w, LMS_PKL_OP_MARK);
}

static void close_obj(struct lms_pkl_writer *w)
{
    lms_pkl_w_op(w, LMS_PKL_OP_SETITEMS);
    lms_pkl_w_op(w, LMS_PKL_OP_BUILD);
}

struct item_loc {
    uint64_t offset, length;
};

/* The .metadata pickle of §2.4.2. locs: per chunk of every tensor in order, then per bytes. */
static enum lms_status build_metadata(const struct lms_dcp_w_tensor *tensors, size_t n_tensors,
                                      const struct lms_dcp_w_bytes *bytes, size_t n_bytes,
                                      const struct item_loc *locs, struct lms_pkl_writer *w,
                                      struct lms_error *err)
{
    lms_pkl_w_proto2(w);
    open_obj(w, meta_mod, "Metadata");
    lms_pkl_w_str(w, "state_dict_metadata");
    lms_pkl_w_op(w, LMS_PKL_OP_EMPTY_DICT);
    for (size_t i = 0; i < n_tensors; i++) {
        const struct lms_dcp_w_tensor *t = &tensors[i];
        lms_pkl_w_op(w, LMS_PKL_OP_MARK);
        lms_pkl_w_str(w, t->key);
        open_obj(w, meta_mod, "TensorStorageMetadata");
        lms_pkl_w_str(w, "properties");
        lms_pkl_w_global(w, meta_mod, "TensorProperties");
        lms_pkl_w_op(w, LMS_PKL_OP_EMPTY_TUPLE);
        lms_pkl_w_op(w, LMS_PKL_OP_NEWOBJ);
        lms_pkl_w_op(w, LMS_PKL_OP_MARK);
        if (!lms_pkl_w_dtype(w, t->dtype))
            return lms_error_set(err, LMS_EUNSUPPORTED, "'%s': dtype %s has no torch name",
                                 t->key, lms_dtype_name(t->dtype));
        lms_pkl_w_global(w, "torch.serialization", "_get_layout");
        lms_pkl_w_str(w, "torch.strided");
        lms_pkl_w_op(w, LMS_PKL_OP_TUPLE1);
        lms_pkl_w_op(w, LMS_PKL_OP_REDUCE);
        lms_pkl_w_bool(w, false);
        lms_pkl_w_global(w, meta_mod, "_MEM_FORMAT_ENCODING");
        lms_pkl_w_int(w, 0);
        lms_pkl_w_op(w, LMS_PKL_OP_TUPLE1);
        lms_pkl_w_op(w, LMS_PKL_OP_REDUCE);
        lms_pkl_w_bool(w, false);
        lms_pkl_w_op(w, LMS_PKL_OP_TUPLE);
        lms_pkl_w_op(w, LMS_PKL_OP_BUILD);
        lms_pkl_w_str(w, "size");
        lms_pkl_w_size(w, t->ndim, t->shape);
        lms_pkl_w_str(w, "chunks");
        lms_pkl_w_op(w, LMS_PKL_OP_EMPTY_LIST);
        lms_pkl_w_op(w, LMS_PKL_OP_MARK);
        for (size_t c = 0; c < t->n_chunks; c++) {
            open_obj(w, meta_mod, "ChunkStorageMetadata");
            lms_pkl_w_str(w, "offsets");
            lms_pkl_w_size(w, t->ndim, t->chunks[c].offsets);
            lms_pkl_w_str(w, "sizes");
            lms_pkl_w_size(w, t->ndim, t->chunks[c].view->shape);
            close_obj(w);
        }
        lms_pkl_w_op(w, LMS_PKL_OP_APPENDS);
        close_obj(w);
        lms_pkl_w_op(w, LMS_PKL_OP_SETITEMS);
    }
    for (size_t i = 0; i < n_bytes; i++) {
        lms_pkl_w_str(w, bytes[i].key);
        lms_pkl_w_global(w, meta_mod, "BytesStorageMetadata");
        lms_pkl_w_op(w, LMS_PKL_OP_EMPTY_TUPLE);
        lms_pkl_w_op(w, LMS_PKL_OP_NEWOBJ);
        lms_pkl_w_op(w, LMS_PKL_OP_SETITEM);
    }
    lms_pkl_w_str(w, "planner_data");
    lms_pkl_w_none(w);
    lms_pkl_w_str(w, "storage_data");
    lms_pkl_w_op(w, LMS_PKL_OP_EMPTY_DICT);
    size_t k = 0;
    for (size_t i = 0; i < n_tensors; i++)
        for (size_t c = 0; c < tensors[i].n_chunks; c++, k++) {
            lms_pkl_w_op(w, LMS_PKL_OP_MARK);
            open_obj(w, meta_mod, "MetadataIndex");
            lms_pkl_w_str(w, "fqn");
            lms_pkl_w_str(w, tensors[i].key);
            lms_pkl_w_str(w, "offset");
            lms_pkl_w_size(w, tensors[i].ndim, tensors[i].chunks[c].offsets);
            lms_pkl_w_str(w, "index");
            lms_pkl_w_int(w, (int64_t)c);
            close_obj(w);
            open_obj(w, dcp_fs_mod, "_StorageInfo");
            lms_pkl_w_str(w, "relative_path");
            lms_pkl_w_str(w, "__0_0.distcp");
            lms_pkl_w_str(w, "offset");
            lms_pkl_w_int(w, (int64_t)locs[k].offset);
            lms_pkl_w_str(w, "length");
            lms_pkl_w_int(w, (int64_t)locs[k].length);
            close_obj(w);
            lms_pkl_w_op(w, LMS_PKL_OP_SETITEMS);
        }
    for (size_t i = 0; i < n_bytes; i++, k++) {
        open_obj(w, meta_mod, "MetadataIndex");
        lms_pkl_w_str(w, "fqn");
        lms_pkl_w_str(w, bytes[i].key);
        lms_pkl_w_str(w, "index");
        lms_pkl_w_none(w);
        close_obj(w);
        open_obj(w, dcp_fs_mod, "_StorageInfo");
        lms_pkl_w_str(w, "relative_path");
        lms_pkl_w_str(w, "__0_0.distcp");
        lms_pkl_w_str(w, "offset");
        lms_pkl_w_int(w, (int64_t)locs[k].offset);
        lms_pkl_w_str(w, "length");
        lms_pkl_w_int(w, (int64_t)locs[k].length);
        close_obj(w);
        lms_pkl_w_op(w, LMS_PKL_OP_SETITEM);
    }
    lms_pkl_w_str(w, "storage_meta");
    open_obj(w, meta_mod, "StorageMeta");
    lms_pkl_w_str(w, "checkpoint_id");
    lms_pkl_w_none(w);
    lms_pkl_w_str(w, "save_id");
    lms_pkl_w_none(w);
    lms_pkl_w_str(w, "load_id");
    lms_pkl_w_none(w);
    close_obj(w);
    close_obj(w);
    return lms_pkl_w_finish(w, err);
}

static enum lms_status write_file_synced(const char *dir, const char *name, const void *src,
                                         size_t src_len, struct lms_error *err)
{
    char path[4096];
    if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, name) >= sizeof(path))
        return lms_error_set(err, LMS_EINVAL, "path too long");
    return lms_write_file(path, src, src_len, err);
}

/* The data file: bytes items first, then every tensor chunk as a torch.save zip (§2.5), written
 * at file offset base of fd; locs receive the item ranges relative to base, in metadata order. */
static enum lms_status write_items(int fd, const char *path, uint64_t base,
                                   const struct lms_dcp_w_tensor *tensors, size_t n_tensors,
                                   const struct lms_dcp_w_bytes *bytes, size_t n_bytes,
                                   struct item_loc *locs, void *buf, size_t buf_cap,
                                   void (*progress)(void *ctx, uint64_t done, uint64_t total),
                                   void *progress_ctx, struct lms_dcp_w_stats *stats,
                                   uint64_t *end, struct lms_error *err)
{
    enum lms_status rc = LMS_OK;
    uint64_t pos = 0, total = 0, done = 0;
    size_t k = 0, nt = 0;
    for (size_t i = 0; i < n_tensors; i++) {
        nt += tensors[i].n_chunks;
        for (size_t c = 0; c < tensors[i].n_chunks; c++)
            total += (uint64_t)lms_view_numel(tensors[i].chunks[c].view) *
                     lms_dtype_size(tensors[i].dtype);
    }
    for (size_t i = 0; i < n_bytes && !rc; i++) {
        rc = lms_pwrite_all(fd, bytes[i].data, bytes[i].len, base + pos, path, err);
        locs[nt + i].offset = pos;
        locs[nt + i].length = bytes[i].len;
        pos += bytes[i].len;
    }
    for (size_t t = 0; t < n_tensors && !rc; t++) {
        const struct lms_dcp_w_tensor *ten = &tensors[t];
        for (size_t c = 0; c < ten->n_chunks && !rc; c++, k++) {
            struct lms_view *v = ten->chunks[c].view;
            struct lms_pkl_writer tw;
            lms_pkl_w_init(&tw);
            lms_pkl_w_proto2(&tw);
            if (!lms_pkl_w_tensor(&tw, ten->dtype, "0", v->ndim, v->shape))
                rc = lms_error_set(err, LMS_EUNSUPPORTED, "'%s': dtype %s has no torch storage",
                                   ten->key, lms_dtype_name(ten->dtype));
            if (!rc)
                rc = lms_pkl_w_finish(&tw, err);
            struct lms_zip_writer zw;
            lms_zip_w_begin(&zw, fd, path, base + pos, "archive");
            if (!rc)
                rc = lms_torch_save_write(&zw, tw.data, tw.len, &v, 1, ten->dtype, buf, buf_cap,
                                          err);
            uint64_t len = 0;
            if (!rc)
                rc = lms_zip_w_finish(&zw, &len, err);
            lms_zip_w_release(&zw);
            lms_pkl_w_release(&tw);
            if (rc) {
                lms_error_wrap(err, "tensor '%s': ", ten->key);
                break;
            }
            /* the chunk's source pages are not needed again: keep the resident set bounded */
            lms_view_drop_pages(v);
            locs[k].offset = pos;
            locs[k].length = len;
            pos += len;
            done += (uint64_t)lms_view_numel(v) * lms_dtype_size(ten->dtype);
            if (progress)
                progress(progress_ctx, done, total);
        }
    }
    if (!rc && stats) {
        stats->tensor_bytes = done;
        stats->n_chunks = k;
    }
    *end = pos;
    return rc;
}

enum lms_status lms_dcp_write_data(int fd, const char *path, uint64_t base,
                                   const struct lms_dcp_w_tensor *tensors, size_t n_tensors,
                                   const struct lms_dcp_w_bytes *bytes, size_t n_bytes,
                                   const void *common_pkl, size_t common_len,
                                   void (*progress)(void *ctx, uint64_t done, uint64_t total),
                                   void *progress_ctx, struct lms_dcp_w_files *files,
                                   struct lms_error *err)
{
    /* 1 MiB: the gathered chunk is still in cache when pwrite copies it into the page cache;
     * with 8 MiB the kernel copy ran at a quarter of the speed (bench/convert-nemo: HF -> NeMo
     * 12 s -> 4 s, system time 8.5 s -> 1.1 s, on the 4 GB checkpoint) */
    enum { BUF = 1 << 20 };
    enum lms_status rc = LMS_OK;
    memset(files, 0, sizeof(*files));
    struct lms_pkl_writer pw;
    lms_pkl_w_init(&pw);
    size_t n_items = n_bytes;
    for (size_t i = 0; i < n_tensors; i++)
        n_items += tensors[i].n_chunks;
    struct item_loc *locs = lms_calloc(n_items ? n_items : 1, sizeof(*locs));
    void *buf = lms_malloc(BUF);
    if (!locs || !buf) {
        rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
        goto out;
    }
    rc = write_items(fd, path, base, tensors, n_tensors, bytes, n_bytes, locs, buf, BUF, progress,
                     progress_ctx, &files->stats, &files->data_len, err);
    if (!rc)
        rc = build_metadata(tensors, n_tensors, bytes, n_bytes, locs, &pw, err);
    if (!rc) {
        files->metadata = pw.data;
        files->metadata_len = pw.len;
        pw.data = NULL;
        /* common.pt: a torch.save whose folder is "common" (§2.3), in memory */
        struct lms_zip_writer zw;
        lms_zip_w_begin(&zw, -1, "common.pt", 0, "common");
        rc = lms_torch_save_write(&zw, common_pkl, common_len, NULL, 0, LMS_DTYPE_COUNT, buf,
                                  BUF, err);
        uint64_t len = 0;
        if (!rc)
            rc = lms_zip_w_finish(&zw, &len, err);
        if (!rc) {
            files->common = zw.mem;
            files->common_len = (size_t)len;
            zw.mem = NULL;
        }
        lms_free(zw.mem);
        lms_zip_w_release(&zw);
    }
out:
    if (rc)
        lms_dcp_w_files_release(files);
    lms_free(locs);
    lms_free(buf);
    lms_pkl_w_release(&pw);
    return rc;
}

void lms_dcp_w_files_release(struct lms_dcp_w_files *files)
{
    lms_free(files->metadata);
    lms_free(files->common);
    files->metadata = files->common = NULL;
}

enum lms_status lms_dcp_write(const char *dir, const struct lms_dcp_w_tensor *tensors,
                              size_t n_tensors, const struct lms_dcp_w_bytes *bytes,
                              size_t n_bytes, const void *common_pkl, size_t common_len,
                              void (*progress)(void *ctx, uint64_t done, uint64_t total),
                              void *progress_ctx, struct lms_dcp_w_stats *stats,
                              struct lms_error *err)
{
    char path[4096];
    struct lms_dcp_w_files files = {0};
    if ((size_t)snprintf(path, sizeof(path), "%s/__0_0.distcp", dir) >= sizeof(path))
        return lms_error_set(err, LMS_EINVAL, "path too long");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return lms_error_set(err, LMS_EIO, "creating '%s': %s", path, strerror(errno));
    enum lms_status rc = lms_dcp_write_data(fd, path, 0, tensors, n_tensors, bytes, n_bytes,
                                            common_pkl, common_len, progress, progress_ctx,
                                            &files, err);
    if (!rc && fsync(fd) != 0)
        rc = lms_error_set(err, LMS_EIO, "fsync '%s': %s", path, strerror(errno));
    if (close(fd) != 0 && !rc)
        rc = lms_error_set(err, LMS_EIO, "closing '%s': %s", path, strerror(errno));
    if (!rc)
        rc = write_file_synced(dir, ".metadata", files.metadata, files.metadata_len, err);
    if (!rc)
        rc = write_file_synced(dir, "common.pt", files.common, files.common_len, err);
    if (!rc)
        rc = write_file_synced(dir, "metadata.json", LMS_DCP_METADATA_JSON,
                               sizeof(LMS_DCP_METADATA_JSON) - 1, err);
    if (!rc && stats)
        *stats = files.stats;
    lms_dcp_w_files_release(&files);
    return rc;
}

enum lms_status lms_dcp_extra_state_payload(unsigned char **dst, size_t *dst_len,
                                            struct lms_error *err)
{
    static const unsigned char none_pickle[4] = {0x80, 0x02, 0x4e, 0x2e};
    struct lms_storage *s = NULL;
    struct lms_view *v = NULL;
    struct lms_pkl_writer pw;
    struct lms_zip_writer zw;
    lms_pkl_w_init(&pw);
    lms_zip_w_begin(&zw, -1, "(memory)", 0, "archive");
    enum lms_status rc = lms_storage_new_host(4, &s, err);
    if (rc)
        goto out;
    memcpy(s->base, none_pickle, 4);
    rc = lms_view_new_storage(s, 0, LMS_DTYPE_U8, 1, (int64_t[]){4}, &v, err);
    if (rc)
        goto out;
    lms_pkl_w_proto2(&pw);
    lms_pkl_w_op(&pw, LMS_PKL_OP_EMPTY_LIST);
    lms_pkl_w_tensor(&pw, LMS_DTYPE_U8, "0", 1, (int64_t[]){4});
    lms_pkl_w_op(&pw, LMS_PKL_OP_APPEND);
    rc = lms_pkl_w_finish(&pw, err);
    unsigned char scratch[1 << 16];
    if (!rc)
        rc = lms_torch_save_write(&zw, pw.data, pw.len, &v, 1, LMS_DTYPE_COUNT, scratch,
                                  sizeof(scratch), err);
    uint64_t len = 0;
    if (!rc)
        rc = lms_zip_w_finish(&zw, &len, err);
    if (!rc) {
        *dst = zw.mem;
        *dst_len = (size_t)len;
        zw.mem = NULL;
    }
out:
    lms_free(zw.mem);
    lms_zip_w_release(&zw);
    lms_view_release(v);
    lms_storage_release(s);
    lms_pkl_w_release(&pw);
    return rc;
}
