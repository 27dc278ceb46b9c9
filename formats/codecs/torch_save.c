/* The torch.save codec: the tensors a torch.save zip holds (a top-level tensor, a list of them,
 * or a state dict) as views over the mapped zip, and the record set torch.save writes
 * (formats/codecs/torch_save.h). */
#include "formats/codecs/torch_save.h"

#include <stdio.h>
#include <string.h>

#include "formats/codecs/dcp.h"
#include "formats/codecs/pickle.h"
#include "lms/alloc.h"

/* Decodes one _rebuild_tensor_v2 call against the zip's records. */
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

/* The zip archive torch.save writes, and its data.pkl parsed into doc (the caller releases z
 * and doc whatever the outcome). */
static enum lms_status open_archive(const void *src, size_t len, struct lms_zip *z,
                                    struct lms_pkl_doc *doc, struct lms_error *err)
{
    enum lms_status rc = lms_zip_parse(src, len, z, err);
    if (rc)
        return rc;
    const struct lms_zip_entry *pk = lms_zip_find(z, "data.pkl");
    if (!pk)
        return lms_error_set(err, LMS_EFORMAT, "no data.pkl record");
    rc = lms_zip_check_crc(src, pk, err);
    if (!rc)
        rc = lms_pkl_parse((const unsigned char *)src + pk->data_off, (size_t)pk->size, doc, err);
    return rc ? lms_error_wrap(err, "data.pkl: ") : LMS_OK;
}

enum lms_status lms_torch_tensor_view(const void *src, size_t src_len, struct lms_storage *s,
                                      uint64_t base_off, int list_index, struct lms_view **out,
                                      struct lms_error *err)
{
    struct lms_zip z;
    struct lms_pkl_doc doc = {0};
    enum lms_status rc = open_archive(src, src_len, &z, &doc, err);
    if (rc)
        goto out;
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

enum lms_status lms_torch_state_dict_open(struct lms_storage *s, uint64_t base, uint64_t len,
                                          lms_torch_key_map rename, struct lms_dcp *d,
                                          struct lms_error *err)
{
    memset(d, 0, sizeof(*d));
    if (base > s->size || len > s->size - base)
        return lms_error_set(err, LMS_EFORMAT, "state dict past the end of its file");
    const unsigned char *src = (const unsigned char *)s->base + base;
    struct lms_zip z;
    enum lms_status rc = open_archive(src, (size_t)len, &z, &d->doc, err);
    if (rc)
        goto out;
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
        bool mapped = rename && rename(k->u.s.data, renamed, sizeof(renamed));
        t->key = lms_strdup(mapped ? renamed : k->u.s.data);
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

enum lms_status lms_torch_save_write(struct lms_zip_writer *w, const void *pkl, size_t pkl_len,
                                     struct lms_view *const *views, size_t n, enum lms_dtype dt,
                                     void *buf, size_t buf_cap, struct lms_error *err)
{
    enum lms_status rc = lms_zip_w_add(w, "data.pkl", pkl, pkl_len, err);
    if (!rc)
        rc = lms_zip_w_add(w, "byteorder", "little", 6, err);
    for (size_t i = 0; i < n && !rc; i++) {
        char rel[32];
        snprintf(rel, sizeof(rel), "data/%zu", i);
        rc = lms_zip_w_add_view(w, rel, views[i], dt, buf, buf_cap, err);
    }
    if (!rc)
        rc = lms_zip_w_add(w, "version", "3\n", 2, err);
    if (!rc) /* fixed id: output stays deterministic */
        rc = lms_zip_w_add(w, ".data/serialization_id",
                           "0000000000000000000000000000000000000000", 40, err);
    return rc;
}
