/* The registry of temporaries in progress (include/lms/tempfiles.h). */
#include "lms/tempfiles.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

/* A handful is enough: a command has at most a few outputs and scratch directories at once. */
#define N_SLOTS 16
/* Temporaries hold a checkpoint's few levels (iter_0000000/ and the like); deeper trees are not
 * ours and are left alone. */
#define MAX_DEPTH 16

_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "the registry's flags must be lock-free");

enum { SLOT_FREE, SLOT_FILLING, SLOT_HELD };
static char slot_path[N_SLOTS][PATH_MAX];
/* A handler reads a path only while its slot is SLOT_HELD, which is set after the path is
 * complete and cleared before the slot is reused. */
static atomic_int slot_state[N_SLOTS];

bool lms_temp_track(const char *path)
{
    size_t n = strlen(path);
    if (n == 0 || n >= PATH_MAX)
        return false;
    for (int i = 0; i < N_SLOTS; i++) {
        int expect = SLOT_FREE;
        if (atomic_compare_exchange_strong(&slot_state[i], &expect, SLOT_FILLING)) {
            memcpy(slot_path[i], path, n + 1);
            atomic_store(&slot_state[i], SLOT_HELD);
            return true;
        }
    }
    return false;
}

void lms_temp_forget(const char *path)
{
    for (int i = 0; i < N_SLOTS; i++)
        if (atomic_load(&slot_state[i]) == SLOT_HELD && strcmp(slot_path[i], path) == 0) {
            atomic_store(&slot_state[i], SLOT_FREE);
            return;
        }
}

static void remove_at(int dirfd, const char *name, int depth);

/* Removes every entry of the directory open at fd. Entries removed while the directory is read
 * may make the kernel skip others, so it is read again from the start until a pass finds it
 * empty (a few passes at most). */
static void empty_dir(int fd, int depth)
{
    _Alignas(8) char buf[2048];
    for (int pass = 0; pass < 8; pass++) {
        bool found = false;
        if (lseek(fd, 0, SEEK_SET) != 0)
            return;
        ssize_t n;
        while ((n = getdents64(fd, buf, sizeof buf)) > 0)
            for (ssize_t off = 0; off < n;) {
                struct dirent64 *e = (struct dirent64 *)(void *)(buf + off);
                off += e->d_reclen;
                if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                    continue;
                found = true;
                remove_at(fd, e->d_name, depth + 1);
            }
        if (!found)
            return;
    }
}

/* Removes name (relative to dirfd) and, for a directory, everything in it; symbolic links are
 * removed, never followed. */
static void remove_at(int dirfd, const char *name, int depth)
{
    if (unlinkat(dirfd, name, 0) == 0 || errno == ENOENT || depth > MAX_DEPTH)
        return;
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return;
    empty_dir(fd, depth);
    close(fd);
    unlinkat(dirfd, name, AT_REMOVEDIR);
}

void lms_temp_remove_all(void)
{
    int saved = errno;
    for (int i = 0; i < N_SLOTS; i++) {
        if (atomic_load(&slot_state[i]) != SLOT_HELD)
            continue;
        remove_at(AT_FDCWD, slot_path[i], 0);
        atomic_store(&slot_state[i], SLOT_FREE);
    }
    errno = saved;
}

void lms_temp_hold_signals(sigset_t *old)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, old);
}

void lms_temp_release_signals(const sigset_t *old)
{
    pthread_sigmask(SIG_SETMASK, old, NULL);
}
