/* lmsurgeon: the library's one allocator hook.
 *
 * Every heap allocation of the library goes through lms_malloc/lms_calloc/lms_realloc/lms_free
 * so that tests can make the k-th allocation fail (lms__alloc_fail_after, common/alloc_hook.h)
 * and check that each path returns LMS_ENOMEM without leaking. */
#ifndef LMS_ALLOC_H
#define LMS_ALLOC_H

#include <stddef.h>

void *lms_malloc(size_t n);
void *lms_calloc(size_t count, size_t size);
void *lms_realloc(void *p, size_t n);
void lms_free(void *p); /* lms_free(NULL) does nothing */
char *lms_strdup(const char *s);
char *lms_strndup(const char *s, size_t n);

/* How many allocations have returned NULL since the program started (injected failures and real
 * ones). Code that calls a library which reports an allocation failure like any other error
 * (jansson's parser) compares it before and after the call to tell LMS_ENOMEM apart. */
long lms_alloc_failures(void);

#endif
