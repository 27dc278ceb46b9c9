/* Internals of the communication layer (include/lms/comm.h), shared by its four files, each
 * calling only those below it:
 *   comm.c       launcher environment, the public calls, the dispatch between the backends;
 *   comm_nccl.c  NCCL (device memory), loaded at run time;
 *   comm_mpi.c   MPI (host memory; also the bootstrap and the scalars of the NCCL backend);
 *   comm_wait.c  the clock and the deadline every wait runs under.
 * Every collective is issued non-blocking and then waited for with a deadline, so that a rank
 * that died or hangs turns into an error on the others instead of a hang. */
#ifndef LMS_COMM_IMPL_H
#define LMS_COMM_IMPL_H

#include "lms/comm.h"

struct comm_nccl; /* comm_nccl.c */

struct lms_comm {
    struct lms_launch launch;
    int rank, world;
    double timeout_s;        /* most seconds one collective may wait ($LMS_COMM_TIMEOUT) */
    bool mpi;                /* MPI is initialised (false: LMS_COMM_SELF, one rank alone) */
    struct comm_nccl *nccl;  /* NULL: the fp32 collectives run over MPI */
};

/* Seconds since an arbitrary start (monotonic). */
double comm_now(void);
/* Sleeps a little while polling: grows from 20 us to 1 ms with the number of polls. */
void comm_backoff(unsigned polls);
/* The error of a wait that ran past the deadline. */
enum lms_status comm_timeout_error(const struct lms_comm *c, const char *what,
                                   struct lms_error *err);

/* comm_mpi.c: LMS_EUNSUPPORTED everywhere when built without MPI. */
enum lms_status comm_mpi_init(struct lms_comm *c, struct lms_error *err);
void comm_mpi_finalize(struct lms_comm *c);
void comm_mpi_abort(struct lms_comm *c, int code);
enum lms_status comm_mpi_reduce_scatter(struct lms_comm *c, float *buf, int64_t chunk,
                                        struct lms_error *err);
enum lms_status comm_mpi_all_gather(struct lms_comm *c, float *buf, int64_t chunk,
                                    struct lms_error *err);
enum lms_status comm_mpi_sum(struct lms_comm *c, double *v, int64_t n, struct lms_error *err);
enum lms_status comm_mpi_max(struct lms_comm *c, int64_t *v, int64_t n, struct lms_error *err);
enum lms_status comm_mpi_broadcast(struct lms_comm *c, void *buf, size_t bytes, int root,
                                   struct lms_error *err);

/* comm_nccl.c */
enum lms_status comm_nccl_open(struct lms_comm *c, int device, struct comm_nccl **out,
                               struct lms_error *err);
void comm_nccl_close(struct comm_nccl *n, bool abort);
enum lms_status comm_nccl_reduce_scatter(struct lms_comm *c, float *buf, int64_t chunk,
                                         struct lms_error *err);
enum lms_status comm_nccl_all_gather(struct lms_comm *c, float *buf, int64_t chunk,
                                     struct lms_error *err);

#endif
