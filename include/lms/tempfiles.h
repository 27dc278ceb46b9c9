/* lmsurgeon: the temporary files and directories a process has in progress, so that a signal
 * handler can remove them.
 *
 * Every writer registers the temporary it creates beside an output (".NAME.lms-tmp-XXXXXX"),
 * and a reader its scratch directory, and forgets it once it is renamed into place or removed.
 * lms_temp_remove_all removes every temporary still registered with system calls alone (openat,
 * getdents64, unlinkat, close: no allocation, no lock), so a SIGINT or SIGTERM handler may call
 * it while the process is anywhere, in the middle of a write included. The registry is a fixed
 * table in static storage: registering allocates nothing and cannot fail in a way that matters
 * (a path that does not fit is not registered, and is left behind by a signal as by SIGKILL).
 * Paths are kept as given; the process must not change its working directory. */
#ifndef LMS_TEMPFILES_H
#define LMS_TEMPFILES_H

#include <signal.h>
#include <stdbool.h>

/* Registers path (a file or a directory tree). False when the table is full or path too long. */
bool lms_temp_track(const char *path);
/* Forgets path (the first registration equal to it); nothing when it is not registered. */
void lms_temp_forget(const char *path);
/* Removes every registered temporary and forgets it. Async-signal-safe. */
void lms_temp_remove_all(void);
/* Blocks SIGINT and SIGTERM in the calling thread, the previous mask into *old: a commit's
 * renames happen all or not at all with respect to a handler that removes temporaries. */
void lms_temp_hold_signals(sigset_t *old);
/* Restores the mask lms_temp_hold_signals saved (a pending signal is delivered now). */
void lms_temp_release_signals(const sigset_t *old);

#endif
