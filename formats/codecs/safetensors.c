/* safetensors parsing, validation and canonical headers (include/lms/safetensors.h). */
#include "lms/safetensors.h"

#include <stdlib.h>
#include <string.h>

#include "lms/alloc.h"

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. Returns the offset of
 * the first invalid byte, or len when all is valid. */
static size_t utf8_invalid_at(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        unsigned cp, min;
        if ((c & 0xE0) == 0xC0)
            n = 2, cp = c & 0x1Fu, min = 0x80;
        else if ((c & 0xF0) == 0xE0)
            n = 3, cp = c & 0x0Fu, min = 0x800;
        else if ((c & 0xF8) == 0xF0)
            n = 4, cp = c & 0x07u, min = 0x10000;
        else
            return i;
        if (i + n > len)
            return i;
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return i;
            cp = (cp << 6) | (s[i + k] & 0x3Fu);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return i;
        i += n;
    }
    return len;
}

void lms_st_header_release(struct lms_st_header *hdr)
{
    for (size_t i = 0; i < hdr->n_entries; i++)
        lms_free(hdr->entries[i].name);
    lms_free(hdr->entries);
    if (hdr->metadata)
        json_decref(hdr->metadata);
    memset(hdr, 0, sizeof(*hdr));
}

/* Reads a JSON array of non-negative integers into dst (at most cap entries). */
static enum lms_status int_array(const json_t *a, const char *tensor, const char *field,
                                 int64_t *dst, int cap, int *n_out, struct lms_error *err)
{
    if (!json_is_array(a))
        return lms_error_set(err, LMS_EFORMAT, "tensor '%s': '%s' is not an array", tensor, field);
    size_t n = json_array_size(a);
    if (n > (size_t)cap)
        return lms_error_set(err, LMS_EFORMAT, "tensor '%s': '%s' has %zu entries (at most %d)",
                             tensor, field, n, cap);
    for (size_t i = 0; i < n; i++) {
        const json_t *v = json_array_get(a, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return lms_error_set(err, LMS_EFORMAT,
                                 "tensor '%s': '%s' entry %zu is not a non-negative integer",
                                 tensor, field, i);
        dst[i] = json_integer_value(v);
    }
    *n_out = (int)n;
    return LMS_OK;
}

static enum lms_status parse_entry(const char *name, const json_t *v, struct lms_st_entry *e,
                                   int *n_ignored, struct lms_error *err)
{
    if (!json_is_object(v))
        return lms_error_set(err, LMS_EFORMAT, "tensor '%s': entry is not an object", name);
    const json_t *dtype = json_object_get(v, "dtype");
    const json_t *shape = json_object_get(v, "shape");
    const json_t *offsets = json_object_get(v, "data_offsets");
    if (!dtype || !shape || !offsets)
        return lms_error_set(err, LMS_EFORMAT, "tensor '%s': missing '%s'", name,
                             !dtype ? "dtype" : !shape ? "shape" : "data_offsets");
    *n_ignored += (int)json_object_size(v) - 3;
    if (!json_is_string(dtype))
        return lms_error_set(err, LMS_EFORMAT, "tensor '%s': 'dtype' is not a string", name);
    if (!lms_dtype_parse(json_string_value(dtype), json_string_length(dtype), &e->dtype))
        return lms_error_set(err, LMS_EFORMAT, "tensor '%s': unknown dtype '%s'", name,
                             json_string_value(dtype));
    enum lms_status rc = int_array(shape, name, "shape", e->shape, LMS_MAX_DIMS, &e->ndim, err);
    if (rc)
        return rc;
    int64_t off[2];
    int n_off;
    rc = int_array(offsets, name, "data_offsets", off, 2, &n_off, err);
    if (rc)
        return rc;
    if (n_off != 2)
        return lms_error_set(err, LMS_EFORMAT, "tensor '%s': 'data_offsets' needs 2 entries, has %d",
                             name, n_off);
    e->begin = (uint64_t)off[0];
    e->end = (uint64_t)off[1];
    return LMS_OK;
}

static enum lms_status parse_metadata(const json_t *v, json_t **out, struct lms_error *err)
{
    if (!json_is_object(v))
        return lms_error_set(err, LMS_EFORMAT, "'__metadata__' is not an object");
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)v, key, val)
    {
        if (!json_is_string(val))
            return lms_error_set(err, LMS_EFORMAT, "'__metadata__' value of '%s' is not a string",
                                 key);
    }
    *out = json_incref((json_t *)v);
    return LMS_OK;
}

static int cmp_by_begin(const void *a, const void *b)
{
    const struct lms_st_entry *x = *(struct lms_st_entry *const *)a;
    const struct lms_st_entry *y = *(struct lms_st_entry *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    /* zero-sized tensors share their offset with the next one: empty ones first */
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* contiguous offsets, sizes consistent with shape x dtype. */
static enum lms_status check_layout(struct lms_st_header *hdr, uint64_t *data_len,
                                    struct lms_error *err)
{
    size_t n = hdr->n_entries;
    struct lms_st_entry **order = lms_malloc((n ? n : 1) * sizeof(*order));
    if (!order)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        order[i] = &hdr->entries[i];
    qsort(order, n, sizeof(*order), cmp_by_begin);
    enum lms_status rc = LMS_OK;
    uint64_t expected = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        const struct lms_st_entry *e = order[i];
        if (e->begin != expected || e->end < e->begin) {
            rc = lms_error_set(err, LMS_EFORMAT,
                               "tensor '%s': data_offsets [%llu, %llu) %s (expected to start at %llu)",
                               e->name, (unsigned long long)e->begin, (unsigned long long)e->end,
                               e->end < e->begin ? "are reversed"
                               : e->begin < expected ? "overlap the previous tensor"
                               : i == 0              ? "leave a gap at the start of the data"
                                                     : "leave a gap after the previous tensor",
                               (unsigned long long)expected);
            break;
        }
        expected = e->end;
    }
    for (size_t i = 0; i < n && !rc; i++) {
        const struct lms_st_entry *e = &hdr->entries[i];
        uint64_t bits = lms_dtype_bits(e->dtype), numel = 1;
        bool overflow = false;
        for (int k = 0; k < e->ndim; k++)
            overflow |= __builtin_mul_overflow(numel, (uint64_t)e->shape[k], &numel);
        overflow |= __builtin_mul_overflow(numel, bits, &bits);
        if (overflow) {
            rc = lms_error_set(err, LMS_EFORMAT, "tensor '%s': shape is too large", e->name);
        } else if (bits % 8) {
            rc = lms_error_set(err, LMS_EFORMAT,
                               "tensor '%s': %s shape does not fill whole bytes", e->name,
                               lms_dtype_name(e->dtype));
        } else if (e->end - e->begin != bits / 8) {
            rc = lms_error_set(err, LMS_EFORMAT,
                               "tensor '%s': data_offsets span %llu bytes but shape x dtype needs %llu",
                               e->name, (unsigned long long)(e->end - e->begin),
                               (unsigned long long)(bits / 8));
        }
    }
    lms_free(order);
    *data_len = expected;
    return rc;
}

enum lms_status lms_st_parse(const void *head, size_t head_len, uint64_t file_size,
                             struct lms_st_header *hdr, struct lms_error *err)
{
    memset(hdr, 0, sizeof(*hdr));
    const unsigned char *p = head;
    if (file_size < 8 || head_len < 8)
        return lms_error_set(err, LMS_EFORMAT, "file is %llu bytes, shorter than the 8-byte header length",
                             (unsigned long long)file_size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | p[i];
    if (n > LMS_ST_MAX_HEADER)
        return lms_error_set(err, LMS_EFORMAT, "header length %llu exceeds the %u-byte limit",
                             (unsigned long long)n, LMS_ST_MAX_HEADER);
    if (8 + n > file_size)
        return lms_error_set(err, LMS_EFORMAT, "header length %llu runs past the end of the %llu-byte file",
                             (unsigned long long)n, (unsigned long long)file_size);
    if (8 + n > head_len)
        return lms_error_set(err, LMS_EINVAL, "header needs %llu bytes, %zu given",
                             (unsigned long long)(8 + n), head_len);
    const char *json = (const char *)p + 8;
    size_t bad = utf8_invalid_at((const unsigned char *)json, n);
    if (bad != n)
        return lms_error_set(err, LMS_EFORMAT, "header is not valid UTF-8 (byte %zu)", bad);
    json_error_t je;
    long failed = lms_alloc_failures();
    json_t *root = json_loadb(json, n, JSON_REJECT_DUPLICATES, &je);
    if (!root && lms_alloc_failures() != failed) /* jansson reports it as a syntax error */
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    if (!root) {
        if (strstr(je.text, "duplicate"))
            return lms_error_set(err, LMS_EFORMAT, "header has a duplicate tensor name: %s", je.text);
        return lms_error_set(err, LMS_EFORMAT, "header is not valid JSON (column %d): %s",
                             je.column, je.text);
    }
    enum lms_status rc = LMS_OK;
    if (!json_is_object(root)) {
        rc = lms_error_set(err, LMS_EFORMAT, "header is not a JSON object");
        goto out_root;
    }
    size_t cap = json_object_size(root);
    hdr->entries = lms_calloc(cap ? cap : 1, sizeof(*hdr->entries));
    if (!hdr->entries) {
        rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
        goto out_root;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val)
    {
        if (strcmp(key, "__metadata__") == 0) {
            rc = parse_metadata(val, &hdr->metadata, err);
        } else {
            struct lms_st_entry *e = &hdr->entries[hdr->n_entries];
            rc = parse_entry(key, val, e, &hdr->n_ignored_fields, err);
            if (!rc) {
                e->name = lms_strdup(key);
                if (!e->name)
                    rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
                else
                    hdr->n_entries++;
            }
        }
        if (rc)
            goto out_root;
    }
    uint64_t data_len = 0;
    rc = check_layout(hdr, &data_len, err);
    if (rc)
        goto out_root;
    if (8 + n + data_len != file_size) {
        rc = lms_error_set(err, LMS_EFORMAT,
                           "file is %llu bytes but the header describes %llu (%s)",
                           (unsigned long long)file_size, (unsigned long long)(8 + n + data_len),
                           8 + n + data_len > file_size ? "truncated" : "trailing bytes");
        goto out_root;
    }
    hdr->header_len = n;
    hdr->data_start = 8 + n;
out_root:
    json_decref(root);
    if (rc)
        lms_st_header_release(hdr);
    return rc;
}

enum lms_status lms_st_open(const char *path, struct lms_st_file *f, struct lms_error *err)
{
    memset(f, 0, sizeof(*f));
    enum lms_status rc = lms_storage_map_file(path, &f->storage, err);
    if (rc)
        return rc;
    rc = lms_st_parse(f->storage->base, f->storage->size, f->storage->size, &f->hdr, err);
    if (rc) {
        lms_error_wrap(err, "reading '%s': ", path);
        lms_storage_release(f->storage);
        f->storage = NULL;
    }
    return rc;
}

void lms_st_close(struct lms_st_file *f)
{
    lms_st_header_release(&f->hdr);
    lms_storage_release(f->storage);
    f->storage = NULL;
}

enum lms_status lms_st_entry_view(const struct lms_st_file *f, size_t i, struct lms_view **out,
                                  struct lms_error *err)
{
    const struct lms_st_entry *e = &f->hdr.entries[i];
    return lms_view_new_storage(f->storage, f->hdr.data_start + e->begin, e->dtype, e->ndim,
                                e->shape, out, err);
}

static int cmp_canonical(const void *a, const void *b)
{
    const struct lms_st_out *x = a, *y = b;
    if (x->dtype != y->dtype)
        return x->dtype > y->dtype ? -1 : 1; /* higher alignment rank first */
    return strcmp(x->name, y->name);
}

enum lms_status lms_st_header_build(struct lms_st_out *outs, size_t n, const json_t *metadata,
                                    struct lms_buf_str *hdr_out, struct lms_error *err)
{
    qsort(outs, n, sizeof(*outs), cmp_canonical);
    json_t *root = json_object();
    if (!root)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    enum lms_status rc = LMS_OK;
    if (metadata) {
        /* keys in ascending byte order */
        json_t *meta = json_object();
        size_t nk = json_object_size(metadata), k = 0;
        const char **keys = lms_malloc((nk ? nk : 1) * sizeof(*keys));
        if (!meta || !keys) {
            json_decref(meta);
            lms_free(keys);
            rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
            goto out;
        }
        const char *key;
        json_t *val;
        json_object_foreach((json_t *)metadata, key, val) keys[k++] = key;
        for (size_t i = 1; i < nk; i++)
            for (size_t j = i; j > 0 && strcmp(keys[j - 1], keys[j]) > 0; j--) {
                const char *t = keys[j];
                keys[j] = keys[j - 1];
                keys[j - 1] = t;
            }
        for (size_t i = 0; i < nk; i++)
            json_object_set(meta, keys[i], json_object_get(metadata, keys[i]));
        lms_free(keys);
        json_object_set_new(root, "__metadata__", meta);
    }
    uint64_t offset = 0;
    for (size_t i = 0; i < n; i++) {
        struct lms_st_out *o = &outs[i];
        if (strcmp(o->name, "__metadata__") == 0) {
            rc = lms_error_set(err, LMS_EINVAL, "a tensor cannot be named '__metadata__'");
            goto out;
        }
        uint64_t bits = lms_dtype_bits(o->dtype);
        for (int k = 0; k < o->ndim; k++)
            bits *= (uint64_t)o->shape[k];
        json_t *shape = json_array();
        for (int k = 0; k < o->ndim; k++)
            json_array_append_new(shape, json_integer(o->shape[k]));
        o->begin = offset;
        o->end = offset + (bits + 7) / 8;
        offset = o->end;
        json_t *entry = json_pack("{s:s,s:o,s:[I,I]}", "dtype", lms_dtype_name(o->dtype), "shape",
                                  shape, "data_offsets", (json_int_t)o->begin,
                                  (json_int_t)o->end);
        if (!entry || json_object_set_new(root, o->name, entry)) {
            rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
            goto out;
        }
    }
    struct lms_buf_str text = {0};
    rc = lms_json_dump(root, LMS_JSON_COMPACT, &text, err);
    if (rc)
        goto out;
    size_t padded = (text.len + 7) / 8 * 8;
    if (padded > LMS_ST_MAX_HEADER) {
        lms_buf_str_release(&text);
        rc = lms_error_set(err, LMS_EINVAL, "header of %zu bytes exceeds the %u-byte limit", padded,
                           LMS_ST_MAX_HEADER);
        goto out;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    hdr_out->len = 0;
    rc = lms_buf_str_append(hdr_out, (const char *)len8, 8, err);
    if (!rc)
        rc = lms_buf_str_append(hdr_out, text.data, text.len, err);
    while (!rc && hdr_out->len < 8 + padded)
        rc = lms_buf_str_append(hdr_out, " ", 1, err);
    lms_buf_str_release(&text);
out:
    json_decref(root);
    return rc;
}
