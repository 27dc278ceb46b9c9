/* libFuzzer target: the GGUF container parser (lms_gguf_parse) over the input, walking every
 * string and numeric array it accepted, and rebuilding a tokenizer.json from its tokenizer.ggml.*
 * keys (which the reader reaches only for a whole valid model); then the gguf layout reader
 * (lms_format_gguf.read) over the same bytes as a file, which maps tensors, dequantises Q8_0 and
 * rebuilds the model. Any input must end in LMS_OK or an error. */
#include <stddef.h>
#include <stdint.h>

#include "formats/codecs/gguf.h"
#include "formats/layouts/gguf_tokenizer.h"
#include "fuzz_io.h"
#include "lms/gguf.h"
#include "lms/ir.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void walk_arrays(const struct lms_gguf *g)
{
    volatile uint64_t sink = 0;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const struct lms_gguf_kv *kv = &g->kv[i];
        if (kv->type != LMS_GGUF_ARRAY)
            continue;
        const uint8_t *cur = kv->v.arr.data;
        for (uint64_t j = 0; j < kv->v.arr.n; j++) {
            if (kv->v.arr.type == LMS_GGUF_STRING) {
                struct lms_gguf_str s = lms_gguf_next_str(&cur);
                sink += s.n ? (uint8_t)s.p[s.n - 1] : 0;
            } else {
                sink += (uint64_t)lms_gguf_arr_int(kv, j);
            }
        }
    }
    (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lms_error err;
    struct lms_gguf g;
    if (lms_gguf_parse(data, size, "fuzz.gguf", &g, &err) == LMS_OK) {
        walk_arrays(&g);
        json_t *tok, *cfg;
        if (lms__gguf_tokenizer_rebuild(&g, "fuzz.gguf", 2048, &tok, &cfg, &err) == LMS_OK) {
            json_decref(tok);
            json_decref(cfg);
        }
    }
    lms_gguf_release(&g);

    const char *path = fuzz_memfd_path(data, size);
    if (path) {
        struct lms_model m;
        if (lms_format_gguf.read(path, &m, &err) == LMS_OK)
            lms_model_release(&m);
    }
    return 0;
}
