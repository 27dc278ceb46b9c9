/* Waiting for the other ranks (comm/comm_impl.h): the clock, the pause between polls and the
 * error a collective that never completes gives. The bottom of the communication layer, called
 * by both the MPI and the NCCL files. */
#include <time.h>

#include "comm/comm_impl.h"

double comm_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void comm_backoff(unsigned polls)
{
    long ns = polls < 50 ? 20000L : 1000000L;
    struct timespec ts = {0, ns};
    nanosleep(&ts, NULL);
}

enum lms_status comm_timeout_error(const struct lms_comm *c, const char *what,
                                   struct lms_error *err)
{
    return lms_error_set(err, LMS_EIO,
                         "rank %d of %d: %s: no answer from the other ranks for %.0f s (a rank "
                         "has died or stopped; $LMS_COMM_TIMEOUT sets the limit)",
                         c->rank, c->world, what, c->timeout_s);
}
