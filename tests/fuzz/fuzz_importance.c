/* libFuzzer target: the importance file reader (lms_importance_read, versions 1 and 2). The
 * input is the file; an accepted file goes through what prune does with it: the dimension check,
 * re-deriving the scores from the raw sums, the kept-layer choice, and merges: with itself (the
 * same parts twice: refused) and with a copy whose row ranges are moved past its own (disjoint:
 * the sums add, unless the provenance or the sums are refused). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lms/alloc.h"
#include "lms/importance.h"
#include "lms/surgery.h"

#include "fuzz_io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Moves every row range of the provenance (source, or each of source.parts) up by the largest
 * row_end, so the copy's rows follow the original's. Ranges too large to move stay. */
static void move_rows_past(json_t *source)
{
    json_t *parts = json_object_get(source, "parts");
    size_t n = json_is_array(parts) ? json_array_size(parts) : 1;
    json_int_t shift = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *end = json_object_get(parts ? json_array_get(parts, i) : source, "row_end");
        if (json_is_integer(end) && json_integer_value(end) > shift &&
            json_integer_value(end) < ((json_int_t)1 << 40))
            shift = json_integer_value(end);
    }
    for (size_t i = 0; i < n; i++) {
        json_t *p = parts ? json_array_get(parts, i) : source;
        static const char *const keys[] = {"row_begin", "row_end"};
        for (int k = 0; k < 2; k++) {
            json_t *v = json_object_get(p, keys[k]);
            if (json_is_integer(v) && json_integer_value(v) < ((json_int_t)1 << 40))
                json_integer_set(v, json_integer_value(v) + shift);
        }
    }
}

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
            if (json_is_object(again.source))
                move_rows_past(again.source);
            lms_importance_merge(&imp, &again, &err);
            lms_importance_release(&again);
        }
        lms_importance_derive(&imp, true, &err);
    }
    /* the depth selectors on whatever scores the file holds */
    struct lms_keep keep;
    for (int64_t n = imp.n_layers; imp.layers && n >= 0 && n <= 4096; n -= (n > 2 ? n / 2 : 1))
        if (lms_select_layers(LMS_LAYERS_IMPORTANCE, imp.n_layers, n, imp.layers, &keep, &err) ==
            LMS_OK)
            lms_free(keep.index);
    int64_t start;
    if (imp.blocks && imp.block_size > 0 &&
        lms_select_block(imp.n_layers, imp.n_layers - imp.block_size, imp.blocks, &keep, &start,
                         &err) == LMS_OK)
        lms_free(keep.index);
    lms_importance_release(&imp);
    return 0;
}
