/* Unicode support for the tokenizer: code point classes (general categories of Unicode 16.0, as
 * the tokenizers library sees them), canonical combining classes and NFC restricted to Unicode
 * 9.0, and UTF-8 decoding. The tables are generated at build time by
 * scripts/gen-unicode-tables.py from formats/text/unicode/unicode-data.txt. */
#ifndef LMS_FORMATS_UNICODE_H
#define LMS_FORMATS_UNICODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lms/error.h"

enum {
    LMS_UC_L = 1,  /* \p{L}: Lu Ll Lt Lm Lo */
    LMS_UC_N = 2,  /* \p{N}: Nd Nl No */
    LMS_UC_WS = 4, /* \s: U+0009-000D, U+0085, Zs Zl Zp */
    LMS_UC_QC = 8, /* not NFC-stable: NFC_QC != Yes or combining class != 0 (Unicode 9.0) */
};

extern const char lms__uc_version[];
extern const uint16_t lms__uc_stage1[0x1100];
extern const uint16_t lms__uc_stage2[];
extern const uint32_t lms__uc_dec_cp[];
extern const uint32_t lms__uc_dec_map[]; /* two per entry; second 0 for singletons */
extern const size_t lms__uc_n_dec;
extern const uint64_t lms__uc_comp_key[]; /* first << 21 | second, ascending */
extern const uint32_t lms__uc_comp_val[];
extern const size_t lms__uc_n_comp;

/* Class bits (LMS_UC_*) of code point cp (< 0x110000). */
static inline unsigned lms__uc_flags(uint32_t cp)
{
    return lms__uc_stage2[((unsigned)lms__uc_stage1[cp >> 8] << 8) | (cp & 0xFF)] & 0xFF;
}

/* Canonical combining class (Unicode 9.0; 0 for newer code points). */
static inline unsigned lms__uc_ccc(uint32_t cp)
{
    return lms__uc_stage2[((unsigned)lms__uc_stage1[cp >> 8] << 8) | (cp & 0xFF)] >> 8;
}

/* Decodes one UTF-8 scalar at s[0..n) (n >= 1). Returns its length (1-4) and stores the code
 * point, or returns 0 for an invalid or truncated sequence (overlong, surrogate, > U+10FFFF). */
static inline size_t lms__utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c < 0xC2)
        return 0;
    if (c < 0xE0) {
        if (n < 2 || (s[1] & 0xC0) != 0x80)
            return 0;
        *cp = ((c & 0x1Fu) << 6) | (s[1] & 0x3Fu);
        return 2;
    }
    if (c < 0xF0) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80)
            return 0;
        uint32_t v = ((c & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
        if (v < 0x800 || (v >= 0xD800 && v <= 0xDFFF))
            return 0;
        *cp = v;
        return 3;
    }
    if (c < 0xF5) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
            return 0;
        uint32_t v = ((c & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) |
                     (s[3] & 0x3Fu);
        if (v < 0x10000 || v > 0x10FFFF)
            return 0;
        *cp = v;
        return 4;
    }
    return 0;
}

/* Encodes cp as UTF-8 into dst (4 bytes of room); returns the length. */
size_t lms__utf8_encode(uint32_t cp, unsigned char *dst);

/* Byte offset of the first invalid UTF-8 sequence in s[0..n), or n if valid. */
size_t lms__utf8_check(const unsigned char *s, size_t n);

/* True when s[0..n) (valid UTF-8) is certainly already in NFC (every code point NFC-stable). */
bool lms__nfc_quick(const unsigned char *s, size_t n);

/* NFC (Unicode 9.0 data, as the tokenizers library applies it) of valid UTF-8 s[0..n), appended
 * to *dst (grown with lms_realloc; *dst_len and *dst_cap updated). */
enum lms_status lms__nfc(const unsigned char *s, size_t n, unsigned char **dst, size_t *dst_len,
                         size_t *dst_cap, struct lms_error *err);

#endif
