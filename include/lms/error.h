/* lmsurgeon: status codes and the error value every fallible call fills.
 *
 * Expected failures (bad files, out of memory, I/O) are returned as an enum lms_status and
 * described in a caller-provided struct lms_error: one line, the most specific message written
 * where the failure is detected, outer layers prefixing context ("reading 'x': tensor 'y': ...").
 * The library never prints, exits or aborts on bad input; programmer mistakes use LMS_BUG. */
#ifndef LMS_ERROR_H
#define LMS_ERROR_H

#include <stdarg.h>
#include <stdbool.h>

#define LMS_STATUS_MAP(X)                                                                  \
    X(OK, 0, "success")                                                                    \
    X(ENOMEM, -1, "out of memory")                                                         \
    X(EFORMAT, -2, "malformed input")                                                      \
    X(EIO, -3, "input/output error")                                                       \
    X(EUNSUPPORTED, -4, "unsupported")                                                     \
    X(ESHAPE, -5, "shape mismatch")                                                        \
    X(EINVAL, -6, "invalid argument")                                                      \
    X(EDEVICE, -7, "device error")                                                         \
    X(EEXIST, -8, "already exists")                                                        \
    X(EINTERRUPTED, -9, "interrupted")                                                    \
    X(ENONFINITE, -10, "not finite")

enum lms_status {
#define LMS_X(name, value, text) LMS_##name = value,
    LMS_STATUS_MAP(LMS_X)
#undef LMS_X
};

#define LMS_ERROR_MSG_CAP 1024

struct lms_error {
    enum lms_status status;      /* LMS_OK until something fails */
    char msg[LMS_ERROR_MSG_CAP]; /* one line, lowercase start, no final period */
};

/* Name ("EFORMAT") and description ("malformed input") of a status; never NULL. */
const char *lms_status_name(enum lms_status s);
const char *lms_status_text(enum lms_status s);

/* Resets err to LMS_OK with an empty message. err may be NULL. */
void lms_error_clear(struct lms_error *err);

/* Records status s with a printf-style message and returns s, so callers can write
 * `return lms_error_set(err, LMS_EFORMAT, "...")`. err may be NULL (the message is dropped). */
enum lms_status lms_error_set(struct lms_error *err, enum lms_status s, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
enum lms_status lms_error_vset(struct lms_error *err, enum lms_status s, const char *fmt,
                               va_list ap);

/* Prefixes context to the message already recorded ("reading 'f': " + msg) and returns the
 * recorded status. A message that would not fit is truncated at the end. */
enum lms_status lms_error_wrap(struct lms_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Programmer mistakes: print file:line and abort. Never used for bad input. */
void lms__bug(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));
#define LMS_BUG(...) lms__bug(__FILE__, __LINE__, __VA_ARGS__)
#define lms_assert(cond)                                                                   \
    do {                                                                                   \
        if (!(cond))                                                                       \
            lms__bug(__FILE__, __LINE__, "assertion failed: %s", #cond);                   \
    } while (0)

#endif
