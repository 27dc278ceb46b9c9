/* CPU backend: context, host "device" memory and the op table. Buffers are 64-byte aligned
 * host blocks from the library allocator; uploads and downloads are memcpy; every op is
 * synchronous, so sync has nothing to wait for. */
#include <cblas.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels/cpu/cpu.h"
#include "lms/alloc.h"

#define ALIGN 64

static enum lms_status cpu_open(struct lms_backend *be, const struct lms_backend_opts *opts,
                                struct lms_error *err)
{
    struct lms_cpu_ctx *cx = lms_calloc(1, sizeof *cx);
    if (!cx)
        return lms_error_set(err, LMS_ENOMEM, "opening device 'cpu': out of memory");
    int n = opts->n_threads;
#ifdef _OPENMP
    if (n <= 0)
        n = omp_get_num_procs();
#endif
    if (n <= 0)
        n = 1;
    cx->n_threads = n;
#ifdef LMS_HAVE_OPENBLAS
    /* GEMMs are split across OpenMP threads, each calling OpenBLAS single-threaded: one
     * thread pool instead of two competing ones. (OpenBLAS's setting is process-wide.) */
    openblas_set_num_threads(1);
#endif
    be->n_threads = n;
    be->impl = cx;
    return LMS_OK;
}

static void cpu_close(struct lms_backend *be)
{
    struct lms_cpu_ctx *cx = be->impl;
    if (!cx)
        return;
    lms_free(cx->scratch);
    lms_free(cx->wide);
    lms_free(cx);
    be->impl = NULL;
}

/* The block is over-allocated by ALIGN bytes; the pointer returned by lms_malloc is stored just
 * before the aligned address. */
static enum lms_status cpu_alloc(struct lms_backend *be, size_t size, struct lms_buf *out,
                                 struct lms_error *err)
{
    if (size > SIZE_MAX - 2 * ALIGN)
        return lms_error_set(err, LMS_ENOMEM, "cpu: allocation of %zu bytes is too large", size);
    char *raw = lms_malloc(size + 2 * ALIGN);
    if (!raw)
        return lms_error_set(err, LMS_ENOMEM, "cpu: out of memory allocating %zu bytes", size);
    uintptr_t p = ((uintptr_t)raw + sizeof(void *) + ALIGN - 1) & ~(uintptr_t)(ALIGN - 1);
    memcpy((char *)p - sizeof(void *), &raw, sizeof raw);
    out->ptr = (void *)p;
    out->size = size;
    return LMS_OK;
}

static void cpu_free(struct lms_backend *be, struct lms_buf *buf)
{
    void *raw;
    memcpy(&raw, (char *)buf->ptr - sizeof(void *), sizeof raw);
    lms_free(raw);
}

static enum lms_status cpu_copy(struct lms_backend *be, void *dst, const void *src, size_t n,
                                struct lms_error *err)
{
    memcpy(dst, src, n);
    return LMS_OK;
}

static enum lms_status cpu_sync(struct lms_backend *be, struct lms_error *err)
{
    return LMS_OK;
}

static enum lms_dtype cpu_weight_dtype(const struct lms_backend *be, enum lms_dtype ckpt)
{
    return LMS_DTYPE_F32;
}

/* The CPU keeps fp32 activations: it is the exact reference the 16-bit storage of other
 * backends is judged against (its typed slots still accept BF16 operands for that purpose). */
static enum lms_dtype cpu_activation_dtype(const struct lms_backend *be)
{
    return LMS_DTYPE_F32;
}

static const struct lms_backend_ops cpu_ops = {
    .version = LMS_BACKEND_OPS_VERSION,
    .kind = "cpu",
    .caps = 0,
    .open = cpu_open,
    .close = cpu_close,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .sync = cpu_sync,
    .weight_dtype = cpu_weight_dtype,
    .matmul = lms__cpu_matmul,
    .embedding = lms__cpu_embedding,
    .rmsnorm = lms__cpu_rmsnorm,
    .rope = lms__cpu_rope,
    .attention = lms__cpu_attention,
    .swiglu = lms__cpu_swiglu,
    .add = lms__cpu_add,
    .log_softmax = lms__cpu_log_softmax,
    .cross_entropy = lms__cpu_cross_entropy,
    .cast = lms__cpu_cast,
    .abs_mean = lms__cpu_abs_mean,
    .row_cosine = lms__cpu_row_cosine,
    /* training slots */
    .embedding_backward = lms__cpu_embedding_backward,
    .rmsnorm_backward = lms__cpu_rmsnorm_backward,
    .rope_backward = lms__cpu_rope_backward,
    .attention_backward = lms__cpu_attention_backward,
    .swiglu_backward = lms__cpu_swiglu_backward,
    .bias_backward = lms__cpu_bias_backward,
    .logit_loss = lms__cpu_logit_loss,
    .hidden_loss = lms__cpu_hidden_loss,
    .sum_squares = lms__cpu_sum_squares,
    .adamw = lms__cpu_adamw,
    .scale = lms__cpu_scale,
    /* version 5 */
    .activation_dtype = cpu_activation_dtype,
    .matmul_typed = lms__cpu_matmul_typed,
    .rmsnorm_typed = lms__cpu_rmsnorm_typed,
    .rope_typed = lms__cpu_rope_typed,
    .swiglu_typed = lms__cpu_swiglu_typed,
    .add_typed = lms__cpu_add_typed,
};

const struct lms_backend_ops *lms__backend_cpu_ops(void)
{
    return &cpu_ops;
}
