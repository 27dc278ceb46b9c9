/* lmsurgeon: the torch.save zip container.
 *
 *   [local header 30 B | name | extra: zip64 (0x0001) when a record reaches 4 GiB, then "FB"
 *    padding so the data starts at a multiple of 64 from the zip start | data]*   stored only
 *   central directory (46 B + name + extra per record) | [zip64 EOCD | zip64 locator] | EOCD
 *
 * Why our own ~400 lines rather than libarchive: the records we read are slices of larger
 * files (each .distcp item is a whole zip at some file offset) and tensor records must become
 * views over the mapped file without copying, so the reader has to hand out the byte offset of
 * every stored record; libarchive streams entries through its own buffers and exposes no data
 * offsets. Writing needs torch's 64-byte "FB" alignment padding and exact control of zip64,
 * which libarchive's zip writer cannot express. The subset torch uses (stored entries, no
 * encryption, one disk) is small enough to validate completely; CRC-32 comes from zlib.
 *
 * lms_zip_parse is a pure parser over bytes in memory (fuzzable). The writer appends records to
 * a seekable file at a base offset with pwrite, computing CRCs while streaming and patching each
 * local header afterwards, so no data descriptors are needed. */
#ifndef LMS_ZIP_H
#define LMS_ZIP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lms/error.h"
#include "lms/ir.h"

struct lms_zip_entry {
    char *name;        /* full record name ("archive/data/0"), NUL-terminated; owned */
    uint64_t data_off; /* offset of the record's first byte from the zip start */
    uint64_t size;     /* bytes (stored: compressed = uncompressed) */
    uint32_t crc;      /* CRC-32 from the central directory */
};

struct lms_zip {
    struct lms_zip_entry *entries; /* central-directory order; owned */
    size_t n_entries;
    char *prefix;                  /* "archive/": folder of the first entry, with '/'; owned */
};

/* Parses the zip occupying exactly src[0..src_len) (nothing may follow the end record). Every
 * offset and size is checked against src_len. OUT: z (release it, also on failure). */
enum lms_status lms_zip_parse(const void *src, size_t src_len, struct lms_zip *z,
                              struct lms_error *err);
void lms_zip_release(struct lms_zip *z);
/* The record prefix + rel ("data.pkl", "data/0"), or NULL. */
const struct lms_zip_entry *lms_zip_find(const struct lms_zip *z, const char *rel);
/* Recomputes the CRC-32 of e's bytes inside src and compares it with the directory's. */
enum lms_status lms_zip_check_crc(const void *src, const struct lms_zip_entry *e,
                                  struct lms_error *err);

/* ---- writer ------------------------------------------------------------------------------ */

struct lms_zip_w_rec {
    char *name;         /* full record name; owned */
    uint64_t lho;       /* local header offset from the zip start */
    uint64_t size;
    uint32_t crc;
    bool zip64;         /* sizes did not fit 32 bits (or forced) */
};

struct lms_zip_writer {
    int fd;                     /* seekable file, written with pwrite; -1: memory (mem) */
    unsigned char *mem;         /* fd < 0: the zip bytes, lms_malloc'd; caller frees */
    size_t mem_cap;
    const char *path;           /* for messages; not owned */
    uint64_t base;              /* file offset of the zip's first byte */
    uint64_t pos;               /* bytes written so far, relative to base */
    char archive[64];           /* folder name without '/' ("archive") */
    struct lms_zip_w_rec *recs; /* owned */
    size_t n_recs, cap_recs;
    bool force_zip64;           /* test hook: zip64 structures even for small records */
};

/* Starts a zip at file offset base of fd, or in memory (w->mem) when fd is -1. archive is the
 * folder name ("archive", "common"). */
void lms_zip_w_begin(struct lms_zip_writer *w, int fd, const char *path, uint64_t base,
                     const char *archive);
/* Appends record archive/rel holding src[0..src_len). */
enum lms_status lms_zip_w_add(struct lms_zip_writer *w, const char *rel, const void *src,
                              size_t src_len, struct lms_error *err);
/* Appends record archive/rel holding the bytes of v converted to dt (LMS_DTYPE_COUNT: keep),
 * streamed through buf[0..buf_cap) (at least 64 KiB). */
enum lms_status lms_zip_w_add_view(struct lms_zip_writer *w, const char *rel,
                                   const struct lms_view *v, enum lms_dtype dt, void *buf,
                                   size_t buf_cap, struct lms_error *err);
/* Writes the central directory and end records. OUT: *total = zip length in bytes. Frees the
 * record list (call lms_zip_w_release on failure paths too). */
enum lms_status lms_zip_w_finish(struct lms_zip_writer *w, uint64_t *total,
                                 struct lms_error *err);
void lms_zip_w_release(struct lms_zip_writer *w);

#endif
