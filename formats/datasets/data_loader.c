/* The data loader over indexed datasets: Megatron-style train/valid/test split of the documents
 * and a deterministic window sampler (include/lms/dataset.h, README "Row order").
 *
 * The sampler follows Megatron-Core's GPTDataset: epochs enough for the windows asked, one
 * document index over all of them (the final epoch apart when little of it is used), windows
 * at a fixed stride of the virtual stream those documents make, and a shuffle over every window
 * of the epochs. It plans everything up front and reads no token until a window is asked for:
 * the document order and its token offsets (the virtual stream, no sample index: window j
 * starts at j * stride) and the window shuffle. That index lives in memory, or past a size
 * limit in a cache file built once beside the data and mapped, as Megatron caches its indices.
 * Randomness is one splitmix64 generator, so the result depends only on the options. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/datasets/dataset_impl.h"
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

/* splitmix64. One generator per sampler, its state started at the first output of a generator
 * seeded with the seed (so seeds that differ by the generator's step, as the blend's per-source
 * seeds do, do not give shifted copies of one stream). */
struct rng {
    uint64_t state;
};

/* splitmix64's output function (also the checksums' mixer). */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t rng_next(struct rng *g)
{
    return mix64(g->state += 0x9E3779B97F4A7C15ull);
}

static struct rng rng_seeded(uint64_t seed)
{
    struct rng g = {seed};
    g.state = rng_next(&g);
    return g;
}

/* Uniform in [0, n), n > 0, without modulo bias. */
static uint64_t rng_below(struct rng *g, uint64_t n)
{
    uint64_t lim = UINT64_MAX - UINT64_MAX % n;
    uint64_t r;
    do
        r = rng_next(g);
    while (r >= lim);
    return r % n;
}

/* Fisher-Yates from the last entry down, as numpy's shuffle walks. */
static void rng_shuffle(struct rng *g, int64_t *a, int64_t n)
{
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)rng_below(g, (uint64_t)i + 1);
        int64_t t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

/* ---- the plan: Megatron-Core GPTDataset's epochs, samples and final-epoch rule ----------- */

struct plan {
    int64_t doc_begin, n_docs;          /* documents [doc_begin, doc_begin + n_docs) */
    int64_t stream_begin, epoch_tokens; /* their tokens: stream [stream_begin, + epoch_tokens) */
    int64_t seq_len, stride;
    int64_t epochs;                     /* E */
    int64_t samples;                    /* windows in the E epochs */
    int64_t before_final;               /* windows in the first E - 1 epochs */
    bool separate;                      /* the final epoch is shuffled apart */
    bool shuffle_docs, shuffle_windows;
};

/* Windows [j stride, j stride + len) inside a stream of the given length. */
static int64_t windows_in(int64_t tokens, int64_t len, int64_t stride)
{
    return tokens >= len ? (tokens - len) / stride + 1 : 0;
}

static enum lms_status plan_new(const struct lms_dataset *ds, const struct lms_sampler_opts *o,
                                struct plan *p, struct lms_error *err)
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
    *p = (struct plan){.doc_begin = b, .n_docs = e - b, .seq_len = o->seq_len,
                       .stride = o->stride ? o->stride : o->seq_len,
                       .shuffle_docs = o->shuffle_docs, .shuffle_windows = o->shuffle_windows};
    int64_t t1, x;
    lms_dataset_doc_range(ds, b, &p->stream_begin, &x);
    lms_dataset_doc_range(ds, e - 1, &x, &t1);
    int64_t T = p->epoch_tokens = t1 - p->stream_begin;
    if (T <= 0)
        return lms_error_set(err, LMS_EINVAL, "sampler: documents [%lld, %lld) hold no tokens",
                             (long long)b, (long long)e);
    /* the tokens N windows span, then the fewest epochs that hold them */
    if (o->n_windows - 1 > (INT64_MAX - T - o->seq_len) / p->stride)
        return lms_error_set(err, LMS_EINVAL, "sampler: %lld windows of stride %lld overflow",
                             (long long)o->n_windows, (long long)p->stride);
    int64_t need = (o->n_windows - 1) * p->stride + o->seq_len;
    int64_t E = p->epochs = (need + T - 1) / T;
    if (E > INT64_MAX / 32 / (p->n_docs + 1))
        return lms_error_set(err, LMS_EINVAL, "sampler: %lld epochs of %lld documents is too "
                             "many", (long long)E, (long long)p->n_docs);
    p->samples = windows_in(E * T, o->seq_len, p->stride);
    if (p->samples > ((int64_t)1 << 56)) /* keeps the index's byte count far from overflow */
        return lms_error_set(err, LMS_EINVAL, "sampler: %lld windows of %lld epochs is too "
                             "many", (long long)p->samples, (long long)E);
    if (E > 1) {
        /* Megatron: shuffle the final epoch apart when it gives under 80 % of an epoch */
        p->before_final = windows_in((E - 1) * T, o->seq_len, p->stride);
        int64_t per_epoch = windows_in(T, o->seq_len, p->stride);
        p->separate = o->n_windows - p->before_final < (int64_t)(0.80 * (double)per_epoch);
    }
    return LMS_OK;
}

/* The index, 64-bit words: the document order [E m] and the virtual start of each entry
 * [E m + 1] when documents are shuffled, then the window shuffle [samples] when windows are. */
static uint64_t index_words(const struct plan *p)
{
    uint64_t w = 0;
    if (p->shuffle_docs)
        w += 2 * (uint64_t)(p->epochs * p->n_docs) + 1;
    if (p->shuffle_windows)
        w += (uint64_t)p->samples;
    return w;
}

/* Fills the index (index_words(p) words at words), drawing from one generator in Megatron's
 * order: document index, then window shuffle. */
static void build_index(const struct lms_dataset *ds, const struct plan *p, uint64_t seed,
                        int64_t *words)
{
    struct rng g = rng_seeded(seed);
    int64_t m = p->n_docs, E = p->epochs;
    if (p->shuffle_docs) {
        int64_t *order = words, *start = words + E * m;
        for (int64_t ep = 0; ep < E; ep++)
            for (int64_t i = 0; i < m; i++)
                order[ep * m + i] = p->doc_begin + i;
        if (p->separate) {
            rng_shuffle(&g, order, (E - 1) * m);
            rng_shuffle(&g, order + (E - 1) * m, m);
        } else {
            rng_shuffle(&g, order, E * m);
        }
        start[0] = 0;
        for (int64_t i = 0; i < E * m; i++) {
            int64_t d0, d1;
            lms_dataset_doc_range(ds, order[i], &d0, &d1);
            start[i + 1] = start[i] + (d1 - d0);
        }
        words += 2 * E * m + 1;
    }
    if (p->shuffle_windows) {
        for (int64_t j = 0; j < p->samples; j++)
            words[j] = j;
        if (p->separate) {
            rng_shuffle(&g, words, p->before_final);
            rng_shuffle(&g, words + p->before_final, p->samples - p->before_final);
        } else {
            rng_shuffle(&g, words, p->samples);
        }
    }
}

/* ---- the index cache file ---------------------------------------------------------------- */

/* A cache file is H_WORDS header words, then the index words, native-endian. The header holds
 * every input of the index (the data's sizes and modification times, the document range, seed,
 * window length and stride, epochs and flags) and two checksums: of the index and of the
 * header. The file name carries a hash of the inputs, so other options build another file. */
enum {
    H_MAGIC, H_VERSION, H_STAMP, H_DOCS = H_STAMP + 4, H_TOKENS, H_BEGIN, H_END, H_SEED, H_LEN,
    H_STRIDE, H_EPOCHS, H_SAMPLES, H_FLAGS, H_INPUTS, /* words above: the inputs */
    H_INDEX_SUM = H_INPUTS, H_HEADER_SUM, H_WORDS
};
#define CACHE_MAGIC 0x314C504D53534D4Cull /* "LMSSMPL1" */
#define CACHE_VERSION 1u
#define DEFAULT_MEMORY_LIMIT (256ull << 20)

/* A 64-bit checksum of n words: four interleaved chains, so it reads at memory speed. */
static uint64_t hash_words(const uint64_t *w, uint64_t n)
{
    uint64_t h[4] = {1, 2, 3, 4}, i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++)
            h[k] = mix64(h[k] ^ w[i + (uint64_t)k]) + 0x9E3779B97F4A7C15ull;
    for (; i < n; i++)
        h[0] = mix64(h[0] ^ w[i]) + 0x9E3779B97F4A7C15ull;
    return mix64(h[0] ^ mix64(h[1] ^ mix64(h[2] ^ mix64(h[3] ^ n))));
}

static void cache_inputs(const struct lms_dataset *ds, const struct plan *p, uint64_t seed,
                         uint64_t h[H_WORDS])
{
    struct lms__dataset_origin org;
    lms__dataset_origin(ds, &org);
    memset(h, 0, H_WORDS * sizeof(uint64_t));
    h[H_MAGIC] = CACHE_MAGIC;
    h[H_VERSION] = CACHE_VERSION;
    memcpy(h + H_STAMP, org.stamp, sizeof(org.stamp));
    h[H_DOCS] = (uint64_t)lms_dataset_n_docs(ds);
    h[H_TOKENS] = (uint64_t)lms_dataset_n_tokens(ds);
    h[H_BEGIN] = (uint64_t)p->doc_begin;
    h[H_END] = (uint64_t)(p->doc_begin + p->n_docs);
    h[H_SEED] = seed;
    h[H_LEN] = (uint64_t)p->seq_len;
    h[H_STRIDE] = (uint64_t)p->stride;
    h[H_EPOCHS] = (uint64_t)p->epochs;
    h[H_SAMPLES] = (uint64_t)p->samples;
    h[H_FLAGS] = (uint64_t)p->shuffle_docs | (uint64_t)p->shuffle_windows << 1 |
                 (uint64_t)p->separate << 2;
}

/* DIR/BASE.sampler-HASH.cache, BASE the data file's name. false when it does not fit. */
static bool cache_path(const char *dir, const char *data_path, const uint64_t h[H_WORDS],
                       char *dst, size_t cap)
{
    const char *slash = strrchr(data_path, '/');
    const char *base = slash ? slash + 1 : data_path;
    int n = snprintf(dst, cap, "%s/%s.sampler-%016llx.cache", dir, base,
                     (unsigned long long)hash_words(h, H_INPUTS));
    return n > 0 && (size_t)n < cap;
}

/* Maps an existing cache file read-only if it holds exactly the index of these inputs (size,
 * inputs, both checksums); false otherwise (missing, stale, damaged). */
static bool cache_map(const char *path, const uint64_t want[H_WORDS], uint64_t n_words,
                      void **map, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    struct stat sb;
    size_t size = (size_t)(H_WORDS + n_words) * 8;
    void *m = MAP_FAILED;
    if (fstat(fd, &sb) == 0 && S_ISREG(sb.st_mode) && (uint64_t)sb.st_size == size)
        m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return false;
    const uint64_t *h = m;
    if (memcmp(h, want, H_INPUTS * sizeof(uint64_t)) != 0 ||
        h[H_HEADER_SUM] != hash_words(h, H_HEADER_SUM) ||
        h[H_INDEX_SUM] != hash_words(h + H_WORDS, n_words)) {
        munmap(m, size);
        return false;
    }
    *map = m;
    *len = size;
    return true;
}

/* Builds the index into a temporary file beside path and renames it into place. The space is
 * reserved first, so a full disk is an error here and not a fault while the index is filled. */
static enum lms_status cache_write(const struct lms_dataset *ds, const struct plan *p,
                                   uint64_t seed, const uint64_t inputs[H_WORDS], uint64_t n_words,
                                   const char *path, struct lms_error *err)
{
    char tmp[4200];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.lms-tmp-XXXXXX", path) >= sizeof tmp)
        return lms_error_set(err, LMS_EINVAL, "path too long");
    int fd = mkstemp(tmp);
    if (fd < 0)
        return lms_error_set(err, LMS_EIO, "%s", strerror(errno));
    size_t size = (size_t)(H_WORDS + n_words) * 8;
    enum lms_status st = LMS_OK;
    int rc = posix_fallocate(fd, 0, (off_t)size);
    void *m = rc ? MAP_FAILED : mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (rc || m == MAP_FAILED) {
        st = lms_error_set(err, LMS_EIO, "%s", strerror(rc ? rc : errno));
        goto out;
    }
    uint64_t *h = m;
    build_index(ds, p, seed, (int64_t *)(h + H_WORDS));
    memcpy(h, inputs, H_INPUTS * sizeof(uint64_t));
    h[H_INDEX_SUM] = hash_words(h + H_WORDS, n_words);
    h[H_HEADER_SUM] = hash_words(h, H_HEADER_SUM);
    if (msync(m, size, MS_SYNC) != 0 || fsync(fd) != 0)
        st = lms_error_set(err, LMS_EIO, "%s", strerror(errno));
    munmap(m, size);
    if (!st && fchmod(fd, 0644) != 0)
        st = lms_error_set(err, LMS_EIO, "%s", strerror(errno));
out:
    if (close(fd) != 0 && !st)
        st = lms_error_set(err, LMS_EIO, "%s", strerror(errno));
    if (!st && rename(tmp, path) != 0)
        st = lms_error_set(err, LMS_EIO, "%s", strerror(errno));
    if (st)
        unlink(tmp);
    return st;
}

/* The directory a path lies in ("." for a bare name). */
static void dir_of(const char *path, char *dst, size_t cap)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dst, cap, ".");
    else if (slash == path)
        snprintf(dst, cap, "/");
    else
        snprintf(dst, cap, "%.*s", (int)(slash - path), path);
}

/* ---- sampler --------------------------------------------------------------------------- */

struct lms_sampler {
    const struct lms_dataset *ds; /* borrowed */
    struct plan p;
    int64_t n_windows;            /* N */
    const int64_t *order;         /* [E m] dataset document ids in virtual-stream order */
    const int64_t *start;         /* [E m + 1] virtual start of each entry of order */
    const int64_t *perm;          /* [samples] window j of output window k; NULL: j = k */
    uint64_t index_bytes;
    int64_t *heap;                /* the index in memory, or NULL */
    void *map;                    /* or mapped from its cache file */
    size_t map_len;
    char *cache_path;             /* that file; owned */
};

static enum lms_status memory_limit(const struct lms_sampler_opts *o, uint64_t *limit,
                                    struct lms_error *err)
{
    *limit = o->memory_limit;
    const char *env = getenv("LMS_SAMPLER_MEMORY_LIMIT");
    if (*limit || !env || !*env) {
        if (!*limit)
            *limit = DEFAULT_MEMORY_LIMIT;
        return LMS_OK;
    }
    char *end;
    errno = 0;
    unsigned long long v = strtoull(env, &end, 10);
    if (*end || errno || env[0] == '-')
        return lms_error_set(err, LMS_EINVAL, "LMS_SAMPLER_MEMORY_LIMIT='%s' is not a number "
                             "of bytes", env);
    *limit = v;
    return LMS_OK;
}

/* Finds or builds the cache file of the index, trying the data's directory (or
 * o->cache_dir), then $TMPDIR or /tmp, and maps it. */
static enum lms_status index_from_cache(struct lms_sampler *s, const struct lms_sampler_opts *o,
                                        uint64_t limit, struct lms_error *err)
{
    uint64_t h[H_WORDS], n_words = s->index_bytes / 8;
    cache_inputs(s->ds, &s->p, o->seed, h);
    struct lms__dataset_origin org;
    lms__dataset_origin(s->ds, &org);
    char dirs[2][4096], paths[2][4200], why[2][256] = {"", ""};
    if (o->cache_dir)
        snprintf(dirs[0], sizeof dirs[0], "%s", o->cache_dir);
    else
        dir_of(org.path, dirs[0], sizeof dirs[0]);
    const char *tmp = getenv("TMPDIR");
    snprintf(dirs[1], sizeof dirs[1], "%s", tmp && *tmp ? tmp : "/tmp");
    bool have[2];
    for (int i = 0; i < 2; i++)
        have[i] = cache_path(dirs[i], org.path, h, paths[i], sizeof paths[i]);
    for (int i = 0; i < 2; i++)
        if (have[i] && cache_map(paths[i], h, n_words, &s->map, &s->map_len)) {
            s->cache_path = lms_strdup(paths[i]);
            return s->cache_path ? LMS_OK
                                 : lms_error_set(err, LMS_ENOMEM, "sampler: out of memory");
        }
    for (int i = 0; i < 2; i++) {
        struct lms_error werr;
        lms_error_clear(&werr);
        if (!have[i])
            snprintf(why[i], sizeof why[i], "path too long");
        else if (cache_write(s->ds, &s->p, o->seed, h, n_words, paths[i], &werr))
            snprintf(why[i], sizeof why[i], "%s", werr.msg);
        else if (cache_map(paths[i], h, n_words, &s->map, &s->map_len)) {
            s->cache_path = lms_strdup(paths[i]);
            return s->cache_path ? LMS_OK
                                 : lms_error_set(err, LMS_ENOMEM, "sampler: out of memory");
        } else
            snprintf(why[i], sizeof why[i], "the file written does not read back");
    }
    return lms_error_set(err, LMS_EIO, "sampler: the index of '%s' (%.1f MiB, over the %.1f MiB "
                         "held in memory; LMS_SAMPLER_MEMORY_LIMIT) needs a cache file: writing "
                         "it in '%s' failed (%s), and in '%s' (%s)", org.path,
                         (double)s->index_bytes / 1048576.0, (double)limit / 1048576.0, dirs[0],
                         why[0], dirs[1], why[1]);
}

enum lms_status lms_sampler_new(const struct lms_dataset *ds, const struct lms_sampler_opts *o,
                                struct lms_sampler **out, struct lms_error *err)
{
    struct plan p;
    uint64_t limit;
    enum lms_status st = plan_new(ds, o, &p, err);
    if (!st)
        st = memory_limit(o, &limit, err);
    if (st)
        return st;
    struct lms_sampler *s = lms_calloc(1, sizeof(*s));
    if (!s)
        return lms_error_set(err, LMS_ENOMEM, "sampler: out of memory");
    s->ds = ds;
    s->p = p;
    s->n_windows = o->n_windows;
    uint64_t n_words = index_words(&p);
    s->index_bytes = n_words * 8;
    const int64_t *words = NULL;
    if (n_words && s->index_bytes <= limit) {
        s->heap = lms_malloc((size_t)s->index_bytes);
        if (!s->heap) {
            lms_sampler_free(s);
            return lms_error_set(err, LMS_ENOMEM, "sampler: out of memory for an index of "
                                 "%.1f MiB", (double)s->index_bytes / 1048576.0);
        }
        build_index(ds, &p, o->seed, s->heap);
        words = s->heap;
    } else if (n_words) {
        if ((st = index_from_cache(s, o, limit, err))) {
            lms_sampler_free(s);
            return st;
        }
        words = (const int64_t *)s->map + H_WORDS;
    }
    if (p.shuffle_docs) {
        s->order = words;
        s->start = words + p.epochs * p.n_docs;
        words += 2 * p.epochs * p.n_docs + 1;
    }
    if (p.shuffle_windows)
        s->perm = words;
    *out = s;
    return LMS_OK;
}

enum lms_status lms_sampler_new_calibration(const struct lms_dataset *ds, int64_t seq_len,
                                            uint64_t seed, bool shuffle,
                                            struct lms_sampler **out, struct lms_error *err)
{
    int64_t n = seq_len > 0 ? lms_dataset_n_tokens(ds) / seq_len : 0;
    if (n <= 0)
        return lms_error_set(err, LMS_EINVAL, "the data holds %lld tokens, fewer than one row "
                             "of %lld", (long long)lms_dataset_n_tokens(ds), (long long)seq_len);
    struct lms_sampler_opts o = {.n_windows = n, .seq_len = seq_len, .stride = seq_len,
                                 .seed = seed, .shuffle_docs = shuffle,
                                 .shuffle_windows = shuffle};
    return lms_sampler_new(ds, &o, out, err);
}

void lms_sampler_free(struct lms_sampler *s)
{
    if (!s)
        return;
    lms_free(s->heap);
    if (s->map)
        munmap(s->map, s->map_len);
    lms_free(s->cache_path);
    lms_free(s);
}

int64_t lms_sampler_n_windows(const struct lms_sampler *s)
{
    return s->n_windows;
}

int64_t lms_sampler_seq_len(const struct lms_sampler *s)
{
    return s->p.seq_len;
}

void lms_sampler_info(const struct lms_sampler *s, struct lms_sampler_info *info)
{
    *info = (struct lms_sampler_info){.n_epochs = s->p.epochs, .n_samples = s->p.samples,
                                      .separate_final = s->p.separate,
                                      .index_bytes = s->index_bytes,
                                      .cache_path = s->cache_path};
}

/* The entry of the document order holding virtual position pos: the last i with
 * start[i] <= pos, which skips empty documents. */
static int64_t entry_at(const struct lms_sampler *s, int64_t pos)
{
    int64_t lo = 0, hi = s->p.epochs * s->p.n_docs - 1;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo + 1) / 2;
        if (s->start[mid] <= pos)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

enum lms_status lms_sampler_window(const struct lms_sampler *s, int64_t k, int32_t *dst,
                                   size_t dst_cap, struct lms_error *err)
{
    if (k < 0 || k >= s->n_windows)
        return lms_error_set(err, LMS_EINVAL, "window %lld out of range (%lld windows)",
                             (long long)k, (long long)s->n_windows);
    if (dst_cap < (size_t)s->p.seq_len)
        return lms_error_set(err, LMS_EINVAL, "window buffer of %zu ids is smaller than the "
                             "sequence length %lld", dst_cap, (long long)s->p.seq_len);
    int64_t pos = (s->perm ? s->perm[k] : k) * s->p.stride, need = s->p.seq_len;
    while (need > 0) {
        int64_t from, avail; /* stream position and the tokens contiguous from it */
        if (s->order) {
            int64_t i = entry_at(s, pos), d0, d1;
            lms_dataset_doc_range(s->ds, s->order[i], &d0, &d1);
            from = d0 + (pos - s->start[i]);
            avail = d1 - from;
        } else { /* the documents in file order: the range's tokens, epoch after epoch */
            int64_t off = pos % s->p.epoch_tokens;
            from = s->p.stream_begin + off;
            avail = s->p.epoch_tokens - off;
        }
        int64_t take = avail < need ? avail : need;
        enum lms_status st = lms_dataset_read(s->ds, from, from + take, dst, (size_t)need, err);
        if (st)
            return st;
        dst += take;
        need -= take;
        pos += take;
    }
    return LMS_OK;
}
