/* How much memory the machine offers a run (include/lms/distill.h): the kernel's estimate of
 * what can be allocated without swapping, capped by the cgroup limit the process runs under
 * (containers and CI runners see the host's MemAvailable otherwise). */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "lms/distill.h"

static bool read_u64_file(const char *path, uint64_t *out)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    char line[64];
    bool ok = fgets(line, sizeof line, f) && sscanf(line, "%" SCNu64, out) == 1;
    fclose(f);
    return ok; /* "max" (no limit) does not parse */
}

uint64_t lms_memory_available(void)
{
    uint64_t avail = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        uint64_t kb;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %" SCNu64 " kB", &kb) == 1)
                avail = kb * 1024;
        fclose(f);
    }
    uint64_t max, cur;
    if (read_u64_file("/sys/fs/cgroup/memory.max", &max) &&
        read_u64_file("/sys/fs/cgroup/memory.current", &cur)) {
        uint64_t left = max > cur ? max - cur : 0;
        if (!avail || left < avail)
            avail = left;
    }
    return avail;
}
