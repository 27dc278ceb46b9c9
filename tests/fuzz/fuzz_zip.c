/* libFuzzer target: the torch.save zip reader (lms_zip_parse, CRC check) and the torch.save
 * decoders built on it (one tensor, a list element, a whole state dict) over a host copy of the
 * input. Any input must end in LMS_OK or an error. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "formats/codecs/dcp.h"
#include "formats/codecs/torch_save.h"
#include "formats/codecs/zip.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lms_error err;
    struct lms_zip z;
    if (lms_zip_parse(data, size, &z, &err) == LMS_OK)
        for (size_t i = 0; i < z.n_entries; i++)
            lms_zip_check_crc(data, &z.entries[i], &err);
    lms_zip_release(&z);

    struct lms_storage *s;
    if (lms_storage_new_host(size, &s, &err) != LMS_OK)
        return 0;
    if (size)
        memcpy(s->base, data, size);
    struct lms_view *v = NULL;
    if (lms_torch_tensor_view(s->base, size, s, 0, -1, &v, &err) == LMS_OK && v->ndim <= 2 &&
        lms_view_nbytes(v) <= (1u << 20)) {
        static unsigned char sink[1 << 20];
        lms_view_read(v, 0, lms_view_numel(v) < 1 ? 0 : 1, sink, &err);
    }
    lms_view_release(v);
    v = NULL;
    lms_torch_tensor_view(s->base, size, s, 0, 0, &v, &err);
    lms_view_release(v);
    struct lms_dcp d;
    lms_torch_state_dict_open(s, 0, size, NULL, &d, &err);
    lms_dcp_release(&d);
    lms_storage_release(s);
    return 0;
}
