/* lmsurgeon command-line: shared helpers for the subcommands. Only cli/ prints and exits.
 *
 * Exit codes (documented in README.md):
 *   0 success, 1 internal error, 2 usage error (bad flags, refusing to overwrite),
 *   3 bad input (malformed or unsupported file), 4 I/O failure, 5 out of memory,
 *   6 device error, 7 training diverged (a loss or gradient not finite), 8 an item of a
 *   batch failed (convert --batch), 130 interrupted (SIGINT), 143 terminated (SIGTERM). */
#ifndef LMS_CLI_H
#define LMS_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "lms/backend.h"
#include "lms/error.h"
#include "lms/format.h"
#include "lms/gguf.h"

enum cli_exit {
    CLI_EXIT_OK = 0,
    CLI_EXIT_INTERNAL = 1,
    CLI_EXIT_USAGE = 2,
    CLI_EXIT_BAD_INPUT = 3,
    CLI_EXIT_IO = 4,
    CLI_EXIT_NOMEM = 5,
    CLI_EXIT_DEVICE = 6,
    CLI_EXIT_DIVERGED = 7,
    CLI_EXIT_BATCH_FAILED = 8, /* convert --batch: some item failed (its result line says why) */
    CLI_EXIT_INTERRUPTED = 130, /* 128 + SIGINT */
    CLI_EXIT_TERMINATED = 143,  /* 128 + SIGTERM */
};

/* Options every command takes. */
struct cli_common {
    bool json;  /* machine-readable result on stdout */
    bool quiet; /* no progress, no human summary */
};

/* Maps a library status to the documented exit code (LMS_EINTERRUPTED: 128 + the signal that
 * cli_interrupt_note recorded, 130 when none). */
int cli_exit_code(enum lms_status s);

/* Interrupts (cli/interrupt.c). Installs the handler of SIGINT and SIGTERM that removes every
 * registered temporary (lms/tempfiles.h), prints "lmsurgeon CMD: error: interrupted by SIG..."
 * and exits with 128 + the signal (130, 143). Called once, before the command runs. */
void cli_interrupt_install(const char *cmd);
/* --json was given: the handler prints the JSON error object on stdout as well. */
void cli_interrupt_json(bool on);
/* A command that handles the signals itself (distill) records the one that stopped it here;
 * async-signal-safe. */
void cli_interrupt_note(int sig);
/* 128 + the recorded signal, or 130 when none was recorded. */
int cli_interrupt_exit_code(void);
/* The command has reported why it ends: a signal from now on still removes the temporaries and
 * exits with 128 + the signal, but prints nothing. */
void cli_interrupt_silence(void);
/* Prints "lmsurgeon CMD: error: MSG" on stderr (and a JSON error object on stdout with --json)
 * and returns the exit code for err->status. */
int cli_fail(const char *cmd, const struct cli_common *co, const struct lms_error *err);
struct json_t;
/* Prints o compactly on one line of stdout and drops the reference (NULL prints nothing). */
void cli_print_json(struct json_t *o);
/* Prints a usage error ("lmsurgeon CMD: MSG; see 'lmsurgeon CMD --help'") and returns 2. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The reader's warning about the model it read (lms_model.warning), one line on stderr
 * ("lmsurgeon CMD: warning: ..."), unless co->quiet or there is none. */
void cli_warn_model(const char *cmd, const struct cli_common *co, const struct lms_model *m);
/* One warning line on stderr ("lmsurgeon CMD: warning: ..."), unless co->quiet, when a run
 * feeds the model at path more positions than its max_position_embeddings (0: unknown, no
 * warning). what names the length ("--seq-length 4096"). Every command follows this one rule:
 * rotary embeddings compute any position, so the run goes on, but the model was trained on no
 * more, and its outputs past them degrade. */
void cli_warn_positions(const char *cmd, const struct cli_common *co, const char *path,
                        const struct lms_arch *a, int64_t positions, const char *what);

/* Rewrites the reference workflow's underscore flags (--target_num_layers) to their hyphen
 * spelling in place, so getopt_long sees one spelling. Only the flag name before '=' changes. */
void cli_normalize_flags(int argc, char **argv);

/* Parses a positive decimal integer (the whole string); false for 0, negatives or junk. */
bool cli_parse_count(const char *s, int64_t *out);
/* Parses a finite number at least 0 (the whole string): 1e-4, 0.9, 0. */
bool cli_parse_real(const char *s, double *out);
/* Parses a parameter count with an optional decimal unit: 6B, 1.5M, 800K, 11148288. */
bool cli_parse_param_count(const char *s, int64_t *out);
/* Parses a size with an optional unit: 5GB, 500MB, 2GiB, 1000 (bytes). */
bool cli_parse_size(const char *s, uint64_t *out);
/* Formats bytes for people: "4.12 GB". */
void cli_format_bytes(uint64_t n, char *dst, size_t dst_cap);

/* Progress bar on stderr, drawn only when stderr is a TTY and not quiet. */
struct cli_progress {
    bool enabled;
    const char *label;
    uint64_t total;     /* units of work (bytes when is_bytes) */
    bool is_bytes;
    double start;       /* seconds, monotonic */
    double last_draw;
};
void cli_progress_begin(struct cli_progress *p, const char *label, uint64_t total, bool is_bytes,
                        bool quiet);
void cli_progress_update(struct cli_progress *p, uint64_t done);
void cli_progress_end(struct cli_progress *p);
/* Adapter for library callbacks: ctx is a struct cli_progress. */
void cli_progress_cb(void *ctx, uint64_t done, uint64_t total);
double cli_now(void);

/* ---- The command scaffold (cli/scaffold.c) ----------------------------------------------
 * A command is a parse step and a run step. Parse turns argv into the command's argument
 * struct (whose first member is a struct cli_args) from a table of its own options plus the
 * shared groups it asks for, and does every check that needs no file: a usage error prints one
 * line and exits 2 before anything is read. Run does the work with the arguments as given. */

/* cli_parse's answer when the command should go on to run (any other value is an exit code). */
#define CLI_PARSED (-1)

/* Arguments every command has; the first member of each command's argument struct. */
struct cli_args {
    struct cli_common co;       /* --json, --quiet (and --help, answered by cli_parse) */
    const char *in, *out;       /* positionals (CLI_POS_ONE fills in only) */
    const char *to;             /* CLI_WRITE: --to FORMAT; NULL = the input's format */
    struct lms_write_opts wo;   /* CLI_WRITE: --dtype (LMS_DTYPE_COUNT: unchanged) and
                                 * --max-shard-size; CLI_FORCE: --force */
    struct lms_gguf_write_opts gguf; /* CLI_WRITE: --dtype q8_0 (GGUF output only) */
    const char *device;         /* CLI_RUN: --device (NULL: the CPU) */
    int64_t threads;            /* CLI_RUN: --threads (0: all cores) */
    const char *precision;      /* CLI_PRECISION: --precision (NULL: the device's default) */
    struct lms_device dev;      /* CLI_RUN: device and precision, parsed by cli_run_check */
    enum lms_precision prec;
    char **rest;                /* CLI_POS_REST: the words after the options, n_rest of them */
    int n_rest;
};

/* What a table row stores into the command's argument struct at `field`. */
enum cli_opt_kind {
    CLI_OPT_FLAG,   /* bool: true when given */
    CLI_OPT_STRING, /* const char *: the value */
    CLI_OPT_COUNT,  /* int64_t: a whole number in [min (0 or more), max (0: no limit)] */
    CLI_OPT_REAL,   /* double: a finite number, at least 0 (min 0) or above 0 (min 1) */
    CLI_OPT_CALL,   /* the command's on_option(args, id, value, word) checks and stores it */
};

struct cli_opt {
    const char *name;      /* long name without "--"; NULL ends the table */
    enum cli_opt_kind kind;
    size_t field;          /* offsetof the destination in the command's argument struct */
    int64_t min, max;      /* CLI_OPT_COUNT: accepted range; CLI_OPT_REAL: min 1 refuses 0 */
    const char *bad;       /* CLI_OPT_COUNT, _REAL: the usage error, with one %s for the value;
                            * CLI_OPT_STRING: the usage error when the option is missing
                            * (NULL: optional) */
    int id;                /* CLI_OPT_CALL: handed back to on_option */
    char letter;           /* its short option ('o' for -o), when spec.shorts lists it */
};

/* Table rows: T is the command's argument struct, f its field. */
#define CLI_FLAG(n, T, f) {.name = (n), .kind = CLI_OPT_FLAG, .field = offsetof(T, f)}
#define CLI_STRING(n, T, f) {.name = (n), .kind = CLI_OPT_STRING, .field = offsetof(T, f)}
#define CLI_REQUIRED(n, T, f, msg)                                                             \
    {.name = (n), .kind = CLI_OPT_STRING, .field = offsetof(T, f), .bad = (msg)}
#define CLI_COUNT(n, T, f, lo, hi, msg)                                                        \
    {.name = (n), .kind = CLI_OPT_COUNT, .field = offsetof(T, f), .min = (lo), .max = (hi),    \
     .bad = (msg)}
#define CLI_REAL(n, T, f, positive, msg)                                                       \
    {.name = (n), .kind = CLI_OPT_REAL, .field = offsetof(T, f), .min = (positive), .bad = (msg)}
#define CLI_CALL(n, i) {.name = (n), .kind = CLI_OPT_CALL, .id = (i)}
#define CLI_END {.name = NULL}

/* Shared option groups a command takes (cli_spec.groups). */
enum {
    CLI_FORCE = 1,     /* --force: wo.force */
    CLI_WRITE = 2,     /* --to, --dtype, --max-shard-size (the write options) */
    CLI_RUN = 4,       /* --device, --threads (checked by cli_run_check) */
    CLI_PRECISION = 8, /* --precision (checked by cli_run_check) */
};

/* What stands after the options. */
enum cli_positional {
    CLI_POS_NONE,   /* nothing: "unexpected argument 'X'" */
    CLI_POS_ONE,    /* one path into in; otherwise spec.positional_usage (may use %d: the count) */
    CLI_POS_IN_OUT, /* IN OUT, also as --restore-path/--save-path; "expected IN and OUT" */
    CLI_POS_REST,   /* any number into rest/n_rest: the command's check judges them */
};

struct cli_spec {
    const char *name;                /* the command, as messages name it */
    const char *help[8];             /* --help text, in pieces (unused ones NULL) */
    const char *shorts;              /* getopt's short options: "h" (help), "q" (--quiet), "f"
                                      * (--force), and the letters of the command's rows */
    unsigned groups;                 /* CLI_FORCE | CLI_WRITE | CLI_RUN | CLI_PRECISION */
    enum cli_positional positional;
    const char *positional_usage;    /* CLI_POS_ONE's usage error */
    bool out_optional;               /* CLI_POS_IN_OUT: the command checks OUT itself */
    const struct cli_opt *opts;      /* the command's own options */
    /* CLI_OPT_CALL rows: 0 when stored, else the exit code of the usage error it printed.
     * word is argv's last word read (the value, or "--name=value"). */
    int (*on_option)(void *args, int id, const char *value, const char *word);
    /* Optional: told of every one of the command's own options once it is stored, by its row's
     * name (the first of its names in the table), so that check can judge which were given
     * whatever their values. */
    void (*seen)(void *args, const char *name);
    /* The command's checks of the whole set (exclusions, defaults that depend on others), after
     * the positionals and the required options: CLI_PARSED, or the exit code it printed. */
    int (*check)(void *args);
    /* The work, with the parsed arguments: the exit code. */
    int (*run)(void *args);
};

/* Parses argv (argv[0] is the command name) into args, a struct whose first member is a
 * struct cli_args and whose other defaults the caller has set. In order: the options (as argv
 * gives them), the positionals, the required options, spec->check, then cli_run_check for
 * CLI_RUN. CLI_PARSED when the command should run; 0 after --help; else the exit code. */
int cli_parse(const struct cli_spec *spec, int argc, char **argv, void *args);

/* A command's entry point: cli_parse, then spec->run when parsing says so. The exit code. */
int cli_main(const struct cli_spec *spec, int argc, char **argv, void *args);

/* Parses a's --device and --precision into a->dev and a->prec. CLI_PARSED, or 2 after a usage
 * error. cli_parse calls it last for CLI_RUN; a command that takes --device as its own option
 * may call it where its checks need it. */
int cli_run_check(const char *cmd, struct cli_args *a);

/* The write options a's flags give (CLI_WRITE): --dtype, --max-shard-size, --force, and the
 * GGUF block type of --dtype q8_0 as that format's own options. */
struct lms_write_opts cli_write_opts(const struct cli_args *a);
/* Detects the format of a->in and looks up a->to (default: the input's). CLI_PARSED, or the exit
 * code of the error it printed. */
int cli_formats(const char *cmd, const struct cli_args *a, const struct lms_format **src,
                const struct lms_format **dst);
/* Writes m to out in format dst with a->wo, drawing a progress bar labelled label (the shared
 * tail of the commands that write a checkpoint). */
enum lms_status cli_write_checkpoint(const struct cli_args *a, const struct lms_format *dst,
                                     const struct lms_model *m, const char *out,
                                     const char *label, struct lms_write_result *res,
                                     struct lms_error *err);

/* A model opened to run: the checkpoint, a backend and, when asked for, one engine. Zero it,
 * open it step by step (the commands check things in between), close it once. */
struct cli_model {
    struct lms_model m;
    bool have_model;
    struct lms_backend *be;
    struct lms_engine *e;
};
struct lms_engine_opts;
/* Reads the checkpoint at path (format detected) into cm->m. */
enum lms_status cli_model_read(struct cli_model *cm, const char *path, struct lms_error *err);
/* Opens the backend of a's device, threads and precision (after cli_run_check) into cm->be. */
enum lms_status cli_model_backend(struct cli_model *cm, const struct cli_args *a,
                                  struct lms_error *err);
/* Builds the engine for cm->m on cm->be into cm->e; its errors start with role and the model's
 * path ("'DIR': ", or "teacher 'DIR': " for role "teacher "). */
enum lms_status cli_model_engine(struct cli_model *cm, const struct lms_engine_opts *eo,
                                 const char *role, const char *path, struct lms_error *err);
/* Frees what cli_model_read, _backend and _engine opened; the struct may be reused after. */
void cli_model_close(struct cli_model *cm);

/* Several ranks (processes of one launcher, lms_comm_open). */
struct lms_comm;
/* One GPU per process of a host: a->dev's index becomes the local rank, unless --device named
 * one (cuda:N) or the run is on the CPU or alone (comm NULL). */
void cli_rank_device(struct cli_args *a, const struct lms_comm *comm);
/* cli_fail with "rank R of W: " before the message when there are several ranks; unless every
 * rank knows of the failure (agreed), ends them all, since the others may wait for this one in
 * a collective. Returns the exit code. */
int cli_fail_ranks(const char *cmd, const struct cli_common *co, struct lms_error *err,
                   struct lms_comm *comm, bool agreed);
/* Every rank (a collective, before any step or output): compares the ranks' values of opts, a
 * JSON object with one key per option that shapes the run, named as the user knows it
 * ("--max-steps"; inputs by their content fingerprints), the same keys in the same order on
 * every rank. Each value travels as a 63-bit hash: the maximum and the minimum over the ranks
 * differ exactly where some rank has another value. CLI_PARSED when all agree (and for one
 * process); otherwise rank 0 prints one line naming the first option that differs and every
 * rank returns the usage exit code. */
int cli_ranks_agree(const char *cmd, const struct cli_common *co, struct lms_comm *comm,
                    const struct json_t *opts);

/* Subcommands: each returns an exit code. */
int cmd_inspect(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_init(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_preprocess(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_prune(int argc, char **argv);
int cmd_score(int argc, char **argv);
int cmd_distill(int argc, char **argv);
int cmd_train(int argc, char **argv); /* distill's run without a teacher (cli/cmd_distill.c) */

#endif
