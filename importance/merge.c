/* Merging importance files scored over disjoint rows of the same data (include/lms/importance.h,
 * README "Importance file").
 *
 * Raw sums add exactly, but only sums of different rows of one calibration set mean anything:
 * the same part twice, overlapping rows, or rows of another data set, seed, order, row length
 * or model would add up to a plausible file that is wrong. Every scoring run records its
 * provenance in "source" (data and model fingerprints, order, seed, row range, row length); a
 * merged file lists the runs in "source.parts". A merge compares every part of one file with
 * every part of the other and refuses anything but disjoint rows of one calibration set. It
 * also refuses sums that would overflow to infinity. All checks run before anything changes, so
 * a refused merge leaves the first file untouched. */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "importance/metric.h"
#include "lms/alloc.h"
#include "lms/importance.h"
#include "lms/json.h"

/* One scoring run's provenance: the source object `lmsurgeon score` writes, or an entry of a
 * merged file's "parts". Strings point into the JSON. */
struct part {
    const json_t *obj;
    const char *data, *data_fp, *model_fp, *order;
    const char *sampler; /* shuffled order only: the sampler's name for its row order */
    int64_t begin, end, seq_len;
    int64_t seed; /* shuffled order only */
};

struct parts {
    struct part *p;
    size_t n;
};

static const char *str_field(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    return json_is_string(v) && json_string_length(v) ? json_string_value(v) : NULL;
}

static bool count_field(const json_t *o, const char *key, int64_t *out)
{
    const json_t *v = json_object_get(o, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = json_integer_value(v);
    return true;
}

/* Reads one part from o ("where" names it in messages). A file without these fields was
 * written before runs recorded their provenance (or was edited): it cannot be merged safely. */
static enum lms_status parse_part(const json_t *o, const char *where, struct part *p,
                                  struct lms_error *err)
{
    memset(p, 0, sizeof *p);
    p->obj = o;
    const char *missing = NULL;
    if (!json_is_object(o))
        missing = "everything";
    else if (!(p->data_fp = str_field(o, "data_fingerprint")))
        missing = "data_fingerprint";
    else if (!(p->model_fp = str_field(o, "model_fingerprint")))
        missing = "model_fingerprint";
    else if (!(p->order = str_field(o, "order")) ||
             (strcmp(p->order, "shuffled") && strcmp(p->order, "sequential")))
        missing = "order";
    else if (!count_field(o, "row_begin", &p->begin))
        missing = "row_begin";
    else if (!count_field(o, "row_end", &p->end) || p->end <= p->begin)
        missing = "row_end";
    else if (!count_field(o, "row_length", &p->seq_len) || p->seq_len < 2)
        missing = "row_length";
    else if (!strcmp(p->order, "shuffled") && !count_field(o, "seed", &p->seed))
        missing = "seed";
    else if (!strcmp(p->order, "shuffled") && !(p->sampler = str_field(o, "sampler")))
        missing = "sampler";
    if (missing)
        return lms_error_set(err, LMS_EFORMAT,
                             "'%s' has no valid '%s': only files whose calibration provenance "
                             "is recorded (written by this lmsurgeon, unedited) can be merged; "
                             "score those rows again",
                             where, missing);
    p->data = str_field(o, "data");
    if (!p->data)
        p->data = "?";
    return LMS_OK;
}

/* Refuses two parts that are not disjoint rows of one calibration set, naming the field. */
static enum lms_status check_pair(const struct part *p, const struct part *q,
                                  struct lms_error *err)
{
    if (strcmp(p->data_fp, q->data_fp))
        return lms_error_set(err, LMS_ESHAPE,
                             "different data: '%s' (fingerprint %s) and '%s' (fingerprint %s)",
                             p->data, p->data_fp, q->data, q->data_fp);
    if (strcmp(p->model_fp, q->model_fp))
        return lms_error_set(err, LMS_ESHAPE,
                             "different models (model_fingerprint %s and %s)", p->model_fp,
                             q->model_fp);
    if (strcmp(p->order, q->order))
        return lms_error_set(err, LMS_ESHAPE, "different row orders (%s and %s)", p->order,
                             q->order);
    /* a seed names a draw only for one sampler: another version orders the rows otherwise */
    if (!strcmp(p->order, "shuffled") && strcmp(p->sampler, q->sampler))
        return lms_error_set(err, LMS_ESHAPE, "rows drawn in different orders (sampler %s and "
                             "%s) for the same seed", p->sampler, q->sampler);
    if (!strcmp(p->order, "shuffled") && p->seed != q->seed)
        return lms_error_set(err, LMS_ESHAPE,
                             "different seeds (%" PRId64 " and %" PRId64 "): their rows are "
                             "different draws of the data",
                             p->seed, q->seed);
    if (p->seq_len != q->seq_len)
        return lms_error_set(err, LMS_ESHAPE, "rows of %" PRId64 " and %" PRId64
                             " tokens do not merge", p->seq_len, q->seq_len);
    if (p->begin == q->begin && p->end == q->end)
        return lms_error_set(err, LMS_ESHAPE,
                             "the same rows [%" PRId64 ", %" PRId64 ") twice (the same part "
                             "given twice)", p->begin, p->end);
    if (p->begin < q->end && q->begin < p->end)
        return lms_error_set(err, LMS_ESHAPE,
                             "rows [%" PRId64 ", %" PRId64 ") and [%" PRId64 ", %" PRId64
                             ") overlap", p->begin, p->end, q->begin, q->end);
    return LMS_OK;
}

/* The parts of imp: "source.parts", or "source" itself for a single run; consistent with the
 * raw sums (row length, total rows) and pairwise disjoint. OUT: *out (lms_free out->p). */
static enum lms_status parts_of(const struct lms_importance *imp, struct parts *out,
                                struct lms_error *err)
{
    out->p = NULL;
    out->n = 0;
    const json_t *src = imp->source, *list = json_object_get(src, "parts");
    if (!json_is_object(src))
        return lms_error_set(err, LMS_EFORMAT,
                             "'source' is missing: the rows these sums cover are unknown, so it "
                             "cannot be merged");
    if (list && (!json_is_array(list) || !json_array_size(list)))
        return lms_error_set(err, LMS_EFORMAT, "'source.parts' is not a non-empty array");
    size_t n = list ? json_array_size(list) : 1;
    out->p = lms_calloc(n, sizeof *out->p);
    if (!out->p)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    out->n = n;
    enum lms_status rc = LMS_OK;
    int64_t rows = 0;
    for (size_t i = 0; !rc && i < n; i++) {
        char where[48];
        snprintf(where, sizeof where, list ? "source.parts[%zu]" : "source", i);
        rc = parse_part(list ? json_array_get(list, i) : src, where, &out->p[i], err);
        if (!rc && out->p[i].seq_len != imp->raw.seq_len)
            rc = lms_error_set(err, LMS_EFORMAT,
                               "'%s' has rows of %" PRId64 " tokens, 'raw' of %" PRId64, where,
                               out->p[i].seq_len, imp->raw.seq_len);
        if (!rc)
            rows += out->p[i].end - out->p[i].begin;
        for (size_t j = 0; !rc && j < i; j++)
            if ((rc = check_pair(&out->p[j], &out->p[i], err)))
                lms_error_wrap(err, "'source.parts' %zu and %zu: ", j, i);
    }
    if (!rc && rows != imp->raw.n_rows)
        rc = lms_error_set(err, LMS_EFORMAT,
                           "'source' covers %" PRId64 " rows but 'raw.rows' is %" PRId64, rows,
                           imp->raw.n_rows);
    if (rc) {
        lms_free(out->p);
        out->p = NULL;
        out->n = 0;
    }
    return rc;
}

/* Refuses sums a + b that overflow to infinity, naming the field and the entry. */
static enum lms_status check_add(const double *a, const double *b, int64_t n, const char *key,
                                 struct lms_error *err)
{
    for (int64_t i = 0; a && b && i < n; i++)
        if (!isfinite(a[i] + b[i]))
            return lms_error_set(err, LMS_EFORMAT,
                                 "the sums of 'raw.%s' overflow (entry %" PRId64 ": %g + %g is "
                                 "not a finite double)",
                                 key, i, a[i], b[i]);
    return LMS_OK;
}

static enum lms_status check_counts(const struct lms_importance_raw *x,
                                    const struct lms_importance_raw *y, struct lms_error *err)
{
    int64_t sum;
    const char *what = __builtin_add_overflow(x->n_rows, y->n_rows, &sum)             ? "rows"
                       : __builtin_add_overflow(x->n_cos_rows, y->n_cos_rows, &sum)    ? "cos_rows"
                       : __builtin_add_overflow(x->n_loss_tokens, y->n_loss_tokens, &sum)
                           ? "loss_tokens"
                       : !isfinite(x->base_loss + y->base_loss) ? "base_loss"
                                                                 : NULL;
    if (what)
        return lms_error_set(err, LMS_EFORMAT, "the sums of 'raw.%s' overflow", what);
    return LMS_OK;
}

/* The dims, row length, layer metric and sums present agree. */
static enum lms_status check_shapes(const struct lms_importance *a, const struct lms_importance *b,
                                    struct lms_error *err)
{
    if (!a->raw.present || !b->raw.present)
        return lms_error_set(err, LMS_EFORMAT,
                             "only files with raw calibration sums (version 2, written by "
                             "'lmsurgeon score') can be merged");
    if (a->n_layers != b->n_layers || a->hidden != b->hidden || a->ffn != b->ffn ||
        a->n_heads != b->n_heads || a->n_groups != b->n_groups)
        return lms_error_set(err, LMS_ESHAPE,
                             "scores of different models (L=%lld H=%lld F=%lld n_h=%lld n_g=%lld "
                             "vs L=%lld H=%lld F=%lld n_h=%lld n_g=%lld)",
                             (long long)a->n_layers, (long long)a->hidden, (long long)a->ffn,
                             (long long)a->n_heads, (long long)a->n_groups,
                             (long long)b->n_layers, (long long)b->hidden, (long long)b->ffn,
                             (long long)b->n_heads, (long long)b->n_groups);
    if (a->raw.seq_len != b->raw.seq_len)
        return lms_error_set(err, LMS_ESHAPE, "rows of %lld and %lld tokens do not merge",
                             (long long)a->raw.seq_len, (long long)b->raw.seq_len);
    if (a->layer_metric != b->layer_metric || a->block_size != b->block_size)
        return lms_error_set(err, LMS_ESHAPE,
                             "layer metrics differ ('%s' blocks of %lld vs '%s' blocks of %lld)",
                             lms_layer_metric_name(a->layer_metric), (long long)a->block_size,
                             lms_layer_metric_name(b->layer_metric), (long long)b->block_size);
    const struct lms_importance_raw *x = &a->raw, *y = &b->raw;
    const char *what = !x->hidden_sq != !y->hidden_sq     ? "hidden"
                       : !x->ffn_sq != !y->ffn_sq         ? "ffn"
                       : !x->head_sq != !y->head_sq       ? "heads"
                                                          : NULL;
    for (size_t i = 0; !what && i < lms__n_raw_sums; i++)
        if (!lms__raw_sum_get(x, &lms__raw_sums[i]) != !lms__raw_sum_get(y, &lms__raw_sums[i]))
            what = lms__raw_sums[i].what;
    if (what)
        return lms_error_set(err, LMS_ESHAPE, "one file has %s sums and the other not", what);
    return LMS_OK;
}

static enum lms_status check_sums(const struct lms_importance *a, const struct lms_importance *b,
                                  struct lms_error *err)
{
    const struct lms_importance_raw *x = &a->raw, *y = &b->raw;
    int64_t L = a->n_layers;
    enum lms_status rc = check_counts(x, y, err);
    if (!rc)
        rc = check_add(x->hidden_sq, y->hidden_sq, L * 2 * a->hidden, "hidden_sq", err);
    if (!rc)
        rc = check_add(x->ffn_sq, y->ffn_sq, L * a->ffn, "ffn_sq", err);
    if (!rc)
        rc = check_add(x->head_sq, y->head_sq, L * a->n_heads, "head_sq", err);
    for (size_t i = 0; !rc && i < lms__n_raw_sums; i++) {
        const struct lms__raw_sum *d = &lms__raw_sums[i];
        rc = check_add(lms__raw_sum_get(x, d), lms__raw_sum_get(y, d), lms__raw_sum_len(a, d),
                       d->key, err);
    }
    return rc;
}

enum lms_status lms_importance_mergeable(const struct lms_importance *a,
                                         const struct lms_importance *b, struct lms_error *err)
{
    enum lms_status rc = check_shapes(a, b, err);
    if (rc)
        return rc;
    struct parts pa, pb;
    if ((rc = parts_of(a, &pa, err)))
        return lms_error_wrap(err, "the first file's ");
    if ((rc = parts_of(b, &pb, err))) {
        lms_free(pa.p);
        return lms_error_wrap(err, "the second file's ");
    }
    for (size_t i = 0; !rc && i < pa.n; i++)
        for (size_t j = 0; !rc && j < pb.n; j++)
            rc = check_pair(&pa.p[i], &pb.p[j], err);
    if (!rc)
        rc = check_sums(a, b, err);
    lms_free(pa.p);
    lms_free(pb.p);
    return rc;
}

static int by_first_row(const void *x, const void *y)
{
    const struct part *p = x, *q = y;
    return (p->begin > q->begin) - (p->begin < q->begin);
}

/* The source of the merged file (a and b mergeable): the total rows, what every part shares
 * (data, its fingerprint, row length) and "parts", every run's own record in row order.
 * OUT: *out. */
static enum lms_status merged_source(const struct lms_importance *a,
                                     const struct lms_importance *b, json_t **out,
                                     struct lms_error *err)
{
    struct parts pa, pb;
    enum lms_status rc = parts_of(a, &pa, err);
    if (rc)
        return rc;
    if ((rc = parts_of(b, &pb, err))) {
        lms_free(pa.p);
        return rc;
    }
    struct part *all = lms_malloc((pa.n + pb.n) * sizeof *all);
    json_t *parts = json_array(), *s = NULL;
    if (all && parts) {
        memcpy(all, pa.p, pa.n * sizeof *all);
        memcpy(all + pa.n, pb.p, pb.n * sizeof *all);
        qsort(all, pa.n + pb.n, sizeof *all, by_first_row);
        bool ok = true;
        for (size_t i = 0; ok && i < pa.n + pb.n; i++)
            ok = !json_array_append_new(parts, json_deep_copy(all[i].obj));
        if (ok)
            s = json_pack("{s:I,s:I,s:s,s:s,s:O}", "rows",
                          (json_int_t)(a->raw.n_rows + b->raw.n_rows), "row_length",
                          (json_int_t)a->raw.seq_len, "data", all[0].data, "data_fingerprint",
                          all[0].data_fp, "parts", parts);
    }
    json_decref(parts);
    lms_free(all);
    lms_free(pa.p);
    lms_free(pb.p);
    *out = s;
    return s ? LMS_OK : lms_error_set(err, LMS_ENOMEM, "out of memory");
}

static void add_sums(double *a, const double *b, int64_t n)
{
    for (int64_t i = 0; a && b && i < n; i++)
        a[i] += b[i];
}

enum lms_status lms_importance_merge(struct lms_importance *a, const struct lms_importance *b,
                                     struct lms_error *err)
{
    enum lms_status rc = lms_importance_mergeable(a, b, err);
    if (rc)
        return rc;
    json_t *source;
    if ((rc = merged_source(a, b, &source, err)))
        return rc;
    int64_t L = a->n_layers;
    struct lms_importance_raw *x = &a->raw;
    const struct lms_importance_raw *y = &b->raw;
    add_sums(x->hidden_sq, y->hidden_sq, L * 2 * a->hidden);
    add_sums(x->ffn_sq, y->ffn_sq, L * a->ffn);
    add_sums(x->head_sq, y->head_sq, L * a->n_heads);
    for (size_t i = 0; i < lms__n_raw_sums; i++) {
        const struct lms__raw_sum *d = &lms__raw_sums[i];
        add_sums(*lms__raw_sum_ptr(x, d), lms__raw_sum_get(y, d), lms__raw_sum_len(a, d));
    }
    x->n_rows += y->n_rows;
    x->n_cos_rows += y->n_cos_rows;
    x->n_loss_tokens += y->n_loss_tokens;
    x->base_loss += y->base_loss;
    json_decref(a->source);
    a->source = source;
    return lms_importance_derive(a, a->groups != NULL || b->groups != NULL, err);
}
