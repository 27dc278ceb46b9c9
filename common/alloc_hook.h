/* The allocator's test hook (common/alloc.c), kept out of the public headers: a test makes the
 * k-th allocation of the library fail to check that each path returns LMS_ENOMEM without
 * leaking. */
#ifndef LMS_ALLOC_HOOK_H
#define LMS_ALLOC_HOOK_H

/* The next k allocations succeed, the (k+1)-th and later ones fail, until reset with k < 0.
 * Returns the number of allocations made since the last call. */
long lms__alloc_fail_after(long k);

#endif
