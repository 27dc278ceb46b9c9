/* lmsurgeon: communication between the processes of one data-parallel run (distill, score).
 *
 * Processes are started by the cluster's own launcher (mpirun, or Slurm's srun) and find each
 * other through MPI; nothing here opens sockets of its own. A run started without a launcher
 * has no communicator at all (lms_comm_open gives NULL) and computes exactly as a plain
 * single-process run.
 *
 * Two backends share this interface:
 *   MPI   collectives on host memory, for the CPU backend (built when MPI is found);
 *   NCCL  collectives on device memory, for the CUDA backend: libnccl.so.2 is loaded at run time
 *         and its communicator is bootstrapped over MPI (rank 0 broadcasts the unique id).
 * Scalars (losses, norms, flags, the scoring sums) always travel over MPI on the host; the
 * large fp32 buffers (gradients, weights) travel over the backend attached with
 * lms_comm_attach_device, so the calling code is the same on both.
 *
 * Collectives on fp32 buffers work in place on a buffer of world x chunk floats split into equal
 * chunks, chunk r belonging to rank r (the ZeRO-1 layout of the trainer). */
#ifndef LMS_COMM_H
#define LMS_COMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lms/backend.h"
#include "lms/error.h"

/* What the launcher told this process, from its environment (OpenMPI's OMPI_COMM_WORLD_*, the
 * PMI / PMIx variables of MPICH and Slurm's PMI, Slurm's SLURM_PROCID / SLURM_NTASKS /
 * SLURM_LOCALID). */
struct lms_launch {
    bool launched;        /* a launcher's variables were found */
    const char *launcher; /* "openmpi", "pmi", "slurm", or "none" */
    int rank, world;      /* 0 / 1 without a launcher */
    int local_rank;       /* rank among the processes of this host (selects the GPU) */
    int local_world;      /* processes on this host */
};

void lms_launch_detect(struct lms_launch *out);

struct lms_comm; /* opaque */

/* Opens the communicator when a launcher started this process (MPI_Init), NULL otherwise
 * (*out = NULL, LMS_OK): a single process computes as it always did. LMS_EUNSUPPORTED when a
 * launcher is detected but this build has no MPI. Call once per process.
 * Without a launcher, LMS_COMM_SELF=1 in the environment opens a communicator of this process
 * alone, without MPI: the data-parallel code paths (sharded optimiser step, NCCL once a CUDA
 * backend is attached) run over one rank, which is how they are checked on one GPU of a
 * machine that has no MPI. */
enum lms_status lms_comm_open(struct lms_comm **out, struct lms_error *err);

/* Moves the fp32 collectives to the device a backend computes on, named as lms_backend_name
 * spells it ("cpu...", "cuda:N"): nothing for the CPU; NCCL for CUDA (loaded at run time, one
 * communicator over all ranks, unique id broadcast over MPI). LMS_EUNSUPPORTED for a device
 * without a collective library. The buffers given to the fp32 collectives must then be
 * allocations of that backend. Taking the name, not the backend, keeps comm/ free of kernels/. */
enum lms_status lms_comm_attach_device(struct lms_comm *c, const char *backend_name,
                                       struct lms_error *err);

/* Ends the run's communication (MPI_Finalize). NULL does nothing. */
void lms_comm_close(struct lms_comm *c);

/* Ends every process of the run at once (a rank that cannot go on, while the others wait in a
 * collective). */
void lms_comm_abort(struct lms_comm *c, int exit_code);

int lms_comm_rank(const struct lms_comm *c);  /* 0 for NULL */
int lms_comm_world(const struct lms_comm *c); /* 1 for NULL */
/* "mpi" or "nccl" (the fp32 collectives), "self" (LMS_COMM_SELF without NCCL), "none" for
 * NULL. */
const char *lms_comm_backend(const struct lms_comm *c);

/* In place over world x chunk floats: afterwards chunk r of rank r holds the sum over ranks of
 * every rank's chunk r (the other chunks are left unspecified). */
enum lms_status lms_comm_reduce_scatter(struct lms_comm *c, float *buf, int64_t chunk,
                                        struct lms_error *err);
/* In place over world x chunk floats: afterwards every rank holds every rank's chunk r. */
enum lms_status lms_comm_all_gather(struct lms_comm *c, float *buf, int64_t chunk,
                                    struct lms_error *err);
/* Host doubles summed over ranks, in place (every rank gets the sum). */
enum lms_status lms_comm_sum(struct lms_comm *c, double *v, int64_t n, struct lms_error *err);
/* Host int64s: the maximum over ranks, in place. */
enum lms_status lms_comm_max(struct lms_comm *c, int64_t *v, int64_t n, struct lms_error *err);

/* ZeRO-1 layout: chunk size (floats, a multiple of 16) that splits n floats into world equal
 * chunks covering at least n. */
int64_t lms_comm_chunk(int64_t n, int world);

#endif
