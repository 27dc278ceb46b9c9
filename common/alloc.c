/* Allocation through one hook so tests can inject failures (include/lms/alloc.h). */
#include "lms/alloc.h"

#include <stdlib.h>
#include <string.h>

static long fail_after = -1; /* < 0: never fail */
static long n_allocs;

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

long lms_alloc_fail_after(long k)
{
    long n = n_allocs;
    n_allocs = 0;
    fail_after = k;
    return n;
}

void *lms_malloc(size_t n)
{
    if (should_fail())
        return NULL;
    return malloc(n ? n : 1);
}

void *lms_calloc(size_t count, size_t size)
{
    if (should_fail())
        return NULL;
    return calloc(count ? count : 1, size ? size : 1);
}

void *lms_realloc(void *p, size_t n)
{
    if (should_fail())
        return NULL;
    return realloc(p, n ? n : 1);
}

void lms_free(void *p)
{
    free(p);
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
