/* The NCCL backend of the communication layer (comm/comm_impl.h): the fp32 collectives
 * of the CUDA backend, on device memory.
 *
 * libnccl.so.2 is loaded at run time (dlopen), so that the tool builds without NCCL's headers
 * and runs without the library wherever no GPU collective is asked for. The few declarations
 * below follow NCCL's documented C API (types, enum values and signatures of NCCL 2.x). The CUDA
 * runtime the CUDA backend already loaded provides the stream this backend issues its
 * collectives on and waits for.
 *
 * Ordering with the compute backend: its callers synchronise the backend before a collective
 * (the trainer does), the collective runs on this backend's own stream, and the call returns
 * only when that stream has finished, so the buffers are ready for the backend's next op. The
 * wait polls the stream and NCCL's asynchronous error under the same deadline as MPI's, and a
 * failed or timed-out communicator is aborted, never left hanging.
 *
 * Bootstrap: rank 0 makes the unique id (ncclGetUniqueId) and broadcasts it over MPI; every
 * rank then joins with ncclCommInitRank(world, id, rank) on the device of its backend. */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "comm/comm_impl.h"
#include "lms/alloc.h"

/* ---- NCCL's C API, as documented ----------------------------------------------------------- */

typedef struct nccl_comm_opaque *ncclComm_t;
#define NCCL_UNIQUE_ID_BYTES 128
typedef struct {
    char internal[NCCL_UNIQUE_ID_BYTES];
} ncclUniqueId;
typedef int ncclResult_t;    /* ncclSuccess = 0, ncclInProgress = 7 */
enum { ncclSuccess = 0, ncclInProgress = 7 };
typedef int ncclDataType_t;  /* ncclFloat32 = 7 */
enum { ncclFloat32 = 7 };
typedef int ncclRedOp_t;     /* ncclSum = 0 */
enum { ncclSum = 0 };
typedef void *cudaStream_t;
typedef int cudaError_t;     /* cudaSuccess = 0, cudaErrorNotReady = 600 */
enum { cudaSuccess = 0, cudaErrorNotReady = 600, cudaStreamNonBlocking = 1 };

struct nccl_api {
    ncclResult_t (*GetUniqueId)(ncclUniqueId *id);
    ncclResult_t (*CommInitRank)(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank);
    ncclResult_t (*AllReduce)(const void *send, void *recv, size_t count, ncclDataType_t t,
                              ncclRedOp_t op, ncclComm_t comm, cudaStream_t s);
    ncclResult_t (*ReduceScatter)(const void *send, void *recv, size_t recvcount,
                                  ncclDataType_t t, ncclRedOp_t op, ncclComm_t comm,
                                  cudaStream_t s);
    ncclResult_t (*AllGather)(const void *send, void *recv, size_t sendcount, ncclDataType_t t,
                              ncclComm_t comm, cudaStream_t s);
    ncclResult_t (*Broadcast)(const void *send, void *recv, size_t count, ncclDataType_t t,
                              int root, ncclComm_t comm, cudaStream_t s);
    ncclResult_t (*CommDestroy)(ncclComm_t comm);
    ncclResult_t (*CommAbort)(ncclComm_t comm);
    ncclResult_t (*CommGetAsyncError)(ncclComm_t comm, ncclResult_t *async_error);
    const char *(*GetErrorString)(ncclResult_t r);
    /* CUDA runtime */
    cudaError_t (*SetDevice)(int dev);
    cudaError_t (*StreamCreateWithFlags)(cudaStream_t *s, unsigned flags);
    cudaError_t (*StreamQuery)(cudaStream_t s);
    cudaError_t (*StreamDestroy)(cudaStream_t s);
    const char *(*CudaErrorString)(cudaError_t e);
};

struct comm_nccl {
    void *lib, *cudart;
    struct nccl_api api;
    ncclComm_t comm;
    cudaStream_t stream;
};

static void *sym(void *h, const char *name, bool *ok)
{
    void *p = dlsym(h, name);
    if (!p)
        *ok = false;
    return p;
}

/* The CUDA runtime of the CUDA backend (already in the process), else any on the search path. */
static void *open_cudart(void)
{
    static const char *const names[] = {"libcudart.so.13", "libcudart.so.12", "libcudart.so"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        void *h = dlopen(names[i], RTLD_NOW | RTLD_NOLOAD);
        if (h)
            return h;
    }
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        void *h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (h)
            return h;
    }
    return NULL;
}

static enum lms_status nccl_fail(const struct lms_comm *c, ncclResult_t r, const char *what,
                                 struct lms_error *err)
{
    const struct comm_nccl *n = c->nccl;
    return lms_error_set(err, LMS_EIO, "rank %d of %d: NCCL %s: %s", c->rank, c->world, what,
                         n && n->api.GetErrorString ? n->api.GetErrorString(r) : "failed");
}

/* Waits for the stream under the deadline, watching NCCL's asynchronous error. */
static enum lms_status wait_stream(struct lms_comm *c, const char *what, struct lms_error *err)
{
    struct comm_nccl *n = c->nccl;
    double t0 = comm_now();
    for (unsigned polls = 0;; polls++) {
        cudaError_t e = n->api.StreamQuery(n->stream);
        if (e == cudaSuccess)
            return LMS_OK;
        if (e != cudaErrorNotReady)
            return lms_error_set(err, LMS_EDEVICE, "rank %d of %d: %s: %s", c->rank, c->world,
                                 what, n->api.CudaErrorString(e));
        ncclResult_t async = ncclSuccess;
        if (n->api.CommGetAsyncError(n->comm, &async) == ncclSuccess && async != ncclSuccess &&
            async != ncclInProgress)
            return nccl_fail(c, async, what, err);
        if (comm_now() - t0 > c->timeout_s)
            return comm_timeout_error(c, what, err);
        comm_backoff(polls);
    }
}

enum lms_status comm_nccl_open(struct lms_comm *c, int device, struct comm_nccl **out,
                               struct lms_error *err)
{
    *out = NULL;
    struct comm_nccl *n = lms_calloc(1, sizeof *n);
    if (!n)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    n->lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!n->lib) {
        lms_free(n);
        return lms_error_set(err, LMS_EUNSUPPORTED, "rank %d: CUDA collectives need NCCL "
                             "(libnccl.so.2, e.g. the Debian/Ubuntu package libnccl2): %s",
                             c->rank, dlerror());
    }
    n->cudart = open_cudart();
    bool ok = n->cudart != NULL;
    struct nccl_api *a = &n->api;
    if (ok) {
        *(void **)&a->GetUniqueId = sym(n->lib, "ncclGetUniqueId", &ok);
        *(void **)&a->CommInitRank = sym(n->lib, "ncclCommInitRank", &ok);
        *(void **)&a->AllReduce = sym(n->lib, "ncclAllReduce", &ok);
        *(void **)&a->ReduceScatter = sym(n->lib, "ncclReduceScatter", &ok);
        *(void **)&a->AllGather = sym(n->lib, "ncclAllGather", &ok);
        *(void **)&a->Broadcast = sym(n->lib, "ncclBroadcast", &ok);
        *(void **)&a->CommDestroy = sym(n->lib, "ncclCommDestroy", &ok);
        *(void **)&a->CommAbort = sym(n->lib, "ncclCommAbort", &ok);
        *(void **)&a->CommGetAsyncError = sym(n->lib, "ncclCommGetAsyncError", &ok);
        *(void **)&a->GetErrorString = sym(n->lib, "ncclGetErrorString", &ok);
        *(void **)&a->SetDevice = sym(n->cudart, "cudaSetDevice", &ok);
        *(void **)&a->StreamCreateWithFlags = sym(n->cudart, "cudaStreamCreateWithFlags", &ok);
        *(void **)&a->StreamQuery = sym(n->cudart, "cudaStreamQuery", &ok);
        *(void **)&a->StreamDestroy = sym(n->cudart, "cudaStreamDestroy", &ok);
        *(void **)&a->CudaErrorString = sym(n->cudart, "cudaGetErrorString", &ok);
    }
    if (!ok) {
        comm_nccl_close(n, false);
        return lms_error_set(err, LMS_EUNSUPPORTED, "rank %d: libnccl.so.2 or the CUDA runtime "
                             "lacks a function this build needs", c->rank);
    }
    enum lms_status rc = LMS_OK;
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    ncclResult_t r = ncclSuccess;
    if (c->rank == 0)
        r = a->GetUniqueId(&id);
    /* every rank takes part in the broadcast, also when rank 0 failed (it then sends zeros
     * and its error) so that nobody waits for an id that never comes */
    int64_t failed = r != ncclSuccess;
    if (!(rc = c->world == 1 ? LMS_OK : comm_mpi_max(c, &failed, 1, err)) && failed)
        rc = c->rank == 0 ? nccl_fail(c, r, "making the unique id", err)
                          : lms_error_set(err, LMS_EIO, "rank %d: rank 0 could not make the "
                                          "NCCL unique id", c->rank);
    if (!rc)
        rc = c->world == 1 ? LMS_OK : comm_mpi_broadcast(c, &id, sizeof id, 0, err);
    if (!rc && a->SetDevice(device) != cudaSuccess)
        rc = lms_error_set(err, LMS_EDEVICE, "rank %d: selecting cuda:%d", c->rank, device);
    if (!rc && a->StreamCreateWithFlags(&n->stream, cudaStreamNonBlocking) != cudaSuccess)
        rc = lms_error_set(err, LMS_EDEVICE, "rank %d: creating the NCCL stream", c->rank);
    if (!rc && (r = a->CommInitRank(&n->comm, c->world, id, c->rank)) != ncclSuccess) {
        n->comm = NULL;
        c->nccl = n;
        rc = nccl_fail(c, r, "joining the communicator", err);
        c->nccl = NULL;
    }
    if (rc) {
        comm_nccl_close(n, true);
        return rc;
    }
    *out = n;
    return LMS_OK;
}

void comm_nccl_close(struct comm_nccl *n, bool abort)
{
    if (!n)
        return;
    if (n->comm)
        (abort ? n->api.CommAbort : n->api.CommDestroy)(n->comm);
    if (n->stream)
        n->api.StreamDestroy(n->stream);
    if (n->lib)
        dlclose(n->lib);
    /* the CUDA runtime stays: the CUDA backend holds it */
    lms_free(n);
}

/* Same layout and in-place rule as MPI's: chunk r of rank r ends as the sum of every rank's
 * chunk r (recvbuff = sendbuff + rank x chunk is NCCL's in-place form). */
enum lms_status comm_nccl_reduce_scatter(struct lms_comm *c, float *buf, int64_t chunk,
                                         struct lms_error *err)
{
    struct comm_nccl *n = c->nccl;
    ncclResult_t r = n->api.ReduceScatter(buf, buf + (int64_t)c->rank * chunk, (size_t)chunk,
                                          ncclFloat32, ncclSum, n->comm, n->stream);
    if (r != ncclSuccess)
        return nccl_fail(c, r, "reducing the gradients", err);
    return wait_stream(c, "reducing the gradients", err);
}

enum lms_status comm_nccl_all_gather(struct lms_comm *c, float *buf, int64_t chunk,
                                     struct lms_error *err)
{
    struct comm_nccl *n = c->nccl;
    ncclResult_t r = n->api.AllGather(buf + (int64_t)c->rank * chunk, buf, (size_t)chunk,
                                      ncclFloat32, n->comm, n->stream);
    if (r != ncclSuccess)
        return nccl_fail(c, r, "gathering the weights", err);
    return wait_stream(c, "gathering the weights", err);
}
