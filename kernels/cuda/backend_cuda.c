/* CUDA backend: device context, memory, transfers and the op table (kernels/backend_impl.h).
 *
 * C11 on the CUDA runtime and cuBLASLt C APIs; the kernels live in *.cu files behind
 * kernels/cuda/lms_cuda.h. All state is in struct cuda_ctx (no globals): the device ordinal, one
 * non-blocking stream every op is queued on, a cuBLASLt handle with its workspace, a scratch
 * buffer for 16-bit GEMM and attention operands, pinned staging buffers for transfers, and the deferred-error
 * words the kernels write (lms_cuda.h). Every entry point selects the context's device first, so
 * backends on several devices can coexist in one thread (NCCL data parallelism later).
 *
 * Transfers: uploads go through two pinned staging buffers in turn, each copy queued
 * asynchronously and followed by an event, so the caller's next host work (reading and casting
 * the next weight chunk) overlaps the previous copy; a staging buffer is reused only after its
 * event completed. Downloads queue the copy and wait for the stream (they see every op queued
 * before them), then report deferred argument errors.
 *
 * Precision (enum lms_precision): FP32 keeps everything fp32 (weights upcast once, cuBLASLt
 * CUBLAS_COMPUTE_32F without TF32, the fp32 attention kernel) and matches the CPU reference;
 * AUTO/BF16 keeps 16-bit weights in their dtype, rounds the fp32 activation operand of each GEMM
 * to that dtype into the scratch buffer (fp32 accumulation and output) and runs attention on
 * tensor cores (q, k, v rounded to bf16 into the same scratch). */
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kernels/backend_impl.h"
#include "kernels/cuda/lms_cuda.h"
#include "lms/alloc.h"
#include "lms/dtype.h"
#include "lms/train.h"

#define LT_WORKSPACE ((size_t)32 << 20) /* cuBLASLt workspace (Hopper: 32 MiB advised) */
#define STAGE_BYTES ((size_t)8 << 20)   /* each of the two pinned staging buffers */

struct cuda_ctx {
    int dev;                    /* ordinal */
    char dev_name[256];         /* cudaDeviceProp.name */
    int cc_major, cc_minor;     /* compute capability */
    size_t max_smem;            /* opt-in shared memory per block, bytes */
    bool exact;                 /* LMS_PRECISION_FP32 */
    cudaStream_t stream;        /* every op */
    cublasLtHandle_t lt;
    void *lt_ws;                /* LT_WORKSPACE bytes */
    void *pack;                 /* 16-bit operands of GEMMs and of the tensor-core attention;
                                 * grown on demand */
    size_t pack_cap;            /* bytes */
    unsigned long long *errw;   /* device, LMS_CUDA_ERRW words (UINT64_MAX = clear) */
    unsigned long long *errw_h; /* pinned host copy */
    int64_t chk_vocab, chk_npos, chk_c; /* limits of the last checked launch, for messages */
    void *stage[2];             /* pinned, STAGE_BYTES each */
    cudaEvent_t stage_ev[2];    /* completion of the last copy out of stage[i] */
    bool stage_used[2];
    int stage_next;
    /* training ops */
    double *red;                         /* reduction partials (column sums, sum of squares) */
    size_t red_cap;                      /* bytes */
    struct lms_cuda_adamw_desc *aw_host; /* pinned: AdamW descriptors on their way up */
    struct lms_cuda_adamw_desc *aw_dev;  /* device copy read by the AdamW kernel */
    int64_t aw_cap;                      /* descriptors each of the two holds */
    cudaEvent_t aw_ev;                   /* completion of the last copy out of aw_host */
    bool aw_used;
};

/* ---- error helpers ---- */

/* Records a CUDA runtime failure of what (e.g. "matmul") on device be->name; clears the runtime's
 * last-error slot so that later launches do not report it again. */
static enum lms_status cuda_fail(struct lms_backend *be, struct lms_error *err, cudaError_t e,
                                 const char *what)
{
    (void)cudaGetLastError();
    enum lms_status s = e == cudaErrorMemoryAllocation ? LMS_ENOMEM : LMS_EDEVICE;
    return lms_error_set(err, s, "%s: %s: %s (%s)", be->name, what, cudaGetErrorString(e),
                         cudaGetErrorName(e));
}

#define CK(call, what)                                                                       \
    do {                                                                                     \
        cudaError_t e_ = (call);                                                             \
        if (e_ != cudaSuccess)                                                               \
            return cuda_fail(be, err, e_, (what));                                           \
    } while (0)

static enum lms_status lt_fail(struct lms_backend *be, struct lms_error *err, cublasStatus_t s,
                               const char *what)
{
    return lms_error_set(err, s == CUBLAS_STATUS_ALLOC_FAILED ? LMS_ENOMEM : LMS_EDEVICE,
                         "%s: matmul: %s failed: cuBLASLt status %d", be->name, what, (int)s);
}

static enum lms_status use(struct lms_backend *be, struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    CK(cudaSetDevice(cx->dev), "selecting the device");
    return LMS_OK;
}

static bool to_cuda_dt(enum lms_dtype d, enum lms_cuda_dt *out)
{
    switch (d) {
    case LMS_DTYPE_F32:
        *out = LMS_CUDA_F32;
        return true;
    case LMS_DTYPE_BF16:
        *out = LMS_CUDA_BF16;
        return true;
    case LMS_DTYPE_F16:
        *out = LMS_CUDA_F16;
        return true;
    default:
        return false;
    }
}

/* Reads the deferred-error words (after the stream has been synchronised) and reports the first
 * set one; resets them. */
static enum lms_status check_deferred(struct lms_backend *be, struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    CK(cudaMemcpyAsync(cx->errw_h, cx->errw, LMS_CUDA_ERRW * sizeof *cx->errw,
                       cudaMemcpyDeviceToHost, cx->stream),
       "reading the error words");
    CK(cudaStreamSynchronize(cx->stream), "synchronising");
    int slot = -1;
    for (int i = 0; i < LMS_CUDA_ERRW; i++)
        if (cx->errw_h[i] != ~0ull) {
            slot = i;
            break;
        }
    if (slot < 0)
        return LMS_OK;
    unsigned long long w = cx->errw_h[slot];
    long long idx = (long long)(w >> 32);
    long value = (long)(int32_t)(uint32_t)(w & 0xffffffffu);
    CK(cudaMemsetAsync(cx->errw, 0xff, LMS_CUDA_ERRW * sizeof *cx->errw, cx->stream),
       "resetting the error words");
    switch (slot) {
    case LMS_CUDA_ERRW_EMBED:
        return lms_error_set(err, LMS_EINVAL,
                             "token id %ld at position %lld is outside the vocabulary [0, %lld)",
                             value, idx, (long long)cx->chk_vocab);
    case LMS_CUDA_ERRW_ROPE:
        return lms_error_set(err, LMS_EINVAL, "rope: position %ld outside the table [0, %lld)",
                             value, (long long)cx->chk_npos);
    default:
        return lms_error_set(err, LMS_EINVAL,
                             "cross-entropy: target %ld at row %lld is outside [0, %lld)", value,
                             idx, (long long)cx->chk_c);
    }
}

/* ---- context ---- */

static void cuda_close(struct lms_backend *be)
{
    struct cuda_ctx *cx = be->impl;
    if (!cx)
        return;
    cudaSetDevice(cx->dev);
    if (cx->stream)
        cudaStreamSynchronize(cx->stream);
    for (int i = 0; i < 2; i++) {
        if (cx->stage_ev[i])
            cudaEventDestroy(cx->stage_ev[i]);
        if (cx->stage[i])
            cudaFreeHost(cx->stage[i]);
    }
    if (cx->aw_ev)
        cudaEventDestroy(cx->aw_ev);
    if (cx->aw_host)
        cudaFreeHost(cx->aw_host);
    if (cx->aw_dev)
        cudaFree(cx->aw_dev);
    if (cx->red)
        cudaFree(cx->red);
    if (cx->errw_h)
        cudaFreeHost(cx->errw_h);
    if (cx->errw)
        cudaFree(cx->errw);
    if (cx->pack)
        cudaFree(cx->pack);
    if (cx->lt_ws)
        cudaFree(cx->lt_ws);
    if (cx->lt)
        cublasLtDestroy(cx->lt);
    if (cx->stream)
        cudaStreamDestroy(cx->stream);
    (void)cudaGetLastError();
    lms_free(cx);
    be->impl = NULL;
}

static enum lms_status open_ctx(struct lms_backend *be, struct cuda_ctx *cx,
                                struct lms_error *err)
{
    struct cudaDeviceProp prop;
    CK(cudaSetDevice(cx->dev), "selecting the device");
    CK(cudaGetDeviceProperties(&prop, cx->dev), "reading the device properties");
    memcpy(cx->dev_name, prop.name, sizeof cx->dev_name);
    cx->dev_name[sizeof cx->dev_name - 1] = '\0';
    cx->cc_major = prop.major;
    cx->cc_minor = prop.minor;
    cx->max_smem = prop.sharedMemPerBlockOptin;
    if (prop.major < 9)
        return lms_error_set(err, LMS_EDEVICE,
                             "device '%s' (%s) has compute capability %d.%d; this build's "
                             "kernels target 9.0 (sm_90)",
                             be->name, cx->dev_name, prop.major, prop.minor);
    CK(cudaStreamCreateWithFlags(&cx->stream, cudaStreamNonBlocking), "creating a stream");
    cublasStatus_t s = cublasLtCreate(&cx->lt);
    if (s != CUBLAS_STATUS_SUCCESS)
        return lt_fail(be, err, s, "cublasLtCreate");
    CK(cudaMalloc(&cx->lt_ws, LT_WORKSPACE), "allocating the cuBLASLt workspace");
    CK(cudaMalloc((void **)&cx->errw, LMS_CUDA_ERRW * sizeof *cx->errw),
       "allocating the error words");
    CK(cudaMemsetAsync(cx->errw, 0xff, LMS_CUDA_ERRW * sizeof *cx->errw, cx->stream),
       "clearing the error words");
    CK(cudaMallocHost((void **)&cx->errw_h, LMS_CUDA_ERRW * sizeof *cx->errw_h),
       "allocating pinned memory");
    for (int i = 0; i < 2; i++) {
        CK(cudaMallocHost(&cx->stage[i], STAGE_BYTES), "allocating pinned staging memory");
        CK(cudaEventCreateWithFlags(&cx->stage_ev[i], cudaEventDisableTiming),
           "creating an event");
    }
    CK(lms_cuda_attention_setup(cx->max_smem), "raising the attention kernels' shared memory");
    return LMS_OK;
}

static enum lms_status cuda_open(struct lms_backend *be, const struct lms_backend_opts *opts,
                                 struct lms_error *err)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return lms_error_set(err, LMS_EDEVICE, "device '%s': no usable CUDA device (%s)",
                             be->name, cudaGetErrorString(e));
    }
    if (n <= 0)
        return lms_error_set(err, LMS_EDEVICE, "device '%s': no CUDA device present", be->name);
    if (be->dev.index >= n)
        return lms_error_set(err, LMS_EDEVICE, "device '%s': only %d CUDA device%s present",
                             be->name, n, n == 1 ? "" : "s");
    struct cuda_ctx *cx = lms_calloc(1, sizeof *cx);
    if (!cx)
        return lms_error_set(err, LMS_ENOMEM, "opening device '%s': out of memory", be->name);
    cx->dev = be->dev.index;
    cx->exact = opts->precision == LMS_PRECISION_FP32;
    be->impl = cx;
    be->n_threads = 1;
    enum lms_status rc = open_ctx(be, cx, err);
    if (rc) {
        cuda_close(be);
        return rc;
    }
    return LMS_OK;
}

/* ---- memory and transfers ---- */

static enum lms_status cuda_alloc(struct lms_backend *be, size_t size, struct lms_buf *out,
                                  struct lms_error *err)
{
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, size ? size : 1); /* 256-byte aligned */
    if (e != cudaSuccess) {
        size_t free_b = 0, total_b = 0;
        (void)cudaGetLastError();
        cudaMemGetInfo(&free_b, &total_b);
        (void)cudaGetLastError();
        return lms_error_set(err, e == cudaErrorMemoryAllocation ? LMS_ENOMEM : LMS_EDEVICE,
                             "%s: allocating %zu bytes of device memory: %s (%zu of %zu bytes "
                             "free)",
                             be->name, size, cudaGetErrorString(e), free_b, total_b);
    }
    out->ptr = p;
    out->size = size;
    return LMS_OK;
}

static void cuda_free(struct lms_backend *be, struct lms_buf *buf)
{
    struct cuda_ctx *cx = be->impl;
    cudaSetDevice(cx->dev);
    cudaFree(buf->ptr); /* synchronises the device: queued ops using it finish first */
    (void)cudaGetLastError();
}

static enum lms_status cuda_upload(struct lms_backend *be, void *dst, const void *src, size_t n,
                                   struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    for (size_t done = 0; done < n;) {
        size_t k = n - done < STAGE_BYTES ? n - done : STAGE_BYTES;
        int i = cx->stage_next;
        cx->stage_next ^= 1;
        if (cx->stage_used[i])
            CK(cudaEventSynchronize(cx->stage_ev[i]), "upload: waiting for a staging buffer");
        memcpy(cx->stage[i], (const char *)src + done, k);
        CK(cudaMemcpyAsync((char *)dst + done, cx->stage[i], k, cudaMemcpyHostToDevice,
                           cx->stream),
           "upload");
        CK(cudaEventRecord(cx->stage_ev[i], cx->stream), "upload: recording an event");
        cx->stage_used[i] = true;
        done += k;
    }
    return LMS_OK;
}

static enum lms_status cuda_download(struct lms_backend *be, void *dst, const void *src,
                                     size_t n, struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    for (size_t done = 0; done < n;) {
        size_t k = n - done < STAGE_BYTES ? n - done : STAGE_BYTES;
        int i = cx->stage_next;
        cx->stage_next ^= 1;
        CK(cudaMemcpyAsync(cx->stage[i], (const char *)src + done, k, cudaMemcpyDeviceToHost,
                           cx->stream),
           "download");
        CK(cudaEventRecord(cx->stage_ev[i], cx->stream), "download: recording an event");
        cx->stage_used[i] = true;
        CK(cudaEventSynchronize(cx->stage_ev[i]), "download");
        memcpy((char *)dst + done, cx->stage[i], k);
        done += k;
    }
    return check_deferred(be, err);
}

static enum lms_status cuda_sync(struct lms_backend *be, struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    CK(cudaStreamSynchronize(cx->stream), "synchronising (an earlier op failed on the device)");
    return check_deferred(be, err);
}

static enum lms_dtype cuda_weight_dtype(const struct lms_backend *be, enum lms_dtype ckpt)
{
    const struct cuda_ctx *cx = be->impl;
    if (!cx->exact && (ckpt == LMS_DTYPE_BF16 || ckpt == LMS_DTYPE_F16))
        return ckpt;
    return LMS_DTYPE_F32;
}

/* Activations are stored in fp32 between ops for now (the bf16 kernels of the typed slots are
 * not written yet; the CPU's typed ops are their reference). */
static enum lms_dtype cuda_activation_dtype(const struct lms_backend *be)
{
    return LMS_DTYPE_F32;
}

static enum lms_status cuda_mem_info(struct lms_backend *be, uint64_t *free_bytes,
                                     uint64_t *total_bytes, struct lms_error *err)
{
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    size_t free_b = 0, total_b = 0;
    CK(cudaMemGetInfo(&free_b, &total_b), "reading the free device memory");
    *free_bytes = free_b;
    *total_bytes = total_b;
    return LMS_OK;
}

/* ---- matmul ---- */

static enum lms_status grow_pack(struct lms_backend *be, size_t bytes, struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    if (bytes <= cx->pack_cap)
        return LMS_OK;
    /* grows to the largest operand seen, once per shape: the first forward step allocates it,
     * later steps reuse it */
    if (cx->pack) {
        CK(cudaStreamSynchronize(cx->stream), "synchronising before growing the operand scratch");
        cudaFree(cx->pack);
        cx->pack = NULL;
        cx->pack_cap = 0;
    }
    CK(cudaMalloc(&cx->pack, bytes), "allocating the operand scratch");
    cx->pack_cap = bytes;
    return LMS_OK;
}

struct lt_call {
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulPreference_t pref;
};

static void lt_call_release(struct lt_call *c)
{
    if (c->pref)
        cublasLtMatmulPreferenceDestroy(c->pref);
    if (c->lc)
        cublasLtMatrixLayoutDestroy(c->lc);
    if (c->lb)
        cublasLtMatrixLayoutDestroy(c->lb);
    if (c->la)
        cublasLtMatrixLayoutDestroy(c->la);
    if (c->desc)
        cublasLtMatmulDescDestroy(c->desc);
}

static cublasStatus_t make_layout(cublasLtMatrixLayout_t *l, cudaDataType_t t,
                                  const struct lms_cuda_gemm_operand *o, int64_t batch)
{
    cublasStatus_t s = cublasLtMatrixLayoutCreate(l, t, (uint64_t)o->rows, (uint64_t)o->cols,
                                                  o->ld);
    if (s == CUBLAS_STATUS_SUCCESS && batch > 1) {
        int32_t bc = (int32_t)batch;
        int64_t stride = o->batch_stride;
        s = cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc,
                                             sizeof bc);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                                                 &stride, sizeof stride);
    }
    return s;
}

static uint32_t operand_align(const void *p, int64_t ld, int64_t stride, int64_t batch,
                              size_t es)
{
    unsigned a = lms__cuda_align_of(p, ld, es);
    if (batch > 1) {
        unsigned b = lms__cuda_align_of(p, stride, es);
        a = b < a ? b : a;
    }
    return a;
}

/* Runs the mapped GEMM through cuBLASLt; *no_algo set (and LMS_OK returned) when the heuristic
 * offers nothing for these alignments, so that the caller falls back. */
static enum lms_status lt_matmul(struct lms_backend *be, const struct lms_matmul *mm,
                                 const void *a_op, int64_t lda, int64_t stride_a,
                                 const void *b_op, int64_t ldb, int64_t stride_b,
                                 cudaDataType_t ab_type, size_t ab_size, bool *no_algo,
                                 struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    struct lms_cuda_gemm_map map;
    struct lt_call c = {0};
    cublasStatus_t s;
    const char *what = "cublasLtMatmulDescCreate";
    *no_algo = false;
    lms__cuda_gemm_map(mm->trans_a, mm->trans_b, mm->m, mm->n, mm->k, lda, stride_a, ldb,
                       stride_b, mm->ldc, mm->stride_c, &map);
    s = cublasLtMatmulDescCreate(&c.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (s == CUBLAS_STATUS_SUCCESS) {
        cublasOperation_t ta = map.a.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
        cublasOperation_t tb = map.b.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
        what = "setting the transposes";
        s = cublasLtMatmulDescSetAttribute(c.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasLtMatmulDescSetAttribute(c.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb,
                                               sizeof tb);
    }
    if (s == CUBLAS_STATUS_SUCCESS) {
        what = "creating the matrix layouts";
        s = make_layout(&c.la, ab_type, &map.a, mm->batch);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = make_layout(&c.lb, ab_type, &map.b, mm->batch);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = make_layout(&c.lc, CUDA_R_32F, &map.c, mm->batch);
    }
    if (s == CUBLAS_STATUS_SUCCESS) {
        uint64_t ws = LT_WORKSPACE;
        uint32_t al_a = operand_align(b_op, ldb, stride_b, mm->batch, ab_size);
        uint32_t al_b = operand_align(a_op, lda, stride_a, mm->batch, ab_size);
        uint32_t al_c = operand_align(mm->c, mm->ldc, mm->stride_c, mm->batch, 4);
        what = "setting the preferences";
        s = cublasLtMatmulPreferenceCreate(&c.pref);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasLtMatmulPreferenceSetAttribute(
                c.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasLtMatmulPreferenceSetAttribute(
                c.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasLtMatmulPreferenceSetAttribute(
                c.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasLtMatmulPreferenceSetAttribute(
                c.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof al_c);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasLtMatmulPreferenceSetAttribute(
                c.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof al_c);
    }
    enum lms_status rc = LMS_OK;
    if (s != CUBLAS_STATUS_SUCCESS) {
        rc = lt_fail(be, err, s, what);
        goto out;
    }
    cublasLtMatmulHeuristicResult_t res;
    int n_res = 0;
    s = cublasLtMatmulAlgoGetHeuristic(cx->lt, c.desc, c.la, c.lb, c.lc, c.lc, c.pref, 1, &res,
                                       &n_res);
    if (s != CUBLAS_STATUS_SUCCESS || n_res < 1) {
        *no_algo = true;
        goto out;
    }
    s = cublasLtMatmul(cx->lt, c.desc, &mm->alpha, b_op, c.la, a_op, c.lb, &mm->beta, mm->c,
                       c.lc, mm->c, c.lc, &res.algo, cx->lt_ws, LT_WORKSPACE, cx->stream);
    if (s == CUBLAS_STATUS_NOT_SUPPORTED)
        *no_algo = true;
    else if (s != CUBLAS_STATUS_SUCCESS)
        rc = lt_fail(be, err, s, "cublasLtMatmul");
out:
    lt_call_release(&c);
    return rc;
}

static enum lms_status cuda_matmul(struct lms_backend *be, const struct lms_matmul *mm,
                                   struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    enum lms_cuda_dt bdt;
    if (!to_cuda_dt(mm->b_dtype, &bdt))
        return lms_error_set(err, LMS_EUNSUPPORTED, "%s: matmul: B dtype %s", be->name,
                             lms_dtype_name(mm->b_dtype));
    if (mm->m < 0 || mm->n < 0 || mm->k < 0 || mm->batch < 1 || mm->batch > INT32_MAX ||
        mm->lda < 0 || mm->ldb < 0 || mm->ldc < 0)
        return lms_error_set(err, LMS_EINVAL,
                             "%s: matmul: dimensions m=%lld n=%lld k=%lld batch=%lld out of "
                             "range",
                             be->name, (long long)mm->m, (long long)mm->n, (long long)mm->k,
                             (long long)mm->batch);
    if (mm->m == 0 || mm->n == 0)
        return LMS_OK;
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    bool no_algo = true;
    if (mm->k > 0) {
        /* fp32 x fp32 runs in fp32 in exact mode; otherwise both operands are rounded to bf16
         * (the training GEMMs of weight gradients, whose operands are both activations), so
         * every GEMM outside the exact mode runs on tensor cores */
        enum lms_cuda_dt pdt = bdt;
        if (bdt == LMS_CUDA_F32 && !cx->exact)
            pdt = LMS_CUDA_BF16;
        if (pdt == LMS_CUDA_F32) {
            rc = lt_matmul(be, mm, mm->a, mm->lda, mm->stride_a, mm->b, mm->ldb, mm->stride_b,
                           CUDA_R_32F, 4, &no_algo, err);
        } else {
            /* the fp32 operands rounded to pdt, packed (row stride = their stored column
             * count): A first, then B when it is fp32, at a 256-byte boundary */
            int64_t rows = mm->trans_a ? mm->k : mm->m, cols = mm->trans_a ? mm->m : mm->k;
            int64_t b_rows = mm->trans_b ? mm->n : mm->k, b_cols = mm->trans_b ? mm->k : mm->n;
            int64_t per, total, b_per = 0, b_total = 0;
            size_t bytes, b_bytes = 0, b_at;
            if (__builtin_mul_overflow(rows, cols, &per) ||
                __builtin_mul_overflow(per, mm->batch, &total) ||
                __builtin_mul_overflow((size_t)total, (size_t)2, &bytes) ||
                (pdt != bdt && (__builtin_mul_overflow(b_rows, b_cols, &b_per) ||
                                __builtin_mul_overflow(b_per, mm->batch, &b_total) ||
                                __builtin_mul_overflow((size_t)b_total, (size_t)2, &b_bytes))) ||
                bytes > SIZE_MAX - 512 - b_bytes)
                return lms_error_set(err, LMS_EINVAL, "%s: matmul: operand size overflows",
                                     be->name);
            b_at = (bytes + 255) & ~(size_t)255;
            rc = grow_pack(be, b_at + b_bytes, err);
            if (rc)
                return rc;
            CK(lms_cuda_pack(cx->stream, cx->pack, pdt, mm->a, mm->lda, mm->stride_a, mm->batch,
                             rows, cols),
               "matmul: packing the activation operand");
            const void *b_op = mm->b;
            int64_t ldb = mm->ldb, stride_b = mm->stride_b;
            if (pdt != bdt) {
                b_op = (char *)cx->pack + b_at;
                CK(lms_cuda_pack(cx->stream, (char *)cx->pack + b_at, pdt, (const float *)mm->b,
                                 mm->ldb, mm->stride_b, mm->batch, b_rows, b_cols),
                   "matmul: packing the second fp32 operand");
                ldb = b_cols;
                stride_b = b_per;
            }
            rc = lt_matmul(be, mm, cx->pack, cols, per, b_op, ldb, stride_b,
                           pdt == LMS_CUDA_F16 ? CUDA_R_16F : CUDA_R_16BF, 2, &no_algo, err);
        }
        if (rc)
            return rc;
    }
    if (no_algo)
        CK(lms_cuda_gemm_ref(cx->stream, mm->trans_a, mm->trans_b, mm->m, mm->n, mm->k, mm->a,
                             mm->lda, mm->stride_a, mm->b, bdt, mm->ldb, mm->stride_b, mm->c,
                             mm->ldc, mm->stride_c, mm->batch, mm->alpha, mm->beta),
           "matmul (fallback kernel)");
    if (mm->bias)
        CK(lms_cuda_add_bias(cx->stream, mm->c, mm->ldc, mm->stride_c, mm->batch, mm->m, mm->n,
                             mm->bias),
           "matmul: adding the bias");
    return LMS_OK;
}

/* ---- other ops ---- */

static enum lms_status cuda_embedding(struct lms_backend *be, float *out, const int32_t *ids,
                                      int64_t n, const void *table, enum lms_dtype table_dtype,
                                      int64_t vocab, int64_t hidden, struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    enum lms_cuda_dt dt;
    if (!to_cuda_dt(table_dtype, &dt))
        return lms_error_set(err, LMS_EUNSUPPORTED, "%s: embedding: table dtype %s", be->name,
                             lms_dtype_name(table_dtype));
    if (n > INT32_MAX)
        return lms_error_set(err, LMS_EINVAL, "%s: embedding: %lld ids", be->name,
                             (long long)n);
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    cx->chk_vocab = vocab;
    CK(lms_cuda_embedding(cx->stream, out, ids, n, table, dt, vocab, hidden, cx->errw),
       "embedding");
    return LMS_OK;
}

static enum lms_status cuda_rmsnorm(struct lms_backend *be, float *out, int64_t out_stride,
                                    const float *x, int64_t x_stride, const float *w,
                                    float *rstd, int64_t n_rows, int64_t n_heads, int64_t c,
                                    float eps, struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    CK(lms_cuda_rmsnorm(cx->stream, out, out_stride, x, x_stride, w, rstd, n_rows, n_heads, c,
                        eps),
       "rmsnorm");
    return LMS_OK;
}

static enum lms_status cuda_rope(struct lms_backend *be, float *x, int64_t x_stride,
                                 int64_t n_rows, int64_t n_heads, int64_t head_dim,
                                 const int32_t *pos, const float *cos, const float *sin,
                                 int64_t n_pos, struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    if (head_dim % 2)
        return lms_error_set(err, LMS_EINVAL, "rope: head dim %lld is odd", (long long)head_dim);
    if (n_rows > INT32_MAX)
        return lms_error_set(err, LMS_EINVAL, "%s: rope: %lld rows", be->name,
                             (long long)n_rows);
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    cx->chk_npos = n_pos;
    CK(lms_cuda_rope(cx->stream, x, x_stride, n_rows, n_heads, head_dim, pos, cos, sin, n_pos,
                     cx->errw),
       "rope");
    return LMS_OK;
}

static enum lms_status cuda_attention(struct lms_backend *be, const struct lms_attention *at,
                                      struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    if (at->n_groups <= 0 || at->n_heads <= 0 || at->n_heads % at->n_groups ||
        at->head_dim <= 0 || at->batch < 0 || at->seq < 0 || at->window < 0)
        return lms_error_set(err, LMS_EINVAL,
                             "attention: bad shape (heads %lld, groups %lld, head dim %lld)",
                             (long long)at->n_heads, (long long)at->n_groups,
                             (long long)at->head_dim);
    if (at->batch == 0 || at->seq == 0)
        return LMS_OK;
    enum lms_cuda_attn_kind kind;
    struct lms_cuda_launch l;
    const char *why = "";
    if (!lms__cuda_attn_plan(at->batch, at->seq, at->n_heads, at->head_dim, !cx->exact,
                             cx->max_smem, &kind, &l, &why))
        return lms_error_set(err, LMS_EUNSUPPORTED,
                             "%s: attention: batch %lld, %lld heads, head dim %lld: %s",
                             be->name, (long long)at->batch, (long long)at->n_heads,
                             (long long)at->head_dim, why);
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    void *scratch = NULL;
    if (kind == LMS_CUDA_ATTN_TC) {
        /* the bf16 copies of q, k, v share the GEMMs' operand scratch: every op runs on one
         * stream, so no two users of it overlap */
        rc = grow_pack(be, lms__cuda_attn_scratch_bytes(at->batch, at->seq, at->n_heads,
                                                        at->n_groups, at->head_dim),
                       err);
        if (rc)
            return rc;
        scratch = cx->pack;
    }
    CK(lms_cuda_attention(cx->stream, kind, &l, at->batch, at->seq, at->n_heads, at->n_groups,
                          at->head_dim, at->q, at->k, at->v, at->q_stride, at->kv_stride,
                          at->out, at->out_stride, at->scale, at->window, at->lse, scratch),
       kind == LMS_CUDA_ATTN_TC ? "attention (tensor-core kernel)" : "attention (fp32 kernel)");
    return LMS_OK;
}

static enum lms_status cuda_swiglu(struct lms_backend *be, float *out, int64_t out_stride,
                                   const float *gate, const float *up, int64_t in_stride,
                                   int64_t n_rows, int64_t f, struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    CK(lms_cuda_swiglu(cx->stream, out, out_stride, gate, up, in_stride, n_rows, f), "swiglu");
    return LMS_OK;
}

static enum lms_status cuda_add(struct lms_backend *be, float *y, const float *x, int64_t n,
                                struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    CK(lms_cuda_add(cx->stream, y, x, n), "add");
    return LMS_OK;
}

static enum lms_status cuda_log_softmax(struct lms_backend *be, float *out, const float *x,
                                        int64_t ld, int64_t n_rows, int64_t c,
                                        struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    CK(lms_cuda_log_softmax(cx->stream, out, x, ld, n_rows, c), "log-softmax");
    return LMS_OK;
}

static enum lms_status cuda_cross_entropy(struct lms_backend *be, float *loss,
                                          const float *logits, int64_t ld,
                                          const int32_t *target, int64_t n_rows, int64_t c,
                                          struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    if (n_rows > INT32_MAX)
        return lms_error_set(err, LMS_EINVAL, "%s: cross-entropy: %lld rows", be->name,
                             (long long)n_rows);
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    cx->chk_c = c;
    CK(lms_cuda_cross_entropy(cx->stream, loss, logits, ld, target, n_rows, c, cx->errw),
       "cross-entropy");
    return LMS_OK;
}

static enum lms_status cuda_cast(struct lms_backend *be, void *dst, enum lms_dtype dt,
                                 const void *src, enum lms_dtype st, int64_t n,
                                 struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    enum lms_cuda_dt d, s;
    if (!to_cuda_dt(dt, &d) || !to_cuda_dt(st, &s))
        return lms_error_set(err, LMS_EUNSUPPORTED, "cast from %s to %s", lms_dtype_name(st),
                             lms_dtype_name(dt));
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    CK(lms_cuda_cast(cx->stream, dst, d, src, s, n), "cast");
    return LMS_OK;
}

static enum lms_status cuda_abs_mean(struct lms_backend *be, float *out, const float *x,
                                     int64_t ld, int64_t batch, int64_t seq, int64_t c,
                                     struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    if (batch < 0 || seq < 0 || c < 0 || ld < c || batch * ((c + 31) / 32) > INT32_MAX)
        return lms_error_set(err, LMS_EINVAL, "%s: abs_mean: shape %lld x %lld x %lld (ld %lld)",
                             be->name, (long long)batch, (long long)seq, (long long)c,
                             (long long)ld);
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    CK(lms_cuda_abs_mean(cx->stream, out, x, ld, batch, seq, c), "abs_mean");
    return LMS_OK;
}

static enum lms_status cuda_row_cosine(struct lms_backend *be, float *out, const float *a,
                                       int64_t lda, const float *b, int64_t ldb, int64_t n_rows,
                                       int64_t c, struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    if (n_rows < 0 || c < 0 || lda < c || ldb < c)
        return lms_error_set(err, LMS_EINVAL, "%s: row_cosine: shape %lld x %lld", be->name,
                             (long long)n_rows, (long long)c);
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    CK(lms_cuda_row_cosine(cx->stream, out, a, lda, b, ldb, n_rows, c), "row_cosine");
    return LMS_OK;
}

/* bf16 tensor cores outside the exact precision for d = 64/128 (like the forward), fp32 kernels
 * otherwise; see attention_backward.cu. */
static enum lms_status cuda_attention_backward(struct lms_backend *be,
                                               const struct lms_attention_backward *ab,
                                               struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    const struct lms_attention *at = &ab->fwd;
    const int64_t d = at->head_dim, hw = at->n_heads * d, gw = at->n_groups * d;
    if (at->n_groups <= 0 || at->n_heads <= 0 || at->n_heads % at->n_groups || d <= 0 ||
        at->batch < 0 || at->seq < 0 || at->window < 0 || !at->lse || at->q_stride < hw ||
        at->kv_stride < gw || at->out_stride < hw || ab->dout_stride < hw ||
        ab->dq_stride < hw || ab->dkv_stride < gw)
        return lms_error_set(err, LMS_EINVAL,
                             "%s: attention backward: bad shape (heads %lld, groups %lld, head "
                             "dim %lld), row strides narrower than the heads, or no saved "
                             "log-sum-exp",
                             be->name, (long long)at->n_heads, (long long)at->n_groups,
                             (long long)d);
    if (at->batch == 0 || at->seq == 0)
        return LMS_OK;
    struct lms_cuda_launch l_dkv, l_dq;
    enum lms_cuda_attn_kind kind;
    const char *why = "";
    if (!lms__cuda_attn_bwd_plan(at->batch, at->seq, at->n_heads, at->n_groups, d, !cx->exact,
                                 cx->max_smem, &kind, &l_dkv, &l_dq, &why))
        return lms_error_set(err, LMS_EUNSUPPORTED,
                             "%s: attention backward: batch %lld, %lld heads, head dim %lld: %s",
                             be->name, (long long)at->batch, (long long)at->n_heads,
                             (long long)d, why);
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    void *scratch = NULL;
    if (kind == LMS_CUDA_ATTN_TC) {
        /* the bf16 operands and lse / D share the operand scratch, as the forward's (one
         * stream) */
        rc = grow_pack(be, lms__cuda_attn_bwd_scratch_bytes(at->batch, at->seq, at->n_heads,
                                                            at->n_groups, d),
                       err);
        if (rc)
            return rc;
        scratch = cx->pack;
    }
    CK(lms_cuda_attention_backward(cx->stream, kind, &l_dkv, &l_dq, at->batch, at->seq,
                                   at->n_heads, at->n_groups, d, at->q, at->k, at->v, at->q_stride,
                                   at->kv_stride, at->out, at->out_stride, at->lse, ab->dout,
                                   ab->dout_stride, ab->dq, ab->dq_stride, ab->dk, ab->dv,
                                   ab->dkv_stride, at->scale, at->window, scratch),
       kind == LMS_CUDA_ATTN_TC ? "attention backward (tensor-core kernels)"
                                : "attention backward (fp32 kernels)");
    return LMS_OK;
}

/* Validated here like the CPU's (shapes, K >= 1 for top-K); targets past the vocabulary are found
 * by the kernel and reported at the next sync as cross-entropy reports them. */
static enum lms_status cuda_logit_loss(struct lms_backend *be, const struct lms_logit_loss *ll,
                                       struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    if (ll->n_rows < 0 || ll->n_rows > INT32_MAX || ll->vocab < 1 || ll->ld < ll->vocab ||
        !ll->student)
        return lms_error_set(err, LMS_EINVAL, "%s: logit loss: shape %lld x %lld (ld %lld)",
                             be->name, (long long)ll->n_rows, (long long)ll->vocab,
                             (long long)ll->ld);
    bool topk = ll->teacher && ll->kd_kind == LMS_KD_TOP_K;
    if (topk && ll->top_k < 1)
        return lms_error_set(err, LMS_EINVAL, "logit loss: top-K with K = %lld",
                             (long long)ll->top_k);
    if (ll->n_rows == 0)
        return LMS_OK;
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    uintptr_t align = (uintptr_t)ll->student | (uintptr_t)ll->teacher | (uintptr_t)ll->grad;
    struct lms_cuda_logit_loss_args a = {
        .n_rows = ll->n_rows,
        .vocab = ll->vocab,
        .ld = ll->ld,
        .top_k = topk ? ll->top_k : 0,
        .student = ll->student,
        .teacher = ll->teacher,
        .target = ll->target,
        .kd_valid = ll->kd_valid,
        .kd_loss = ll->kd_loss,
        .ce_loss = ll->ce_loss,
        .grad = ll->grad,
        .kd_kind = ll->kd_kind,
        .vec = ll->ld % 4 == 0 && align % 16 == 0,
        .inv_t = 1.0 / (ll->temperature > 0 ? ll->temperature : 1.0f),
        .kd_mul = ll->kd_mul,
        .kd_grad_scale = ll->kd_grad_scale,
        .ce_grad_scale = ll->ce_grad_scale,
    };
    cx->chk_c = ll->vocab;
    CK(lms_cuda_logit_loss(cx->stream, &a, cx->errw), "logit loss");
    return LMS_OK;
}

/* ---- training slots ----
 * Reductions go through cx->red, a double scratch buffer grown on demand to the largest shape
 * seen (the first training step sizes it). The RMSNorm dw and bias column sums are written as
 * per-chunk partials by one kernel and added in chunk order by a second small one, instead of
 * atomicAdd of partials: results are then reproducible run to run, so a resumed run retraces an
 * interrupted one, as on the CPU. Only embedding_backward sums with atomics (repeated token ids
 * land in the same row in an unspecified order: deterministic up to fp32 rounding only). */

static enum lms_status grow_red(struct lms_backend *be, size_t bytes, struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    if (bytes <= cx->red_cap)
        return LMS_OK;
    if (cx->red) {
        CK(cudaStreamSynchronize(cx->stream), "synchronising before growing reduction scratch");
        cudaFree(cx->red);
        cx->red = NULL;
        cx->red_cap = 0;
    }
    CK(cudaMalloc((void **)&cx->red, bytes), "allocating reduction scratch");
    cx->red_cap = bytes;
    return LMS_OK;
}

/* Scratch for the column sums of a (rows, c) operand. */
static enum lms_status colsum_scratch(struct lms_backend *be, int64_t rows, int64_t c,
                                      const char *what, struct lms_error *err)
{
    int64_t chunks, rpc, n;
    lms_cuda_colsum_plan(rows, c, &chunks, &rpc);
    if (__builtin_mul_overflow(chunks, c, &n) || n > INT64_MAX / 8)
        return lms_error_set(err, LMS_EINVAL, "%s: %s: %lld channels out of range", be->name,
                             what, (long long)c);
    return grow_red(be, (size_t)n * sizeof(double), err);
}

static enum lms_status cuda_embedding_backward(struct lms_backend *be, float *dtable,
                                               const float *dout, const int32_t *ids, int64_t n,
                                               int64_t vocab, int64_t hidden,
                                               struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    if (n < 0 || n > INT32_MAX || vocab < 0 || hidden < 0)
        return lms_error_set(err, LMS_EINVAL,
                             "%s: embedding backward: %lld ids, vocabulary %lld, hidden %lld",
                             be->name, (long long)n, (long long)vocab, (long long)hidden);
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    cx->chk_vocab = vocab;
    CK(lms_cuda_embedding_backward(cx->stream, dtable, dout, ids, n, vocab, hidden, cx->errw),
       "embedding backward");
    return LMS_OK;
}

static enum lms_status cuda_rmsnorm_backward(struct lms_backend *be, float *dx,
                                             int64_t dx_stride, bool dx_add, float *dw,
                                             const float *dy, int64_t dy_stride, const float *x,
                                             int64_t x_stride, const float *w, const float *rstd,
                                             int64_t n_rows, int64_t n_heads, int64_t c,
                                             struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    int64_t total;
    if (n_rows < 0 || n_heads < 1 || c < 0 || __builtin_mul_overflow(n_rows, n_heads, &total))
        return lms_error_set(err, LMS_EINVAL,
                             "%s: rmsnorm backward: %lld rows x %lld heads x %lld channels",
                             be->name, (long long)n_rows, (long long)n_heads, (long long)c);
    if (total == 0 || c == 0)
        return LMS_OK;
    enum lms_status rc = use(be, err);
    if (!rc)
        rc = colsum_scratch(be, total, c, "rmsnorm backward", err);
    if (rc)
        return rc;
    CK(lms_cuda_rmsnorm_backward(cx->stream, dx, dx_stride, dx_add, dw, dy, dy_stride, x,
                                 x_stride, w, rstd, n_rows, n_heads, c, cx->red),
       "rmsnorm backward");
    return LMS_OK;
}

static enum lms_status cuda_rope_backward(struct lms_backend *be, float *dx, int64_t dx_stride,
                                          int64_t n_rows, int64_t n_heads, int64_t head_dim,
                                          const int32_t *pos, const float *cos, const float *sin,
                                          int64_t n_pos, struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    if (head_dim % 2)
        return lms_error_set(err, LMS_EINVAL, "rope backward: head dim %lld is odd",
                             (long long)head_dim);
    if (n_rows < 0 || n_rows > INT32_MAX || n_heads < 0 || head_dim < 0)
        return lms_error_set(err, LMS_EINVAL, "%s: rope backward: %lld rows, %lld heads",
                             be->name, (long long)n_rows, (long long)n_heads);
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    cx->chk_npos = n_pos;
    CK(lms_cuda_rope_backward(cx->stream, dx, dx_stride, n_rows, n_heads, head_dim, pos, cos,
                              sin, n_pos, cx->errw),
       "rope backward");
    return LMS_OK;
}

static enum lms_status cuda_swiglu_backward(struct lms_backend *be, float *dgate, float *dup,
                                            int64_t d_stride, const float *dout,
                                            int64_t dout_stride, const float *gate,
                                            const float *up, int64_t in_stride, int64_t n_rows,
                                            int64_t f, struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    if (n_rows < 0 || f < 0)
        return lms_error_set(err, LMS_EINVAL, "%s: swiglu backward: %lld rows x %lld", be->name,
                             (long long)n_rows, (long long)f);
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    CK(lms_cuda_swiglu_backward(cx->stream, dgate, dup, d_stride, dout, dout_stride, gate, up,
                                in_stride, n_rows, f),
       "swiglu backward");
    return LMS_OK;
}

static enum lms_status cuda_bias_backward(struct lms_backend *be, float *dbias, const float *dy,
                                          int64_t ld, int64_t n_rows, int64_t n,
                                          struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    if (n_rows < 0 || n < 0)
        return lms_error_set(err, LMS_EINVAL, "%s: bias backward: %lld rows x %lld", be->name,
                             (long long)n_rows, (long long)n);
    if (n_rows == 0 || n == 0)
        return LMS_OK;
    enum lms_status rc = use(be, err);
    if (!rc)
        rc = colsum_scratch(be, n_rows, n, "bias backward", err);
    if (rc)
        return rc;
    CK(lms_cuda_bias_backward(cx->stream, dbias, dy, ld, n_rows, n, cx->red), "bias backward");
    return LMS_OK;
}

static enum lms_status cuda_hidden_loss(struct lms_backend *be, float *loss, float *ds,
                                        const float *s, const float *t, int64_t ld,
                                        int64_t n_rows, int64_t c, int kind, float grad_scale,
                                        struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    if (kind != LMS_CUDA_HIDDEN_COSINE && kind != LMS_CUDA_HIDDEN_MSE)
        return lms_error_set(err, LMS_EINVAL, "hidden loss: kind %d", kind);
    if (n_rows < 0 || c < 0 || ld < c)
        return lms_error_set(err, LMS_EINVAL, "%s: hidden loss: shape %lld x %lld (ld %lld)",
                             be->name, (long long)n_rows, (long long)c, (long long)ld);
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    CK(lms_cuda_hidden_loss(cx->stream, loss, ds, s, t, ld, n_rows, c, kind, grad_scale),
       "hidden loss");
    return LMS_OK;
}

static enum lms_status cuda_sum_squares(struct lms_backend *be, float *out, const float *x,
                                        int64_t n, struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    if (n < 0)
        return lms_error_set(err, LMS_EINVAL, "%s: sum of squares: %lld elements", be->name,
                             (long long)n);
    if (n == 0)
        return LMS_OK;
    enum lms_status rc = use(be, err);
    if (!rc)
        rc = grow_red(be, LMS_CUDA_SUMSQ_PARTS * sizeof(double), err);
    if (rc)
        return rc;
    CK(lms_cuda_sum_squares(cx->stream, out, x, n, cx->red), "sum of squares");
    return LMS_OK;
}

static enum lms_status cuda_scale(struct lms_backend *be, float *x, float s, int64_t n,
                                  struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    if (n < 0)
        return lms_error_set(err, LMS_EINVAL, "%s: scale: %lld elements", be->name,
                             (long long)n);
    if (n == 0)
        return LMS_OK;
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    if (s == 0.0f) /* a memset, not x * 0: NaN and Inf become 0 as on the CPU */
        CK(cudaMemsetAsync(x, 0, (size_t)n * sizeof(float), cx->stream), "scale");
    else
        CK(lms_cuda_scale(cx->stream, x, s, n), "scale");
    return LMS_OK;
}

/* Room for n descriptors in both the pinned and the device list. Called after the previous copy
 * out of aw_host completed; the device list is replaced only after the stream drained (the last
 * AdamW kernel may still read it). */
static enum lms_status grow_adamw_list(struct lms_backend *be, int64_t n, struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    if (n <= cx->aw_cap)
        return LMS_OK;
    int64_t cap = cx->aw_cap * 2 > n ? cx->aw_cap * 2 : n;
    cap = cap < 64 ? 64 : cap;
    CK(cudaStreamSynchronize(cx->stream), "adamw: synchronising before growing the list");
    if (cx->aw_host)
        cudaFreeHost(cx->aw_host);
    if (cx->aw_dev)
        cudaFree(cx->aw_dev);
    cx->aw_host = NULL;
    cx->aw_dev = NULL;
    cx->aw_cap = 0;
    size_t bytes = (size_t)cap * sizeof *cx->aw_host;
    CK(cudaMallocHost((void **)&cx->aw_host, bytes), "adamw: allocating the pinned list");
    CK(cudaMalloc((void **)&cx->aw_dev, bytes), "adamw: allocating the device list");
    cx->aw_cap = cap;
    return LMS_OK;
}

/* One launch for every tensor of the list: the host list (freed by the caller on return) is
 * copied into context-owned pinned memory, uploaded asynchronously, and the kernel reads the
 * device copy. The pinned list is rewritten only after the event of its previous upload. */
static enum lms_status cuda_adamw(struct lms_backend *be, const struct lms_adamw *tensors,
                                  int64_t n_tensors, const struct lms_adamw_hyper *h,
                                  struct lms_error *err)
{
    struct cuda_ctx *cx = be->impl;
    if (h->step < 1)
        return lms_error_set(err, LMS_EINVAL, "adamw: step %lld (counted from 1)",
                             (long long)h->step);
    if (n_tensors < 0)
        return lms_error_set(err, LMS_EINVAL, "adamw: %lld tensors", (long long)n_tensors);
    int64_t n_desc = 0, total_chunks = 0;
    for (int64_t k = 0; k < n_tensors; k++) {
        const struct lms_adamw *t = &tensors[k];
        if (t->n < 0 || (t->n > 0 && (!t->w || !t->g || !t->m || !t->v)))
            return lms_error_set(err, LMS_EINVAL, "adamw: tensor %lld of %lld elements",
                                 (long long)k, (long long)t->n);
        if (t->n == 0)
            continue;
        n_desc++;
        total_chunks += (t->n + LMS_CUDA_ADAMW_CHUNK - 1) / LMS_CUDA_ADAMW_CHUNK;
    }
    if (n_desc == 0)
        return LMS_OK;
    if (n_desc > INT32_MAX)
        return lms_error_set(err, LMS_EINVAL, "adamw: %lld tensors", (long long)n_desc);
    enum lms_status rc = use(be, err);
    if (rc)
        return rc;
    if (!cx->aw_ev)
        CK(cudaEventCreateWithFlags(&cx->aw_ev, cudaEventDisableTiming), "adamw: an event");
    if (cx->aw_used)
        CK(cudaEventSynchronize(cx->aw_ev), "adamw: waiting for the previous list upload");
    rc = grow_adamw_list(be, n_desc, err);
    if (rc)
        return rc;
    /* the scalars exactly as the CPU computes them (kernels/cpu/train_ops.c) */
    double bc1 = 1.0 - pow(h->beta1, (double)h->step);
    double bc2 = 1.0 - pow(h->beta2, (double)h->step);
    struct lms_cuda_adamw_scalars ks = {
        .grad_scale = h->grad_scale,
        .beta1 = h->beta1,
        .beta2 = h->beta2,
        .eps = h->eps,
        .step_size = (float)(h->lr / bc1),
        .bc2_sqrt = (float)sqrt(bc2),
    };
    int64_t chunk0 = 0, at = 0;
    for (int64_t k = 0; k < n_tensors; k++) {
        const struct lms_adamw *t = &tensors[k];
        if (t->n == 0)
            continue;
        cx->aw_host[at++] = (struct lms_cuda_adamw_desc){
            .w = t->w,
            .g = t->g,
            .m = t->m,
            .v = t->v,
            .w_bf16 = t->w_bf16,
            .n = t->n,
            .chunk0 = chunk0,
            .decay = 1.0f - h->lr * t->weight_decay,
        };
        chunk0 += (t->n + LMS_CUDA_ADAMW_CHUNK - 1) / LMS_CUDA_ADAMW_CHUNK;
    }
    CK(cudaMemcpyAsync(cx->aw_dev, cx->aw_host, (size_t)n_desc * sizeof *cx->aw_host,
                       cudaMemcpyHostToDevice, cx->stream),
       "adamw: uploading the tensor list");
    CK(cudaEventRecord(cx->aw_ev, cx->stream), "adamw: recording an event");
    cx->aw_used = true;
    CK(lms_cuda_adamw(cx->stream, cx->aw_dev, (int)n_desc, total_chunks, &ks), "adamw");
    return LMS_OK;
}

static const struct lms_backend_ops cuda_ops = {
    .version = LMS_BACKEND_OPS_VERSION,
    .kind = "cuda",
    .caps = LMS_CAP_BF16_WEIGHTS | LMS_CAP_ASYNC,
    .open = cuda_open,
    .close = cuda_close,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .sync = cuda_sync,
    .weight_dtype = cuda_weight_dtype,
    .matmul = cuda_matmul,
    .embedding = cuda_embedding,
    .rmsnorm = cuda_rmsnorm,
    .rope = cuda_rope,
    .attention = cuda_attention,
    .swiglu = cuda_swiglu,
    .add = cuda_add,
    .log_softmax = cuda_log_softmax,
    .cross_entropy = cuda_cross_entropy,
    .cast = cuda_cast,
    .abs_mean = cuda_abs_mean,
    .row_cosine = cuda_row_cosine,
    .attention_backward = cuda_attention_backward,
    .mem_info = cuda_mem_info,
    .logit_loss = cuda_logit_loss,
    .embedding_backward = cuda_embedding_backward,
    .rmsnorm_backward = cuda_rmsnorm_backward,
    .rope_backward = cuda_rope_backward,
    .swiglu_backward = cuda_swiglu_backward,
    .bias_backward = cuda_bias_backward,
    .hidden_loss = cuda_hidden_loss,
    .sum_squares = cuda_sum_squares,
    .adamw = cuda_adamw,
    .scale = cuda_scale,
    .activation_dtype = cuda_activation_dtype,
};

const struct lms_backend_ops *lms__backend_cuda_ops(void)
{
    return &cuda_ops;
}

cudaStream_t lms__cuda_stream(struct lms_backend *be)
{
    return ((struct cuda_ctx *)be->impl)->stream;
}
