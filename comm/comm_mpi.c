/* The MPI backend of the communication layer (comm/comm_impl.h): host-memory
 * collectives for the CPU backend, and the bootstrap and host scalars of the NCCL backend.
 * Every collective is the non-blocking MPI-3 call, waited for with MPI_Test under the run's
 * deadline; errors are returned (MPI_ERRORS_RETURN), never fatal inside the library. MPI counts
 * are int, so buffers above 2^30 elements go in pieces. Built without MPI, every call says so. */
#include <limits.h>
#include <string.h>

#include "comm/comm_impl.h"

#ifdef LMS_HAVE_MPI
#include <mpi.h>

#define MAX_COUNT ((int64_t)1 << 30)

static enum lms_status mpi_error(const struct lms_comm *c, int code, const char *what,
                                 struct lms_error *err)
{
    char text[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(code, text, &len);
    return lms_error_set(err, LMS_EIO, "rank %d of %d: %s: %s (has another rank died?)",
                         c->rank, c->world, what, text);
}

/* Waits for req under the deadline. */
static enum lms_status wait_req(const struct lms_comm *c, MPI_Request *req, const char *what,
                                struct lms_error *err)
{
    double t0 = comm_now();
    for (unsigned polls = 0;; polls++) {
        int done = 0;
        int rc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS)
            return mpi_error(c, rc, what, err);
        if (done)
            return LMS_OK;
        if (comm_now() - t0 > c->timeout_s)
            return comm_timeout_error(c, what, err);
        comm_backoff(polls);
    }
}

static enum lms_status issued(const struct lms_comm *c, int rc, MPI_Request *req,
                              const char *what, struct lms_error *err)
{
    return rc != MPI_SUCCESS ? mpi_error(c, rc, what, err) : wait_req(c, req, what, err);
}

enum lms_status comm_mpi_init(struct lms_comm *c, struct lms_error *err)
{
    int inited = 0, provided = 0;
    MPI_Initialized(&inited);
    /* only the main thread calls MPI (the backends' worker threads never do) */
    if (!inited && MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        return lms_error_set(err, LMS_EIO, "MPI_Init failed (launcher %s)", c->launch.launcher);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &c->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c->world);
    return LMS_OK;
}

void comm_mpi_finalize(struct lms_comm *c)
{
    (void)c;
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin)
        MPI_Finalize();
}

void comm_mpi_abort(struct lms_comm *c, int code)
{
    (void)c;
    MPI_Abort(MPI_COMM_WORLD, code);
}

enum lms_status comm_mpi_reduce_scatter(struct lms_comm *c, float *buf, int64_t chunk,
                                        struct lms_error *err)
{
    MPI_Request req;
    if (chunk <= MAX_COUNT) {
        /* in place, the sum of chunk r lands at the start of the buffer of rank r */
        enum lms_status rc = issued(c, MPI_Ireduce_scatter_block(MPI_IN_PLACE, buf, (int)chunk,
                                                                 MPI_FLOAT, MPI_SUM,
                                                                 MPI_COMM_WORLD, &req),
                                    &req, "reducing the gradients", err);
        if (!rc && c->rank > 0)
            memmove(buf + (int64_t)c->rank * chunk, buf, (size_t)chunk * sizeof(float));
        return rc;
    }
    for (int r = 0; r < c->world; r++)
        for (int64_t off = 0; off < chunk; off += MAX_COUNT) {
            int n = (int)(chunk - off < MAX_COUNT ? chunk - off : MAX_COUNT);
            float *p = buf + (int64_t)r * chunk + off;
            enum lms_status rc = issued(c, MPI_Ireduce(r == c->rank ? MPI_IN_PLACE : p, p, n,
                                                       MPI_FLOAT, MPI_SUM, r, MPI_COMM_WORLD,
                                                       &req),
                                        &req, "reducing the gradients", err);
            if (rc)
                return rc;
        }
    return LMS_OK;
}

enum lms_status comm_mpi_all_gather(struct lms_comm *c, float *buf, int64_t chunk,
                                    struct lms_error *err)
{
    MPI_Request req;
    if (chunk <= MAX_COUNT)
        return issued(c, MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, (int)chunk,
                                        MPI_FLOAT, MPI_COMM_WORLD, &req),
                      &req, "gathering the weights", err);
    for (int r = 0; r < c->world; r++)
        for (int64_t off = 0; off < chunk; off += MAX_COUNT) {
            int n = (int)(chunk - off < MAX_COUNT ? chunk - off : MAX_COUNT);
            enum lms_status rc = issued(c, MPI_Ibcast(buf + (int64_t)r * chunk + off, n,
                                                      MPI_FLOAT, r, MPI_COMM_WORLD, &req),
                                        &req, "gathering the weights", err);
            if (rc)
                return rc;
        }
    return LMS_OK;
}

enum lms_status comm_mpi_sum(struct lms_comm *c, double *v, int64_t n, struct lms_error *err)
{
    MPI_Request req;
    for (int64_t off = 0; off < n; off += MAX_COUNT) {
        int k = (int)(n - off < MAX_COUNT ? n - off : MAX_COUNT);
        enum lms_status rc = issued(c, MPI_Iallreduce(MPI_IN_PLACE, v + off, k, MPI_DOUBLE,
                                                      MPI_SUM, MPI_COMM_WORLD, &req),
                                    &req, "summing over the ranks", err);
        if (rc)
            return rc;
    }
    return LMS_OK;
}

enum lms_status comm_mpi_max(struct lms_comm *c, int64_t *v, int64_t n, struct lms_error *err)
{
    MPI_Request req;
    if (n > MAX_COUNT)
        return lms_error_set(err, LMS_EINVAL, "comm max: %lld values", (long long)n);
    return issued(c, MPI_Iallreduce(MPI_IN_PLACE, v, (int)n, MPI_INT64_T, MPI_MAX,
                                    MPI_COMM_WORLD, &req),
                  &req, "agreeing with the other ranks", err);
}

enum lms_status comm_mpi_broadcast(struct lms_comm *c, void *buf, size_t bytes, int root,
                                   struct lms_error *err)
{
    MPI_Request req;
    for (size_t off = 0; off < bytes; off += (size_t)MAX_COUNT) {
        int k = (int)(bytes - off < (size_t)MAX_COUNT ? bytes - off : (size_t)MAX_COUNT);
        enum lms_status rc = issued(c, MPI_Ibcast((char *)buf + off, k, MPI_BYTE, root,
                                                  MPI_COMM_WORLD, &req),
                                    &req, "broadcasting", err);
        if (rc)
            return rc;
    }
    return LMS_OK;
}

#else /* no MPI in this build */

static enum lms_status no_mpi(struct lms_error *err)
{
    return lms_error_set(err, LMS_EUNSUPPORTED, "this build of lmsurgeon has no MPI: rebuild "
                         "with MPI installed (libopenmpi-dev) to run on several processes");
}

enum lms_status comm_mpi_init(struct lms_comm *c, struct lms_error *err)
{
    return lms_error_set(err, LMS_EUNSUPPORTED, "started by a launcher (%s, rank %d of %d) but "
                         "this build of lmsurgeon has no MPI: rebuild with MPI installed "
                         "(libopenmpi-dev)", c->launch.launcher, c->launch.rank,
                         c->launch.world);
}

void comm_mpi_finalize(struct lms_comm *c)
{
    (void)c;
}

void comm_mpi_abort(struct lms_comm *c, int code)
{
    (void)c;
    (void)code;
}

enum lms_status comm_mpi_reduce_scatter(struct lms_comm *c, float *buf, int64_t chunk,
                                        struct lms_error *err)
{
    return no_mpi(err);
}

enum lms_status comm_mpi_all_gather(struct lms_comm *c, float *buf, int64_t chunk,
                                    struct lms_error *err)
{
    return no_mpi(err);
}

enum lms_status comm_mpi_sum(struct lms_comm *c, double *v, int64_t n, struct lms_error *err)
{
    return no_mpi(err);
}

enum lms_status comm_mpi_max(struct lms_comm *c, int64_t *v, int64_t n, struct lms_error *err)
{
    return no_mpi(err);
}

enum lms_status comm_mpi_broadcast(struct lms_comm *c, void *buf, size_t bytes, int root,
                                   struct lms_error *err)
{
    return no_mpi(err);
}

#endif
