/* Token data for distillation: a weighted blend of indexed datasets, each cut by the Megatron
 * train/validation split and read as rows of seq_length + 1 tokens (include/lms/distill.h).
 *
 * Rows are assigned to sources by the Megatron blending rule: row k goes to the source whose
 * count so far lags its share of max(k, 1) rows the most (ties to the first source), and is that
 * source's next row. Each source's rows come from the window sampler of formats/datasets/data_loader.c,
 * so the whole order is a pure function of the sources, the split, the row count and the seed,
 * and the data position of a run is just the number of rows it has consumed. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lms/alloc.h"
#include "lms/distill.h"

/* ---- --data-paths ------------------------------------------------------------------------ */

/* A word that reads as a number (the whole of it), whatever its value: the form of the list
 * is decided by the words, the weights are judged after. *range: the value under- or overflowed
 * a double (1e-320, 1e400). */
static bool parse_weight(const char *s, double *w, bool *range)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end)
        return false;
    *w = v;
    *range = errno == ERANGE;
    return true;
}

void lms_blend_sources_free(struct lms_blend_source *s, int n)
{
    if (!s)
        return;
    for (int i = 0; i < n; i++)
        lms_free(s[i].path);
    lms_free(s);
}

enum lms_status lms_blend_sources_parse(char *const *args, int n_args,
                                        struct lms_blend_source **out, int *n_out,
                                        struct lms_error *err)
{
    *out = NULL;
    *n_out = 0;
    if (n_args <= 0)
        return lms_error_set(err, LMS_EINVAL, "--data-paths needs at least one dataset prefix");
    double w;
    bool range = false;
    bool weighted = parse_weight(args[0], &w, &range);
    if (weighted && n_args % 2)
        return lms_error_set(err, LMS_EINVAL, "--data-paths: weighted form needs WEIGHT PREFIX "
                             "pairs, got %d values", n_args);
    int n = weighted ? n_args / 2 : n_args;
    struct lms_blend_source *s = lms_calloc((size_t)n, sizeof *s);
    if (!s)
        return lms_error_set(err, LMS_ENOMEM, "--data-paths: out of memory");
    for (int i = 0; i < n; i++) {
        const char *path = weighted ? args[2 * i + 1] : args[i];
        s[i].weight = 1.0;
        if (weighted) {
            if (!parse_weight(args[2 * i], &s[i].weight, &range) || range ||
                !(s[i].weight > 0) || !isfinite(s[i].weight)) {
                lms_blend_sources_free(s, n);
                return lms_error_set(err, LMS_EINVAL, "--data-paths: weight '%s' is not a "
                                     "positive number%s", args[2 * i],
                                     range ? " a double can hold (it under- or overflows)" : "");
            }
        } else if (parse_weight(path, &w, &range)) {
            lms_blend_sources_free(s, n);
            return lms_error_set(err, LMS_EINVAL, "--data-paths: '%s' looks like a weight in "
                                 "a list of prefixes (write WEIGHT PREFIX pairs)", path);
        }
        s[i].path = lms_strdup(path);
        if (!s[i].path) {
            lms_blend_sources_free(s, n);
            return lms_error_set(err, LMS_ENOMEM, "--data-paths: out of memory");
        }
    }
    if (!weighted) /* weights by size, resolved when the datasets are open */
        for (int i = 0; i < n; i++)
            s[i].weight = -1;
    *out = s;
    *n_out = n;
    return LMS_OK;
}

/* ---- the blend ---------------------------------------------------------------------------- */

struct blend_part {
    struct lms_dataset *ds;
    struct lms_sampler *sampler; /* NULL when the part gets no row */
    int64_t tokens;              /* of the split */
    int64_t doc_begin, doc_end;
    double share;                /* normalised weight */
    int64_t n_rows;              /* rows assigned */
};

struct lms_blend {
    int n;
    struct blend_part *parts;
    int64_t n_rows, row_len, tokens;
    uint16_t *row_part;  /* [n_rows] source of row k */
    int64_t *row_index;  /* [n_rows] row of that source */
};

void lms_blend_free(struct lms_blend *b)
{
    if (!b)
        return;
    for (int i = 0; i < b->n; i++) {
        lms_sampler_free(b->parts[i].sampler);
        lms_dataset_free(b->parts[i].ds);
    }
    lms_free(b->parts);
    lms_free(b->row_part);
    lms_free(b->row_index);
    lms_free(b);
}

static const char *split_name(int which)
{
    return which == LMS_SPLIT_TRAIN ? "training" : which == LMS_SPLIT_VALID ? "validation" : "test";
}

enum lms_status lms_blend_open(const struct lms_blend_source *src, int n_src,
                               const struct lms_blend_opts *o, struct lms_blend **out,
                               struct lms_error *err)
{
    *out = NULL;
    if (n_src <= 0 || n_src > UINT16_MAX || o->n_rows <= 0 || o->row_len <= 1 || o->stride <= 0)
        return lms_error_set(err, LMS_EINVAL, "data: need 1 to 65535 sources and positive rows");
    struct lms_blend *b = lms_calloc(1, sizeof *b);
    if (!b || !(b->parts = lms_calloc((size_t)n_src, sizeof *b->parts))) {
        lms_free(b);
        return lms_error_set(err, LMS_ENOMEM, "data: out of memory");
    }
    b->n = n_src;
    b->n_rows = o->n_rows;
    b->row_len = o->row_len;
    enum lms_status st = LMS_OK;
    double wsum = 0;
    for (int i = 0; i < n_src; i++) {
        struct blend_part *p = &b->parts[i];
        if ((st = lms_data_open(src[i].path, &p->ds, err)))
            goto fail;
        int64_t db[LMS_SPLIT_COUNT], de[LMS_SPLIT_COUNT];
        if ((st = lms_split_parse(o->split, lms_dataset_n_docs(p->ds), db, de, err))) {
            lms_error_wrap(err, "data '%s': ", src[i].path);
            goto fail;
        }
        p->doc_begin = db[o->which];
        p->doc_end = de[o->which];
        if (p->doc_end > p->doc_begin) {
            int64_t t0, t1, x;
            lms_dataset_doc_range(p->ds, p->doc_begin, &t0, &x);
            lms_dataset_doc_range(p->ds, p->doc_end - 1, &x, &t1);
            p->tokens = t1 - t0;
        }
        if (p->tokens < o->row_len) {
            st = lms_error_set(err, LMS_EFORMAT, "data '%s': the %s split of --split %s holds "
                               "%lld documents, %lld tokens: fewer than one row of %lld tokens",
                               src[i].path, split_name(o->which), o->split,
                               (long long)(p->doc_end - p->doc_begin), (long long)p->tokens,
                               (long long)o->row_len);
            goto fail;
        }
        p->share = src[i].weight > 0 ? src[i].weight : (double)p->tokens;
        wsum += p->share;
        b->tokens += p->tokens;
    }
    if (b->tokens < o->min_tokens) {
        st = lms_error_set(err, LMS_EFORMAT, "data%s'%s'%s: the %s split holds %lld tokens, "
                           "fewer than one batch needs (%lld)", n_src > 1 ? " blend " : " ",
                           src[0].path, n_src > 1 ? ", ..." : "", split_name(o->which),
                           (long long)b->tokens, (long long)o->min_tokens);
        goto fail;
    }
    for (int i = 0; i < n_src; i++)
        b->parts[i].share /= wsum;

    b->row_part = lms_malloc((size_t)o->n_rows * sizeof *b->row_part);
    b->row_index = lms_malloc((size_t)o->n_rows * sizeof *b->row_index);
    if (!b->row_part || !b->row_index) {
        st = lms_error_set(err, LMS_ENOMEM, "data: out of memory for %lld rows",
                           (long long)o->n_rows);
        goto fail;
    }
    for (int64_t k = 0; k < o->n_rows; k++) {
        double at = k > 1 ? (double)k : 1.0;
        int best = 0;
        double best_err = -INFINITY;
        for (int i = 0; i < n_src; i++) {
            double e = b->parts[i].share * at - (double)b->parts[i].n_rows;
            if (e > best_err) {
                best_err = e;
                best = i;
            }
        }
        b->row_part[k] = (uint16_t)best;
        b->row_index[k] = b->parts[best].n_rows++;
    }
    for (int i = 0; i < n_src; i++) {
        struct blend_part *p = &b->parts[i];
        if (!p->n_rows)
            continue;
        struct lms_sampler_opts so = {
            .n_windows = p->n_rows,
            .seq_len = o->row_len,
            .stride = o->stride,
            /* a different stream per source, so equal datasets are not read in lockstep */
            .seed = o->seed + 0x9E3779B97F4A7C15ull * (uint64_t)i,
            .doc_begin = p->doc_begin,
            .doc_end = p->doc_end,
            .shuffle_docs = o->shuffle,
            .shuffle_windows = o->shuffle,
        };
        if ((st = lms_sampler_new(p->ds, &so, &p->sampler, err))) {
            lms_error_wrap(err, "data '%s': ", src[i].path);
            goto fail;
        }
    }
    *out = b;
    return LMS_OK;
fail:
    lms_blend_free(b);
    return st;
}

int64_t lms_blend_tokens(const struct lms_blend *b)
{
    return b->tokens;
}

int lms_blend_row_source(const struct lms_blend *b, int64_t k)
{
    return k >= 0 && k < b->n_rows ? b->row_part[k] : -1;
}

enum lms_status lms_blend_row(const struct lms_blend *b, int64_t k, int32_t *dst, size_t dst_cap,
                              struct lms_error *err)
{
    if (k < 0 || k >= b->n_rows)
        return lms_error_set(err, LMS_EINVAL, "data: row %lld out of range (%lld rows planned)",
                             (long long)k, (long long)b->n_rows);
    const struct blend_part *p = &b->parts[b->row_part[k]];
    return lms_sampler_window(p->sampler, b->row_index[k], dst, dst_cap, err);
}
