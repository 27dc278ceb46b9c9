/* Each tests/unit/test_*.c defines suite(); check_main.c runs it. fixture_path() joins a path
 * below fixtures/ (LMS_FIXTURES, set by meson test). */
#ifndef LMS_TEST_CHECK_MAIN_H
#define LMS_TEST_CHECK_MAIN_H

#include <check.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

Suite *suite(void);

struct lms_st_file;
/* Tensor `name` of a reference safetensors file as a malloc'd fp32 array (int64 ids narrowed to
 * int32 when ids); *n gets the element count. NULL when the file has no such tensor. */
void *read_ref(const struct lms_st_file *f, const char *name, bool ids, int64_t *n);

static inline const char *fixture_path(const char *rel, char *dst, size_t cap)
{
    const char *root = getenv("LMS_FIXTURES");
    snprintf(dst, cap, "%s/%s", root ? root : "fixtures", rel);
    return dst;
}

#endif
