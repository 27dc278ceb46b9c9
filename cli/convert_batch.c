/* lmsurgeon convert --batch MANIFEST.jsonl: many conversions, one manifest line each.
 *
 * Every item runs as a child process of this binary ('convert IN OUT ... --skip-unchanged
 * --json --quiet'), so that an item that fails, or crashes, takes nothing else down and its
 * result is exactly what the single command gives. The runner only schedules: it reads every
 * input's header first (the same reader convert uses) to estimate the item's peak memory and
 * output size, then starts items in manifest order while the estimates of the running ones
 * plus the next one fit the memory budget and the output's file system. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/convert_batch.h"
#include "lms/alloc.h"
#include "lms/format.h"
#include "lms/json.h"
#include "lms/storage.h"

extern char **environ;

#define MiB ((uint64_t)1 << 20)
#define BASE_MEMORY (64 * MiB) /* the process, its write buffers and the reader's tables */
#define MAX_CHILD_ARGS 20
#define CHILD_TEXT_CAP (256 * 1024) /* what is kept of a child's stdout or stderr */

struct batch_args {
    struct cli_args base;
    const char *manifest;
    int64_t jobs;
    uint64_t max_memory; /* 0: MemAvailable */
};

enum { O_MAX_MEMORY };

static const struct cli_opt opts[] = {
    CLI_REQUIRED("batch", struct batch_args, manifest, "--batch needs a manifest file"),
    CLI_COUNT("jobs", struct batch_args, jobs, 1, 1024, "invalid --jobs '%s' (1 to 1024)"),
    CLI_CALL("max-memory", O_MAX_MEMORY),
    CLI_END,
};

static const char *cmd = "convert";

static int on_option(void *args, int id, const char *value, const char *word)
{
    struct batch_args *a = args;
    (void)word;
    if (id == O_MAX_MEMORY && (!cli_parse_size(value, &a->max_memory) || !a->max_memory))
        return cli_usage_error(cmd, "invalid --max-memory '%s'", value);
    return 0;
}

static int run(void *args);

static const struct cli_spec spec = {
    .name = "convert", .help = {cli_convert_usage}, .shorts = "hfq", .groups = CLI_FORCE,
    .positional = CLI_POS_NONE, .opts = opts, .on_option = on_option, .run = run,
};

enum item_state { PENDING, RUNNING, DONE };

struct child_text {
    char *data;
    size_t len;
    bool eof;
};

struct item {
    int line;            /* in the manifest, from 1 */
    char *in, *out;      /* owned; NULL when the line did not name them */
    char *argv[MAX_CHILD_ARGS];
    int argc;            /* argv[0..argc) owned, argv[argc] NULL */
    enum item_state state;
    char *error;         /* the runner's own verdict (a bad line, no room); owned */
    int exit_code;
    uint64_t memory, disk, in_bytes; /* estimates, and the input's tensor bytes */
    pid_t pid;
    int fd[2];           /* the child's stdout and stderr; -1 once closed */
    struct child_text text[2];
    int wstatus;
    bool exited;
    double start;
};

struct batch {
    const struct batch_args *a;
    struct item *items;
    size_t n;
    uint64_t memory_budget;
    int64_t running;
    uint64_t memory_used;
    size_t n_ok, n_skipped, n_failed;
    uint64_t bytes_written, bytes_done, bytes_total;
    struct cli_progress bar;
    char label[64];
};

static volatile sig_atomic_t stop_signal;

static void on_stop(int sig)
{
    stop_signal = sig;
    cli_interrupt_note(sig);
}

/* ---- the manifest ------------------------------------------------------------------------ */

static char *dup_text(const char *s)
{
    return s ? lms_strdup(s) : NULL;
}

static void item_fail(struct item *it, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void item_fail(struct item *it, int code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    lms_free(it->error);
    it->error = dup_text(msg);
    it->exit_code = code;
    it->state = DONE;
}

static bool add_arg(struct item *it, const char *s)
{
    if (it->argc + 1 >= MAX_CHILD_ARGS)
        return false;
    it->argv[it->argc] = dup_text(s);
    if (!it->argv[it->argc])
        return false;
    it->argc++;
    return true;
}

/* A manifest key as the command line spells it: underscores as hyphens. */
static void key_spelling(const char *key, char *dst, size_t cap)
{
    snprintf(dst, cap, "%s", key);
    for (char *p = dst; *p; p++)
        if (*p == '_')
            *p = '-';
}

/* One option of an item: the flag and its value as the child's arguments. */
static bool item_option(struct item *it, const char *name, const json_t *v, const char *label)
{
    char flag[96], num[32];
    snprintf(flag, sizeof flag, "--%s", name);
    if (!strcmp(name, "force")) {
        if (!json_is_boolean(v)) {
            item_fail(it, CLI_EXIT_USAGE, "%s: 'force' must be true or false", label);
            return false;
        }
        return !json_is_true(v) || add_arg(it, flag);
    }
    const char *value = json_string_value(v);
    if (!value && !strcmp(name, "max-shard-size") && json_is_integer(v)) {
        snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        value = num;
    }
    if (!value) {
        item_fail(it, CLI_EXIT_USAGE, "%s: '%s' must be a string", label, name);
        return false;
    }
    return add_arg(it, flag) && add_arg(it, value);
}

/* Builds the item of one manifest line: its child's arguments, or its failure. */
static void item_parse(struct item *it, const char *manifest, const char *text, size_t len)
{
    char label[PATH_MAX + 32];
    snprintf(label, sizeof label, "'%s' line %d", manifest, it->line);
    json_t *o = NULL;
    struct lms_error err;
    lms_error_clear(&err);
    if (lms_json_load_buffer(label, text, len, &o, &err)) {
        item_fail(it, CLI_EXIT_USAGE, "%s", err.msg);
        return;
    }
    if (!json_is_object(o)) {
        json_decref(o);
        item_fail(it, CLI_EXIT_USAGE, "%s: not a JSON object", label);
        return;
    }
    it->in = dup_text(json_string_value(json_object_get(o, "in")));
    it->out = dup_text(json_string_value(json_object_get(o, "out")));
    bool ok = add_arg(it, "lmsurgeon") && add_arg(it, "convert");
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v) {
        char name[64];
        key_spelling(key, name, sizeof name);
        if (!ok || !strcmp(name, "in") || !strcmp(name, "out"))
            continue;
        if (strcmp(name, "to") && strcmp(name, "dtype") && strcmp(name, "max-shard-size") &&
            strcmp(name, "force")) {
            item_fail(it, CLI_EXIT_USAGE, "%s: unknown key '%s' (in, out, to, dtype, "
                      "max-shard-size, force)", label, key);
            ok = false;
            break;
        }
        ok = item_option(it, name, v, label);
    }
    json_decref(o);
    if (it->state == DONE)
        return;
    if (!it->in || !it->out || !*it->in || !*it->out) {
        item_fail(it, CLI_EXIT_USAGE, "%s: 'in' and 'out' must name the input and the output",
                  label);
        return;
    }
    if (!ok)
        item_fail(it, CLI_EXIT_NOMEM, "%s: out of memory", label);
}

/* The end of an item's arguments: what every item runs with, then the paths after "--", so
 * that a name starting with '-' stays a name. */
static void item_finish_args(struct item *it, bool force)
{
    bool ok = add_arg(it, "--skip-unchanged") && add_arg(it, "--json") &&
              add_arg(it, "--quiet") && (!force || add_arg(it, "--force")) &&
              add_arg(it, "--") && add_arg(it, it->in) && add_arg(it, it->out);
    if (!ok)
        item_fail(it, CLI_EXIT_NOMEM, "line %d: out of memory", it->line);
}

/* The same output twice would race: the later line fails (unless the earlier one failed
 * already). */
static void refuse_shared_outputs(struct batch *b, const char *manifest)
{
    for (size_t i = 0; i < b->n; i++)
        for (size_t j = 0; j < i && b->items[i].state != DONE; j++)
            if (b->items[j].state != DONE && b->items[i].out &&
                !strcmp(b->items[i].out, b->items[j].out))
                item_fail(&b->items[i], CLI_EXIT_USAGE,
                          "'%s' line %d: output '%s' is also line %d's", manifest,
                          b->items[i].line, b->items[i].out, b->items[j].line);
}

static enum lms_status read_manifest(struct batch *b, const char *path, struct lms_error *err)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return lms_error_set(err, LMS_EIO, "'%s': %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0, n_cap = 0;
    ssize_t len;
    enum lms_status rc = LMS_OK;
    for (int no = 1; !rc && (len = getline(&line, &cap, f)) >= 0; no++) {
        if (strspn(line, " \t\r\n") == (size_t)len)
            continue; /* blank lines separate nothing */
        if (b->n == n_cap) {
            size_t nc = n_cap ? 2 * n_cap : 16;
            struct item *ni = lms_realloc(b->items, nc * sizeof *ni);
            if (!ni) {
                rc = lms_error_set(err, LMS_ENOMEM, "out of memory reading '%s'", path);
                break;
            }
            b->items = ni;
            n_cap = nc;
        }
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        struct item *it = &b->items[b->n++];
        *it = (struct item){.line = no, .fd = {-1, -1}};
        item_parse(it, path, line, (size_t)len);
    }
    if (!rc && ferror(f))
        rc = lms_error_set(err, LMS_EIO, "reading '%s': %s", path, strerror(errno));
    free(line);
    fclose(f);
    return rc;
}

/* ---- estimates --------------------------------------------------------------------------- */

/* Bytes of v's elements that its input holds in memory rather than in a mapped file (GGUF
 * Q8_0 dequantised on reading); shared storage counted once per view, an over-estimate. */
static uint64_t held_bytes(const struct lms_view *v)
{
    switch (v->kind) {
    case LMS_VIEW_STORAGE:
        return v->u.st.storage->kind == LMS_STORAGE_HOST ? lms_view_nbytes(v) : 0;
    case LMS_VIEW_SELECT:
        return held_bytes(v->u.sel.src);
    case LMS_VIEW_RESHAPE:
        return held_bytes(v->u.reshape.src);
    case LMS_VIEW_CONCAT: {
        uint64_t s = 0;
        for (int i = 0; i < v->u.cat.n_parts; i++)
            s += held_bytes(v->u.cat.parts[i]);
        return s;
    }
    case LMS_VIEW_FP8_BLOCKS:
        return held_bytes(v->u.fp8.src);
    case LMS_VIEW_GENERATED:
        return 0;
    }
    return 0;
}

struct write_plan {
    bool gguf, q8_0, fp8;
    enum lms_dtype cast; /* LMS_DTYPE_COUNT: kept */
};

/* An upper bound of the bytes tensor v takes in the output. */
static uint64_t written_bytes(const struct lms_view *v, const struct write_plan *p)
{
    uint64_t numel = (uint64_t)lms_view_numel(v);
    if (p->gguf && v->ndim <= 1)
        return numel * 4; /* llama.cpp keeps 1-D tensors F32 */
    if (p->q8_0) /* Q8_0 blocks of 32, else F16 rows */
        return v->shape[v->ndim - 1] % 32 ? numel * 2 : numel / 32 * 34;
    if (p->fp8) /* E4M3 codes and scales, or bf16: never more than bf16 */
        return numel * 2;
    if (p->cast != LMS_DTYPE_COUNT && lms_dtype_is_castable(v->dtype))
        return numel * lms_dtype_size(p->cast);
    return lms_view_nbytes(v);
}

static void plan_of(const struct item *it, const struct lms_format *src, struct write_plan *p)
{
    const char *to = NULL, *dtype = NULL;
    for (int i = 2; i + 1 < it->argc; i++) {
        if (!strcmp(it->argv[i], "--to"))
            to = it->argv[i + 1];
        if (!strcmp(it->argv[i], "--dtype"))
            dtype = it->argv[i + 1];
    }
    *p = (struct write_plan){.cast = LMS_DTYPE_COUNT};
    p->gguf = to ? !strcmp(to, "gguf") : !strcmp(src->name, "gguf");
    p->q8_0 = dtype && !strcmp(dtype, "q8_0");
    enum lms_dtype d;
    if (dtype && !p->q8_0 && lms_dtype_parse_user(dtype, &d)) {
        p->fp8 = d == LMS_DTYPE_F8_E4M3;
        p->cast = p->fp8 ? LMS_DTYPE_COUNT : d;
    }
}

/* Peak memory and output size of converting the item's input. The writers stream every
 * tensor in chunks of a few MiB, whatever its size (10 to 30 MB of peak RSS measured for
 * bf16 -> f32, FP8 and Q8_0 exports of a 0.9 GB model), and mapped input pages are page cache
 * the kernel reclaims; what stays in memory is what the reader holds on the heap (a Q8_0
 * GGUF dequantised to f32). So: 64 MiB + those tensors. The output: every tensor as written
 * + the travelling files + 1 MiB of config and index. */
static enum lms_status estimate(struct item *it, struct lms_error *err)
{
    const struct lms_format *src = lms_format_detect(it->in, err);
    if (!src)
        return err->status;
    struct lms_model m;
    enum lms_status rc = src->read(it->in, &m, err);
    if (rc)
        return rc;
    struct write_plan p;
    plan_of(it, src, &p);
    uint64_t held = 0, out = MiB;
    for (size_t i = 0; i < m.n_tensors; i++) {
        held += held_bytes(m.tensors[i].view);
        out += written_bytes(m.tensors[i].view, &p);
    }
    for (size_t i = 0; i < m.n_aux_files; i++) {
        struct stat sb;
        if (stat(m.aux_files[i], &sb) == 0)
            out += (uint64_t)sb.st_size;
    }
    it->memory = BASE_MEMORY + held;
    it->disk = out;
    it->in_bytes = lms_model_nbytes(&m);
    lms_model_release(&m);
    return LMS_OK;
}

static uint64_t mem_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    unsigned long long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    return kb ? (uint64_t)kb * 1024 : UINT64_MAX; /* unknown: memory does not limit */
}

/* The file system OUT will be written to: its nearest existing folder. false when none. */
static bool out_filesystem(const char *out, dev_t *dev, uint64_t *free_bytes)
{
    char dir[PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s", out) >= (int)sizeof dir)
        return false;
    for (;;) {
        char *slash = strrchr(dir, '/');
        if (!slash)
            snprintf(dir, sizeof dir, ".");
        else if (slash == dir)
            dir[1] = '\0';
        else
            *slash = '\0';
        struct stat sb;
        struct statvfs vfs;
        if (stat(dir, &sb) == 0 && statvfs(dir, &vfs) == 0) {
            *dev = sb.st_dev;
            *free_bytes = (uint64_t)vfs.f_bavail * vfs.f_frsize;
            return true;
        }
        if (!strcmp(dir, ".") || !strcmp(dir, "/"))
            return false;
    }
}

/* ---- running the items ------------------------------------------------------------------- */

enum fit { FITS, WAIT, NEVER_MEMORY, NEVER_DISK };

static enum fit fits(const struct batch *b, const struct item *it, uint64_t *free_bytes)
{
    if (it->memory > b->memory_budget)
        return NEVER_MEMORY;
    dev_t dev;
    uint64_t reserved = 0;
    bool sharing = false;
    *free_bytes = 0;
    if (out_filesystem(it->out, &dev, free_bytes)) {
        /* the running items' outputs may not have landed yet: hold back all of them */
        for (size_t i = 0; i < b->n; i++) {
            dev_t d;
            uint64_t f;
            const struct item *r = &b->items[i];
            if (r->state == RUNNING && out_filesystem(r->out, &d, &f) && d == dev) {
                reserved += r->disk;
                sharing = true;
            }
        }
        if (it->disk + reserved > *free_bytes)
            return sharing ? WAIT : NEVER_DISK;
    }
    return b->memory_used + it->memory <= b->memory_budget ? FITS : WAIT;
}

static bool start(struct batch *b, struct item *it)
{
    int po[2] = {-1, -1}, pe[2] = {-1, -1};
    posix_spawn_file_actions_t fa;
    bool fa_ok = false;
    int rc = pipe2(po, O_CLOEXEC) || pipe2(pe, O_CLOEXEC) ? errno : 0;
    if (!rc)
        rc = posix_spawn_file_actions_init(&fa);
    fa_ok = !rc;
    if (!rc)
        rc = posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    if (!rc)
        rc = posix_spawn_file_actions_adddup2(&fa, po[1], STDOUT_FILENO);
    if (!rc)
        rc = posix_spawn_file_actions_adddup2(&fa, pe[1], STDERR_FILENO);
    if (!rc)
        rc = posix_spawn(&it->pid, "/proc/self/exe", &fa, NULL, it->argv, environ);
    if (fa_ok)
        posix_spawn_file_actions_destroy(&fa);
    for (int k = 0; k < 2; k++) {
        int *p = k ? pe : po;
        if (p[1] >= 0)
            close(p[1]);
        if (rc && p[0] >= 0)
            close(p[0]);
    }
    if (rc) {
        item_fail(it, CLI_EXIT_INTERNAL, "starting the conversion: %s", strerror(rc));
        return false;
    }
    it->fd[0] = po[0];
    it->fd[1] = pe[0];
    it->state = RUNNING;
    it->start = cli_now();
    b->running++;
    b->memory_used += it->memory;
    return true;
}

static void drain(struct item *it, int k)
{
    char buf[4096];
    ssize_t n = read(it->fd[k], buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n <= 0) {
        close(it->fd[k]);
        it->fd[k] = -1;
        it->text[k].eof = true;
        return;
    }
    struct child_text *t = &it->text[k];
    if (t->len + (size_t)n > CHILD_TEXT_CAP)
        return; /* a runaway child: the first part says enough */
    char *nd = lms_realloc(t->data, t->len + (size_t)n + 1);
    if (!nd)
        return;
    memcpy(nd + t->len, buf, (size_t)n);
    t->len += (size_t)n;
    nd[t->len] = '\0';
    t->data = nd;
}

/* The last line of text that is a JSON object (the child's --json result). */
static json_t *last_json_line(char *text)
{
    json_t *found = NULL;
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        json_t *o = json_loads(line, 0, NULL);
        if (json_is_object(o)) {
            json_decref(found);
            found = o;
        } else {
            json_decref(o);
        }
    }
    return found;
}

/* The child's one error line, without the "lmsurgeon convert: [error: ]" it starts with. */
static const char *stderr_reason(char *text)
{
    if (!text)
        return NULL;
    size_t n = strlen(text);
    while (n && (text[n - 1] == '\n' || text[n - 1] == '\r'))
        text[--n] = '\0';
    char *line = strrchr(text, '\n');
    line = line ? line + 1 : text;
    static const char *const prefixes[] = {"lmsurgeon convert: error: ", "lmsurgeon convert: "};
    for (size_t i = 0; i < 2; i++)
        if (!strncmp(line, prefixes[i], strlen(prefixes[i])))
            return line + strlen(prefixes[i]);
    return *line ? line : NULL;
}

static void print_item(struct batch *b, const struct item *it, const char *status,
                       uint64_t bytes, double secs, const char *warning)
{
    if (b->bar.enabled)
        fputs("\r\033[K", stderr); /* the bar is drawn again after the line */
    json_t *o = json_pack("{s:i,s:s,s:s?,s:s?,s:I,s:f,s:s?,s:i}", "line", it->line, "status",
                          status, "in", it->in, "out", it->out, "bytes", (json_int_t)bytes,
                          "seconds", secs, "error", it->error, "exit_code", it->exit_code);
    if (o && !it->error)
        json_object_set_new(o, "error", json_null());
    if (o)
        json_object_set_new(o, "warning", warning ? json_string(warning) : json_null());
    cli_print_json(o);
    fflush(stdout); /* a script reading the lines sees each item as it ends */
}

/* A child has exited and closed its pipes: its result line. */
static void finish(struct batch *b, struct item *it)
{
    double secs = cli_now() - it->start;
    json_t *res = it->text[0].data ? last_json_line(it->text[0].data) : NULL;
    bool ok = json_is_true(json_object_get(res, "ok"));
    bool skipped = json_is_true(json_object_get(res, "skipped"));
    uint64_t bytes = (uint64_t)json_integer_value(json_object_get(res, "bytes"));
    if (WIFEXITED(it->wstatus))
        it->exit_code = WEXITSTATUS(it->wstatus);
    else
        it->exit_code = 128 + WTERMSIG(it->wstatus);
    ok = ok && it->exit_code == 0;
    if (!ok) {
        const char *why = json_string_value(json_object_get(res, "error"));
        if (!why)
            why = stderr_reason(it->text[1].data);
        if (why)
            item_fail(it, it->exit_code, "%s", why);
        else if (WIFSIGNALED(it->wstatus))
            item_fail(it, it->exit_code, "killed by signal %d", WTERMSIG(it->wstatus));
        else
            item_fail(it, it->exit_code, "exit %d without a message", it->exit_code);
        if (!it->exit_code) /* ok:false with exit 0 is a broken child: never success */
            it->exit_code = CLI_EXIT_INTERNAL;
    }
    it->state = DONE;
    b->running--;
    b->memory_used -= it->memory;
    b->bytes_done += it->in_bytes;
    if (ok)
        b->bytes_written += bytes;
    *(ok ? (skipped ? &b->n_skipped : &b->n_ok) : &b->n_failed) += 1;
    print_item(b, it, ok ? (skipped ? "skipped" : "ok") : "failed", ok ? bytes : 0, secs,
               ok ? json_string_value(json_object_get(res, "warning")) : NULL);
    json_decref(res);
}

/* A failure the runner found itself (the line, the estimate, no room). */
static void finish_unstarted(struct batch *b, struct item *it)
{
    it->state = DONE;
    b->n_failed++;
    b->bytes_done += it->in_bytes;
    print_item(b, it, "failed", 0, 0, NULL);
}

/* Waits up to 200 ms for the running children's output, reads it, reaps those that ended. */
static void wait_children(struct batch *b)
{
    struct pollfd pfd[2 * 1024];
    struct item *owner[2 * 1024];
    int kind[2 * 1024];
    nfds_t n = 0;
    for (size_t i = 0; i < b->n; i++)
        for (int k = 0; k < 2; k++)
            if (b->items[i].state == RUNNING && b->items[i].fd[k] >= 0) {
                pfd[n] = (struct pollfd){.fd = b->items[i].fd[k], .events = POLLIN};
                owner[n] = &b->items[i];
                kind[n++] = k;
            }
    if (poll(pfd, n, 200) > 0)
        for (nfds_t i = 0; i < n; i++)
            if (pfd[i].revents)
                drain(owner[i], kind[i]);
    for (size_t i = 0; i < b->n; i++) {
        struct item *it = &b->items[i];
        if (it->state != RUNNING)
            continue;
        /* a child that closed both pipes is exiting: wait for it rather than poll again */
        bool closed = it->fd[0] < 0 && it->fd[1] < 0;
        if (!it->exited && waitpid(it->pid, &it->wstatus, closed ? 0 : WNOHANG) == it->pid)
            it->exited = true;
        if (it->exited && it->fd[0] < 0 && it->fd[1] < 0)
            finish(b, it);
    }
}

static void progress(struct batch *b)
{
    size_t done = b->n_ok + b->n_skipped + b->n_failed;
    snprintf(b->label, sizeof b->label, "converting: %zu/%zu items", done, b->n);
    cli_progress_update(&b->bar, b->bytes_done);
}

/* Starts what fits, in manifest order; the first item that must wait holds the rest. */
static void admit(struct batch *b, size_t *next)
{
    while (*next < b->n && b->running < b->a->jobs && !stop_signal) {
        struct item *it = &b->items[*next];
        if (it->state == DONE) {
            ++*next;
            continue;
        }
        uint64_t free_bytes;
        char need[32], have[32];
        enum fit f = fits(b, it, &free_bytes);
        if (f == WAIT)
            return;
        if (f == NEVER_MEMORY) {
            cli_format_bytes(it->memory, need, sizeof need);
            cli_format_bytes(b->memory_budget, have, sizeof have);
            item_fail(it, CLI_EXIT_NOMEM, "'%s': needs an estimated %s of memory, more than "
                      "the %s the batch may use (--max-memory)", it->in, need, have);
        } else if (f == NEVER_DISK) {
            cli_format_bytes(it->disk, need, sizeof need);
            cli_format_bytes(free_bytes, have, sizeof have);
            item_fail(it, CLI_EXIT_IO, "'%s': needs an estimated %s, and its file system has "
                      "%s free", it->out, need, have);
        }
        if (f != FITS || !start(b, it))
            finish_unstarted(b, it);
        ++*next;
    }
}

static void stop_children(struct batch *b, int sig)
{
    for (size_t i = 0; i < b->n; i++)
        if (b->items[i].state == RUNNING && !b->items[i].exited)
            kill(b->items[i].pid, sig);
}

static void install_stop(void)
{
    struct sigaction sa = {.sa_handler = on_stop}; /* no SA_RESTART: poll returns at once */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

static void summary(const struct batch *b, double secs)
{
    const struct cli_common *co = &b->a->base.co;
    if (co->json) {
        json_t *o = json_pack("{s:b,s:I,s:I,s:I,s:I,s:I,s:f}", "ok", b->n_failed == 0,
                              "items", (json_int_t)b->n, "converted", (json_int_t)b->n_ok,
                              "skipped", (json_int_t)b->n_skipped, "failed",
                              (json_int_t)b->n_failed, "bytes", (json_int_t)b->bytes_written,
                              "seconds", secs);
        cli_print_json(o);
    }
    if (!co->quiet) {
        char bytes[32];
        cli_format_bytes(b->bytes_written, bytes, sizeof bytes);
        fprintf(stderr, "lmsurgeon convert: batch of %zu item%s: %zu converted, %zu skipped, "
                "%zu failed; %s written in %.2f s\n", b->n, b->n == 1 ? "" : "s", b->n_ok,
                b->n_skipped, b->n_failed, bytes, secs);
    }
}

static void release(struct batch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        struct item *it = &b->items[i];
        for (int k = 0; k < it->argc; k++)
            lms_free(it->argv[k]);
        for (int k = 0; k < 2; k++) {
            lms_free(it->text[k].data);
            if (it->fd[k] >= 0)
                close(it->fd[k]);
        }
        lms_free(it->in);
        lms_free(it->out);
        lms_free(it->error);
    }
    lms_free(b->items);
}

/* Every item's arguments and estimates; an input that cannot be opened fails its item. */
static void prepare(struct batch *b)
{
    const struct batch_args *a = b->a;
    refuse_shared_outputs(b, a->manifest);
    b->memory_budget = a->max_memory ? a->max_memory : mem_available();
    for (size_t i = 0; i < b->n; i++) {
        struct item *it = &b->items[i];
        struct lms_error err;
        lms_error_clear(&err);
        if (it->state != DONE)
            item_finish_args(it, a->base.wo.force);
        if (it->state != DONE && estimate(it, &err))
            item_fail(it, cli_exit_code(err.status), "%s", err.msg);
        b->bytes_total += it->in_bytes;
    }
}

/* Reports the items that failed already, then runs the rest until all have ended or a signal
 * stopped them. */
static void schedule(struct batch *b)
{
    install_stop();
    cli_progress_begin(&b->bar, b->label, b->bytes_total, true, b->a->base.co.quiet);
    progress(b);
    for (size_t i = 0; i < b->n; i++)
        if (b->items[i].state == DONE)
            finish_unstarted(b, &b->items[i]);
    size_t next = 0;
    int stopping = 0;
    while (b->running > 0 || (next < b->n && !stop_signal)) {
        admit(b, &next);
        if (stop_signal && stopping != stop_signal)
            stop_children(b, stopping = stop_signal);
        if (b->running > 0)
            wait_children(b);
        progress(b);
    }
    if (b->bar.enabled)
        cli_progress_end(&b->bar);
}

static int run(void *args)
{
    const struct batch_args *a = args;
    struct batch b = {.a = a};
    struct lms_error err;
    lms_error_clear(&err);
    double t0 = cli_now();
    if (read_manifest(&b, a->manifest, &err)) {
        release(&b);
        return cli_fail(cmd, &a->base.co, &err);
    }
    prepare(&b);
    schedule(&b);
    if (stop_signal) {
        lms_error_set(&err, LMS_EINTERRUPTED, "interrupted by %s: the running items were "
                      "stopped (their unfinished outputs removed), %zu not started",
                      stop_signal == SIGINT ? "SIGINT" : "SIGTERM",
                      b.n - b.n_ok - b.n_skipped - b.n_failed);
        release(&b);
        return cli_fail(cmd, &a->base.co, &err);
    }
    summary(&b, cli_now() - t0);
    size_t failed = b.n_failed;
    release(&b);
    return failed ? CLI_EXIT_BATCH_FAILED : CLI_EXIT_OK;
}

int cmd_convert_batch(int argc, char **argv)
{
    struct batch_args a = {.jobs = 1};
    return cli_main(&spec, argc, argv, &a);
}
