/* libFuzzer target: the torch.distributed.checkpoint ".metadata" reader. The input is the
 * .metadata pickle; it is parsed alone (lms_dcp_metadata_parse) and then opened as a whole
 * checkpoint (lms_dcp_open_source) whose members live in one host buffer: a valid metadata.json,
 * the input, and 64 KiB of data shared by the data files __0_0.distcp and __1_0.distcp. Every
 * tensor view that opens is read at its first and last element. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "formats/codecs/dcp.h"
#include "lms/ir.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char metadata_json[] = "{\"sharded_backend\": \"torch_dist\", "
                                    "\"sharded_backend_version\": 1, \"common_backend\": "
                                    "\"torch\", \"common_backend_version\": 1}";
enum { DATA_BYTES = 64 << 10 };

static void read_views(const struct lms_dcp *d)
{
    struct lms_error err;
    static unsigned char sink[64];
    for (size_t i = 0; i < d->n_tensors; i++) {
        const struct lms_view *v = d->tensors[i].view;
        if (!v)
            continue;
        int64_t n = lms_view_numel(v);
        if (n > 0 && lms_view_nbytes(v) / (uint64_t)n <= 8) {
            lms_view_read(v, 0, 1, sink, &err);
            lms_view_read(v, n - 1, 1, sink, &err);
        }
    }
    for (size_t i = 0; i < d->n_tensors; i++)
        lms_dcp_find(d, d->tensors[i].key);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct lms_error err;
    struct lms_dcp d;
    lms_dcp_metadata_parse(data, size, &d, &err);
    lms_dcp_release(&d);

    size_t json_len = sizeof(metadata_json) - 1;
    struct lms_storage *s;
    if (lms_storage_new_host(json_len + size + DATA_BYTES, &s, &err) != LMS_OK)
        return 0;
    unsigned char *base = s->base;
    memcpy(base, metadata_json, json_len);
    if (size)
        memcpy(base + json_len, data, size);
    for (size_t i = 0; i < DATA_BYTES; i++)
        base[json_len + size + i] = (unsigned char)(i * 7);
    const struct lms_dcp_member members[] = {
        {"metadata.json", 0, json_len},
        {".metadata", json_len, size},
        {"__0_0.distcp", json_len + size, DATA_BYTES},
        {"__1_0.distcp", json_len + size, DATA_BYTES},
    };
    struct lms_dcp_source src = {.dir = "", .archive = s, .members = members, .n_members = 4};
    if (lms_dcp_open_source(&src, &d, &err) == LMS_OK)
        read_views(&d);
    lms_dcp_release(&d);
    lms_storage_release(s);
    return 0;
}
