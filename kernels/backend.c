/* Backend registry: --device parsing, opening the backend of a device, and the buffer calls of
 * include/lms/backend.h forwarded to the op table (kernels/backend_impl.h). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/backend_impl.h"
#include "lms/alloc.h"

/* The CUDA backend lives in its own shared library (liblmsurgeon-cuda.so) that is loaded only
 * when a CUDA device is opened: linking cuBLASLt into every run would cost each invocation of the
 * tool ~0.2 s of start-up and ~200 MB of resident memory, for commands that never touch a GPU.
 * Search order: $LMS_CUDA_MODULE, the build tree's copy, the installed copy. */
#ifdef LMS_CUDA_MODULE_INSTALL
static char cuda_load_error[512];

static const struct lms_backend_ops *cuda_ops(void)
{
    static const struct lms_backend_ops *ops;
    static bool tried;
    if (tried)
        return ops;
    tried = true;
    const char *candidates[] = {getenv("LMS_CUDA_MODULE"), LMS_CUDA_MODULE_BUILD,
                                LMS_CUDA_MODULE_INSTALL};
    for (size_t i = 0; i < sizeof(candidates) / sizeof(candidates[0]) && !ops; i++) {
        if (!candidates[i] || !*candidates[i])
            continue;
        if (i > 0 && access(candidates[i], R_OK) != 0)
            continue;
        void *h = dlopen(candidates[i], RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            snprintf(cuda_load_error, sizeof(cuda_load_error), "%s", dlerror());
            continue;
        }
        const struct lms_backend_ops *(*get)(void);
        *(void **)&get = dlsym(h, "lms__backend_cuda_ops");
        if (!get) {
            snprintf(cuda_load_error, sizeof(cuda_load_error), "'%s' has no CUDA op table",
                     candidates[i]);
            dlclose(h);
            continue;
        }
        ops = get(); /* the module stays loaded for the life of the process */
    }
    if (!ops && !cuda_load_error[0])
        snprintf(cuda_load_error, sizeof(cuda_load_error),
                 "liblmsurgeon-cuda.so not found (set LMS_CUDA_MODULE)");
    return ops;
}
#endif

static const struct lms_backend_ops *ops_for(enum lms_device_kind kind)
{
    switch (kind) {
    case LMS_DEVICE_CPU:
        return lms__backend_cpu_ops();
    case LMS_DEVICE_CUDA:
#ifdef LMS_CUDA_MODULE_INSTALL
        return cuda_ops();
#else
        return NULL;
#endif
    default:
        return NULL;
    }
}

bool lms_backend_compiled(enum lms_device_kind kind)
{
    if (kind == LMS_DEVICE_CPU)
        return true;
#ifdef LMS_CUDA_MODULE_INSTALL
    return kind == LMS_DEVICE_CUDA;
#else
    return false;
#endif
}

enum lms_status lms_device_parse(const char *s, struct lms_device *out, struct lms_error *err)
{
    if (!s)
        return lms_error_set(err, LMS_EINVAL, "no device given");
    if (!strcmp(s, "cpu")) {
        out->kind = LMS_DEVICE_CPU;
        out->index = 0;
        return LMS_OK;
    }
    if (!strncmp(s, "cuda", 4) && (s[4] == '\0' || s[4] == ':')) {
        int idx = 0;
        if (s[4] == ':') {
            const char *p = s + 5;
            if (!*p)
                return lms_error_set(err, LMS_EINVAL, "device '%s': missing ordinal after ':'",
                                     s);
            for (; *p; p++) {
                if (*p < '0' || *p > '9' || idx >= 1024)
                    return lms_error_set(err, LMS_EINVAL,
                                         "device '%s': ordinal must be a number below 1024", s);
                idx = idx * 10 + (*p - '0');
            }
            if (idx >= 1024)
                return lms_error_set(err, LMS_EINVAL,
                                     "device '%s': ordinal must be a number below 1024", s);
        }
        out->kind = LMS_DEVICE_CUDA;
        out->index = idx;
        return LMS_OK;
    }
    return lms_error_set(err, LMS_EINVAL, "unknown device '%s' (expected cpu, cuda or cuda:N)",
                         s);
}

enum lms_status lms_precision_parse(const char *s, enum lms_precision *out,
                                    struct lms_error *err)
{
    static const char *const names[] = {"auto", "fp32", "bf16"};
    for (int i = 0; s && i < 3; i++)
        if (!strcmp(s, names[i])) {
            *out = (enum lms_precision)i;
            return LMS_OK;
        }
    return lms_error_set(err, LMS_EINVAL, "unknown precision '%s' (expected auto, fp32 or bf16)",
                         s ? s : "");
}

void lms_device_format(const struct lms_device *d, char *dst, size_t dst_cap)
{
    if (d->kind == LMS_DEVICE_CPU)
        snprintf(dst, dst_cap, "cpu");
    else
        snprintf(dst, dst_cap, "cuda:%d", d->index);
}

enum lms_status lms_backend_open(const struct lms_device *dev, const struct lms_backend_opts *opts,
                                 struct lms_backend **out, struct lms_error *err)
{
    struct lms_backend_opts def = {0};
    const struct lms_backend_ops *ops = ops_for(dev->kind);
    char name[32];
    lms_device_format(dev, name, sizeof name);
    *out = NULL;
#ifdef LMS_CUDA_MODULE_INSTALL
    if (!ops && dev->kind == LMS_DEVICE_CUDA)
        return lms_error_set(err, LMS_EDEVICE, "device '%s': cannot load the CUDA backend: %s",
                             name, cuda_load_error);
#endif
    if (!ops)
        return lms_error_set(err, LMS_EDEVICE,
                             "device '%s': this build has no %s backend (build with nvcc on "
                             "the PATH to enable it)",
                             name, dev->kind == LMS_DEVICE_CUDA ? "CUDA" : "such");
    if (!opts)
        opts = &def;
    if (opts->n_threads < 0)
        return lms_error_set(err, LMS_EINVAL, "thread count %d is negative", opts->n_threads);
    if ((unsigned)opts->precision > LMS_PRECISION_BF16)
        return lms_error_set(err, LMS_EINVAL, "precision %d is not one of enum lms_precision",
                             (int)opts->precision);
    struct lms_backend *be = lms_calloc(1, sizeof *be);
    if (!be)
        return lms_error_set(err, LMS_ENOMEM, "opening device '%s': out of memory", name);
    be->ops = ops;
    be->dev = *dev;
    be->n_threads = 1;
    memcpy(be->name, name, sizeof be->name);
    enum lms_status rc = ops->open(be, opts, err);
    if (rc) {
        lms_free(be);
        return rc;
    }
    *out = be;
    return LMS_OK;
}

enum lms_status lms_backend_open_name(const char *spelling, const struct lms_backend_opts *opts,
                                      struct lms_backend **out, struct lms_error *err)
{
    struct lms_device dev;
    enum lms_status rc = lms_device_parse(spelling, &dev, err);
    if (rc) {
        *out = NULL;
        return rc;
    }
    return lms_backend_open(&dev, opts, out, err);
}

void lms_backend_free(struct lms_backend *be)
{
    if (!be)
        return;
    be->ops->close(be);
    lms_free(be);
}

const char *lms_backend_name(const struct lms_backend *be)
{
    return be->name;
}

int lms_backend_n_threads(const struct lms_backend *be)
{
    return be->n_threads;
}

enum lms_dtype lms_backend_activation_dtype(const struct lms_backend *be)
{
    return lms__backend_activation_dtype(be);
}

enum lms_status lms_buf_alloc(struct lms_backend *be, size_t size, struct lms_buf *out,
                              struct lms_error *err)
{
    out->ptr = NULL;
    out->size = 0;
    return be->ops->alloc(be, size, out, err);
}

void lms_buf_free(struct lms_backend *be, struct lms_buf *buf)
{
    if (!buf || !buf->ptr)
        return;
    be->ops->free(be, buf);
    buf->ptr = NULL;
    buf->size = 0;
}

enum lms_status lms_buf_upload(struct lms_backend *be, void *dst, const void *src, size_t src_len,
                               struct lms_error *err)
{
    if (!src_len)
        return LMS_OK;
    return be->ops->upload(be, dst, src, src_len, err);
}

enum lms_status lms_buf_download(struct lms_backend *be, void *dst, size_t dst_cap,
                                 const void *src, size_t src_len, struct lms_error *err)
{
    if (src_len > dst_cap)
        return lms_error_set(err, LMS_EINVAL, "download of %zu bytes into a %zu-byte buffer",
                             src_len, dst_cap);
    if (!src_len)
        return LMS_OK;
    return be->ops->download(be, dst, src, src_len, err);
}

enum lms_status lms_backend_sync(struct lms_backend *be, struct lms_error *err)
{
    return be->ops->sync(be, err);
}

enum lms_status lms_backend_memory(struct lms_backend *be, uint64_t *free_bytes,
                                   uint64_t *total_bytes, struct lms_error *err)
{
    if (be->ops->version < 4 || !be->ops->mem_info)
        return lms_error_set(err, LMS_EUNSUPPORTED, "%s: the backend uses host memory",
                             be->name);
    return be->ops->mem_info(be, free_bytes, total_bytes, err);
}
