/* lmsurgeon: entry point and subcommand dispatch. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "lms/backend.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} commands[] = {
    {"inspect", cmd_inspect, "show a checkpoint's format, architecture, size and tensors"},
    {"convert", cmd_convert, "convert or reshard a checkpoint, optionally casting its dtype"},
    {"init", cmd_init, "write a model of random weights from a preset or a config.json"},
    {"tokenize", cmd_tokenize, "encode text to token ids (or decode ids) with a tokenizer.json"},
    {"preprocess", cmd_preprocess, "tokenize JSONL/text into a Megatron indexed dataset"},
    {"eval", cmd_eval, "mean next-token cross-entropy and perplexity over a token dataset"},
    {"generate", cmd_generate, "greedy continuation of a prompt (a sanity check of a model)"},
    {"score", cmd_score, "activation importance of a model on calibration data"},
    {"prune", cmd_prune, "cut a model to a target depth and width (one-shot structured pruning)"},
    {"distill", cmd_distill, "train a pruned student to match its teacher (logit distillation)"},
    {"train", cmd_train, "fine-tune a model on token data without a teacher (cross-entropy)"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: lmsurgeon <command> [options]\n"
               "       lmsurgeon <command> --help\n"
               "       lmsurgeon --version\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nexit codes: 0 ok, 1 internal error, 2 usage, 3 bad input, 4 I/O failure,\n"
               "            5 out of memory, 6 device error, 7 training diverged,\n"
               "            8 an item of convert --batch failed,\n"
               "            130 interrupted (SIGINT), 143 terminated (SIGTERM)\n");
}

/* Why the first write to standard output failed (0: none did). stdio keeps only an error
 * flag, and a buffer that fails to flush in the middle of a long output is gone by the end, so
 * stdout goes through a stream of this file's own over descriptor 1 that remembers. */
static int stdout_errno;

static ssize_t stdout_write(void *cookie, const char *buf, size_t n)
{
    (void)cookie;
    for (size_t done = 0; done < n;) {
        ssize_t w = write(STDOUT_FILENO, buf + done, n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            if (!stdout_errno)
                stdout_errno = w < 0 ? errno : EIO;
            return -1;
        }
        done += (size_t)w;
    }
    return (ssize_t)n;
}

static int stdout_close(void *cookie)
{
    (void)cookie;
    /* the close reports what only it learns (a network file system); EBADF when descriptor 1
     * was never open, which matters only if something was written, and that failed already */
    if (close(STDOUT_FILENO) != 0 && errno != EBADF) {
        if (!stdout_errno)
            stdout_errno = errno;
        return EOF;
    }
    return 0;
}

static void stdout_track(void)
{
    cookie_io_functions_t io = {.write = stdout_write, .close = stdout_close};
    FILE *f = fopencookie(NULL, "w", io);
    if (!f)
        return; /* the plain stdout still reports a failure, without its cause */
    setvbuf(f, NULL, isatty(STDOUT_FILENO) ? _IOLBF : _IOFBF, BUFSIZ);
    stdout = f; /* glibc's stdout is an ordinary variable, documented as assignable */
}

/* Standard output is buffered, so a full disk or a closed descriptor may show only when it is
 * flushed at exit: every command ends here, and a lost write is exit 4, not success. A command
 * that failed keeps its own code and its one error line. */
static int finish_stdout(const char *cmd, int rc)
{
    bool failed = ferror(stdout) != 0;
    int e = fflush(stdout) != 0 ? errno : 0;
    failed |= e != 0;
    if (fclose(stdout) != 0 && (stdout_errno || errno != EBADF)) {
        failed = true;
        e = e ? e : errno;
    }
    if (!failed || rc != CLI_EXIT_OK)
        return rc;
    e = stdout_errno ? stdout_errno : e;
    fprintf(stderr, "lmsurgeon%s%s: error: writing standard output: %s\n", cmd ? " " : "",
            cmd ? cmd : "", e ? strerror(e) : "a write failed");
    return CLI_EXIT_IO;
}

int main(int argc, char **argv)
{
    lms_blas_select_core(argv);
    stdout_track();
    if (argc < 2) {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return finish_stdout(NULL, CLI_EXIT_OK);
    }
    if (!strcmp(argv[1], "--version")) {
        printf("lmsurgeon %s\n", LMS_VERSION);
        return finish_stdout(NULL, CLI_EXIT_OK);
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(argv[1], commands[i].name) == 0) {
            cli_normalize_flags(argc - 1, argv + 1);
            cli_interrupt_install(commands[i].name);
            return finish_stdout(commands[i].name, commands[i].run(argc - 1, argv + 1));
        }
    }
    fprintf(stderr, "lmsurgeon: unknown command '%s'; see 'lmsurgeon --help'\n", argv[1]);
    return CLI_EXIT_USAGE;
}
