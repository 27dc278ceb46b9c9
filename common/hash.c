/* XXH64, streaming (include/lms/hash.h). Written from the algorithm's specification: five odd
 * 64-bit primes, a round that multiplies, rotates and multiplies again, four lanes over 32-byte
 * stripes, lanes merged into one, the length added, the tail folded in 8, 4 and 1 bytes, and an
 * avalanche of shifts and multiplies. */
#include "lms/hash.h"

#include <stdio.h>
#include <string.h>

static const uint64_t P1 = 0x9E3779B185EBCA87ull, P2 = 0xC2B2AE3D27D4EB4Full,
                      P3 = 0x165667B19E3779F9ull, P4 = 0x85EBCA77C2B2AE63ull,
                      P5 = 0x27D4EB2F165667C5ull;

static uint64_t rotl(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

/* Little-endian loads, whatever the host's byte order (one move on a little-endian host). */
static uint64_t load64(const unsigned char *p)
{
    uint64_t v = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    memcpy(&v, p, sizeof v);
#else
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
#endif
    return v;
}

static uint64_t load32(const unsigned char *p)
{
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24;
}

static uint64_t round64(uint64_t acc, uint64_t in)
{
    acc += in * P2;
    return rotl(acc, 31) * P1;
}

static uint64_t merge(uint64_t acc, uint64_t lane)
{
    acc ^= round64(0, lane);
    return acc * P1 + P4;
}

static void stripe(uint64_t lane[4], const unsigned char *p)
{
    for (int i = 0; i < 4; i++)
        lane[i] = round64(lane[i], load64(p + 8 * i));
}

void lms_hash64_init(struct lms_hash64 *h, uint64_t seed)
{
    memset(h, 0, sizeof *h);
    h->seed = seed;
    h->lane[0] = seed + P1 + P2;
    h->lane[1] = seed + P2;
    h->lane[2] = seed;
    h->lane[3] = seed - P1;
}

void lms_hash64_update(struct lms_hash64 *h, const void *data, size_t n)
{
    const unsigned char *p = data;
    h->total += n;
    if (h->n_buf) { /* complete the stripe begun by an earlier call */
        size_t take = 32 - h->n_buf < n ? 32 - h->n_buf : n;
        memcpy(h->buf + h->n_buf, p, take);
        h->n_buf += take;
        p += take;
        n -= take;
        if (h->n_buf < 32)
            return;
        stripe(h->lane, h->buf);
        h->n_buf = 0;
    }
    for (; n >= 32; p += 32, n -= 32)
        stripe(h->lane, p);
    memcpy(h->buf, p, n);
    h->n_buf = n;
}

void lms_hash64_update_u64(struct lms_hash64 *h, uint64_t v)
{
    unsigned char b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    lms_hash64_update(h, b, 8);
}

uint64_t lms_hash64_digest(const struct lms_hash64 *h)
{
    const uint64_t *v = h->lane;
    uint64_t acc;
    if (h->total >= 32) {
        acc = rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18);
        for (int i = 0; i < 4; i++)
            acc = merge(acc, v[i]);
    } else {
        acc = h->seed + P5;
    }
    acc += h->total;
    const unsigned char *p = h->buf;
    size_t n = h->n_buf;
    for (; n >= 8; p += 8, n -= 8) {
        acc ^= round64(0, load64(p));
        acc = rotl(acc, 27) * P1 + P4;
    }
    if (n >= 4) {
        acc ^= load32(p) * P1;
        acc = rotl(acc, 23) * P2 + P3;
        p += 4;
        n -= 4;
    }
    for (; n; p++, n--) {
        acc ^= *p * P5;
        acc = rotl(acc, 11) * P1;
    }
    acc ^= acc >> 33;
    acc *= P2;
    acc ^= acc >> 29;
    acc *= P3;
    acc ^= acc >> 32;
    return acc;
}

uint64_t lms_hash64(const void *data, size_t n, uint64_t seed)
{
    struct lms_hash64 h;
    lms_hash64_init(&h, seed);
    lms_hash64_update(&h, data, n);
    return lms_hash64_digest(&h);
}

void lms_hash64_hex(uint64_t v, char out[LMS_HASH64_HEX])
{
    snprintf(out, LMS_HASH64_HEX, "%016llx", (unsigned long long)v);
}
