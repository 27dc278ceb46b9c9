/* Generated views: tensors whose elements are computed from a key when they are read, so a model
 * of random weights costs no memory and streams through every writer like a model read from
 * disk.
 *
 * Draw i of the stream `key` is one of the two Box-Muller normals of pair j = i / 2, and pair j
 * takes its two uniforms from one 64-bit hash of (key, j) (the splitmix64 finaliser applied to
 * key + (j + 1) x the golden-ratio increment: the splitmix64 sequence seeded with key). Nothing
 * carries over from one draw to the next, so any range can be computed alone, by any thread,
 * and reads the same values whatever the chunking.
 *
 * The logarithm, square root, sine and cosine are small polynomials and Newton steps written
 * here in plain float arithmetic rather than libm calls: the compiler vectorises them, and a
 * vector lane computes exactly what the scalar tail of the same loop would (libm's vector
 * variants need not agree with its scalar ones, which would make a value depend on where its
 * chunk starts). Accuracy is a few units in the last place of f32, far below what a random
 * initialisation or a bf16 rounding notices. */
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "lms/alloc.h"
#include "ir/generate.h"

/* Pairs computed per step (2 x this many floats on the stack). */
#define BLOCK_PAIRS 512
/* Elements one thread converts per task of a parallel read. */
#define TASK 4096
/* Tasks per thread below which a read stays on one thread: a small read costs less than
 * starting another thread. */
#define MIN_TASKS_PER_THREAD 8

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static float float_of_bits(uint32_t b)
{
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

static uint32_t bits_of_float(float f)
{
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

/* ln(u) for a normal positive float u: u = m 2^e with m in [sqrt(1/2), sqrt(2)), and
 * ln m = 2 atanh(t), t = (m - 1) / (m + 1), |t| <= 0.172, by its series to t^9. */
static float log_pos(float u)
{
    uint32_t b = bits_of_float(u);
    int32_t e = (int32_t)(b >> 23) - 127;
    uint32_t mb = (b & 0x7fffffu) | 0x3f800000u; /* m in [1, 2) */
    int32_t big = (int32_t)(mb > 0x3fb504f3u);   /* m > sqrt(2): halve it */
    float m = float_of_bits(mb) * (1.0f - 0.5f * (float)big);
    e += big;
    float t = (m - 1.0f) / (m + 1.0f), t2 = t * t;
    float p = 1.0f + t2 * (1.0f / 3 + t2 * (1.0f / 5 + t2 * (1.0f / 7 + t2 * (1.0f / 9))));
    return 2.0f * t * p + (float)e * 0.693147181f;
}

/* sqrt(w) for w > 0: the reciprocal square root from the exponent trick, three Newton steps
 * (largest relative error 3.4e-2, then 1.8e-3, 4.7e-6 and 1.7e-7, f32 rounding), times w. */
static float sqrt_pos(float w)
{
    float y = float_of_bits(0x5f375a86u - (bits_of_float(w) >> 1));
    y = y * (1.5f - 0.5f * w * y * y);
    y = y * (1.5f - 0.5f * w * y * y);
    y = y * (1.5f - 0.5f * w * y * y);
    return w * y;
}

/* On x86-64 the draws are also compiled for AVX2 (twice the lanes of the baseline's SSE2),
 * chosen at load time. Both versions do the same IEEE operations in the same order (AVX2 alone
 * brings no fused multiply-add), so they compute the same bits. */
#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define LMS_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef LMS_SIMD_CLONES
#define LMS_SIMD_CLONES
#endif

/* Pairs p0 .. p0 + np - 1 (np <= BLOCK_PAIRS) of the stream: z[2k], z[2k + 1]. */
LMS_SIMD_CLONES
static void normal_pairs(uint64_t key, int64_t p0, int np, float *z)
{
    uint32_t hi[BLOCK_PAIRS], lo[BLOCK_PAIRS];
    float r[BLOCK_PAIRS], x[BLOCK_PAIRS], y[BLOCK_PAIRS];
    for (int k = 0; k < np; k++) {
        uint64_t h = mix64(key + (uint64_t)(p0 + k + 1) * UINT64_C(0x9e3779b97f4a7c15));
        hi[k] = (uint32_t)(h >> 32);
        lo[k] = (uint32_t)h;
    }
    for (int k = 0; k < np; k++) {
        /* radius: u in (0, 1) from 23 bits, never 0 or 1; sqrt(-2 ln u) <= 5.8 */
        float u = ((float)(int32_t)(hi[k] >> 9) + 0.5f) * (1.0f / 8388608.0f);
        r[k] = sqrt_pos(-2.0f * log_pos(u));
        /* angle: quadrant q from 2 bits, then pi/4 + a, a in [-pi/4, pi/4) from 24 more */
        int32_t q = (int32_t)(lo[k] >> 30);
        float a = ((float)(int32_t)((lo[k] >> 6) & 0xffffffu) * (1.0f / 16777216.0f) - 0.5f) *
                  1.57079633f;
        float a2 = a * a;
        float s = a * (1.0f + a2 * (-1.0f / 6 + a2 * (1.0f / 120 + a2 * (-1.0f / 5040 +
                                                                        a2 * (1.0f / 362880)))));
        float c = 1.0f + a2 * (-0.5f + a2 * (1.0f / 24 + a2 * (-1.0f / 720 + a2 * (1.0f / 40320))));
        float c1 = (c - s) * 0.707106781f, s1 = (c + s) * 0.707106781f; /* turned by pi/4 */
        /* turned by q quarter turns, with arithmetic selects so that the loop vectorises */
        float odd = (float)(q & 1), sign = 1.0f - 2.0f * (float)(q >> 1);
        x[k] = (c1 - odd * (c1 + s1)) * sign;
        y[k] = (s1 + odd * (c1 - s1)) * sign;
    }
    for (int k = 0; k < np; k++) {
        z[2 * k] = r[k] * x[k];
        z[2 * k + 1] = r[k] * y[k];
    }
}

void lms__normal_fill(uint64_t key, int64_t e0, int64_t n, float *out)
{
    float z[2 * BLOCK_PAIRS];
    while (n > 0) {
        int64_t p0 = e0 / 2;
        int skip = (int)(e0 - 2 * p0); /* an odd start takes the pair's second draw first */
        int64_t want = (n + skip + 1) / 2;
        int np = want < BLOCK_PAIRS ? (int)want : BLOCK_PAIRS;
        normal_pairs(key, p0, np, z);
        int64_t m = 2 * (int64_t)np - skip;
        if (m > n)
            m = n;
        memcpy(out, z + skip, (size_t)m * sizeof(float));
        out += m;
        e0 += m;
        n -= m;
    }
}

/* f32 -> bf16, rounding to nearest even, for the finite values a draw is (lms_cast's general
 * version handles NaN with a branch that keeps this loop from vectorising). */
static void round_to_bf16(uint16_t *dst, const float *src, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        uint32_t b = bits_of_float(src[i]);
        dst[i] = (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
    }
}

/* One task of a read: elements [e0, e0 + n), n <= TASK, into dst in the view's dtype. */
static void generate_task(const struct lms_view *v, int64_t e0, int64_t n, char *dst)
{
    float buf[TASK];
    float mean = (float)v->u.gen.mean, std = (float)v->u.gen.std;
    float *f = v->dtype == LMS_DTYPE_F32 ? (float *)(void *)dst : buf;
    if (std == 0.0f) {
        for (int64_t i = 0; i < n; i++)
            f[i] = mean;
    } else {
        lms__normal_fill(v->u.gen.key, e0, n, f);
        for (int64_t i = 0; i < n; i++)
            f[i] = mean + std * f[i];
    }
    if (v->dtype == LMS_DTYPE_BF16)
        round_to_bf16((uint16_t *)(void *)dst, f, n);
    else if (v->dtype != LMS_DTYPE_F32)
        lms_cast(dst, v->dtype, f, LMS_DTYPE_F32, (size_t)n);
}

/* A contiguous share of one read, for one thread. */
struct share {
    const struct lms_view *v;
    int64_t e0, n;
    char *dst;
};

static void *generate_share(void *arg)
{
    const struct share *sh = arg;
    size_t es = lms_dtype_size(sh->v->dtype);
    for (int64_t off = 0; off < sh->n; off += TASK) {
        int64_t m = sh->n - off < TASK ? sh->n - off : TASK;
        generate_task(sh->v, sh->e0 + off, m, sh->dst + (size_t)off * es);
    }
    return NULL;
}

/* Threads started per read rather than a pool: a read is milliseconds of work, far more than a
 * thread start, and threads that exist only while there is work never spin or wait for it. */
enum lms_status lms__view_generate(const struct lms_view *v, int64_t e0, int64_t n, void *dst,
                                   struct lms_error *err)
{
    (void)err;
    enum { MAX_THREADS = 256 };
    int64_t nt = v->u.gen.n_threads > 0 ? v->u.gen.n_threads : sysconf(_SC_NPROCESSORS_ONLN);
    int64_t most = (n + TASK - 1) / TASK / MIN_TASKS_PER_THREAD;
    nt = nt < most ? nt : most;
    nt = nt < MAX_THREADS ? nt : MAX_THREADS;
    if (nt < 2) {
        struct share all = {v, e0, n, dst};
        generate_share(&all);
        return LMS_OK;
    }
    /* shares of whole tasks, the first ones one task longer */
    struct share sh[MAX_THREADS];
    pthread_t tid[MAX_THREADS];
    bool started[MAX_THREADS] = {false};
    int64_t n_tasks = (n + TASK - 1) / TASK, at = 0;
    size_t es = lms_dtype_size(v->dtype);
    for (int64_t i = 0; i < nt; i++) {
        int64_t tasks = n_tasks / nt + (i < n_tasks % nt);
        int64_t len = tasks * TASK < n - at ? tasks * TASK : n - at;
        sh[i] = (struct share){v, e0 + at, len, (char *)dst + (size_t)at * es};
        at += len;
    }
    for (int64_t i = 1; i < nt; i++)
        started[i] = pthread_create(&tid[i], NULL, generate_share, &sh[i]) == 0;
    generate_share(&sh[0]);
    for (int64_t i = 1; i < nt; i++) {
        if (started[i])
            pthread_join(tid[i], NULL);
        else /* no thread to be had: the work is done here instead */
            generate_share(&sh[i]);
    }
    return LMS_OK;
}

enum lms_status lms_view_new_generated(enum lms_dtype dt, int ndim, const int64_t *shape,
                                       uint64_t key, double mean, double std, int n_threads,
                                       struct lms_view **out, struct lms_error *err)
{
    if (dt != LMS_DTYPE_F32 && dt != LMS_DTYPE_BF16 && dt != LMS_DTYPE_F16)
        return lms_error_set(err, LMS_EUNSUPPORTED, "cannot generate %s tensors (f32, bf16, f16)",
                             lms_dtype_name(dt));
    if (ndim < 0 || ndim > LMS_MAX_DIMS)
        return lms_error_set(err, LMS_EINVAL, "%d dimensions (at most %d supported)", ndim,
                             LMS_MAX_DIMS);
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (shape[i] && numel > (INT64_C(1) << 62) / shape[i]))
            return lms_error_set(err, LMS_EINVAL, "bad shape: dimension %d is %lld", i,
                                 (long long)shape[i]);
        numel *= shape[i];
    }
    if (!isfinite(mean) || !isfinite(std) || std < 0)
        return lms_error_set(err, LMS_EINVAL, "bad distribution: mean %g, std %g", mean, std);
    struct lms_view *v = lms_calloc(1, sizeof *v);
    if (!v)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    v->kind = LMS_VIEW_GENERATED;
    v->refs = 1;
    v->dtype = dt;
    v->ndim = ndim;
    if (ndim)
        memcpy(v->shape, shape, (size_t)ndim * sizeof(int64_t));
    v->u.gen.key = key;
    v->u.gen.mean = mean;
    v->u.gen.std = std;
    v->u.gen.n_threads = n_threads;
    *out = v;
    return LMS_OK;
}
