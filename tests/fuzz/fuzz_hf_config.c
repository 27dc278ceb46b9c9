/* libFuzzer target: the Hugging Face config.json reader. The input is parsed as JSON
 * (lms_json_load_buffer) and interpreted (lms_hf_config_parse); an accepted config is validated
 * and written back (lms_hf_config_build, lms_json_dump), as conversion does. Any input must end
 * in LMS_OK or an error, never a crash, a leak or an out-of-bounds access. */
#include <stddef.h>
#include <stdint.h>

#include "lms/hf.h"
#include "lms/json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lms_error err;
    json_t *cfg;
    if (lms_json_load_buffer("config.json", (const char *)data, size, &cfg, &err) != LMS_OK)
        return 0;
    struct lms_arch arch;
    if (lms_hf_config_parse(cfg, &arch, &err) == LMS_OK &&
        lms_arch_validate(&arch, &err) == LMS_OK) {
        lms_arch_n_params(&arch);
        json_t *out;
        if (lms_hf_config_build(&arch, cfg, &out, &err) == LMS_OK) {
            struct lms_buf_str text = {0};
            lms_json_dump(out, LMS_JSON_INDENT2, &text, &err);
            lms_buf_str_release(&text);
            json_decref(out);
        }
    }
    json_decref(cfg);
    return 0;
}
