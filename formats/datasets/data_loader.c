/* The data loader over indexed datasets: Megatron-style train/valid/test split of the documents
 * and a deterministic window sampler (include/lms/dataset.h).
 *
 * The sampler plans everything up front and reads no token until a window is asked for: per
 * epoch a permutation of the documents and the prefix sums of their lengths in that order
 * (the "virtual stream"), and a permutation of the windows. Randomness is splitmix64 seeded from
 * (seed, epoch) or (seed, window stream), so the result depends only on the options. */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lms/alloc.h"
#include "lms/dataset.h"

/* ---- split ----------------------------------------------------------------------------- */

enum lms_status lms_split_parse(const char *spec, int64_t n_docs,
                                int64_t doc_begin[LMS_SPLIT_COUNT],
                                int64_t doc_end[LMS_SPLIT_COUNT], struct lms_error *err)
{
    /* megatron-core parse_and_normalize_split: re.findall(r"[.0-9]+"), pad with 0, normalise */
    double w[LMS_SPLIT_COUNT] = {0, 0, 0};
    int n = 0;
    const char *p = spec;
    if (n_docs < 0)
        return lms_error_set(err, LMS_EINVAL, "split: negative document count");
    while (*p) {
        if (!(isdigit((unsigned char)*p) || *p == '.')) {
            if (*p == '-')
                return lms_error_set(err, LMS_EINVAL, "split '%s': negative weight", spec);
            p++;
            continue;
        }
        const char *q = p;
        while (isdigit((unsigned char)*q) || *q == '.')
            q++;
        char num[64];
        size_t len = (size_t)(q - p);
        if (len >= sizeof(num))
            return lms_error_set(err, LMS_EINVAL, "split '%s': number too long", spec);
        memcpy(num, p, len);
        num[len] = '\0';
        char *end;
        double v = strtod(num, &end);
        if (*end || !isfinite(v))
            return lms_error_set(err, LMS_EINVAL, "split '%s': '%s' is not a number", spec, num);
        if (n == LMS_SPLIT_COUNT)
            return lms_error_set(err, LMS_EINVAL, "split '%s': more than 3 weights", spec);
        w[n++] = v;
        p = q;
    }
    double sum = w[0] + w[1] + w[2];
    if (n == 0 || !(sum > 0))
        return lms_error_set(err, LMS_EINVAL, "split '%s': need 1 to 3 non-negative weights "
                             "with a positive sum, like 969,30,1", spec);
    /* _get_split_indices: cumulative int(round(pct * n)), then shift so the last is n */
    int64_t idx[LMS_SPLIT_COUNT + 1] = {0};
    for (int i = 0; i < LMS_SPLIT_COUNT; i++)
        idx[i + 1] = idx[i] + (int64_t)nearbyint(w[i] / sum * (double)n_docs);
    int64_t diff = idx[LMS_SPLIT_COUNT] - n_docs;
    for (int i = 1; i <= LMS_SPLIT_COUNT; i++)
        idx[i] -= diff;
    for (int i = 0; i < LMS_SPLIT_COUNT; i++) {
        doc_begin[i] = idx[i] < 0 ? 0 : idx[i];
        doc_end[i] = idx[i + 1] < doc_begin[i] ? doc_begin[i] : idx[i + 1];
    }
    return LMS_OK;
}

/* ---- randomness ------------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, n), n > 0, without modulo bias. */
static uint64_t uniform(uint64_t *state, uint64_t n)
{
    uint64_t lim = UINT64_MAX - UINT64_MAX % n;
    uint64_t r;
    do
        r = splitmix64(state);
    while (r >= lim);
    return r % n;
}

static void shuffle(int64_t *a, int64_t n, uint64_t seed, uint64_t stream)
{
    uint64_t st = seed ^ (stream * 0xD1B54A32D192ED03ull);
    splitmix64(&st);
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)uniform(&st, (uint64_t)i + 1);
        int64_t t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

/* ---- sampler --------------------------------------------------------------------------- */

struct lms_sampler {
    const struct lms_dataset *ds; /* borrowed */
    int64_t n_windows;            /* N */
    int64_t seq_len;              /* S */
    int64_t stride;               /* window start distance */
    int64_t n_docs;               /* m, documents in the range */
    int64_t n_epochs;             /* E */
    int64_t epoch_tokens;         /* T, tokens of the range */
    int64_t *order;               /* [E][m] dataset document ids in virtual-stream order */
    int64_t *cum;                 /* [E][m+1] token prefix sums over order */
    int64_t *windows;             /* [N] virtual window index of output window k */
};

enum lms_status lms_sampler_new(const struct lms_dataset *ds, const struct lms_sampler_opts *o,
                                struct lms_sampler **out, struct lms_error *err)
{
    int64_t b = o->doc_begin, e = o->doc_end;
    if (b == 0 && e == 0)
        e = lms_dataset_n_docs(ds);
    if (o->n_windows <= 0 || o->seq_len <= 0 || o->stride < 0)
        return lms_error_set(err, LMS_EINVAL, "sampler: need n_windows > 0, seq_len > 0, "
                             "stride >= 0 (got %lld, %lld, %lld)", (long long)o->n_windows,
                             (long long)o->seq_len, (long long)o->stride);
    if (b < 0 || e <= b || e > lms_dataset_n_docs(ds))
        return lms_error_set(err, LMS_EINVAL, "sampler: document range [%lld, %lld) is empty or "
                             "outside the %lld documents", (long long)b, (long long)e,
                             (long long)lms_dataset_n_docs(ds));
    int64_t stride = o->stride ? o->stride : o->seq_len;
    int64_t t0, t1, tmp;
    lms_dataset_doc_range(ds, b, &t0, &tmp);
    lms_dataset_doc_range(ds, e - 1, &tmp, &t1);
    int64_t T = t1 - t0;
    if (T <= 0)
        return lms_error_set(err, LMS_EINVAL, "sampler: documents [%lld, %lld) hold no tokens",
                             (long long)b, (long long)e);
    if (o->n_windows > (INT64_MAX - o->seq_len) / stride)
        return lms_error_set(err, LMS_EINVAL, "sampler: %lld windows of stride %lld overflow",
                             (long long)o->n_windows, (long long)stride);
    int64_t span = (o->n_windows - 1) * stride + o->seq_len;
    int64_t E = (span + T - 1) / T;
    int64_t m = e - b;
    if (E > INT64_MAX / 16 / (m + 1))
        return lms_error_set(err, LMS_EINVAL, "sampler: %lld epochs of %lld documents is too "
                             "many", (long long)E, (long long)m);
    struct lms_sampler *s = lms_calloc(1, sizeof(*s));
    if (!s)
        return lms_error_set(err, LMS_ENOMEM, "sampler: out of memory");
    s->ds = ds;
    s->n_windows = o->n_windows;
    s->seq_len = o->seq_len;
    s->stride = stride;
    s->n_docs = m;
    s->n_epochs = E;
    s->epoch_tokens = T;
    s->order = lms_malloc((size_t)(E * m) * sizeof(int64_t));
    s->cum = lms_malloc((size_t)(E * (m + 1)) * sizeof(int64_t));
    s->windows = lms_malloc((size_t)o->n_windows * sizeof(int64_t));
    if (!s->order || !s->cum || !s->windows) {
        lms_sampler_free(s);
        return lms_error_set(err, LMS_ENOMEM, "sampler: out of memory for %lld epochs x %lld "
                             "documents", (long long)E, (long long)m);
    }
    for (int64_t ep = 0; ep < E; ep++) {
        int64_t *ord = s->order + ep * m, *cum = s->cum + ep * (m + 1);
        for (int64_t i = 0; i < m; i++)
            ord[i] = b + i;
        if (o->shuffle_docs)
            shuffle(ord, m, o->seed, 2 * (uint64_t)ep + 1);
        cum[0] = 0;
        for (int64_t i = 0; i < m; i++) {
            int64_t d0, d1;
            lms_dataset_doc_range(ds, ord[i], &d0, &d1);
            cum[i + 1] = cum[i] + (d1 - d0);
        }
    }
    for (int64_t k = 0; k < o->n_windows; k++)
        s->windows[k] = k;
    if (o->shuffle_windows)
        shuffle(s->windows, o->n_windows, o->seed, 0);
    *out = s;
    return LMS_OK;
}

void lms_sampler_free(struct lms_sampler *s)
{
    if (!s)
        return;
    lms_free(s->order);
    lms_free(s->cum);
    lms_free(s->windows);
    lms_free(s);
}

int64_t lms_sampler_n_windows(const struct lms_sampler *s)
{
    return s->n_windows;
}

int64_t lms_sampler_seq_len(const struct lms_sampler *s)
{
    return s->seq_len;
}

enum lms_status lms_sampler_window(const struct lms_sampler *s, int64_t k, int32_t *dst,
                                   size_t dst_cap, struct lms_error *err)
{
    if (k < 0 || k >= s->n_windows)
        return lms_error_set(err, LMS_EINVAL, "window %lld out of range (%lld windows)",
                             (long long)k, (long long)s->n_windows);
    if (dst_cap < (size_t)s->seq_len)
        return lms_error_set(err, LMS_EINVAL, "window buffer of %zu ids is smaller than the "
                             "sequence length %lld", dst_cap, (long long)s->seq_len);
    int64_t pos = s->windows[k] * s->stride, need = s->seq_len;
    int64_t m = s->n_docs;
    while (need > 0) {
        int64_t ep = pos / s->epoch_tokens, off = pos % s->epoch_tokens;
        const int64_t *cum = s->cum + ep * (m + 1), *ord = s->order + ep * m;
        /* last i with cum[i] <= off (skips empty documents) */
        int64_t lo = 0, hi = m - 1;
        while (lo < hi) {
            int64_t mid = lo + (hi - lo + 1) / 2;
            if (cum[mid] <= off)
                lo = mid;
            else
                hi = mid - 1;
        }
        int64_t d0, d1;
        lms_dataset_doc_range(s->ds, ord[lo], &d0, &d1);
        int64_t in_doc = off - cum[lo];
        int64_t take = d1 - d0 - in_doc;
        if (take > need)
            take = need;
        enum lms_status st = lms_dataset_read(s->ds, d0 + in_doc, d0 + in_doc + take, dst,
                                              (size_t)need, err);
        if (st)
            return st;
        dst += take;
        need -= take;
        pos += take;
    }
    return LMS_OK;
}
