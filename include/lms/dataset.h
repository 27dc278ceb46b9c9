/* lmsurgeon: Megatron/NeMo indexed token datasets (.bin + .idx) and the data loader.
 *
 * A dataset is addressed by a path prefix; the files are PREFIX.bin (token ids of every sequence,
 * back to back, no header) and PREFIX.idx:
 *
 *   offset      size  field
 *   0           9     magic "MMIDIDX\0\0"
 *   9           8     uint64 version = 1
 *   17          1     uint8 dtype code (4 = int32, 5 = int64, 8 = uint16; 1-3 also read)
 *   18          8     uint64 S, number of sequences
 *   26          8     uint64 D, entries of the document index (= documents + 1)
 *   34          4*S   int32 sequence lengths (tokens)
 *   34+4S       8*S   int64 sequence pointers (byte offsets into .bin)
 *   34+12S      8*D   int64 document index (sequence boundaries)
 *
 * The reader maps the .idx, keeps the .bin open, and validates every invariant before returning
 * (magic, version, dtype, counts against the file size, pointers contiguous and inside .bin,
 * .bin size, document index monotone from 0 to S). Token reads use pread on the .bin, so a .bin
 * truncated while in use gives LMS_EIO naming the file instead of a SIGBUS.
 *
 * The "token stream" of a dataset is the concatenation of all its sequences in file order, i.e.
 * .bin read as ids: stream position p is the p-th id of .bin. With documents written by
 * `lmsurgeon preprocess --append-eod` every document ends with the EOD id, so the stream is the
 * documents packed back to back with EOD separators.
 *
 * A dataset handle is immutable after open; every read function may be called concurrently
 * from several threads. */
#ifndef LMS_DATASET_H
#define LMS_DATASET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lms/error.h"
#include "lms/hash.h"

/* Token dtype codes of the .idx header. */
enum lms_index_dtype {
    LMS_INDEX_U8 = 1,
    LMS_INDEX_I8 = 2,
    LMS_INDEX_I16 = 3,
    LMS_INDEX_I32 = 4,
    LMS_INDEX_I64 = 5,
    LMS_INDEX_U16 = 8,
};

/* The dtype Megatron's and NeMo's writers choose for a tokenizer with n_vocab entries (full
 * length including added tokens): uint16 below 65500, else int32. */
enum lms_index_dtype lms_index_dtype_for_vocab(int64_t n_vocab);
/* Bytes per id of a token dtype code; 0 for codes that are not token dtypes (6, 7, others). */
size_t lms_index_dtype_size(int code);

/* ---- reading --------------------------------------------------------------------------- */

struct lms_dataset; /* opaque; immutable after open */

/* Opens PREFIX.idx (mmap) and PREFIX.bin and validates them. Errors name the file and the field
 * at fault. OUT: *out, free with lms_dataset_free. */
enum lms_status lms_dataset_open(const char *prefix, struct lms_dataset **out,
                                 struct lms_error *err);
/* Opens a raw id file (no .idx; e.g. fixtures/corpus/val.ids.u16) as a dataset with one
 * document made of one sequence: the whole file as a token stream. code is the id dtype
 * (LMS_INDEX_U16, LMS_INDEX_I32, ...); the file size must be a multiple of its size. */
enum lms_status lms_dataset_open_raw(const char *path, enum lms_index_dtype code,
                                     struct lms_dataset **out, struct lms_error *err);
/* Opens the data a user names: PREFIX of a Megatron indexed dataset (PREFIX.bin/.idx), or a raw
 * id file ending in .u16 or .i32 (ids back to back, little-endian). OUT: *ds. */
enum lms_status lms_data_open(const char *path, struct lms_dataset **ds, struct lms_error *err);
/* Unmaps and frees. NULL does nothing. */
void lms_dataset_free(struct lms_dataset *ds);
/* The content fingerprint of the data lms_data_open would open at path, as 16 hex digits
 * (LMS_HASH64_HEX bytes with the NUL): XXH64 (lms/hash.h, seed 0) of, for a Megatron prefix,
 * the .idx's size (8 bytes, little-endian) and every byte, then the .bin's size and its first
 * and last MiB (the whole file when smaller; the two overlap below 2 MiB); for a raw id file,
 * its size and its first and last MiB. The path itself is not part of it, so moved files keep
 * their fingerprint. Errors name the file (LMS_EIO). */
enum lms_status lms_data_fingerprint(const char *path, char out[LMS_HASH64_HEX],
                                     struct lms_error *err);

enum lms_index_dtype lms_dataset_dtype(const struct lms_dataset *ds);
int64_t lms_dataset_n_docs(const struct lms_dataset *ds);      /* D - 1 */
int64_t lms_dataset_n_sequences(const struct lms_dataset *ds); /* S */
int64_t lms_dataset_n_tokens(const struct lms_dataset *ds);    /* length of the token stream */

/* Token range of document d (0 <= d < n_docs) in the stream: [*begin, *end). Documents are
 * contiguous in the stream. Returns false if d is out of range. */
bool lms_dataset_doc_range(const struct lms_dataset *ds, int64_t d, int64_t *begin,
                           int64_t *end);

/* Copies stream positions [begin, end) to dst as int32 (end - begin entries; dst_cap is the
 * capacity of dst in entries). LMS_EINVAL when the range is outside the stream or does not fit
 * in dst, LMS_EFORMAT when a stored id does not fit in int32 (int64 datasets), LMS_EIO when the
 * file cannot be read there (e.g. truncated since the open). */
enum lms_status lms_dataset_read(const struct lms_dataset *ds, int64_t begin, int64_t end,
                                 int32_t *dst, size_t dst_cap, struct lms_error *err);
/* Convenience: ids of document d, allocated with lms_malloc. OUT: *ids (caller lms_frees),
 * *n_ids. */
enum lms_status lms_dataset_read_doc(const struct lms_dataset *ds, int64_t d, int32_t **ids,
                                     size_t *n_ids, struct lms_error *err);

/* ---- identity ------------------------------------------------------------------------ */

/* The fingerprint of an open dataset: the same value lms_data_fingerprint gives for its path
 * (read from the files it was opened from; errors name the file). Recorded in provenance
 * (importance files) so that runs over different data are told apart even when the paths
 * differ or coincide. OUT: hex (LMS_HASH64_HEX bytes with the NUL). */
enum lms_status lms_dataset_fingerprint(const struct lms_dataset *ds, char hex[LMS_HASH64_HEX],
                                        struct lms_error *err);

/* ---- train / validation / test split (Megatron --split) ---------------------------------- */

enum { LMS_SPLIT_TRAIN = 0, LMS_SPLIT_VALID = 1, LMS_SPLIT_TEST = 2, LMS_SPLIT_COUNT = 3 };

/* Document ranges of the three splits, as megatron-core computes them from a --split string
 * such as "969,30,1" or "98,2,0" or "1" (weights normalised; document counts rounded with
 * Python's round-half-even, the last boundary pinned to n_docs). OUT: doc_begin[i], doc_end[i]
 * for split i. LMS_EINVAL on a malformed string (no numbers, negative or all-zero weights,
 * more than three weights). */
enum lms_status lms_split_parse(const char *spec, int64_t n_docs,
                                int64_t doc_begin[LMS_SPLIT_COUNT],
                                int64_t doc_end[LMS_SPLIT_COUNT], struct lms_error *err);

/* ---- window sampler -------------------------------------------------------------------- */

/* Options of a sampler over documents [doc_begin, doc_end) of a dataset, in the order of
 * Megatron-Core's GPTDataset (README "Row order"): E epochs, the fewest whose tokens hold the
 * N windows; a document index of E copies of the documents, shuffled as one (or, when the final
 * epoch gives fewer than 80 % of an epoch's windows, the first E - 1 epochs and the final one
 * shuffled apart), packed back to back into a virtual stream; window j of that stream covers
 * virtual positions [j*stride, j*stride + seq_len); and a shuffle over every window of the E
 * epochs (apart for the final epoch in the same case), of which output window k is the k-th.
 * Randomness is one splitmix64 generator seeded from the seed, so everything is a pure function
 * of (dataset, options). */
struct lms_sampler_opts {
    int64_t n_windows; /* N windows wanted (> 0); epochs are added as needed */
    int64_t seq_len;   /* S tokens per window (> 0); use S+1 for inputs plus shifted labels */
    int64_t stride;    /* distance between window starts; 0 = seq_len (non-overlapping) */
    uint64_t seed;     /* everything below is deterministic given the seed */
    int64_t doc_begin; /* documents [doc_begin, doc_end) (e.g. a split); both 0 = all */
    int64_t doc_end;
    bool shuffle_docs;    /* shuffle the document index */
    bool shuffle_windows; /* return windows in a shuffled order */
    /* The planned index (document order, its token offsets, the window shuffle) is held in
     * memory up to this many bytes; a larger one is built once into a cache file and mapped.
     * 0 = $LMS_SAMPLER_MEMORY_LIMIT (bytes) if set, else 256 MiB. */
    uint64_t memory_limit;
    /* Directory of that cache file; NULL = beside the data. When the file can be neither
     * found nor written there, $TMPDIR (else /tmp) is tried. */
    const char *cache_dir;
};

/* Names the row order above; another order gets another name (distill records it in its saved
 * configuration, so --resume refuses a state whose rows came in another order). */
#define LMS_SAMPLER_ORDER "megatron-gpt-dataset"

/* What a sampler planned (for logs and tests). */
struct lms_sampler_info {
    int64_t n_epochs;     /* E */
    int64_t n_samples;    /* windows in the E epochs (>= n_windows) */
    bool separate_final;  /* the final epoch is shuffled apart */
    uint64_t index_bytes; /* size of the planned index */
    const char *cache_path; /* the mapped cache file, NULL when the index is in memory */
};

struct lms_sampler; /* opaque; immutable after creation, reads may run concurrently */

/* Plans the windows (no token is read). LMS_EINVAL for bad options or an empty document range /
 * range without tokens; LMS_EIO when the index needs a cache file that cannot be written. OUT:
 * *out, free with lms_sampler_free. The dataset must outlive the sampler. */
enum lms_status lms_sampler_new(const struct lms_dataset *ds, const struct lms_sampler_opts *o,
                                struct lms_sampler **out, struct lms_error *err);
/* Calibration rows (score, prune): every non-overlapping window of seq_len tokens of the whole
 * dataset, shuffled with seed, or in stream order when !shuffle. */
enum lms_status lms_sampler_new_calibration(const struct lms_dataset *ds, int64_t seq_len,
                                            uint64_t seed, bool shuffle,
                                            struct lms_sampler **out, struct lms_error *err);
void lms_sampler_free(struct lms_sampler *s); /* NULL does nothing */
int64_t lms_sampler_n_windows(const struct lms_sampler *s);
int64_t lms_sampler_seq_len(const struct lms_sampler *s);
void lms_sampler_info(const struct lms_sampler *s, struct lms_sampler_info *info);
/* Copies the ids of window k (0 <= k < n_windows) to dst (seq_len entries, dst_cap >= seq_len). */
enum lms_status lms_sampler_window(const struct lms_sampler *s, int64_t k, int32_t *dst,
                                   size_t dst_cap, struct lms_error *err);

/* ---- writing --------------------------------------------------------------------------- */

struct lms_dataset_writer; /* opaque */

/* Starts writing PREFIX.bin / PREFIX.idx. Both are written to temporary files beside the
 * destination and renamed into place (after fsync) only by lms_dataset_writer_finish; an
 * existing pair is refused unless force. OUT: *out. */
enum lms_status lms_dataset_writer_new(const char *prefix, enum lms_index_dtype code, bool force,
                                       struct lms_dataset_writer **out, struct lms_error *err);
/* Appends one sequence of n ids (each must fit the dtype, else LMS_EINVAL). */
enum lms_status lms_dataset_writer_add(struct lms_dataset_writer *w, const int32_t *ids,
                                       size_t n, struct lms_error *err);
/* Closes the current document (the sequences added since the previous call). A call with no
 * sequence added records an empty document, as Megatron's preprocessing does. */
enum lms_status lms_dataset_writer_end_doc(struct lms_dataset_writer *w, struct lms_error *err);
/* Writes the .idx, fsyncs and renames both files into place. The writer stays allocated;
 * free it with lms_dataset_writer_free. */
enum lms_status lms_dataset_writer_finish(struct lms_dataset_writer *w, struct lms_error *err);
/* Frees the writer; an unfinished writer removes its temporary files. NULL does nothing. */
void lms_dataset_writer_free(struct lms_dataset_writer *w);
/* Counts so far (for progress and summaries). */
int64_t lms_dataset_writer_n_docs(const struct lms_dataset_writer *w);
int64_t lms_dataset_writer_n_tokens(const struct lms_dataset_writer *w);

#endif
