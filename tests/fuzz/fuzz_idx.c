/* libFuzzer target: the Megatron indexed-dataset index reader (.idx). The input is the .idx;
 * it is parsed as such (lms__idx_parse) against .bin sizes that do and do not match what it
 * describes, then opened as a dataset beside a .bin of the matching size (lms_dataset_open), and
 * an accepted dataset is read the way the calibration and distillation loaders read it
 * (documents, token ranges, the window sampler). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "formats/datasets/dataset_impl.h"
#include "lms/alloc.h"
#include "lms/dataset.h"

#include "fuzz_io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The .bin size the index describes (sum of lengths times the id size), capped. */
static uint64_t described_bin_len(const uint8_t *data, size_t size)
{
    if (size < 34)
        return 0;
    size_t item = lms_index_dtype_size(data[17]);
    uint64_t n_seq;
    memcpy(&n_seq, data + 18, 8);
    uint64_t total = 0;
    for (uint64_t k = 0; item && k < n_seq && 34 + 4 * (k + 1) <= size; k++) {
        int32_t len;
        memcpy(&len, data + 34 + 4 * k, 4);
        if (len > 0)
            total += (uint64_t)len * item;
        if (total > (1u << 24))
            return 1u << 24;
    }
    return total;
}

static void read_dataset(const struct lms_dataset *ds)
{
    struct lms_error err;
    int64_t n_docs = lms_dataset_n_docs(ds), n_tok = lms_dataset_n_tokens(ds);
    for (int64_t d = 0; d < n_docs && d < 64; d++) {
        int32_t *ids = NULL;
        size_t n = 0;
        if (lms_dataset_read_doc(ds, d, &ids, &n, &err) == LMS_OK)
            lms_free(ids);
        int64_t b, e;
        lms_dataset_doc_range(ds, d, &b, &e);
    }
    int32_t buf[64];
    if (n_tok > 0)
        lms_dataset_read(ds, 0, n_tok < 64 ? n_tok : 64, buf, 64, &err);
    lms_dataset_read(ds, n_tok - 1, n_tok + 1, buf, 64, &err);
    struct lms_sampler_opts o = {.n_windows = 8, .seq_len = 5, .seed = 7, .shuffle_docs = true,
                                 .shuffle_windows = true};
    struct lms_sampler *s;
    if (lms_sampler_new(ds, &o, &s, &err) == LMS_OK) {
        for (int64_t k = 0; k < lms_sampler_n_windows(s); k++)
            lms_sampler_window(s, k, buf, 64, &err);
        lms_sampler_free(s);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lms_error err;
    struct lms__idx idx;
    uint64_t bin_len = described_bin_len(data, size);
    lms__idx_parse(data, size, bin_len, &idx, &err);
    lms__idx_parse(data, size, bin_len + 1, &idx, &err);
    lms__idx_parse(data, size, 0, &idx, &err);

    const char *ipath = fuzz_tmp_file("ds.idx", data, size);
    const char *bpath = ipath ? fuzz_tmp_file("ds.bin", "", 0) : NULL;
    if (!bpath || truncate(bpath, (off_t)bin_len) != 0)
        return 0;
    char prefix[512];
    snprintf(prefix, sizeof(prefix), "%s/ds", fuzz_tmp_dir());
    struct lms_dataset *ds;
    if (lms_dataset_open(prefix, &ds, &err) == LMS_OK) {
        read_dataset(ds);
        lms_dataset_free(ds);
    }
    return 0;
}
