/* Generated views (include/lms/ir.h, LMS_VIEW_GENERATED): their elements are computed when read.
 * Library-internal: view.c reads through it; tests reach the raw draws. */
#ifndef LMS_SURGERY_GENERATE_H
#define LMS_SURGERY_GENERATE_H

#include <stdint.h>

#include "lms/ir.h"

/* Reads elements [e0, e0 + n) of the generated view v into dst, in v's dtype (the range is
 * checked by the caller). Splits the work over v's threads; the result does not depend on it. */
enum lms_status lms__view_generate(const struct lms_view *v, int64_t e0, int64_t n, void *dst,
                                   struct lms_error *err);

/* Standard normal draws number e0 .. e0 + n - 1 of the stream key, as f32. Draw i depends on
 * (key, i) only. */
void lms__normal_fill(uint64_t key, int64_t e0, int64_t n, float *out);

#endif
