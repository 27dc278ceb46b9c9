/* Python-compatible JSON emission and checked loading (include/lms/json.h). */
#include "lms/json.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lms/alloc.h"

enum lms_status lms_buf_str_append(struct lms_buf_str *b, const char *s, size_t n,
                                   struct lms_error *err)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = lms_realloc(b->data, cap);
        if (!d)
            return lms_error_set(err, LMS_ENOMEM, "out of memory");
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return LMS_OK;
}

enum lms_status lms_buf_str_printf(struct lms_buf_str *b, struct lms_error *err,
                                   const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return lms_error_set(err, LMS_EINVAL, "formatting failed");
    if ((size_t)n < sizeof(small))
        return lms_buf_str_append(b, small, (size_t)n, err);
    char *big = lms_malloc((size_t)n + 1);
    if (!big)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    enum lms_status rc = lms_buf_str_append(b, big, (size_t)n, err);
    lms_free(big);
    return rc;
}

void lms_buf_str_release(struct lms_buf_str *b)
{
    lms_free(b->data);
    memset(b, 0, sizeof(*b));
}

void lms_json_format_double(double d, char *dst, size_t dst_cap)
{
    if (isnan(d)) {
        snprintf(dst, dst_cap, "NaN");
        return;
    }
    if (isinf(d)) {
        snprintf(dst, dst_cap, d > 0 ? "Infinity" : "-Infinity");
        return;
    }
    /* shortest digit string that round-trips, as Python's repr */
    char buf[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof(buf), "%.*e", prec - 1, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    /* buf = [-]D[.DDD]e[+-]XX: split into digits and decimal exponent */
    char digits[24];
    int nd = 0;
    const char *p = buf;
    bool neg = *p == '-';
    if (neg)
        p++;
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9')
            digits[nd++] = *p;
    int exp10 = (int)strtol(p + 1, NULL, 10); /* value = 0.d1d2.. * 10^(exp10+1) */
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = '\0';
    char out[64];
    size_t o = 0;
    if (neg)
        out[o++] = '-';
    if (exp10 < -4 || exp10 >= 16) {
        out[o++] = digits[0];
        if (nd > 1) {
            out[o++] = '.';
            memcpy(out + o, digits + 1, (size_t)nd - 1);
            o += (size_t)nd - 1;
        }
        o += (size_t)snprintf(out + o, sizeof(out) - o, "e%c%02d", exp10 < 0 ? '-' : '+',
                              abs(exp10));
    } else if (exp10 < 0) {
        out[o++] = '0';
        out[o++] = '.';
        for (int i = 0; i < -exp10 - 1; i++)
            out[o++] = '0';
        memcpy(out + o, digits, (size_t)nd);
        o += (size_t)nd;
    } else {
        for (int i = 0; i <= exp10; i++)
            out[o++] = i < nd ? digits[i] : '0';
        out[o++] = '.';
        if (nd > exp10 + 1) {
            memcpy(out + o, digits + exp10 + 1, (size_t)(nd - exp10 - 1));
            o += (size_t)(nd - exp10 - 1);
        } else {
            out[o++] = '0';
        }
    }
    out[o] = '\0';
    snprintf(dst, dst_cap, "%s", out);
}

/* Decodes one UTF-8 code point at s (valid UTF-8 guaranteed by jansson). */
static unsigned decode_utf8(const unsigned char *s, size_t *len)
{
    if (s[0] < 0x80) {
        *len = 1;
        return s[0];
    }
    if ((s[0] & 0xE0) == 0xC0) {
        *len = 2;
        return ((s[0] & 0x1Fu) << 6) | (s[1] & 0x3Fu);
    }
    if ((s[0] & 0xF0) == 0xE0) {
        *len = 3;
        return ((s[0] & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
    }
    *len = 4;
    return ((s[0] & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) |
           (s[3] & 0x3Fu);
}

static enum lms_status dump_string(const char *s, size_t n, bool ascii, struct lms_buf_str *out,
                                   struct lms_error *err)
{
    enum lms_status rc = lms_buf_str_append(out, "\"", 1, err);
    size_t i = 0;
    while (!rc && i < n) {
        unsigned char c = (unsigned char)s[i];
        char esc[16];
        size_t run = i;
        /* copy plain runs in one append */
        while (run < n && (unsigned char)s[run] >= 0x20 && s[run] != '"' && s[run] != '\\' &&
               !(ascii && (unsigned char)s[run] >= 0x7F))
            run++;
        if (run > i) {
            rc = lms_buf_str_append(out, s + i, run - i, err);
            i = run;
            continue;
        }
        switch (c) {
        case '"':
            rc = lms_buf_str_append(out, "\\\"", 2, err);
            i++;
            continue;
        case '\\':
            rc = lms_buf_str_append(out, "\\\\", 2, err);
            i++;
            continue;
        case '\n':
            rc = lms_buf_str_append(out, "\\n", 2, err);
            i++;
            continue;
        case '\r':
            rc = lms_buf_str_append(out, "\\r", 2, err);
            i++;
            continue;
        case '\t':
            rc = lms_buf_str_append(out, "\\t", 2, err);
            i++;
            continue;
        case '\b':
            rc = lms_buf_str_append(out, "\\b", 2, err);
            i++;
            continue;
        case '\f':
            rc = lms_buf_str_append(out, "\\f", 2, err);
            i++;
            continue;
        default:
            break;
        }
        if (c < 0x20) {
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            rc = lms_buf_str_append(out, esc, 6, err);
            i++;
            continue;
        }
        size_t len;
        unsigned cp = decode_utf8((const unsigned char *)s + i, &len);
        if (cp >= 0x10000) {
            cp -= 0x10000;
            snprintf(esc, sizeof(esc), "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
            rc = lms_buf_str_append(out, esc, 12, err);
        } else {
            snprintf(esc, sizeof(esc), "\\u%04x", cp);
            rc = lms_buf_str_append(out, esc, 6, err);
        }
        i += len;
    }
    if (!rc)
        rc = lms_buf_str_append(out, "\"", 1, err);
    return rc;
}

static enum lms_status newline_indent(struct lms_buf_str *out, int depth, struct lms_error *err)
{
    enum lms_status rc = lms_buf_str_append(out, "\n", 1, err);
    for (int i = 0; i < depth && !rc; i++)
        rc = lms_buf_str_append(out, "  ", 2, err);
    return rc;
}

static int cmp_keys(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static enum lms_status dump_value(const json_t *v, unsigned style, int depth,
                                  struct lms_buf_str *out, struct lms_error *err);

static enum lms_status dump_object(const json_t *v, unsigned style, int depth,
                                   struct lms_buf_str *out, struct lms_error *err)
{
    size_t n = json_object_size(v);
    if (n == 0)
        return lms_buf_str_append(out, "{}", 2, err);
    const char **keys = lms_malloc(n * sizeof(*keys));
    if (!keys)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    size_t k = 0;
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)v, key, val) keys[k++] = key;
    if (style & LMS_JSON_SORT_KEYS)
        qsort(keys, n, sizeof(*keys), cmp_keys);
    bool indent = style & LMS_JSON_INDENT2;
    enum lms_status rc = lms_buf_str_append(out, "{", 1, err);
    for (size_t i = 0; i < n && !rc; i++) {
        if (i)
            rc = lms_buf_str_append(out, ",", 1, err);
        if (!rc && indent)
            rc = newline_indent(out, depth + 1, err);
        if (!rc)
            rc = dump_string(keys[i], strlen(keys[i]), style & LMS_JSON_ASCII, out, err);
        if (!rc)
            rc = lms_buf_str_append(out, indent ? ": " : ":", indent ? 2 : 1, err);
        if (!rc)
            rc = dump_value(json_object_get(v, keys[i]), style, depth + 1, out, err);
    }
    if (!rc && indent)
        rc = newline_indent(out, depth, err);
    if (!rc)
        rc = lms_buf_str_append(out, "}", 1, err);
    lms_free(keys);
    return rc;
}

static enum lms_status dump_value(const json_t *v, unsigned style, int depth,
                                  struct lms_buf_str *out, struct lms_error *err)
{
    char num[64];
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return dump_object(v, style, depth, out, err);
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        if (n == 0)
            return lms_buf_str_append(out, "[]", 2, err);
        bool indent = style & LMS_JSON_INDENT2;
        enum lms_status rc = lms_buf_str_append(out, "[", 1, err);
        for (size_t i = 0; i < n && !rc; i++) {
            if (i)
                rc = lms_buf_str_append(out, indent ? "," : ",", 1, err);
            if (!rc && indent)
                rc = newline_indent(out, depth + 1, err);
            if (!rc)
                rc = dump_value(json_array_get(v, i), style, depth + 1, out, err);
        }
        if (!rc && indent)
            rc = newline_indent(out, depth, err);
        if (!rc)
            rc = lms_buf_str_append(out, "]", 1, err);
        return rc;
    }
    case JSON_STRING:
        return dump_string(json_string_value(v), json_string_length(v), style & LMS_JSON_ASCII,
                           out, err);
    case JSON_INTEGER:
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return lms_buf_str_append(out, num, strlen(num), err);
    case JSON_REAL:
        lms_json_format_double(json_real_value(v), num, sizeof(num));
        return lms_buf_str_append(out, num, strlen(num), err);
    case JSON_TRUE:
        return lms_buf_str_append(out, "true", 4, err);
    case JSON_FALSE:
        return lms_buf_str_append(out, "false", 5, err);
    case JSON_NULL:
        return lms_buf_str_append(out, "null", 4, err);
    }
    return lms_error_set(err, LMS_EINVAL, "unknown JSON value type");
}

enum lms_status lms_json_dump(const json_t *v, unsigned style, struct lms_buf_str *out,
                              struct lms_error *err)
{
    return dump_value(v, style, 0, out, err);
}

enum lms_status lms_json_load_buffer(const char *label, const char *data, size_t len,
                                     json_t **out, struct lms_error *err)
{
    json_error_t je;
    long failed = lms_alloc_failures();
    json_t *v = json_loadb(data, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &je);
    if (!v && lms_alloc_failures() != failed) /* jansson words it as a syntax error, or not at all */
        return lms_error_set(err, LMS_ENOMEM, "%s: out of memory", label);
    if (!v)
        return lms_error_set(err, LMS_EFORMAT, "%s: invalid JSON at line %d column %d: %s",
                             label, je.line, je.column, je.text);
    *out = v;
    return LMS_OK;
}

enum lms_status lms_json_load_file(const char *path, size_t max_bytes, json_t **out,
                                   struct lms_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return lms_error_set(err, LMS_EIO, "opening '%s': %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        return lms_error_set(err, LMS_EIO, "reading '%s': not a regular file", path);
    }
    if ((uint64_t)sb.st_size > max_bytes) {
        fclose(f);
        return lms_error_set(err, LMS_EFORMAT, "reading '%s': %lld bytes exceed the %zu-byte limit",
                             path, (long long)sb.st_size, max_bytes);
    }
    char *data = lms_malloc((size_t)sb.st_size + 1);
    if (!data) {
        fclose(f);
        return lms_error_set(err, LMS_ENOMEM, "reading '%s': out of memory", path);
    }
    size_t n = fread(data, 1, (size_t)sb.st_size, f);
    int failed = ferror(f);
    fclose(f);
    if (failed || n != (size_t)sb.st_size) {
        lms_free(data);
        return lms_error_set(err, LMS_EIO, "reading '%s': short read", path);
    }
    char label[1024];
    snprintf(label, sizeof(label), "reading '%s'", path);
    enum lms_status rc = lms_json_load_buffer(label, data, n, out, err);
    lms_free(data);
    return rc;
}
