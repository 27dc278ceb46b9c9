/* lmsurgeon command-line: shared helpers for the subcommands. Only cli/ prints and exits.
 *
 * Exit codes (documented in README.md):
 *   0 success, 1 internal error, 2 usage error (bad flags, refusing to overwrite),
 *   3 bad input (malformed or unsupported file), 4 I/O failure, 5 out of memory,
 *   6 device error, 130 interrupted. */
#ifndef LMS_CLI_H
#define LMS_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "lms/error.h"

enum cli_exit {
    CLI_EXIT_OK = 0,
    CLI_EXIT_INTERNAL = 1,
    CLI_EXIT_USAGE = 2,
    CLI_EXIT_BAD_INPUT = 3,
    CLI_EXIT_IO = 4,
    CLI_EXIT_NOMEM = 5,
    CLI_EXIT_DEVICE = 6,
    CLI_EXIT_INTERRUPTED = 130,
};

/* Options every command takes. */
struct cli_common {
    bool json;  /* machine-readable result on stdout */
    bool quiet; /* no progress, no human summary */
};

/* Maps a library status to the documented exit code. */
int cli_exit_code(enum lms_status s);
/* Prints "lmsurgeon CMD: error: MSG" on stderr (and a JSON error object on stdout with --json)
 * and returns the exit code for err->status. */
int cli_fail(const char *cmd, const struct cli_common *co, const struct lms_error *err);
struct json_t;
/* Prints o compactly on one line of stdout and drops the reference (NULL prints nothing). */
void cli_print_json(struct json_t *o);
/* Prints a usage error ("lmsurgeon CMD: MSG; see 'lmsurgeon CMD --help'") and returns 2. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Rewrites the reference workflow's underscore flags (--target_num_layers) to their hyphen
 * spelling in place, so getopt_long sees one spelling. Only the flag name before '=' changes. */
void cli_normalize_flags(int argc, char **argv);

/* Parses a positive decimal integer (the whole string); false for 0, negatives or junk. */
bool cli_parse_count(const char *s, int64_t *out);
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

/* Subcommands: each returns an exit code. */
int cmd_inspect(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_preprocess(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_prune(int argc, char **argv);
int cmd_score(int argc, char **argv);

#endif
