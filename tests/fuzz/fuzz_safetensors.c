/* libFuzzer target: the safetensors header parser (lms_st_parse), given the input as a whole
 * file and as a truncated head of a larger one. */
#include <stddef.h>
#include <stdint.h>

#include "lms/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lms_error err;
    struct lms_st_header h = {0};
    lms_st_parse(data, size, size, &h, &err);
    lms_st_header_release(&h);
    struct lms_st_header h2 = {0};
    lms_st_parse(data, size, (uint64_t)size + 4096, &h2, &err);
    lms_st_header_release(&h2);
    return 0;
}
