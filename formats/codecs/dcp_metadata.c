/* The torch DCP .metadata reader: the pickled Metadata of a torch_dist checkpoint -> every
 * tensor's global shape, dtype and chunks, every bytes item, and where each lives in the data
 * files (formats/codecs/dcp.h). A pure parser over bytes (fuzzed); it checks that the chunks
 * tile each tensor exactly. */
#include "formats/codecs/dcp.h"

#include <string.h>

#include "formats/codecs/dcp_impl.h"
#include "lms/alloc.h"

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

static const char *meta_mod = LMS_DCP_METADATA_MODULE;

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

/* coverage: chunks inside the tensor, pairwise disjoint, volumes summing to numel. */
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
