/* lmsurgeon: the torch.save container (library-internal): a zip (zip.h) of data.pkl (a pickle,
 * pickle.h, whose tensors are _rebuild_tensor_v2 calls naming storage records), byteorder,
 * data/<key> (each storage's raw bytes), version and .data/serialization_id. */
#ifndef LMS_FORMATS_CODECS_TORCH_SAVE_H
#define LMS_FORMATS_CODECS_TORCH_SAVE_H

#include <stddef.h>
#include <stdint.h>

#include "formats/codecs/zip.h"
#include "lms/error.h"
#include "lms/ir.h"
#include "lms/storage.h"

struct lms_dcp;

/* The tensor that a torch.save zip in src[0..src_len) holds at its top level (or, with
 * list_index >= 0, as element list_index of a top-level list), as a view over storage s whose
 * byte base_off is the zip's first byte. Checks dtype, contiguity and bounds. */
enum lms_status lms_torch_tensor_view(const void *src, size_t src_len, struct lms_storage *s,
                                      uint64_t base_off, int list_index, struct lms_view **out,
                                      struct lms_error *err);

/* A key map for lms_torch_state_dict_open: writes the name key goes by into dst and returns
 * true, or returns false to keep key. */
typedef bool (*lms_torch_key_map)(const char *key, char *dst, size_t dst_cap);

/* Reads a torch.save state dict (a dict of tensors, or a Lightning checkpoint holding one under
 * "state_dict") from the zip at bytes [base, base + len) of storage s, as d->tensors with whole
 * views and no chunks; values that are not tensors (_extra_state, None) are skipped. rename
 * (NULL: none) maps each key first; two tensors may not end up with one name. OUT: d (release
 * it, also on failure). */
enum lms_status lms_torch_state_dict_open(struct lms_storage *s, uint64_t base, uint64_t len,
                                          lms_torch_key_map rename, struct lms_dcp *d,
                                          struct lms_error *err);

/* Writes the torch.save record set (data.pkl, byteorder, the data records, version,
 * .data/serialization_id) for a pickle that references n tensors as storage keys "0".."n-1".
 * views[i] converted to dt (LMS_DTYPE_COUNT: keep) becomes data/i. */
enum lms_status lms_torch_save_write(struct lms_zip_writer *w, const void *pkl, size_t pkl_len,
                                     struct lms_view *const *views, size_t n, enum lms_dtype dt,
                                     void *buf, size_t buf_cap, struct lms_error *err);

#endif
