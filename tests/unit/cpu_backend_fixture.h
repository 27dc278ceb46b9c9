/* Shared set-up of the unit tests that drive the CPU backend's ops directly: the backend (two
 * threads) opened before each test and freed after it, and a seeded xorshift draw of uniform
 * values. A test defines CPU_FIXTURE_SEED before including this header, so that each keeps its
 * own fixed sequence. */
#ifndef LMS_TEST_CPU_BACKEND_FIXTURE_H
#define LMS_TEST_CPU_BACKEND_FIXTURE_H

#include <stdint.h>

#include "check_main.h"
#include "lms/backend.h"

#ifndef CPU_FIXTURE_SEED
#error "define CPU_FIXTURE_SEED before including cpu_backend_fixture.h"
#endif

static struct lms_backend *be;

static void setup(void)
{
    struct lms_error err;
    struct lms_backend_opts o = {.n_threads = 2};
    ck_assert_msg(lms_backend_open_name("cpu", &o, &be, &err) == LMS_OK, "%s", err.msg);
}

static void teardown(void)
{
    lms_backend_free(be);
    be = NULL;
}

static uint64_t rng_state = CPU_FIXTURE_SEED;
static float frand(void) /* uniform in [-1, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) / (double)(1ull << 24) * 2.0 - 1.0);
}

#endif
