/* lmsurgeon: element types of checkpoint tensors and conversions between them.
 *
 * The enum order is the safetensors "alignment order": rank 0 = BOOL ...
 * rank 21 = U64, which the canonical writer sorts by. Sub-byte types (F4, F6_*) and FP8 types
 * are carried through untouched; only the float types F64/F32/F16/BF16 are cast (F8_E4M3 has
 * scalar conversions and a block quantiser below, which the FP8 checkpoint writer uses). */
#ifndef LMS_DTYPE_H
#define LMS_DTYPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum lms_dtype {
    LMS_DTYPE_BOOL,
    LMS_DTYPE_F4,
    LMS_DTYPE_F6_E2M3,
    LMS_DTYPE_F6_E3M2,
    LMS_DTYPE_U8,
    LMS_DTYPE_I8,
    LMS_DTYPE_F8_E5M2,
    LMS_DTYPE_F8_E4M3,
    LMS_DTYPE_F8_E8M0,
    LMS_DTYPE_F8_E4M3FNUZ,
    LMS_DTYPE_F8_E5M2FNUZ,
    LMS_DTYPE_I16,
    LMS_DTYPE_U16,
    LMS_DTYPE_F16,
    LMS_DTYPE_BF16,
    LMS_DTYPE_I32,
    LMS_DTYPE_U32,
    LMS_DTYPE_F32,
    LMS_DTYPE_C64,
    LMS_DTYPE_F64,
    LMS_DTYPE_I64,
    LMS_DTYPE_U64,
    LMS_DTYPE_COUNT
};

/* safetensors spelling ("BF16"); NULL for an out-of-range value. */
const char *lms_dtype_name(enum lms_dtype t);
/* Parses a safetensors dtype string of length n (case-sensitive). false if unknown. */
bool lms_dtype_parse(const char *s, size_t n, enum lms_dtype *out);
/* Parses a user spelling: bf16, f16/fp16/half, f32/fp32/float, f64, or a safetensors name. */
bool lms_dtype_parse_user(const char *s, enum lms_dtype *out);
/* torch spelling used in config.json ("bfloat16"); NULL if torch has no name for it. */
const char *lms_dtype_torch_name(enum lms_dtype t);
bool lms_dtype_from_torch_name(const char *s, enum lms_dtype *out);

unsigned lms_dtype_bits(enum lms_dtype t);
/* Bytes per element for byte-sized types; 0 for sub-byte types (F4, F6_*). */
size_t lms_dtype_size(enum lms_dtype t);
/* True for F64, F32, F16, BF16: the types lms_cast converts between. */
bool lms_dtype_is_castable(enum lms_dtype t);

/* Scalar conversions. Rounding is to nearest, ties to even; NaN stays NaN and infinities stay
 * infinite, with the bit patterns PyTorch produces (bf16 NaN -> 0x7FC0, f16 NaN keeps its sign). */
float lms_bf16_to_f32(uint16_t h);
uint16_t lms_f32_to_bf16(float f);
float lms_f16_to_f32(uint16_t h);
uint16_t lms_f32_to_f16(float f);

/* F8_E4M3 ("e4m3fn": bias 7, no infinities, 0x7F/0xFF NaN, largest finite 448). Decoding is
 * exact. Encoding rounds to nearest, ties to even, and saturates: every magnitude from 448 up,
 * infinities included, gives +-448; NaN gives 0x7F with the sign kept. */
#define LMS_E4M3_MAX 448.0f
float lms_e4m3_to_f32(uint8_t c);
uint8_t lms_f32_to_e4m3(float f);

/* Fine-grained FP8 blocks: a 2-D weight is cut into LMS_FP8_BLOCK x LMS_FP8_BLOCK blocks (the
 * last row and column of blocks may be partial); each block b has scale_inv[b] = max|w| / 448
 * and codes e4m3(w / scale_inv[b]), so that w ~ code * scale_inv[b]. A block whose max|w| / 448
 * is zero (all zeros, or so small the quotient underflows) gets scale_inv 1: its codes are all
 * zero and dequantise to zeros without any division by zero. */
#define LMS_FP8_BLOCK 128
/* Block scales of one band of rows (rows <= LMS_FP8_BLOCK, row-major, cols wide): writes
 * ceil(cols / LMS_FP8_BLOCK) entries to scale_inv. false if the band holds a NaN or an
 * infinity (no scale can represent it). */
bool lms_fp8_band_scales(const float *w, int64_t rows, int64_t cols, float *scale_inv);
/* Codes of the same band under scale_inv (as computed above). */
void lms_fp8_band_encode(const float *w, int64_t rows, int64_t cols, const float *scale_inv,
                         uint8_t *codes);

/* Converts n elements from src (type st) to dst (type dt); both castable. dst and src must not
 * overlap unless they are the same pointer and the types have the same size. */
void lms_cast(void *dst, enum lms_dtype dt, const void *src, enum lms_dtype st, size_t n);

#endif
