/* lmsurgeon: compute backends (the public handle).
 *
 * A backend is a device ("cpu", "cuda:0") plus an op table (kernels/backend_impl.h) that the
 * engine, importance scoring and distillation run on. This header is what callers outside
 * kernels/ need: choosing a device from a user spelling, opening and closing a backend, and
 * device buffers with explicit ownership. The op table itself, with the argument structs of
 * every op, lives in kernels/backend_impl.h, next to its implementations.
 *
 * Device memory is addressed by plain pointers (on the CPU backend, host memory; on CUDA,
 * device pointers). A struct lms_buf owns one allocation; ops take pointers into buffers. */
#ifndef LMS_BACKEND_H
#define LMS_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lms/dtype.h"
#include "lms/error.h"

enum lms_device_kind {
    LMS_DEVICE_CPU,
    LMS_DEVICE_CUDA,
    LMS_DEVICE_KIND_COUNT
};

/* A device as the user names it: "cpu", "cuda" (= "cuda:0"), "cuda:N". */
struct lms_device {
    enum lms_device_kind kind;
    int index; /* device ordinal; 0 for the CPU */
};

/* Parses a --device spelling. LMS_EINVAL with a message naming the spelling when it is not
 * "cpu", "cuda" or "cuda:N" (N a decimal ordinal below 1024). Does not check that the device
 * exists or is compiled in; lms_backend_open does. */
enum lms_status lms_device_parse(const char *s, struct lms_device *out, struct lms_error *err);
/* "cpu" or "cuda:N" into dst (NUL-terminated, truncated to dst_cap). */
void lms_device_format(const struct lms_device *d, char *dst, size_t dst_cap);
/* True when this build contains a backend for kind (the CPU always; CUDA when built with nvcc). */
bool lms_backend_compiled(enum lms_device_kind kind);

struct lms_backend; /* opaque here; defined in kernels/backend_impl.h */

/* Arithmetic of the compute-heavy ops (GEMMs and attention) on devices that have a choice. */
enum lms_precision {
    LMS_PRECISION_AUTO = 0, /* the device's default: fp32 on the CPU; on CUDA, 16-bit weights
                             * stay in their checkpoint dtype, GEMM activations are rounded to
                             * it and attention runs on bf16 tensor cores (fp32 accumulation) */
    LMS_PRECISION_FP32,     /* fp32 everywhere: 16-bit weights upcast to F32 once at upload,
                             * fp32 GEMMs (no TF32), fp32 attention; matches the CPU reference */
    LMS_PRECISION_BF16,     /* as AUTO on CUDA; the CPU computes in fp32 whatever is asked */
};

struct lms_backend_opts {
    int n_threads;                /* CPU worker threads (BLAS and OpenMP); 0 = all cores */
    enum lms_precision precision; /* GEMM and attention arithmetic; 0 = AUTO */
};

/* Parses "auto", "fp32" or "bf16"; LMS_EINVAL naming the spelling otherwise. */
enum lms_status lms_precision_parse(const char *s, enum lms_precision *out,
                                    struct lms_error *err);

/* Makes OpenBLAS use the kernels this CPU can run when it did not recognise the model and fell
 * back to its slowest x86-64 ones (and OPENBLAS_CORETYPE is not set): sets OPENBLAS_CORETYPE and
 * executes the program again with the same argv. Returns when there is nothing to do or the
 * re-execution failed. Programs call it first thing in main, before any thread exists. */
void lms_blas_select_core(char **argv);

/* Opens the backend for dev. Errors: LMS_EDEVICE when the kind is not compiled into this build
 * or the device is not present ("device 'cuda:1': only 1 CUDA device present"), LMS_ENOMEM.
 * opts may be NULL (defaults). OUT: *out, close with lms_backend_free. */
enum lms_status lms_backend_open(const struct lms_device *dev, const struct lms_backend_opts *opts,
                                 struct lms_backend **out, struct lms_error *err);
/* Parses spelling and opens it: lms_device_parse + lms_backend_open. */
enum lms_status lms_backend_open_name(const char *spelling, const struct lms_backend_opts *opts,
                                      struct lms_backend **out, struct lms_error *err);
/* Releases the device context. Every buffer must have been freed before. NULL does nothing. */
void lms_backend_free(struct lms_backend *be);
/* "cpu" or "cuda:0". */
const char *lms_backend_name(const struct lms_backend *be);
/* Threads the backend computes with (CPU), 1 on devices where it does not apply. */
int lms_backend_n_threads(const struct lms_backend *be);
/* The dtype the backend stores activations in between ops and for the backward: LMS_DTYPE_F32 on
 * every backend today, LMS_DTYPE_BF16 where a backend keeps bf16 activations (fp32 arithmetic
 * and accumulation either way; kernels/README.md, "Activation dtype contract"). */
enum lms_dtype lms_backend_activation_dtype(const struct lms_backend *be);

/* One device allocation, owned by whoever holds the struct. */
struct lms_buf {
    void *ptr;   /* device address of byte 0 (host address on the CPU backend); NULL if empty */
    size_t size; /* bytes */
};

/* Allocates size bytes of device memory, 64-byte aligned, contents undefined.
 * OUT: *out owns the allocation (free with lms_buf_free). LMS_ENOMEM / LMS_EDEVICE. */
enum lms_status lms_buf_alloc(struct lms_backend *be, size_t size, struct lms_buf *out,
                              struct lms_error *err);
/* Frees the allocation and empties *buf. An empty buffer does nothing. */
void lms_buf_free(struct lms_backend *be, struct lms_buf *buf);
/* Copies src_len host bytes to device address dst (inside a buffer of this backend). */
enum lms_status lms_buf_upload(struct lms_backend *be, void *dst, const void *src, size_t src_len,
                               struct lms_error *err);
/* Copies src_len device bytes at src to host dst (dst_cap >= src_len, else LMS_EINVAL). Waits
 * for the work queued before it. */
enum lms_status lms_buf_download(struct lms_backend *be, void *dst, size_t dst_cap,
                                 const void *src, size_t src_len, struct lms_error *err);
/* Waits until every queued op has finished; reports deferred device errors. */
enum lms_status lms_backend_sync(struct lms_backend *be, struct lms_error *err);
/* The device memory free and in total, in bytes. LMS_EUNSUPPORTED on backends that use host
 * memory (the CPU): ask lms_memory_available (include/lms/distill.h) there. */
enum lms_status lms_backend_memory(struct lms_backend *be, uint64_t *free_bytes,
                                   uint64_t *total_bytes, struct lms_error *err);

#endif
