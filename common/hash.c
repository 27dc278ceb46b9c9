/* FNV-1a 64 (include/lms/hash.h). */
#include "lms/hash.h"

#define FNV1A64_PRIME UINT64_C(0x100000001b3)

uint64_t lms_fnv1a64(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= FNV1A64_PRIME;
    }
    return h;
}

uint64_t lms_fnv1a64_u64(uint64_t h, uint64_t v)
{
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)(v >> (8 * i));
    return lms_fnv1a64(h, le, sizeof le);
}

void lms_hash_hex(uint64_t h, char hex[17])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--) {
        hex[i] = digits[h & 15];
        h >>= 4;
    }
    hex[16] = '\0';
}
