/* The --multiple-of rule shared by planning (plan.c) and the search (search.c): a width W is
 * valid when W % M == 0; head counts are valid when n x head_dim is, that is when n is a
 * multiple of M / gcd(M, head_dim) (head_dim itself is never pruned). */
#ifndef LMS_SURGERY_MULTIPLE_H
#define LMS_SURGERY_MULTIPLE_H

#include <stdint.h>

/* The largest M accepted (keeps every product of the rule far from overflow). */
#define LMS_MULTIPLE_OF_MAX (INT64_C(1) << 20)

static inline int64_t lms__gcd(int64_t a, int64_t b)
{
    while (b) {
        int64_t r = a % b;
        a = b;
        b = r;
    }
    return a;
}

static inline int64_t lms__lcm(int64_t a, int64_t b)
{
    return a / lms__gcd(a, b) * b;
}

/* The multiple a count of heads (or groups) of head_dim d must be for rows that are multiples
 * of m (m < 1 counts as 1). */
static inline int64_t lms__heads_unit(int64_t m, int64_t d)
{
    return m > 1 ? m / lms__gcd(m, d) : 1;
}

#endif
