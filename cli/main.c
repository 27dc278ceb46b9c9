/* lmsurgeon: entry point and subcommand dispatch. */
#include <stdio.h>
#include <string.h>

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
};

static void usage(FILE *f)
{
    fprintf(f, "usage: lmsurgeon <command> [options]\n"
               "       lmsurgeon <command> --help\n"
               "       lmsurgeon --version\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\nexit codes: 0 ok, 1 internal error, 2 usage, 3 bad input, 4 I/O failure,\n"
               "            5 out of memory, 6 device error, 130 interrupted\n");
}

int main(int argc, char **argv)
{
    lms_blas_select_core(argv);
    if (argc < 2) {
        usage(stderr);
        return CLI_EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return CLI_EXIT_OK;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("lmsurgeon %s\n", LMS_VERSION);
        return CLI_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
        if (strcmp(argv[1], commands[i].name) == 0) {
            cli_normalize_flags(argc - 1, argv + 1);
            return commands[i].run(argc - 1, argv + 1);
        }
    }
    fprintf(stderr, "lmsurgeon: unknown command '%s'; see 'lmsurgeon --help'\n", argv[1]);
    return CLI_EXIT_USAGE;
}
