/* lmsurgeon: JSON helpers over jansson.
 *
 * Parsing uses jansson (strict UTF-8, duplicate keys rejected, insertion order kept). Writing
 * uses our own emitter so that the text matches Python's json.dumps, which is what the Hugging
 * Face stack writes: shortest round-trip floats in repr style (1e-06, 1000000.0), optional
 * 2-space indentation, ensure_ascii escaping (\uXXXX with surrogate pairs) or raw UTF-8. */
#ifndef LMS_JSON_H
#define LMS_JSON_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lms/error.h"

struct lms_buf_str {
    char *data;   /* NUL-terminated; owned */
    size_t len;
    size_t cap;
};

enum lms_json_style {
    LMS_JSON_COMPACT = 0,      /* separators (',', ':'), raw UTF-8 */
    LMS_JSON_INDENT2 = 1 << 0, /* indent=2, separators (',', ': ') */
    LMS_JSON_ASCII = 1 << 1,   /* ensure_ascii=True */
    LMS_JSON_SORT_KEYS = 1 << 2,
};

/* Appends the Python-style text of v to out (grown as needed). */
enum lms_status lms_json_dump(const json_t *v, unsigned style, struct lms_buf_str *out,
                              struct lms_error *err);
/* Formats a double as Python's repr() does ("1e-06", "0.02", "1000000.0", "NaN"). */
void lms_json_format_double(double d, char *dst, size_t dst_cap);

/* Growable string helpers. */
enum lms_status lms_buf_str_append(struct lms_buf_str *b, const char *s, size_t n,
                                   struct lms_error *err);
enum lms_status lms_buf_str_printf(struct lms_buf_str *b, struct lms_error *err,
                                   const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void lms_buf_str_release(struct lms_buf_str *b);

/* Parses a file or a buffer; errors name what (path or label), line and column. */
enum lms_status lms_json_load_file(const char *path, size_t max_bytes, json_t **out,
                                   struct lms_error *err);
enum lms_status lms_json_load_buffer(const char *label, const char *data, size_t len,
                                     json_t **out, struct lms_error *err);

#endif
