/* lmsurgeon: the model IR, one in-memory representation for every checkpoint format.
 *
 * Legend: L layers, H hidden, F FFN width, n_h query heads, n_g query groups (KV heads), d head
 * dim, V vocabulary. Weights are stored [out, in].
 *
 * A model is a typed config (struct lms_arch, every dimension explicit) plus tensors addressed by
 * canonical role and layer. Each tensor is a view: storage bytes (a mapped file range or host
 * memory), or an index selection along one axis of another view, or a concatenation of views
 * along one axis, or a reshape. Readers build views over mapped files without copying; surgery
 * composes views (kept indices, dropped layers); fused layouts such as Megatron's QKV and
 * [gate; up] are views too. A generated view holds no bytes at all: its elements are a pure
 * function of a key and their index (random initialisation, ir/generate.c). Bytes are
 * produced only when a writer or the engine reads a view
 * (lms_view_read), in chunks, so memory stays bounded by the chunk, whatever the model size.
 *
 * The IR knows nothing of files: it never opens or names a path. */
#ifndef LMS_IR_H
#define LMS_IR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lms/dtype.h"
#include "lms/error.h"
#include "lms/hash.h"
#include "lms/storage.h"

#define LMS_MAX_DIMS 8

/* ---- config ---------------------------------------------------------------------------- */

/* The architecture families; each has a descriptor in arch/ (lms/arch.h) that says what tells
 * it apart. */
enum lms_family {
    LMS_FAMILY_LLAMA,   /* LlamaForCausalLM */
    LMS_FAMILY_MISTRAL, /* MistralForCausalLM */
    LMS_FAMILY_QWEN2,   /* Qwen2ForCausalLM: q/k/v biases */
    LMS_FAMILY_QWEN3,   /* Qwen3ForCausalLM: q/k RMSNorm over d, head_dim explicit */
    LMS_FAMILY_PHI3,    /* Phi3ForCausalLM: Llama's block, q/k/v and gate/up stored fused */
};

enum lms_rope_type {
    LMS_ROPE_DEFAULT, /* inv_freq[k] = theta^(-2k/d) */
    LMS_ROPE_LINEAR,  /* positions divided by factor */
    LMS_ROPE_LLAMA3,  /* Llama-3.1 frequency smoothing */
    LMS_ROPE_YARN,    /* parsed and carried; the engine rejects it */
    LMS_ROPE_DYNAMIC, /* parsed and carried; the engine rejects it */
};

struct lms_rope {
    enum lms_rope_type type;
    double theta;                  /* base */
    double factor;                 /* scaling factor, 1 when unused */
    double low_freq_factor;        /* llama3 only */
    double high_freq_factor;       /* llama3 only */
    int64_t original_max_position; /* llama3/yarn: original_max_position_embeddings */
};

struct lms_arch {
    enum lms_family family;
    int64_t n_layers;      /* L */
    int64_t hidden;        /* H */
    int64_t ffn;           /* F */
    int64_t n_heads;       /* n_h, query heads */
    int64_t n_groups;      /* n_g, key/value heads */
    int64_t head_dim;      /* d, always explicit (Qwen3: d != H / n_h) */
    int64_t vocab;         /* V as the tokenizer/config sees it (config vocab_size) */
    int64_t padded_vocab;  /* rows of the embedding as stored, >= vocab */
    int64_t max_position;  /* max_position_embeddings */
    int64_t sliding_window; /* Mistral sliding window in tokens, 0 when none */
    double norm_eps;       /* RMSNorm epsilon */
    struct lms_rope rope;
    bool tie_embeddings;   /* lm_head shares the embedding; no LM_HEAD tensor */
    bool qkv_bias;         /* q/k/v projections have biases (Qwen2, Llama attention_bias) */
    bool o_bias;           /* o projection has a bias (Llama attention_bias) */
    bool qk_norm;          /* Qwen3 per-head RMSNorm on q and k */
    enum lms_dtype dtype;  /* declared parameter dtype of the checkpoint */
};

const char *lms_family_name(enum lms_family f);       /* "qwen3" */
/* Checks every dimension for consistency (positive, divisible, bounded). */
enum lms_status lms_arch_validate(const struct lms_arch *a, struct lms_error *err);
/* Parameter count implied by the config (padded vocab, tied embeddings counted once). */
int64_t lms_arch_n_params(const struct lms_arch *a);

/* ---- views ------------------------------------------------------------------------------ */

enum lms_view_kind {
    LMS_VIEW_STORAGE, /* contiguous row-major bytes in a storage */
    LMS_VIEW_SELECT,  /* src with an index list along one axis (kept channels, one layer) */
    LMS_VIEW_CONCAT,  /* parts joined along one axis (fused QKV, [gate; up], stacked layers) */
    LMS_VIEW_RESHAPE, /* src with the same elements in the same order, another shape */
    LMS_VIEW_GENERATED, /* mean + std x a normal draw keyed by (key, element index) */
    LMS_VIEW_FP8_BLOCKS, /* F32 elements: E4M3 codes of src times their block's scale */
};

struct lms_view {
    enum lms_view_kind kind;
    int refs;                       /* views are immutable and shared; last release frees */
    enum lms_dtype dtype;
    int ndim;                       /* 0 = scalar */
    int64_t shape[LMS_MAX_DIMS];    /* row-major */
    union {
        struct {
            struct lms_storage *storage; /* one reference held */
            uint64_t offset;             /* byte offset of element 0 */
        } st;
        struct {
            struct lms_view *src; /* one reference held */
            int axis;             /* axis of src the index selects along */
            int64_t *index;       /* shape[axis] indices into src->shape[axis]; owned */
        } sel;
        struct {
            struct lms_view **parts; /* n_parts references held; owned array */
            int n_parts;
            int axis;
        } cat;
        struct {
            struct lms_view *src; /* one reference held */
        } reshape;
        struct {
            uint64_t key;  /* selects the stream; the same key gives the same elements */
            double mean;   /* std 0: every element is mean (norm weights 1, biases 0) */
            double std;
            int n_threads; /* threads one read may use (0: all cores); never changes a value */
        } gen;
        struct {
            struct lms_view *src; /* [rows, cols] F8_E4M3 codes; one reference held */
            float *scale_inv;     /* [ceil(rows/B), ceil(cols/B)], B = LMS_FP8_BLOCK; owned */
        } fp8;
    } u;
};

/* Creates a view over storage bytes [offset, offset + bytes(shape, dtype)). The range must lie
 * inside the storage (checked: LMS_EFORMAT). OUT: *out holds one reference. */
enum lms_status lms_view_new_storage(struct lms_storage *s, uint64_t offset, enum lms_dtype dt,
                                     int ndim, const int64_t *shape, struct lms_view **out,
                                     struct lms_error *err);
/* Selects index[0..n) along axis of src (indices checked against src). index is copied. */
enum lms_status lms_view_new_select(struct lms_view *src, int axis, const int64_t *index,
                                    int64_t n, struct lms_view **out, struct lms_error *err);
/* Selects the contiguous range [begin, begin + n) along axis. */
enum lms_status lms_view_new_range(struct lms_view *src, int axis, int64_t begin, int64_t n,
                                   struct lms_view **out, struct lms_error *err);
/* Joins parts along axis; all other dims and the dtype must agree. */
enum lms_status lms_view_new_concat(struct lms_view *const *parts, int n_parts, int axis,
                                    struct lms_view **out, struct lms_error *err);
/* Same elements, new shape (element counts must match). */
enum lms_status lms_view_new_reshape(struct lms_view *src, int ndim, const int64_t *shape,
                                     struct lms_view **out, struct lms_error *err);
/* Elements mean + std * z_i, z_i a standard normal draw that depends on key and the element's
 * row-major index i only, so any range reads the same values whatever the chunking or the
 * thread count; dt is F32, BF16 or F16 (the f32 value rounded to nearest even). */
enum lms_status lms_view_new_generated(enum lms_dtype dt, int ndim, const int64_t *shape,
                                       uint64_t key, double mean, double std, int n_threads,
                                       struct lms_view **out, struct lms_error *err);
/* The dequantised view of a fine-grained FP8 weight: element (r, c) is, in f32,
 * e4m3(codes[r, c]) * scale_inv[r / LMS_FP8_BLOCK, c / LMS_FP8_BLOCK]. codes is a 2-D F8_E4M3
 * view; scale_inv holds ceil(rows / LMS_FP8_BLOCK) x ceil(cols / LMS_FP8_BLOCK) values, copied.
 * The caller checks the scales (finite, >= 0); this checks only the types and shapes. */
enum lms_status lms_view_new_fp8_blocks(struct lms_view *codes, const float *scale_inv,
                                        struct lms_view **out, struct lms_error *err);
struct lms_view *lms_view_ref(struct lms_view *v);
void lms_view_release(struct lms_view *v); /* NULL allowed */

int64_t lms_view_numel(const struct lms_view *v);
/* Bytes of the whole view in its dtype (sub-byte types rounded up to whole bytes). */
uint64_t lms_view_nbytes(const struct lms_view *v);
/* True when the view is plain storage bytes (can be copied without gathering). */
bool lms_view_is_direct(const struct lms_view *v);

/* Reads elements [e0, e0 + n) in row-major order into dst, in the view's dtype. Sub-byte
 * dtypes can only be read whole from direct views (LMS_EUNSUPPORTED otherwise). */
enum lms_status lms_view_read(const struct lms_view *v, int64_t e0, int64_t n, void *dst,
                              struct lms_error *err);
/* As lms_view_read, converting to dt (both castable). Uses a bounded internal scratch. */
enum lms_status lms_view_read_as(const struct lms_view *v, int64_t e0, int64_t n,
                                 enum lms_dtype dt, void *dst, struct lms_error *err);

/* Tells the kernel the mapped file pages under v are no longer needed by this process (they stay
 * in the page cache), so streaming a large model does not grow the resident set. Harmless for
 * host storage; the bytes stay readable. */
void lms_view_drop_pages(const struct lms_view *v);

/* ---- tensors and models ------------------------------------------------------------------- */

enum lms_role {
    LMS_ROLE_OTHER,     /* not modelled; carried through by name */
    LMS_ROLE_EMBED,     /* [V, H] */
    LMS_ROLE_ATTN_NORM, /* [H] input_layernorm */
    LMS_ROLE_Q,         /* [n_h d, H] */
    LMS_ROLE_K,         /* [n_g d, H] */
    LMS_ROLE_V,         /* [n_g d, H] */
    LMS_ROLE_Q_BIAS,    /* [n_h d] */
    LMS_ROLE_K_BIAS,    /* [n_g d] */
    LMS_ROLE_V_BIAS,    /* [n_g d] */
    LMS_ROLE_Q_NORM,    /* [d] */
    LMS_ROLE_K_NORM,    /* [d] */
    LMS_ROLE_O,         /* [H, n_h d] */
    LMS_ROLE_O_BIAS,    /* [H] */
    LMS_ROLE_MLP_NORM,  /* [H] post_attention_layernorm */
    LMS_ROLE_GATE,      /* [F, H] */
    LMS_ROLE_UP,        /* [F, H] */
    LMS_ROLE_DOWN,      /* [H, F] */
    LMS_ROLE_FINAL_NORM, /* [H] */
    LMS_ROLE_LM_HEAD,   /* [V, H], absent when tied */
    LMS_ROLE_COUNT
};

const char *lms_role_name(enum lms_role r); /* "q", "gate", ... */
bool lms_role_is_per_layer(enum lms_role r);
/* The Hugging Face checkpoint name of a role ("model.layers.3.self_attn.q_proj.weight").
 * Returns false for LMS_ROLE_OTHER or when the name does not fit dst_cap. */
bool lms_role_hf_name(enum lms_role r, int64_t layer, char *dst, size_t dst_cap);
/* Parses a Hugging Face tensor name; false if the name is not a modelled role. */
bool lms_role_from_hf_name(const char *name, enum lms_role *role, int64_t *layer);
/* Expected shape of a role under arch; false for LMS_ROLE_OTHER. */
bool lms_role_shape(enum lms_role r, const struct lms_arch *a, int *ndim, int64_t *shape);
/* Whether arch a has a tensor of role r (biases, q/k norms and an untied LM head depend on it);
 * false for LMS_ROLE_OTHER. */
bool lms_role_expected(enum lms_role r, const struct lms_arch *a);

struct lms_tensor {
    char *name;            /* checkpoint name in the source format; owned */
    enum lms_role role;
    int64_t layer;         /* 0-based block, -1 for global tensors */
    struct lms_view *view; /* one reference held */
};

struct json_t; /* jansson */

struct lms_scratch; /* lms/scratch.h */

struct lms_model {
    struct lms_arch arch;
    struct lms_tensor *tensors; /* n_tensors entries, in the order added */
    size_t n_tensors;
    size_t cap_tensors;
    /* Metadata carried for round trips; the IR only stores them. */
    struct json_t *hf_config;   /* config.json as read (unmodelled keys kept), or NULL; owned */
    char **aux_files;           /* files that travel with the checkpoint (tokenizer, ...): paths */
    size_t n_aux_files;
    char *source_format;        /* name of the format the model was read from; owned */
    struct lms_scratch *scratch; /* where extracted aux files live, or NULL; one reference */
    /* What surgery did, so that writers derive the config keys that depend on it (per-layer
     * lists such as layer_types, an explicit head_dim) instead of surgery editing hf_config.
     * NULL for a model as read; set by lms_prune_apply (also when no layer was dropped): for
     * each of arch.n_layers layers, its layer in the model as read (the one hf_config, carried
     * unchanged, describes), whose layer count is n_layers_src. Owned; lms_model_clone copies
     * it. */
    int64_t *layer_src;
    int64_t n_layers_src;
    /* What the reader could not carry over and the user should hear of (one line, e.g. a GGUF
     * tokenizer that is not rebuilt), or NULL; owned, set with lms_model_set_warning. */
    char *warning;
};

void lms_model_init(struct lms_model *m);
/* Frees everything the model owns and drops its view references. */
void lms_model_release(struct lms_model *m);
/* Appends a tensor; takes a new reference to view and copies name. */
enum lms_status lms_model_add(struct lms_model *m, const char *name, enum lms_role role,
                              int64_t layer, struct lms_view *view, struct lms_error *err);
/* Adds a file path to aux_files (copied). */
enum lms_status lms_model_add_aux_file(struct lms_model *m, const char *path,
                                       struct lms_error *err);
/* Sets m->warning to a copy of line (replacing an earlier one). */
enum lms_status lms_model_set_warning(struct lms_model *m, const char *line,
                                      struct lms_error *err);
/* Deep-copies the metadata and shares the views (new references). OUT: dst is initialised. */
enum lms_status lms_model_clone(const struct lms_model *src, struct lms_model *dst,
                                struct lms_error *err);
struct lms_tensor *lms_model_find(const struct lms_model *m, enum lms_role role, int64_t layer);
struct lms_tensor *lms_model_find_name(const struct lms_model *m, const char *name);
/* Checks that every role the arch requires is present once with the expected shape, and that no
 * unexpected role is present. Error names the tensor and the mismatch.
 * Who calls it: the library checks a model once at each boundary it crosses. Every reader
 * checks the model it built before returning it (the error names the file); every writer, and
 * the engine, check the model handed to them before using it (a caller may have built it by
 * hand). Code inside the library that turns a valid model into another (surgery, clone) makes
 * it valid by construction and does not check it again. */
enum lms_status lms_model_validate(const struct lms_model *m, struct lms_error *err);
/* Sum of element counts of all tensors. */
int64_t lms_model_n_params(const struct lms_model *m);
/* Sum of byte sizes of all tensors in their dtypes. */
uint64_t lms_model_nbytes(const struct lms_model *m);
/* The content fingerprint of m as 16 hex digits (LMS_HASH64_HEX bytes with the NUL): XXH64
 * (lms/hash.h) of the architecture's fields, then of every modelled tensor (those carried only
 * by name are format bookkeeping and left out) in the order of its Hugging Face name: the
 * name, the dtype's name, the shape and the bytes in the tensor's dtype. The same weights give the same fingerprint whatever the
 * path, the shards or the format (HF, NeMo, Megatron) they were read from. Reads every byte
 * once, a chunk at a time (memory: one chunk of 4 MiB); errors are the views' read errors. */
enum lms_status lms_model_fingerprint(const struct lms_model *m, char out[LMS_HASH64_HEX],
                                      struct lms_error *err);

#endif
