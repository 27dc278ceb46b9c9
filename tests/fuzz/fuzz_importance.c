/* libFuzzer target: the importance file reader (lms_importance_read, versions 1 and 2). The
 * input is the file; an accepted file goes through what prune does with it: the dimension check,
 * re-deriving the scores from the raw sums, a merge with itself and the kept-layer choice. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lms/alloc.h"
#include "lms/importance.h"

#include "fuzz_io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_memfd_path(data, size);
    if (!path)
        return 0;
    struct lms_error err;
    struct lms_importance imp;
    if (lms_importance_read(path, &imp, &err) != LMS_OK)
        return 0;
    struct lms_arch a = {.n_layers = imp.n_layers, .hidden = imp.hidden, .ffn = imp.ffn,
                         .n_heads = imp.n_heads, .n_groups = imp.n_groups};
    lms_importance_check(&imp, &a, path, &err);
    lms_importance_axes(&imp);
    if (imp.raw.present) {
        struct lms_importance again;
        if (lms_importance_read(path, &again, &err) == LMS_OK) {
            lms_importance_merge(&imp, &again, &err);
            lms_importance_release(&again);
        }
        lms_importance_derive(&imp, true, &err);
    }
    if (imp.n_layers <= 4096) {
        bool *keep = lms_malloc((size_t)imp.n_layers * sizeof(bool));
        for (int64_t n = imp.n_layers; keep && n >= 0; n -= (n > 2 ? n / 2 : 1))
            lms_importance_keep_layers(&imp, n, keep, &err);
        lms_free(keep);
    }
    lms_importance_release(&imp);
    return 0;
}
