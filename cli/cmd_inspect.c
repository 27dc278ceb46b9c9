/* lmsurgeon inspect: what a checkpoint is, for people (--json for scripts). */
#include <dirent.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "lms/arch.h"
#include "lms/format.h"
#include "lms/json.h"
#include "lms/outdir.h"

static const char usage_text[] =
    "usage: lmsurgeon inspect PATH [--tensors] [--json] [--quiet]\n"
    "\n"
    "Shows a checkpoint's format, architecture, every config dimension, parameter count, dtypes\n"
    "and bytes on disk. The format is detected.\n"
    "\n"
    "  --tensors   list every tensor with dtype, shape and the file holding it\n"
    "  --json      print one JSON object on stdout instead of text\n"
    "  --quiet     print nothing on success (exit code only)\n"
    "  -h, --help  show this help\n";

/* Sum of the sizes of the regular files under path, at any depth (NeMo 2 and Megatron keep
 * their weights in subdirectories, and DCP's ".metadata" is a dot file), or of the file itself.
 * Symbolic links are followed (Hugging Face cache snapshots link to their blobs); the depth limit
 * stops a link cycle. */
static uint64_t bytes_on_disk_at(const char *path, int depth)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return 0;
    if (!S_ISDIR(sb.st_mode))
        return S_ISREG(sb.st_mode) ? (uint64_t)sb.st_size : 0;
    if (depth >= 16)
        return 0;
    uint64_t total = 0;
    DIR *d = opendir(path);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char p[PATH_MAX];
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        int n = snprintf(p, sizeof(p), "%s/%s", path, e->d_name);
        if (n > 0 && (size_t)n < sizeof(p))
            total += bytes_on_disk_at(p, depth + 1);
    }
    if (d)
        closedir(d);
    return total;
}

static uint64_t bytes_on_disk(const char *path)
{
    return bytes_on_disk_at(path, 0);
}

static const char *rope_name(enum lms_rope_type t)
{
    static const char *names[] = {"default", "linear", "llama3", "yarn", "dynamic"};
    return names[t];
}

static const char *tensor_file(const struct lms_view *v)
{
    while (v->kind != LMS_VIEW_STORAGE) {
        if (v->kind == LMS_VIEW_SELECT)
            v = v->u.sel.src;
        else if (v->kind == LMS_VIEW_RESHAPE)
            v = v->u.reshape.src;
        else if (v->kind == LMS_VIEW_FP8_BLOCKS) /* the file of the codes */
            v = v->u.fp8.src;
        else
            return "(fused)";
    }
    return v->u.st.storage->path ? lms_path_basename(v->u.st.storage->path) : "(memory)";
}

static json_t *arch_json(const struct lms_arch *a)
{
    char eps[32], theta[32];
    lms_json_format_double(a->norm_eps, eps, sizeof(eps));
    lms_json_format_double(a->rope.theta, theta, sizeof(theta));
    return json_pack("{s:s,s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:{s:s,s:f,s:f},"
                     "s:b,s:b,s:b,s:b,s:I,s:s}",
                     "family", lms_family_name(a->family), "architecture",
                     lms_family_hf_class(a->family), "num_layers", (json_int_t)a->n_layers,
                     "hidden_size", (json_int_t)a->hidden, "ffn_hidden_size", (json_int_t)a->ffn,
                     "num_attention_heads", (json_int_t)a->n_heads, "num_query_groups",
                     (json_int_t)a->n_groups, "head_dim", (json_int_t)a->head_dim, "vocab_size",
                     (json_int_t)a->vocab, "padded_vocab_size", (json_int_t)a->padded_vocab,
                     "max_position_embeddings", (json_int_t)a->max_position, "rms_norm_eps",
                     a->norm_eps, "rope", "type", rope_name(a->rope.type), "theta", a->rope.theta,
                     "factor", a->rope.factor, "tie_embeddings", a->tie_embeddings, "qkv_bias",
                     a->qkv_bias, "o_bias", a->o_bias, "qk_norm", a->qk_norm, "sliding_window",
                     (json_int_t)a->sliding_window, "dtype",
                     lms_dtype_name(a->dtype) ? lms_dtype_name(a->dtype) : "?");
}

static void shape_text(const struct lms_view *v, char *dst, size_t cap)
{
    size_t used = (size_t)snprintf(dst, cap, "[");
    for (int k = 0; k < v->ndim && used < cap; k++)
        used += (size_t)snprintf(dst + used, cap - used, "%s%" PRId64, k ? ", " : "", v->shape[k]);
    if (used < cap)
        snprintf(dst + used, cap - used, "]");
}

static void print_text(const char *path, const struct lms_model *m, const char *format_desc,
                       uint64_t disk, bool tensors)
{
    const struct lms_arch *a = &m->arch;
    char b1[32], b2[32], eps[32], theta[32];
    lms_json_format_double(a->norm_eps, eps, sizeof(eps));
    lms_json_format_double(a->rope.theta, theta, sizeof(theta));
    cli_format_bytes(lms_model_nbytes(m), b1, sizeof(b1));
    cli_format_bytes(disk, b2, sizeof(b2));
    printf("path          %s\n", path);
    printf("format        %s (%s)\n", m->source_format, format_desc);
    printf("architecture  %s (%s)\n", lms_family_hf_class(a->family), lms_family_name(a->family));
    printf("layers        L = %" PRId64 "\n", a->n_layers);
    printf("hidden        H = %" PRId64 "\n", a->hidden);
    printf("ffn           F = %" PRId64 "\n", a->ffn);
    printf("heads         n_h = %" PRId64 ", query groups n_g = %" PRId64 ", head_dim d = %" PRId64
           "\n",
           a->n_heads, a->n_groups, a->head_dim);
    printf("vocab         V = %" PRId64 " (stored rows %" PRId64 ")\n", a->vocab, a->padded_vocab);
    printf("norm          RMSNorm, eps %s\n", eps);
    printf("rope          %s, theta %s", rope_name(a->rope.type), theta);
    if (a->rope.type != LMS_ROPE_DEFAULT)
        printf(", factor %g", a->rope.factor);
    printf("\n");
    printf("features      tied embeddings %s, qkv bias %s, o bias %s, q/k norm %s\n",
           a->tie_embeddings ? "yes" : "no", a->qkv_bias ? "yes" : "no", a->o_bias ? "yes" : "no",
           a->qk_norm ? "yes" : "no");
    printf("parameters    %" PRId64 "\n", lms_model_n_params(m));
    int counts[LMS_DTYPE_COUNT] = {0};
    for (size_t i = 0; i < m->n_tensors; i++)
        counts[m->tensors[i].view->dtype]++;
    printf("dtypes       ");
    for (int t = 0; t < LMS_DTYPE_COUNT; t++)
        if (counts[t])
            printf(" %s x %d", lms_dtype_name((enum lms_dtype)t), counts[t]);
    printf("\n");
    printf("tensors       %zu, %s of data\n", m->n_tensors, b1);
    printf("on disk       %s\n", b2);
    for (size_t i = 0; i < m->n_aux_files; i++)
        printf("%s%s", i ? ", " : "travelling    ", lms_path_basename(m->aux_files[i]));
    if (m->n_aux_files)
        printf("\n");
    if (!tensors)
        return;
    printf("\n");
    for (size_t i = 0; i < m->n_tensors; i++) {
        const struct lms_tensor *t = &m->tensors[i];
        char shape[128];
        shape_text(t->view, shape, sizeof(shape));
        printf("%-56s %-6s %-18s %s\n", t->name, lms_dtype_name(t->view->dtype), shape,
               tensor_file(t->view));
    }
}

static json_t *model_json(const char *path, const struct lms_model *m, uint64_t disk,
                          bool tensors)
{
    json_t *dtypes = json_object();
    for (size_t i = 0; i < m->n_tensors; i++) {
        const char *dn = lms_dtype_name(m->tensors[i].view->dtype);
        json_t *c = json_object_get(dtypes, dn);
        json_object_set_new(dtypes, dn, json_integer(c ? json_integer_value(c) + 1 : 1));
    }
    json_t *aux = json_array();
    for (size_t i = 0; i < m->n_aux_files; i++)
        json_array_append_new(aux, json_string(lms_path_basename(m->aux_files[i])));
    json_t *o = json_pack("{s:b,s:s,s:s,s:o,s:I,s:I,s:I,s:I,s:o,s:o}", "ok", 1, "path", path,
                          "format", m->source_format, "config", arch_json(&m->arch), "n_params",
                          (json_int_t)lms_model_n_params(m), "n_tensors", (json_int_t)m->n_tensors,
                          "tensor_bytes", (json_int_t)lms_model_nbytes(m), "bytes_on_disk",
                          (json_int_t)disk, "dtypes", dtypes, "travelling_files", aux);
    if (tensors) {
        json_t *list = json_array();
        for (size_t i = 0; i < m->n_tensors; i++) {
            const struct lms_tensor *t = &m->tensors[i];
            json_t *shape = json_array();
            for (int k = 0; k < t->view->ndim; k++)
                json_array_append_new(shape, json_integer(t->view->shape[k]));
            json_array_append_new(list, json_pack("{s:s,s:s,s:o,s:s,s:I,s:s}", "name", t->name,
                                                  "dtype", lms_dtype_name(t->view->dtype), "shape",
                                                  shape, "role", lms_role_name(t->role), "layer",
                                                  (json_int_t)t->layer, "file",
                                                  tensor_file(t->view)));
        }
        json_object_set_new(o, "tensors", list);
    }
    return o;
}

struct inspect_args {
    struct cli_args base;
    bool tensors;
};

static const struct cli_opt opts[] = {
    CLI_FLAG("tensors", struct inspect_args, tensors),
    CLI_END,
};
static int run(void *args);

static const struct cli_spec spec = {
    .name = "inspect", .help = {usage_text}, .shorts = "hq", .positional = CLI_POS_ONE,
    .positional_usage = "expected one PATH, got %d", .opts = opts,
    .run = run,
};

static int run(void *args)
{
    const struct inspect_args *a = args;
    const char *path = a->base.in;
    struct lms_error err;
    lms_error_clear(&err);
    const struct lms_format *f = lms_format_detect(path, &err);
    if (!f)
        return cli_fail(spec.name, &a->base.co, &err);
    struct lms_model m;
    if (f->read(path, &m, &err))
        return cli_fail(spec.name, &a->base.co, &err);
    cli_warn_model(spec.name, &a->base.co, &m);
    uint64_t disk = bytes_on_disk(path);
    if (a->base.co.json)
        cli_print_json(model_json(path, &m, disk, a->tensors));
    else if (!a->base.co.quiet)
        print_text(path, &m, f->description, disk, a->tensors);
    lms_model_release(&m);
    return CLI_EXIT_OK;
}

int cmd_inspect(int argc, char **argv)
{
    struct inspect_args a = {0};
    return cli_main(&spec, argc, argv, &a);
}
