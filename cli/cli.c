/* Shared CLI helpers: exit codes, error printing, sizes, progress (cli/cli.h). */
#include "cli/cli.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lms/json.h"

int cli_exit_code(enum lms_status s)
{
    switch (s) {
    case LMS_OK:
        return CLI_EXIT_OK;
    case LMS_EINVAL:
    case LMS_EEXIST:
        return CLI_EXIT_USAGE;
    case LMS_EFORMAT:
    case LMS_EUNSUPPORTED:
    case LMS_ESHAPE:
        return CLI_EXIT_BAD_INPUT;
    case LMS_EIO:
        return CLI_EXIT_IO;
    case LMS_ENOMEM:
        return CLI_EXIT_NOMEM;
    case LMS_EDEVICE:
        return CLI_EXIT_DEVICE;
    case LMS_EINTERRUPTED:
        return cli_interrupt_exit_code();
    case LMS_ENONFINITE:
        return CLI_EXIT_DIVERGED;
    }
    return CLI_EXIT_INTERNAL;
}

/* Prints s with control characters escaped, so that a message naming a hostile tensor or file
 * name stays one line and cannot drive the terminal. */
static void put_escaped(FILE *f, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '\n')
            fputs("\\n", f);
        else if (*p < 0x20 || *p == 0x7f)
            fprintf(f, "\\x%02x", *p);
        else
            fputc(*p, f);
    }
}

int cli_fail(const char *cmd, const struct cli_common *co, const struct lms_error *err)
{
    /* a status set without a message still gets a readable line */
    const char *msg = err->msg[0] ? err->msg : lms_status_text(err->status);
    fprintf(stderr, "lmsurgeon %s: error: ", cmd);
    put_escaped(stderr, msg);
    fputc('\n', stderr);
    int code = cli_exit_code(err->status);
    if (co && co->json) {
        json_t *o = json_pack("{s:b,s:s,s:s,s:i}", "ok", 0, "error", msg, "status",
                              lms_status_name(err->status), "exit_code", code);
        cli_print_json(o);
    }
    return code;
}

void cli_print_json(json_t *o)
{
    struct lms_buf_str b = {0};
    if (o && lms_json_dump(o, LMS_JSON_COMPACT, &b, NULL) == LMS_OK)
        printf("%s\n", b.data);
    lms_buf_str_release(&b);
    if (o)
        json_decref(o);
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "lmsurgeon %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "; see 'lmsurgeon %s --help'\n", cmd);
    return CLI_EXIT_USAGE;
}

void cli_warn_model(const char *cmd, const struct cli_common *co, const struct lms_model *m)
{
    if (!co->quiet && m->warning)
        fprintf(stderr, "lmsurgeon %s: warning: %s\n", cmd, m->warning);
}

void cli_warn_positions(const char *cmd, const struct cli_common *co, const char *path,
                        const struct lms_arch *a, int64_t positions, const char *what)
{
    if (co->quiet || a->max_position <= 0 || positions <= a->max_position)
        return;
    fprintf(stderr, "lmsurgeon %s: warning: %s exceeds the %lld positions '%s' was trained "
            "for (max_position_embeddings): rotary embeddings run past them, but results "
            "there degrade\n", cmd, what, (long long)a->max_position, path);
}

void cli_normalize_flags(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        char *a = argv[i];
        if (strcmp(a, "--") == 0)
            return;
        if (strncmp(a, "--", 2) != 0)
            continue;
        for (char *p = a + 2; *p && *p != '='; p++)
            if (*p == '_')
                *p = '-';
    }
}

bool cli_parse_count(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || v <= 0 || errno == ERANGE)
        return false;
    *out = v;
    return true;
}

bool cli_parse_real(const char *s, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !isfinite(v) || !(v >= 0))
        return false;
    *out = v;
    return true;
}

bool cli_parse_param_count(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || !(v > 0) || !isfinite(v) || errno == ERANGE)
        return false;
    double scale = 1;
    switch (*end) {
    case 'K': case 'k': scale = 1e3; end++; break;
    case 'M': case 'm': scale = 1e6; end++; break;
    case 'B': case 'b': case 'G': case 'g': scale = 1e9; end++; break;
    case 'T': case 't': scale = 1e12; end++; break;
    default: break;
    }
    if (*end || v * scale >= 9.2e18 || v * scale < 1)
        return false;
    *out = (int64_t)llround(v * scale);
    return true;
}

bool cli_parse_size(const char *s, uint64_t *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || !(v >= 0) || !isfinite(v))
        return false;
    while (isspace((unsigned char)*end))
        end++;
    static const struct {
        const char *unit;
        double mult;
    } units[] = {{"", 1},        {"B", 1},          {"KB", 1e3},         {"MB", 1e6},
                 {"GB", 1e9},    {"TB", 1e12},      {"KIB", 1024.0},     {"MIB", 1048576.0},
                 {"GIB", 1073741824.0}, {"TIB", 1099511627776.0}, {"K", 1e3}, {"M", 1e6},
                 {"G", 1e9}};
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcasecmp(end, units[i].unit) == 0) {
            double bytes = v * units[i].mult;
            if (bytes > 1.8e19)
                return false;
            *out = (uint64_t)bytes;
            return true;
        }
    }
    return false;
}

void cli_format_bytes(uint64_t n, char *dst, size_t dst_cap)
{
    const char *units[] = {"B", "kB", "MB", "GB", "TB", "PB"};
    double v = (double)n;
    int u = 0;
    while (v >= 1000 && u < 5) {
        v /= 1000;
        u++;
    }
    if (u == 0)
        snprintf(dst, dst_cap, "%llu B", (unsigned long long)n);
    else
        snprintf(dst, dst_cap, "%.2f %s", v, units[u]);
}

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void cli_progress_begin(struct cli_progress *p, const char *label, uint64_t total, bool is_bytes,
                        bool quiet)
{
    memset(p, 0, sizeof(*p));
    p->enabled = !quiet && isatty(STDERR_FILENO);
    p->label = label;
    p->total = total;
    p->is_bytes = is_bytes;
    p->start = cli_now();
}

static void format_amount(const struct cli_progress *p, double v, char *dst, size_t cap)
{
    if (p->is_bytes)
        cli_format_bytes((uint64_t)v, dst, cap);
    else
        snprintf(dst, cap, "%.0f", v);
}

static void draw(struct cli_progress *p, uint64_t done, bool final)
{
    double now = cli_now();
    if (!final && now - p->last_draw < 0.1)
        return;
    p->last_draw = now;
    double elapsed = now - p->start;
    double rate = elapsed > 0 ? (double)done / elapsed : 0;
    double frac = p->total ? (double)done / (double)p->total : 1;
    if (frac > 1)
        frac = 1;
    int width = 28, filled = (int)(frac * width);
    char bar[64];
    for (int i = 0; i < width; i++)
        bar[i] = i < filled ? '#' : '.';
    bar[width] = '\0';
    char d[32], t[32], r[32];
    format_amount(p, (double)done, d, sizeof(d));
    format_amount(p, (double)p->total, t, sizeof(t));
    format_amount(p, rate, r, sizeof(r));
    double eta = rate > 0 && p->total > done ? (double)(p->total - done) / rate : 0;
    fprintf(stderr, "\r%s [%s] %3.0f%% %s/%s %s/s ETA %02d:%02d\033[K", p->label, bar,
            frac * 100, d, t, r, (int)eta / 60, (int)eta % 60);
    if (final)
        fputc('\n', stderr);
    fflush(stderr);
}

void cli_progress_update(struct cli_progress *p, uint64_t done)
{
    if (p->enabled)
        draw(p, done, false);
}

void cli_progress_end(struct cli_progress *p)
{
    if (p->enabled)
        draw(p, p->total, true);
}

void cli_progress_cb(void *ctx, uint64_t done, uint64_t total)
{
    struct cli_progress *p = ctx;
    p->total = total;
    cli_progress_update(p, done);
}
