/* libFuzzer target: NeMo 1 ".nemo" tarballs, read through the "nemo1" format: the tar listing
 * (libarchive; member names, offsets and sizes cross-checked against the ustar headers of the
 * mapped file), a gzip tarball extracted to a temporary folder, then model_config.yaml,
 * hf_config.json and the weights (torch_dist folder or model_weights.ckpt). The input is the
 * archive, reached through a memory file. */
#include "fuzz_io.h"

#include <stddef.h>
#include <stdint.h>

#include "lms/ir.h"
#include "lms/nemo.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_memfd_path(data, size);
    if (!path)
        return 0;
    lms_format_nemo1.probe(path);
    struct lms_error err;
    struct lms_model m;
    if (lms_format_nemo1.read(path, &m, &err) == LMS_OK)
        lms_model_release(&m);
    return 0;
}
