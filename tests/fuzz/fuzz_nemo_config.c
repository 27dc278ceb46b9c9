/* libFuzzer target: the NeMo / Megatron model-config readers. The first input byte chooses the
 * file, the rest is its text:
 *   0  context/io.json of a NeMo 2 checkpoint, read through the "nemo" format from a temporary
 *      checkpoint folder whose weights/ links to a valid tiny torch_dist checkpoint (the one of
 *      tests/bad/cases/nemo_io_json_invalid, path passed in by the build), so the fields are
 *      translated, checked against the weights and the model is assembled;
 *   1  run_config.yaml of a Megatron checkpoint (the fields under "model:");
 *   2  model_config.yaml of a NeMo 1 tarball (the top-level fields).
 * The YAML fields are translated to a Hugging Face config (with an empty weight table) and that
 * is parsed and validated, as reading such a checkpoint does. Every reader promises that "out of
 * memory" means an allocation failed: malformed text (invalid UTF-8 above all, which jansson
 * refuses to hold) must be reported as such. */
#include "fuzz_io.h"

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef LMS_FUZZ_NEMO_WEIGHTS
#error "the build passes LMS_FUZZ_NEMO_WEIGHTS, a valid tiny torch_dist checkpoint folder"
#endif

#include "formats/codecs/dcp.h"
#include "formats/layouts/nemo_impl.h"
#include "lms/alloc.h"
#include "lms/hf.h"
#include "lms/nemo.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* rc of a reader that ran while lms_alloc_failures() went from before: LMS_ENOMEM only when an
 * allocation failed on the way. */
static void check_nomem(enum lms_status rc, long before)
{
    if (rc == LMS_ENOMEM && lms_alloc_failures() == before)
        abort();
}

static void read_io_json(const uint8_t *data, size_t size)
{
    const char *dir = fuzz_tmp_dir();
    if (!dir)
        return;
    char p[512];
    snprintf(p, sizeof(p), "%s/context", dir);
    mkdir(p, 0700);
    snprintf(p, sizeof(p), "%s/weights", dir);
    if (symlink(LMS_FUZZ_NEMO_WEIGHTS, p) != 0 && errno != EEXIST)
        return;
    if (!fuzz_tmp_file("context/io.json", data, size))
        return;
    struct lms_error err;
    struct lms_model m;
    long before = lms_alloc_failures();
    enum lms_status rc = lms_format_nemo.read(dir, &m, &err);
    check_nomem(rc, before);
    if (rc == LMS_OK)
        lms_model_release(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int which = data[0] % 3;
    data++;
    size--;
    if (which == 0) {
        read_io_json(data, size);
        return 0;
    }
    struct lms_error err;
    json_t *fields;
    char cls[128];
    long before = lms_alloc_failures();
    enum lms_status rc = lms__nemo_yaml_fields((const char *)data, size,
                                               which == 1 ? "model" : NULL, &fields, cls,
                                               sizeof(cls), &err);
    check_nomem(rc, before);
    if (rc != LMS_OK)
        return 0;
    struct lms_dcp d = {0};
    json_t *hf;
    rc = lms__nemo_hf_from_fields(fields, cls, &d, &hf, &err);
    check_nomem(rc, before);
    if (rc == LMS_OK) {
        struct lms_arch arch;
        if (lms_hf_config_parse(hf, &arch, &err) == LMS_OK)
            lms_arch_validate(&arch, &err);
        json_decref(hf);
    }
    json_decref(fields);
    return 0;
}
