/* The YAML subset the NeMo 2 and Megatron-Bridge configs need: flat "key: value" scalars (and
 * flow lists of scalars) under one top-level section, nested blocks skipped. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/layouts/nemo_impl.h"
#include "formats/text/unicode.h"
#include "lms/alloc.h"
#include "lms/json.h"

/* Copies src[0, n) into dst (cap bytes, NUL-terminated), cut short where it does not fit at a
 * character boundary, so that a valid UTF-8 text stays valid (jansson refuses anything else). */
static void copy_text(char *dst, size_t cap, const char *src, size_t n)
{
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--;
    }
    memcpy(dst, src, n);
    dst[n] = 0;
}

/* Scalar YAML value text -> JSON (true/false/null, integers, floats, quoted or plain strings,
 * and flow lists of those: "[4096, 0]"). */
static json_t *yaml_scalar(const char *v)
{
    size_t n = strlen(v);
    if (n >= 2 && v[0] == '[' && v[n - 1] == ']') {
        json_t *a = json_array();
        char item[256];
        for (size_t at = 1; a && at < n - 1;) {
            size_t e = at;
            while (e < n - 1 && v[e] != ',')
                e++;
            size_t s0 = at, s1 = e;
            while (s0 < s1 && v[s0] == ' ')
                s0++;
            while (s1 > s0 && v[s1 - 1] == ' ')
                s1--;
            if (s1 > s0) {
                copy_text(item, sizeof(item), v + s0, s1 - s0);
                if (json_array_append_new(a, yaml_scalar(item)) != 0) {
                    json_decref(a);
                    return NULL;
                }
            }
            at = e + 1;
        }
        return a;
    }
    if (n >= 2 && (v[0] == '\'' || v[0] == '"') && v[n - 1] == v[0])
        return json_stringn(v + 1, n - 2);
    if (strcmp(v, "true") == 0 || strcmp(v, "True") == 0)
        return json_true();
    if (strcmp(v, "false") == 0 || strcmp(v, "False") == 0)
        return json_false();
    if (strcmp(v, "null") == 0 || strcmp(v, "~") == 0 || n == 0)
        return json_null();
    char *end;
    errno = 0;
    long long i = strtoll(v, &end, 10);
    if (end != v && !*end && !errno)
        return json_integer(i);
    double dv = strtod(v, &end);
    /* a number beyond double's range stays text: JSON (and jansson) hold only finite reals, and
     * the field's reader then refuses it as not a number */
    return end != v && !*end && isfinite(dv) ? json_real(dv) : json_string(v);
}

/* A "key:" line opening a nested block: what the block turns out to hold. */
struct yaml_pending {
    char key[128];      /* "" when no block is open */
    char target[256];   /* its "_target_" */
    bool call;          /* "_call_: true": an object built by a call, not a symbol */
    json_t *list;       /* its "- item" lines */
};

/* Closes the open block: a list of scalars becomes an array; a "{_target_: x, _call_: false}"
 * block (how NeMo and Bridge write dtypes and functions, e.g. params_dtype: torch.float32)
 * becomes the string "x"; any other block is skipped. */
static enum lms_status yaml_flush(struct yaml_pending *pb, json_t *o, struct lms_error *err)
{
    int rc = 0;
    if (pb->key[0] && pb->list)
        rc = json_object_set(o, pb->key, pb->list);
    else if (pb->key[0] && pb->target[0] && !pb->call)
        rc = json_object_set_new(o, pb->key, json_string(pb->target));
    json_decref(pb->list);
    memset(pb, 0, sizeof(*pb));
    return rc ? lms_error_set(err, LMS_ENOMEM, "out of memory") : LMS_OK;
}

enum lms_status lms__nemo_yaml_fields(const char *text, size_t len, const char *section,
                                      json_t **out, char *cls, size_t cls_cap,
                                      struct lms_error *err)
{
    /* YAML is Unicode text; the values become JSON strings, which must be valid UTF-8 */
    size_t bad = lms__utf8_check((const unsigned char *)text, len);
    if (bad < len) {
        size_t line_no = 1;
        for (size_t i = 0; i < bad; i++)
            line_no += text[i] == '\n';
        return lms_error_set(err, LMS_EFORMAT, "line %zu: not valid UTF-8 (byte 0x%02x at offset "
                             "%zu)", line_no, (unsigned char)text[bad], bad);
    }
    json_t *o = json_object();
    if (!o)
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    size_t indent = section ? 2 : 0;
    bool in_section = !section;
    struct yaml_pending pb = {0};
    enum lms_status rc = LMS_OK;
    cls[0] = 0;
    char line[1024];
    for (size_t at = 0; at < len && !rc;) {
        const char *nl = memchr(text + at, '\n', len - at);
        size_t ll = nl ? (size_t)(nl - (text + at)) : len - at;
        copy_text(line, sizeof(line), text + at, ll);
        at += ll + 1;
        line[strcspn(line, "\r")] = 0;
        size_t sp = strspn(line, " ");
        if (!line[sp] || line[sp] == '#')
            continue;
        if (section && sp == 0) {
            rc = yaml_flush(&pb, o, err);
            char want[128];
            snprintf(want, sizeof(want), "%s:", section);
            in_section = strcmp(line, want) == 0;
            continue;
        }
        if (!in_section || sp < indent)
            continue;
        if (pb.key[0] && sp == indent && line[sp] == '-') { /* "- item" of the open key */
            if (!pb.list)
                pb.list = json_array();
            const char *v = line + sp + 1;
            v += strspn(v, " ");
            if (!pb.list || json_array_append_new(pb.list, yaml_scalar(v)) != 0)
                rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
            continue;
        }
        char *colon = strchr(line + sp, ':');
        if (!colon || (colon[1] != ' ' && colon[1] != 0))
            continue;
        *colon = 0;
        const char *k = line + sp, *v = colon[1] ? colon + 2 : colon + 1;
        v += strspn(v, " ");
        if (sp > indent) { /* inside the open block: only its own _target_/_call_ matter */
            if (pb.key[0] && sp == indent + 2 && strcmp(k, "_target_") == 0)
                copy_text(pb.target, sizeof(pb.target), v, strlen(v));
            else if (pb.key[0] && sp == indent + 2 && strcmp(k, "_call_") == 0)
                pb.call = strcmp(v, "true") == 0 || strcmp(v, "True") == 0;
            continue;
        }
        rc = yaml_flush(&pb, o, err);
        if (rc)
            break;
        if (!*v) { /* a nested block or a block list follows */
            copy_text(pb.key, sizeof(pb.key), k, strlen(k));
            continue;
        }
        if (strcmp(k, "_target_") == 0) {
            const char *dot = strrchr(v, '.');
            copy_text(cls, cls_cap, dot ? dot + 1 : v, strlen(dot ? dot + 1 : v));
            continue;
        }
        json_t *val = yaml_scalar(v);
        if (!val || json_object_set_new(o, k, val) != 0)
            rc = lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    if (!rc)
        rc = yaml_flush(&pb, o, err);
    json_decref(pb.list);
    if (rc) {
        json_decref(o);
        return rc;
    }
    *out = o;
    return LMS_OK;
}
