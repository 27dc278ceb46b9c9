/* SIGINT and SIGTERM for every command (cli/cli.h): the unfinished outputs go, then the process
 * exits with 128 + the signal's number and one line saying why.
 *
 * The handler does the removal itself rather than setting a flag for the command's loops to
 * notice: a command can spend minutes inside one call (a forward pass, a multi-gigabyte write,
 * a kernel copy between files) where no loop of ours would look at a flag, and the removal must
 * happen whatever the command is doing. It is safe to do from a handler because the registry
 * of temporaries (lms/tempfiles.h) is static storage and is walked with system calls alone,
 * the messages are formatted beforehand, and the handler ends with _exit. Outputs being renamed
 * into place hold the signals for the length of the renames, so a handler finds either the
 * temporary (removed) or the finished output (kept).
 *
 * The handler is installed even where the caller ignored the signal (a shell starts background
 * jobs with SIGINT ignored), as distill always did: an interrupt that reaches the command
 * should stop it cleanly. distill replaces it while it trains with its own, which saves the
 * state first (cli/cmd_distill.c turns the signal into the library run's stop) and reports the
 * signal through cli_interrupt_note. */
#include <signal.h>
#include <sys/types.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "lms/error.h"
#include "lms/tempfiles.h"

static volatile sig_atomic_t noted; /* the signal that stopped a command, 0 if none */
static volatile sig_atomic_t json;  /* --json: the error object goes to stdout as well */
static volatile sig_atomic_t silent; /* the command has said why it ends already */

/* The messages, one per signal, formatted while the command starts. */
static struct {
    int sig;
    const char *name;
    char line[256], json_line[320];
    size_t line_len, json_len;
} msgs[2] = {{SIGINT, "SIGINT", "", "", 0, 0}, {SIGTERM, "SIGTERM", "", "", 0, 0}};

static void write_all(int fd, const char *s, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

static pid_t main_tid; /* the thread that runs the command, and writes its outputs */

static void on_signal(int sig)
{
    /* A process-wide signal may land on any thread (OpenMP's and OpenBLAS's workers included).
     * It is passed on to the main thread, so that the removal never races with the writer
     * creating files in a directory being removed: the main thread runs this handler in its
     * place, out of whatever it was doing (or as soon as it releases the signals it holds). */
    if (gettid() != main_tid) {
        tgkill(getpid(), main_tid, sig);
        return;
    }
    lms_temp_remove_all();
    for (int i = 0; i < 2 && !silent; i++)
        if (msgs[i].sig == sig) {
            write_all(STDERR_FILENO, msgs[i].line, msgs[i].line_len);
            if (json)
                write_all(STDOUT_FILENO, msgs[i].json_line, msgs[i].json_len);
        }
    _exit(128 + sig);
}

void cli_interrupt_install(const char *cmd)
{
    /* on a terminal the line first clears a progress bar (or the ^C the terminal echoed) */
    main_tid = gettid();
    const char *clear = isatty(STDERR_FILENO) ? "\r\033[K" : "";
    for (int i = 0; i < 2; i++) {
        char what[64];
        snprintf(what, sizeof what, "interrupted by %s: unfinished outputs removed",
                 msgs[i].name);
        int n = snprintf(msgs[i].line, sizeof msgs[i].line, "%slmsurgeon %s: error: %s\n", clear,
                         cmd, what);
        msgs[i].line_len = n > 0 ? strlen(msgs[i].line) : 0;
        n = snprintf(msgs[i].json_line, sizeof msgs[i].json_line,
                     "{\"ok\":false,\"error\":\"%s\",\"status\":\"%s\",\"exit_code\":%d}\n", what,
                     lms_status_name(LMS_EINTERRUPTED), 128 + msgs[i].sig);
        msgs[i].json_len = n > 0 ? strlen(msgs[i].json_line) : 0;
        struct sigaction sa = {.sa_handler = on_signal};
        sigemptyset(&sa.sa_mask);
        /* one handler at a time: the other signal waits (it exits anyway) */
        sigaddset(&sa.sa_mask, SIGINT);
        sigaddset(&sa.sa_mask, SIGTERM);
        sigaction(msgs[i].sig, &sa, NULL);
    }
}

void cli_interrupt_json(bool on)
{
    json = on;
}

void cli_interrupt_silence(void)
{
    silent = 1;
}

void cli_interrupt_note(int sig)
{
    noted = sig;
}

int cli_interrupt_exit_code(void)
{
    return noted ? 128 + noted : CLI_EXIT_INTERRUPTED;
}
