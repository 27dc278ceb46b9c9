/* Allocation through one hook so tests can inject failures (include/lms/alloc.h). */
#include "lms/alloc.h"
#include "common/alloc_hook.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#ifdef LMS_ROUTE_JANSSON
#include <jansson.h>
#endif

static long fail_after = -1; /* < 0: never fail */
static long n_allocs;
static atomic_long n_failed;  /* allocations that returned NULL, injected or real */

static int should_fail(void)
{
    n_allocs++;
    if (fail_after < 0)
        return 0;
    if (fail_after == 0)
        return 1;
    fail_after--;
    return 0;
}

long lms__alloc_fail_after(long k)
{
    long n = n_allocs;
    n_allocs = 0;
    fail_after = k;
    return n;
}

void *lms_malloc(size_t n)
{
    void *r = should_fail() ? NULL : malloc(n ? n : 1);
    if (!r)
        atomic_fetch_add(&n_failed, 1);
    return r;
}

void *lms_calloc(size_t count, size_t size)
{
    void *r = should_fail() ? NULL : calloc(count ? count : 1, size ? size : 1);
    if (!r)
        atomic_fetch_add(&n_failed, 1);
    return r;
}

void *lms_realloc(void *p, size_t n)
{
    void *r = should_fail() ? NULL : realloc(p, n ? n : 1);
    if (!r)
        atomic_fetch_add(&n_failed, 1);
    return r;
}

void lms_free(void *p)
{
    free(p);
}

long lms_alloc_failures(void)
{
    return atomic_load(&n_failed);
}

char *lms_strndup(const char *s, size_t n)
{
    char *d = lms_malloc(n + 1);
    if (!d)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *lms_strdup(const char *s)
{
    return lms_strndup(s, strlen(s));
}

#ifdef LMS_ROUTE_JANSSON
/* jansson allocates through the same hook, so that the allocation-failure tests reach the JSON
 * parsing and building of every reader and writer too. Installed when the program is loaded,
 * before any JSON value exists; this file is linked into every program that uses the library
 * (everything allocates through it). Only the library defines LMS_ROUTE_JANSSON: the CUDA
 * module carries its own copy of this file and must leave jansson alone. */
__attribute__((constructor)) static void route_jansson_allocations(void)
{
    json_set_alloc_funcs(lms_malloc, lms_free);
}
#endif
