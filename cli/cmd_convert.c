/* lmsurgeon convert (placeholder until the formats land in this same change). */
#include "cli/cli.h"

int cmd_convert(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return CLI_EXIT_INTERNAL;
}
