/* libFuzzer target: the data-only pickle reader (lms_pkl_parse) and, on what it accepts, the DCP
 * .metadata interpreter (lms_dcp_metadata_parse), both pure parsers over bytes in memory. Any
 * input must end in LMS_OK or an error, never a crash, a leak or an out-of-bounds access; run
 * under ASan/UBSan. */
#include <stddef.h>
#include <stdint.h>

#include "formats/codecs/dcp.h"
#include "formats/codecs/pickle.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lms_error err;
    struct lms_pkl_doc doc = {0};
    if (lms_pkl_parse(data, size, &doc, &err) == LMS_OK) {
        /* touch the helpers over the tree the way the readers do */
        lms_pkl_dict_get(doc.root, "state_dict_metadata");
        int64_t dims[LMS_MAX_DIMS];
        lms_pkl_int_tuple(doc.root, dims, LMS_MAX_DIMS);
    }
    lms_pkl_doc_release(&doc);
    struct lms_dcp d;
    lms_dcp_metadata_parse(data, size, &d, &err);
    lms_dcp_release(&d);
    return 0;
}
