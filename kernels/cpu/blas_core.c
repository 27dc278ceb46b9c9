/* OpenBLAS kernel selection: builds that do not know the CPU model (Debian 12's OpenBLAS 0.3.21
 * on Sapphire / Emerald Rapids Xeons, which report a generic model name) fall back to their
 * SSE3 "Prescott" kernels, about 3x slower than the AVX-512 ones the CPU can run. OpenBLAS reads
 * OPENBLAS_CORETYPE only while it loads, so the program is executed again with it set. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#ifdef LMS_HAVE_OPENBLAS
#include <cblas.h>
#endif

#include "lms/backend.h"

void lms_blas_select_core(char **argv)
{
#if defined(LMS_HAVE_OPENBLAS) && defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
    if (getenv("OPENBLAS_CORETYPE") || !argv || !argv[0])
        return; /* the user's choice, or already re-executed */
    const char *core = openblas_get_corename();
    if (!core || strcasecmp(core, "prescott") != 0)
        return;
    __builtin_cpu_init();
    const char *want = NULL;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        want = "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        want = "Haswell";
    if (!want || setenv("OPENBLAS_CORETYPE", want, 1) != 0)
        return;
    execv("/proc/self/exe", argv);
    unsetenv("OPENBLAS_CORETYPE"); /* exec failed: carry on with the kernels we have */
#else
    (void)argv;
#endif
}
