/* Each tests/unit/test_*.c defines suite(); check_main.c runs it. fixture_path() joins a path
 * below fixtures/ (LMS_FIXTURES, set by meson test). */
#ifndef LMS_TEST_CHECK_MAIN_H
#define LMS_TEST_CHECK_MAIN_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>

Suite *suite(void);

static inline const char *fixture_path(const char *rel, char *dst, size_t cap)
{
    const char *root = getenv("LMS_FIXTURES");
    snprintf(dst, cap, "%s/%s", root ? root : "fixtures", rel);
    return dst;
}

#endif
