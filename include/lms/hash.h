/* lmsurgeon: a small non-cryptographic hash for fingerprints (data and model identity in
 * provenance records).
 *
 * FNV-1a, 64-bit (Fowler, Noll, Vo): h = offset basis; for every byte b: h ^= b, h *= prime,
 * with offset basis 0xcbf29ce484222325 and prime 0x100000001b3. It is a well-known, byte-order
 * independent hash that anyone can recompute in a few lines (e.g. to check a recorded
 * fingerprint by hand); it guards against accidents (the wrong file, a changed file), not
 * against an adversary. */
#ifndef LMS_HASH_H
#define LMS_HASH_H

#include <stddef.h>
#include <stdint.h>

#define LMS_FNV1A64_INIT UINT64_C(0xcbf29ce484222325)

/* Continues hash h over n bytes at p (start with LMS_FNV1A64_INIT). */
uint64_t lms_fnv1a64(uint64_t h, const void *p, size_t n);
/* Continues hash h over v as 8 little-endian bytes. */
uint64_t lms_fnv1a64_u64(uint64_t h, uint64_t v);
/* Writes h as 16 lowercase hex digits and a NUL into hex (17 bytes). */
void lms_hash_hex(uint64_t h, char hex[17]);

#endif
