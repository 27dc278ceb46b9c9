/* Status table and the struct lms_error helpers (include/lms/error.h). */
#include "lms/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *lms_status_name(enum lms_status s)
{
    switch (s) {
#define LMS_X(name, value, text)                                                           \
    case LMS_##name:                                                                       \
        return #name;
        LMS_STATUS_MAP(LMS_X)
#undef LMS_X
    }
    return "UNKNOWN";
}

const char *lms_status_text(enum lms_status s)
{
    switch (s) {
#define LMS_X(name, value, text)                                                           \
    case LMS_##name:                                                                       \
        return text;
        LMS_STATUS_MAP(LMS_X)
#undef LMS_X
    }
    return "unknown status";
}

void lms_error_clear(struct lms_error *err)
{
    if (!err)
        return;
    err->status = LMS_OK;
    err->msg[0] = '\0';
}

enum lms_status lms_error_vset(struct lms_error *err, enum lms_status s, const char *fmt,
                               va_list ap)
{
    if (!err)
        return s;
    err->status = s;
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    /* keep the message on one line whatever the inputs contained */
    for (char *p = err->msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    return s;
}

enum lms_status lms_error_set(struct lms_error *err, enum lms_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lms_error_vset(err, s, fmt, ap);
    va_end(ap);
    return s;
}

enum lms_status lms_error_wrap(struct lms_error *err, const char *fmt, ...)
{
    if (!err)
        return LMS_EINVAL;
    char prefix[LMS_ERROR_MSG_CAP];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    if (n < 0)
        return err->status;
    char joined[LMS_ERROR_MSG_CAP];
    snprintf(joined, sizeof(joined), "%s%s", prefix, err->msg);
    memcpy(err->msg, joined, sizeof(joined));
    if (err->status == LMS_OK)
        err->status = LMS_EINVAL; /* wrapping nothing is a caller bug, but keep a failure */
    return err->status;
}

void lms__bug(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "lmsurgeon: BUG at %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}
