/* The communication layer's public calls (include/lms/comm.h): what the launcher says, opening
 * and closing, and the dispatch of the fp32 collectives to MPI or NCCL. The layer sits beside
 * the compute backends (kernels/) and calls none of them: the caller names the device its
 * buffers live on. The files call downwards only: comm.c -> comm_nccl.c -> comm_mpi.c ->
 * comm_wait.c. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm_impl.h"
#include "lms/alloc.h"

/* A non-negative decimal from the environment; -1 when absent or not a number. */
static int env_int(const char *name)
{
    const char *s = getenv(name);
    if (!s || !*s)
        return -1;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < 0 || v > 1 << 24)
        return -1;
    return (int)v;
}

void lms_launch_detect(struct lms_launch *out)
{
    *out = (struct lms_launch){.launcher = "none", .world = 1, .local_world = 1};
    /* launcher variables in order of trust: OpenMPI's, then PMI (MPICH, Intel MPI, Slurm's
     * PMI-2), then Slurm's own (a job step started by srun, not a batch script's environment) */
    static const struct {
        const char *launcher, *rank, *world, *local_rank, *local_world;
    } kinds[] = {
        {"openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
         "OMPI_COMM_WORLD_LOCAL_SIZE"},
        {"pmi", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"},
        {"slurm", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", NULL},
    };
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        int rank = env_int(kinds[k].rank), world = env_int(kinds[k].world);
        if (rank < 0 || world < 1 || rank >= world)
            continue;
        if (!strcmp(kinds[k].launcher, "slurm") && !getenv("SLURM_STEP_ID") &&
            !getenv("SLURM_STEPID"))
            continue;
        int lr = env_int(kinds[k].local_rank);
        int lw = kinds[k].local_world ? env_int(kinds[k].local_world) : -1;
        *out = (struct lms_launch){.launched = true, .launcher = kinds[k].launcher, .rank = rank,
                                   .world = world, .local_rank = lr >= 0 ? lr : 0,
                                   .local_world = lw >= 1 ? lw : 0};
        return;
    }
}

enum lms_status lms_comm_open(struct lms_comm **out, struct lms_error *err)
{
    *out = NULL;
    struct lms_launch l;
    lms_launch_detect(&l);
    const char *self = getenv("LMS_COMM_SELF");
    bool alone = !l.launched && self && !strcmp(self, "1");
    if (!l.launched && !alone)
        return LMS_OK;
    struct lms_comm *c = lms_calloc(1, sizeof *c);
    if (!c)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    c->launch = l;
    c->rank = l.rank;
    c->world = l.world;
    c->timeout_s = 600;
    const char *t = getenv("LMS_COMM_TIMEOUT");
    if (t && *t) {
        char *end;
        double v = strtod(t, &end);
        if (*end || !(v > 0)) {
            lms_free(c);
            return lms_error_set(err, LMS_EINVAL, "$LMS_COMM_TIMEOUT '%s' is not a positive "
                                 "number of seconds", t);
        }
        c->timeout_s = v;
    }
    if (alone) { /* one rank, no MPI: host collectives are identities */
        *out = c;
        return LMS_OK;
    }
    enum lms_status rc = comm_mpi_init(c, err);
    if (rc) {
        lms_free(c);
        return rc;
    }
    if (c->rank != l.rank || c->world != l.world) {
        rc = lms_error_set(err, LMS_EINVAL, "the launcher (%s) says rank %d of %d, MPI says rank "
                           "%d of %d: was the program started by another MPI's launcher?",
                           l.launcher, l.rank, l.world, c->rank, c->world);
        comm_mpi_finalize(c);
        lms_free(c);
        return rc;
    }
    c->mpi = true;
    *out = c;
    return LMS_OK;
}

enum lms_status lms_comm_attach_device(struct lms_comm *c, const char *name,
                                       struct lms_error *err)
{
    if (!c || c->nccl)
        return LMS_OK;
    if (!strncmp(name, "cpu", 3))
        return LMS_OK;
    int dev = 0;
    if (!strncmp(name, "cuda:", 5)) {
        dev = atoi(name + 5);
        return comm_nccl_open(c, dev, &c->nccl, err);
    }
    return lms_error_set(err, LMS_EUNSUPPORTED, "no collective library for the %s backend",
                         name);
}

void lms_comm_close(struct lms_comm *c)
{
    if (!c)
        return;
    comm_nccl_close(c->nccl, false);
    if (c->mpi)
        comm_mpi_finalize(c);
    lms_free(c);
}

void lms_comm_abort(struct lms_comm *c, int exit_code)
{
    if (!c)
        exit(exit_code);
    comm_nccl_close(c->nccl, true);
    if (c->mpi)
        comm_mpi_abort(c, exit_code);
    exit(exit_code);
}

int lms_comm_rank(const struct lms_comm *c)
{
    return c ? c->rank : 0;
}

int lms_comm_world(const struct lms_comm *c)
{
    return c ? c->world : 1;
}

const char *lms_comm_backend(const struct lms_comm *c)
{
    return !c ? "none" : c->nccl ? "nccl" : c->mpi ? "mpi" : "self";
}

int64_t lms_comm_chunk(int64_t n, int world)
{
    if (world < 1)
        world = 1;
    int64_t per = (n + world - 1) / world;
    return (per + 15) & ~(int64_t)15;
}

enum lms_status lms_comm_reduce_scatter(struct lms_comm *c, float *buf, int64_t chunk,
                                        struct lms_error *err)
{
    /* one rank still goes through the library (a copy in place), so that a one-process launch
     * runs the same calls as a large one */
    if (!c || (!c->nccl && !c->mpi))
        return LMS_OK;
    return c->nccl ? comm_nccl_reduce_scatter(c, buf, chunk, err)
                   : comm_mpi_reduce_scatter(c, buf, chunk, err);
}

enum lms_status lms_comm_all_gather(struct lms_comm *c, float *buf, int64_t chunk,
                                    struct lms_error *err)
{
    if (!c || (!c->nccl && !c->mpi))
        return LMS_OK;
    return c->nccl ? comm_nccl_all_gather(c, buf, chunk, err)
                   : comm_mpi_all_gather(c, buf, chunk, err);
}

enum lms_status lms_comm_sum(struct lms_comm *c, double *v, int64_t n, struct lms_error *err)
{
    return !c || c->world == 1 || n == 0 ? LMS_OK : comm_mpi_sum(c, v, n, err);
}

enum lms_status lms_comm_max(struct lms_comm *c, int64_t *v, int64_t n, struct lms_error *err)
{
    return !c || c->world == 1 || n == 0 ? LMS_OK : comm_mpi_max(c, v, n, err);
}

