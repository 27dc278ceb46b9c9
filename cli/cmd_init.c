/* lmsurgeon init: a checkpoint of random weights from a preset or a config.json, in any output
 * format and dtype, seeded and deterministic, with a tokenizer copied from a directory or a
 * byte-level stand-in. The weights are generated views (include/lms/init.h), so the writers
 * stream them like any model and memory stays at one write buffer. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "lms/format.h"
#include "lms/arch.h"
#include "lms/hf.h"
#include "lms/init.h"
#include "lms/json.h"
#include "lms/scratch.h"
#include "lms/tokenizer.h"

static const char usage_head[] =
    "usage: lmsurgeon init OUT (--preset NAME | --config config.json) [--to FORMAT]\n"
    "                      [--dtype bf16|f16|f32|fp8|q8_0] [--seed N]\n"
    "                      [--tokenizer DIR | --no-tokenizer]\n"
    "                      [--num-layers N] [--vocab-size N] [--initializer-range X]\n"
    "                      [--max-shard-size SIZE] [--threads N] [--force] [--json] [--quiet]\n"
    "\n"
    "Writes a model of random weights to OUT, initialised as Hugging Face's _init_weights does:\n"
    "every Linear and Embedding weight normal(0, initializer_range) (the config's, default\n"
    "0.02), the embedding row of pad_token_id zero, biases zero, every RMSNorm weight (q/k\n"
    "norms too) one. The weights depend on --seed and the tensor's name only: the same seed\n"
    "gives the same weights in every format, dtype rounding aside, whatever the thread count.\n"
    "Nothing is held in memory: each tensor is computed as the writer streams it.\n"
    "\n"
    "  --preset NAME          the architecture of a known model (the list below)\n"
    "  --config FILE          the architecture of a Hugging Face config.json, or of the one in\n"
    "                         the model folder FILE (kept in the output with the dimensions\n"
    "                         the options below change)\n"
    "  --to FORMAT            hf (default), nemo (NeMo 2), megatron, nemo1 or gguf (llama.cpp;\n"
    "                         nemo1 and gguf: OUT is one file)\n"
    "  --dtype TYPE           bf16, f16 or f32 (default: bf16 for a preset, the config's dtype);\n"
    "                         fp8 (hf only) and q8_0 (gguf only) quantise the weights generated\n"
    "                         in the default dtype as the writer streams them, as convert would\n"
    "  --seed N               the weights' seed (default 0)\n"
    "  --tokenizer DIR        copy the tokenizer files of DIR (a model or tokenizer folder)\n"
    "  --no-tokenizer         write no tokenizer. Without either, a byte-level stand-in is\n"
    "                         written: tokenizer.json, a byte-level BPE with the 256 bytes as\n"
    "                         ids 0-255 and no merges (a text encodes to its UTF-8 bytes) and\n"
    "                         <|endoftext|> as id 256 (end of text, padding); the vocabulary\n"
    "                         must have room for those 257 ids\n"
    "  --num-layers N         override the number of layers\n"
    "  --vocab-size N         override the vocabulary size\n"
    "  --initializer-range X  override the standard deviation of the weights\n"
    "  --max-shard-size SIZE  bytes of tensor data per shard, e.g. 5GB, 500MB (default 5GB)\n"
    "  --threads N            threads computing the weights (default: all cores)\n"
    "  --force                replace OUT if it exists and is not empty\n"
    "  --json                 print one JSON object on stdout\n"
    "  --quiet                no progress bar, no summary\n"
    "  -h, --help             show this help\n"
    "\n"
    "Presets (the NeMo 2 model-config class of the same model gives the architecture; the\n"
    "vocabulary of the Llama and Mistral classes, which NeMo leaves to the tokenizer, is the\n"
    "Hub model's):\n";

/* The preset list, filled from the library's table when the command starts. */
static char preset_help[2048];

struct init_args {
    struct cli_args base;
    const char *preset, *config, *tokenizer;
    bool no_tokenizer;
    int64_t seed, n_layers, vocab;
    double init_range; /* < 0: the config's */
};

enum { O_INIT_RANGE };

static const struct cli_opt opts[] = {
    CLI_STRING("preset", struct init_args, preset),
    CLI_STRING("config", struct init_args, config),
    CLI_STRING("tokenizer", struct init_args, tokenizer),
    CLI_FLAG("no-tokenizer", struct init_args, no_tokenizer),
    CLI_COUNT("seed", struct init_args, seed, 0, 0, "invalid --seed '%s'"),
    CLI_COUNT("num-layers", struct init_args, n_layers, 1, 4096,
              "invalid --num-layers '%s' (1 to 4096)"),
    CLI_COUNT("vocab-size", struct init_args, vocab, 1, INT64_C(1) << 26,
              "invalid --vocab-size '%s'"),
    CLI_CALL("initializer-range", O_INIT_RANGE),
    CLI_COUNT("threads", struct init_args, base.threads, 1, 4096, "invalid --threads '%s'"),
    CLI_END,
};
static const char *cmd = "init";

static int on_option(void *args, int id, const char *value, const char *word)
{
    struct init_args *a = args;
    (void)word;
    if (id == O_INIT_RANGE && !cli_parse_real(value, &a->init_range))
        return cli_usage_error(cmd, "invalid --initializer-range '%s'", value);
    return 0;
}

static int check(void *args)
{
    struct init_args *a = args;
    if (!a->preset == !a->config)
        return cli_usage_error(cmd, "give one of --preset NAME and --config FILE");
    if (a->preset && !lms_preset_nemo_class(a->preset))
        return cli_usage_error(cmd, "unknown --preset '%s'", a->preset);
    if (a->tokenizer && a->no_tokenizer)
        return cli_usage_error(cmd, "--tokenizer and --no-tokenizer exclude each other");
    if (a->base.to && !lms_format_find(a->base.to))
        return cli_usage_error(cmd, "unknown --to '%s'", a->base.to);
    a->base.out = a->base.in; /* the one positional is where the model goes */
    a->base.in = NULL;
    return CLI_PARSED;
}

static int run(void *args);

static const struct cli_spec spec = {
    .name = "init", .help = {usage_head, preset_help}, .shorts = "hfq",
    .groups = CLI_FORCE | CLI_WRITE, .positional = CLI_POS_ONE,
    .positional_usage = "expected one OUT", .opts = opts, .on_option = on_option,
    .check = check, .run = run,
};

/* The config.json of --config: the file, or the one in the folder it names. */
static enum lms_status read_config_file(const char *path, json_t **out, struct lms_error *err)
{
    char in_dir[PATH_MAX];
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        if (snprintf(in_dir, sizeof in_dir, "%s/config.json", path) >= (int)sizeof in_dir)
            return lms_error_set(err, LMS_EINVAL, "--config '%s': path too long", path);
        path = in_dir;
    }
    enum lms_status rc = lms_json_load_file(path, 1u << 24, out, err);
    if (!rc && !json_is_object(*out)) {
        json_decref(*out);
        rc = lms_error_set(err, LMS_EFORMAT, "'%s': not a JSON object", path);
    }
    return rc;
}

/* The config.json object the model is built from, with the overrides applied. */
static enum lms_status load_config(const struct init_args *a, json_t **out, struct lms_error *err)
{
    json_t *c = NULL;
    enum lms_status rc = a->preset ? lms_preset_hf_config(a->preset, &c, err)
                                   : read_config_file(a->config, &c, err);
    if (rc)
        return rc;
    int bad = 0;
    if (a->n_layers)
        bad |= json_object_set_new(c, "num_hidden_layers", json_integer(a->n_layers));
    if (a->vocab)
        bad |= json_object_set_new(c, "vocab_size", json_integer(a->vocab));
    if (a->init_range >= 0)
        bad |= json_object_set_new(c, "initializer_range", json_real(a->init_range));
    if (bad) {
        json_decref(c);
        return lms_error_set(err, LMS_ENOMEM, "out of memory");
    }
    *out = c;
    return LMS_OK;
}

/* Where the config came from, for messages: "preset 'qwen3-8b'" or "'path/config.json'". */
static void source_label(const struct init_args *a, char *dst, size_t cap)
{
    if (a->preset)
        snprintf(dst, cap, "preset '%s'", a->preset);
    else
        snprintf(dst, cap, "'%s'", a->config);
}

/* The distribution and layout options of the weights from the config and the flags. */
static enum lms_status init_options(const struct init_args *a, const json_t *c,
                                    const struct lms_arch *arch, struct lms_init_opts *o,
                                    struct lms_error *err)
{
    const json_t *range = json_object_get(c, "initializer_range");
    const json_t *pad = json_object_get(c, "pad_token_id");
    *o = (struct lms_init_opts){.seed = (uint64_t)a->seed, .init_range = 0.02, .pad_row = -1,
                                .n_threads = (int)a->base.threads};
    if (range && !json_is_null(range)) {
        if (!json_is_number(range) || !(json_number_value(range) >= 0))
            return lms_error_set(err, LMS_EFORMAT, "'initializer_range' is not a number >= 0");
        o->init_range = json_number_value(range);
    }
    if (json_is_integer(pad) && json_integer_value(pad) >= 0 &&
        json_integer_value(pad) < arch->vocab)
        o->pad_row = json_integer_value(pad);
    /* --dtype fp8, like q8_0, is a block format the writer quantises to as it streams: the
     * weights are generated in the default dtype and quantised as convert would quantise them */
    bool cast = a->base.wo.dtype != LMS_DTYPE_COUNT && a->base.wo.dtype != LMS_DTYPE_F8_E4M3;
    o->dtype = cast ? a->base.wo.dtype : a->preset ? LMS_DTYPE_BF16 : arch->dtype;
    if (o->dtype != LMS_DTYPE_BF16 && o->dtype != LMS_DTYPE_F16 && o->dtype != LMS_DTYPE_F32)
        return lms_error_set(err, LMS_EUNSUPPORTED,
                             "the config's dtype %s cannot be generated; give --dtype "
                             "bf16|f16|f32", lms_dtype_name(o->dtype));
    return LMS_OK;
}

/* Adds the tokenizer files of dir to m; checks that the tokenizer's ids fit the vocabulary and
 * gives its end/begin-of-text ids (-1: unknown). */
static enum lms_status copy_tokenizer(struct lms_model *m, const char *dir, int32_t *eos,
                                      int32_t *bos, struct lms_error *err)
{
    struct stat sb;
    if (stat(dir, &sb) != 0)
        return lms_error_set(err, LMS_EIO, "--tokenizer '%s': %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return lms_error_set(err, LMS_EFORMAT, "--tokenizer '%s' is not a directory", dir);
    for (size_t i = 0; lms_hf_aux_files[i]; i++) {
        char p[PATH_MAX];
        if (snprintf(p, sizeof p, "%s/%s", dir, lms_hf_aux_files[i]) >= (int)sizeof p)
            return lms_error_set(err, LMS_EINVAL, "--tokenizer '%s': path too long", dir);
        if (stat(p, &sb) != 0 || !S_ISREG(sb.st_mode))
            continue;
        enum lms_status rc = lms_model_add_aux_file(m, p, err);
        if (rc)
            return rc;
    }
    if (!m->n_aux_files)
        return lms_error_set(err, LMS_EFORMAT, "--tokenizer '%s' holds no tokenizer files", dir);
    *eos = *bos = -1;
    struct lms_tokenizer *tk;
    struct lms_error ignored;
    /* tokenizers this tool cannot read (SentencePiece ones) are copied unchecked */
    if (lms_tokenizer_load(dir, &tk, &ignored))
        return LMS_OK;
    int64_t n = lms_tokenizer_vocab_size(tk);
    *eos = lms_tokenizer_eos_id(tk);
    *bos = lms_tokenizer_bos_id(tk);
    lms_tokenizer_free(tk);
    if (n > m->arch.vocab)
        return lms_error_set(err, LMS_EINVAL,
                             "--tokenizer '%s' has %lld tokens, more than the model's vocabulary "
                             "of %lld", dir, (long long)n, (long long)m->arch.vocab);
    return LMS_OK;
}

/* Writes the stand-in tokenizer into a scratch directory the model keeps until released. */
static enum lms_status standin_tokenizer(struct lms_model *m, struct lms_error *err)
{
    if (m->arch.vocab < LMS_STANDIN_N_TOKENS)
        return lms_error_set(err, LMS_EINVAL,
                             "the vocabulary of %lld ids has no room for the byte-level stand-in "
                             "tokenizer (%d ids: 256 bytes and %s); give --tokenizer DIR, "
                             "--no-tokenizer or a larger --vocab-size",
                             (long long)m->arch.vocab, LMS_STANDIN_N_TOKENS, LMS_STANDIN_EOS);
    enum lms_status rc = lms_scratch_new("lms-init-", &m->scratch, err);
    if (!rc)
        rc = lms_standin_tokenizer_write(m->scratch->path, m->arch.max_position, err);
    static const char *const files[] = {"tokenizer.json", "tokenizer_config.json"};
    for (size_t i = 0; i < 2 && !rc; i++) {
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/%s", m->scratch->path, files[i]);
        rc = lms_model_add_aux_file(m, p, err);
    }
    return rc;
}

/* The tokenizer files of the model (copied, stand-in or none) and the token ids the config
 * names where it names none. OUT: *what says which. */
static enum lms_status add_tokenizer(const struct init_args *a, struct lms_model *m,
                                     const char **what, struct lms_error *err)
{
    int32_t eos = -1, bos = -1;
    enum lms_status rc = LMS_OK;
    *what = "none";
    if (a->tokenizer) {
        rc = copy_tokenizer(m, a->tokenizer, &eos, &bos, err);
        *what = "copied";
    } else if (!a->no_tokenizer) {
        rc = standin_tokenizer(m, err);
        eos = LMS_STANDIN_N_TOKENS - 1;
        *what = "byte-level stand-in";
    }
    /* a preset names no token ids; a config keeps those it names */
    if (!rc && eos >= 0 && !json_is_integer(json_object_get(m->hf_config, "eos_token_id")))
        json_object_set_new(m->hf_config, "eos_token_id", json_integer(eos));
    if (!rc && bos >= 0 && !json_is_integer(json_object_get(m->hf_config, "bos_token_id")))
        json_object_set_new(m->hf_config, "bos_token_id", json_integer(bos));
    return rc;
}

/* The model to write: arch from the config, weights generated, tokenizer added. */
static enum lms_status build_model(const struct init_args *a, struct lms_model *m,
                                   struct lms_init_opts *o, const char **tok,
                                   struct lms_error *err)
{
    char label[PATH_MAX + 16];
    source_label(a, label, sizeof label);
    json_t *c = NULL;
    enum lms_status rc = load_config(a, &c, err);
    if (rc)
        return rc;
    struct lms_arch arch;
    rc = lms_hf_config_parse(c, &arch, err);
    if (!rc)
        rc = init_options(a, c, &arch, o, err);
    if (!rc)
        rc = lms_model_new_random(&arch, o, m, err);
    if (rc) {
        json_decref(c);
        return lms_error_wrap(err, "%s: ", label);
    }
    m->hf_config = c;
    rc = add_tokenizer(a, m, tok, err);
    if (rc)
        lms_model_release(m);
    return rc;
}

/* The dtype the weights are written in: the generated one, or the block format the writer
 * quantises them to. */
static const char *written_dtype(const struct init_args *a, const struct lms_init_opts *o)
{
    if (a->base.gguf.q8_0)
        return "Q8_0";
    if (a->base.wo.dtype == LMS_DTYPE_F8_E4M3)
        return lms_dtype_name(LMS_DTYPE_F8_E4M3);
    return lms_dtype_name(o->dtype);
}

static void print_summary(const struct init_args *a, const struct lms_model *m,
                          const struct lms_init_opts *o, const struct lms_format *dst,
                          const char *tok, const struct lms_write_result *res, double secs)
{
    const char *out = a->base.out;
    if (a->base.co.json) {
        json_t *j = json_pack("{s:b,s:s,s:s?,s:s?,s:s,s:s,s:s,s:I,s:f,s:I,s:i,s:i,s:I,s:s,s:i,"
                              "s:f}",
                              "ok", 1, "output", out, "preset", a->preset, "config", a->config,
                              "architecture", lms_family_hf_class(m->arch.family), "to", dst->name,
                              "dtype", written_dtype(a, o), "seed", (json_int_t)a->seed,
                              "initializer_range", o->init_range, "n_params",
                              (json_int_t)lms_model_n_params(m), "n_tensors", res->n_tensors,
                              "n_shards", res->n_shards, "bytes", (json_int_t)res->bytes,
                              "tokenizer", tok, "n_files_copied", res->n_aux_files, "seconds",
                              secs);
        cli_print_json(j);
        return;
    }
    if (a->base.co.quiet)
        return;
    char label[PATH_MAX + 16], bytes[32], rate[32];
    source_label(a, label, sizeof label);
    cli_format_bytes(res->bytes, bytes, sizeof bytes);
    cli_format_bytes(secs > 0 ? (uint64_t)((double)res->bytes / secs) : 0, rate, sizeof rate);
    printf("initialised '%s' (%s, %s from %s, dtype %s, seed %lld, std %g): %lld parameters, "
           "%d tensors, %s in %d shard%s, tokenizer: %s, %.2f s (%s/s)\n",
           out, dst->name, lms_family_hf_class(m->arch.family), label, written_dtype(a, o),
           (long long)a->seed, o->init_range, (long long)lms_model_n_params(m), res->n_tensors,
           bytes, res->n_shards, res->n_shards == 1 ? "" : "s", tok, secs, rate);
}

static int run(void *args)
{
    struct init_args *a = args;
    struct lms_error err;
    lms_error_clear(&err);
    const struct lms_format *dst = lms_format_find(a->base.to ? a->base.to : "hf");
    double t0 = cli_now();
    struct lms_model m;
    struct lms_init_opts o;
    const char *tok = "none";
    if (build_model(a, &m, &o, &tok, &err))
        return cli_fail(cmd, &a->base.co, &err);
    struct lms_write_result res;
    enum lms_status rc = cli_write_checkpoint(&a->base, dst, &m, a->base.out, "initialising",
                                              &res, &err);
    if (!rc)
        print_summary(a, &m, &o, dst, tok, &res, cli_now() - t0);
    lms_model_release(&m);
    return rc ? cli_fail(cmd, &a->base.co, &err) : CLI_EXIT_OK;
}

/* The preset names, as lines of the --help text. */
static void fill_preset_help(void)
{
    size_t len = 0, col = 0;
    for (size_t i = 0; lms_preset_name(i); i++) {
        const char *name = lms_preset_name(i);
        size_t n = strlen(name);
        if (col && col + 2 + n > 90) {
            len += (size_t)snprintf(preset_help + len, sizeof preset_help - len, ",\n");
            col = 0;
        }
        int w = snprintf(preset_help + len, sizeof preset_help - len, "%s%s", col ? ", " : "  ",
                         name);
        if (w < 0 || (size_t)w >= sizeof preset_help - len)
            break;
        len += (size_t)w;
        col += (size_t)w;
    }
    if (len + 2 < sizeof preset_help)
        snprintf(preset_help + len, sizeof preset_help - len, "\n");
}

int cmd_init(int argc, char **argv)
{
    struct init_args a = {.init_range = -1};
    fill_preset_help();
    return cli_main(&spec, argc, argv, &a);
}
