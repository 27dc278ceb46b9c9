/* lmsurgeon: a fast 64-bit content hash for fingerprints (the inputs a run was made with).
 *
 * The hash is XXH64 (Yann Collet's xxHash, 64-bit variant), computed exactly as its
 * specification defines it, so a fingerprint can be checked with any xxHash tool
 * (`xxhsum -H1`, python's xxhash.xxh64): four lanes of multiply-rotate rounds over 32-byte
 * stripes of little-endian 8-byte words, then the tail and a final avalanche. It is not a
 * cryptographic hash: it tells inputs apart, it does not resist forgery. Streaming: memory is
 * the 88-byte state whatever the length; about one byte per cycle and lane, several GB/s. */
#ifndef LMS_HASH_H
#define LMS_HASH_H

#include <stddef.h>
#include <stdint.h>

struct lms_hash64 {
    uint64_t lane[4];
    uint64_t total;   /* bytes hashed so far */
    uint64_t seed;
    unsigned char buf[32]; /* a stripe not yet complete */
    size_t n_buf;
};

void lms_hash64_init(struct lms_hash64 *h, uint64_t seed);
void lms_hash64_update(struct lms_hash64 *h, const void *data, size_t n);
/* The hash of everything given so far (the state stays usable). */
uint64_t lms_hash64_digest(const struct lms_hash64 *h);
/* One call: XXH64(data, n, seed). */
uint64_t lms_hash64(const void *data, size_t n, uint64_t seed);
/* Adds v as 8 little-endian bytes (lengths and counts inside a fingerprint). */
void lms_hash64_update_u64(struct lms_hash64 *h, uint64_t v);

/* A fingerprint as text: 16 lowercase hex digits and the NUL. */
#define LMS_HASH64_HEX 17
void lms_hash64_hex(uint64_t v, char out[LMS_HASH64_HEX]);

#endif
