/* The torch DCP reader: opens a torch_dist checkpoint (a directory, or members of an uncompressed
 * archive), maps its data files and makes every tensor one lazy view over its chunks, whatever
 * tiling the saving ranks used (formats/codecs/dcp.h). */
#include "formats/codecs/dcp.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/codecs/dcp_impl.h"
#include "formats/codecs/torch_save.h"
#include "lms/alloc.h"
#include "lms/json.h"

#define META_MAX_BYTES (1u << 30) /* .metadata ceiling: 1 GiB */

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
