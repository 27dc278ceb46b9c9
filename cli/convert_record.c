/* The record convert --skip-unchanged keeps beside its output (OUT.lmsurgeon.json), so that a
 * rerun of the same conversion (a batch over hundreds of checkpoints, restarted) can tell that
 * OUT is already what it would write and leave it alone.
 *
 * The input is fingerprinted by its files, not by lms_model_fingerprint: the output also
 * carries config keys the model fingerprint leaves out and the tokenizer files, so any byte of
 * the input that changes must make the conversion run again. Relative names, not the path,
 * enter the hash, so a moved input still matches. The output is checked by its file names,
 * sizes and modification times only: enough to notice that someone replaced or edited it,
 * without reading it back. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli/convert_batch.h"
#include "lms/alloc.h"
#include "lms/json.h"
#include "lms/outdir.h"

#define READ_CHUNK ((size_t)4 << 20)
#define MAX_DEPTH 32 /* deeper is a link cycle, not a checkpoint */
#define RECORD_FORMAT "lmsurgeon-convert-record"

struct walk {
    struct lms_hash64 h;
    bool contents;
    unsigned char *buf; /* READ_CHUNK bytes, contents only */
    uint64_t bytes;
    size_t root_len; /* names are hashed relative to the root */
};

static void hash_text(struct lms_hash64 *h, const char *s)
{
    lms_hash64_update(h, s, strlen(s) + 1);
}

static enum lms_status hash_contents(struct walk *w, const char *path, struct lms_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lms_error_set(err, LMS_EIO, "'%s': %s", path, strerror(errno));
    enum lms_status rc = LMS_OK;
    for (;;) {
        ssize_t n = read(fd, w->buf, READ_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            rc = lms_error_set(err, LMS_EIO, "reading '%s': %s", path, strerror(errno));
        if (n <= 0)
            break;
        lms_hash64_update(&w->h, w->buf, (size_t)n);
    }
    close(fd);
    return rc;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

static int not_dots(const struct dirent *d)
{
    return strcmp(d->d_name, ".") != 0 && strcmp(d->d_name, "..") != 0;
}

static enum lms_status walk_path(struct walk *w, const char *path, int depth,
                                 struct lms_error *err);

static enum lms_status walk_dir(struct walk *w, const char *path, int depth,
                                struct lms_error *err)
{
    struct dirent **list;
    int n = scandir(path, &list, not_dots, by_name);
    if (n < 0)
        return lms_error_set(err, LMS_EIO, "'%s': %s", path, strerror(errno));
    enum lms_status rc = LMS_OK;
    for (int i = 0; i < n; i++) {
        char child[PATH_MAX];
        if (!rc && snprintf(child, sizeof child, "%s/%s", path, list[i]->d_name) >=
                       (int)sizeof child)
            rc = lms_error_set(err, LMS_EINVAL, "'%s/%s': path too long", path,
                               list[i]->d_name);
        if (!rc)
            rc = walk_path(w, child, depth + 1, err);
        free(list[i]);
    }
    free(list);
    return rc;
}

static enum lms_status walk_path(struct walk *w, const char *path, int depth,
                                 struct lms_error *err)
{
    if (depth > MAX_DEPTH)
        return lms_error_set(err, LMS_EFORMAT, "'%s': folders nested more than %d deep",
                             path, MAX_DEPTH);
    struct stat sb;
    if (stat(path, &sb) != 0)
        return lms_error_set(err, LMS_EIO, "'%s': %s", path, strerror(errno));
    const char *rel = strlen(path) > w->root_len ? path + w->root_len : "";
    if (S_ISDIR(sb.st_mode)) {
        hash_text(&w->h, "d");
        hash_text(&w->h, rel);
        return walk_dir(w, path, depth, err);
    }
    hash_text(&w->h, S_ISREG(sb.st_mode) ? "f" : "o");
    hash_text(&w->h, rel);
    if (!S_ISREG(sb.st_mode))
        return LMS_OK; /* a socket or device has no bytes to compare */
    lms_hash64_update_u64(&w->h, (uint64_t)sb.st_size);
    w->bytes += (uint64_t)sb.st_size;
    if (w->contents)
        return hash_contents(w, path, err);
    lms_hash64_update_u64(&w->h, (uint64_t)sb.st_mtim.tv_sec);
    lms_hash64_update_u64(&w->h, (uint64_t)sb.st_mtim.tv_nsec);
    return LMS_OK;
}

enum lms_status cli_tree_fingerprint(const char *path, bool contents, char hex[LMS_HASH64_HEX],
                                     uint64_t *bytes, struct lms_error *err)
{
    struct walk w = {.contents = contents, .root_len = strlen(path)};
    lms_hash64_init(&w.h, 0);
    if (contents && !(w.buf = lms_malloc(READ_CHUNK)))
        return lms_error_set(err, LMS_ENOMEM, "out of memory fingerprinting '%s'", path);
    enum lms_status rc = walk_path(&w, path, 0, err);
    lms_free(w.buf);
    if (!rc) {
        lms_hash64_hex(lms_hash64_digest(&w.h), hex);
        *bytes = w.bytes;
    }
    return rc;
}

static bool record_path(const char *out, char *dst, size_t cap)
{
    return snprintf(dst, cap, "%s%s", out, CLI_RECORD_SUFFIX) < (int)cap;
}

static const char *string_at(const json_t *o, const char *outer, const char *key)
{
    return json_string_value(json_object_get(json_object_get(o, outer), key));
}

bool cli_record_matches(const char *out, const char *input_fp, const json_t *opts,
                        uint64_t *bytes)
{
    char path[PATH_MAX], stat_fp[LMS_HASH64_HEX];
    struct lms_error ignored;
    json_t *r = NULL;
    uint64_t now_bytes;
    if (!record_path(out, path, sizeof path) || access(path, F_OK) != 0 ||
        lms_json_load_file(path, 1u << 20, &r, &ignored))
        return false;
    const char *fmt = json_string_value(json_object_get(r, "format"));
    const char *in_fp = string_at(r, "input", "fingerprint");
    const char *out_fp = string_at(r, "output", "stat");
    bool same = fmt && !strcmp(fmt, RECORD_FORMAT) &&
                json_integer_value(json_object_get(r, "version")) == 1 && in_fp &&
                !strcmp(in_fp, input_fp) && json_equal(json_object_get(r, "options"),
                                                       (json_t *)opts) &&
                out_fp && !cli_tree_fingerprint(out, false, stat_fp, &now_bytes, &ignored) &&
                !strcmp(out_fp, stat_fp);
    if (same)
        *bytes = now_bytes;
    json_decref(r);
    return same;
}

enum lms_status cli_record_write(const char *out, const char *in, const char *input_fp,
                                 const json_t *opts, struct lms_error *err)
{
    char path[PATH_MAX], stat_fp[LMS_HASH64_HEX];
    uint64_t out_bytes;
    if (!record_path(out, path, sizeof path))
        return lms_error_set(err, LMS_EINVAL, "'%s': path too long", out);
    enum lms_status rc = cli_tree_fingerprint(out, false, stat_fp, &out_bytes, err);
    if (rc)
        return rc;
    json_t *r = json_pack("{s:s,s:i,s:s,s:{s:s,s:s},s:O,s:{s:s,s:I,s:s}}", "format",
                          RECORD_FORMAT, "version", 1, "lmsurgeon", LMS_VERSION, "input",
                          "path", in, "fingerprint", input_fp, "options", (json_t *)opts,
                          "output", "path", out, "bytes", (json_int_t)out_bytes, "stat",
                          stat_fp);
    if (!r)
        return lms_error_set(err, LMS_ENOMEM, "out of memory writing '%s'", path);
    struct lms_buf_str text = {0};
    rc = lms_json_dump(r, LMS_JSON_COMPACT, &text, err);
    json_decref(r);
    if (!rc)
        rc = lms_buf_str_append(&text, "\n", 1, err);
    if (rc) {
        lms_buf_str_release(&text);
        return rc;
    }
    struct lms_outfile of;
    rc = lms_outfile_begin(path, true, &of, err);
    if (!rc) {
        rc = lms_write_all(of.fd, text.data, text.len, path, err);
        if (rc)
            lms_outfile_abort(&of);
        else
            rc = lms_outfile_commit(&of, err);
    }
    lms_buf_str_release(&text);
    return rc;
}
