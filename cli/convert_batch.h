/* convert --batch and convert --skip-unchanged (cli/convert_batch.c, cli/convert_record.c):
 * only cmd_convert.c uses them. */
#ifndef LMS_CLI_CONVERT_BATCH_H
#define LMS_CLI_CONVERT_BATCH_H

#include <stdbool.h>
#include <stdint.h>

#include "lms/error.h"
#include "lms/hash.h"

struct json_t;

/* The record of a conversion lies beside its output, at OUT + this suffix. */
#define CLI_RECORD_SUFFIX ".lmsurgeon.json"

/* A file tree's fingerprint (XXH64, 16 hex digits) and total size in bytes. With contents,
 * every regular file's name relative to path, size and bytes, in name order (symbolic links
 * followed), so that the same files anywhere give the same value; without, names, sizes and
 * modification times only (a cheap check that a tree was not touched). path may be a file. */
enum lms_status cli_tree_fingerprint(const char *path, bool contents, char hex[LMS_HASH64_HEX],
                                     uint64_t *bytes, struct lms_error *err);

/* Whether out holds the output of converting an input of fingerprint input_fp with options
 * opts: its record exists, names both, and out's files are as the record left them.
 * OUT: *bytes, the output's size as recorded. */
bool cli_record_matches(const char *out, const char *input_fp, const struct json_t *opts,
                        uint64_t *bytes);
/* Writes out's record (atomically, replacing an older one): the input's path and fingerprint,
 * the options and out's file times. */
enum lms_status cli_record_write(const char *out, const char *in, const char *input_fp,
                                 const struct json_t *opts, struct lms_error *err);

/* convert's --help text (both modes). */
extern const char cli_convert_usage[];

/* lmsurgeon convert --batch MANIFEST: the exit code. */
int cmd_convert_batch(int argc, char **argv);

#endif
