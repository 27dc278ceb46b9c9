/* lmsurgeon: the forward engine. Runs a Llama / Mistral / Qwen2 / Qwen3 model from the IR on a
 * compute backend (include/lms/backend.h), for eval, importance scoring and distillation.
 *
 * Legend: B batch rows, S tokens per row, N = B*S token rows, L layers, H hidden, F FFN width, n_h
 * query heads, n_g key/value heads, d head dim, V logits width (rows of the LM head, or of the
 * embedding when tied).
 *
 * lms_engine_new uploads the weights once (in the backend's weight dtype) and allocates one
 * workspace sized by lms_fwd_plan_make for the largest batch it will see; lms_engine_forward then
 * allocates nothing. The model itself is written once, against the backend op table:
 *
 *   x = embed[ids]
 *   per layer: xn = rmsnorm(x); q,k,v = xn W_qkv^T (+ bias); q,k = rmsnorm_d(q,k) (Qwen3);
 *              q,k = rope(q,k); x += attention(q,k,v) W_o^T (+ bias);
 *              xn = rmsnorm(x); x += (silu(xn W_gate^T) * (xn W_up^T)) W_down^T
 *   xn = rmsnorm(x); logits = xn W_lm^T (chunks of rows; cross-entropy per chunk)
 *
 * Hooks observe activations on the device at the points listed in enum lms_hook_point (layer
 * outputs for tests and depth importance; norm outputs, attention context and down-projection
 * input for the activation statistics of importance scoring). */
#ifndef LMS_ENGINE_H
#define LMS_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lms/backend.h"
#include "lms/error.h"
#include "lms/ir.h"

struct lms_engine_opts {
    int64_t max_batch;   /* B: most rows per forward call (> 0) */
    int64_t max_seq;     /* S: most tokens per row (> 0); positions are 0..S-1 */
    int64_t logits_rows; /* token rows per logits chunk; 0 = automatic (<= 64 MiB of logits) */
    bool rope_bf16;      /* round the RoPE inverse frequencies to bf16, reproducing a
                          * transformers model moved with .to(torch.bfloat16) (which casts its
                          * rotary inv_freq buffer too); false: fp32, as from_pretrained computes
                          * them whatever the dtype */
};

/* Where every activation lives in the workspace: byte offsets into one device allocation. */
struct lms_fwd_plan {
    int64_t max_tokens;  /* N = max_batch * max_seq */
    int64_t qkv_cols;    /* (n_h + 2 n_g) d */
    int64_t logits_rows; /* R: rows per logits chunk */
    int64_t logits_cols; /* V */
    size_t off_x;        /* (N, H) residual stream */
    size_t off_xn;       /* (N, H) normalised */
    size_t off_qkv;      /* (N, qkv_cols) fused q | k | v */
    size_t off_ctx;      /* (N, n_h d) attention output (o-projection input) */
    size_t off_gu;       /* (N, 2F) gate | up */
    size_t off_act;      /* (N, F) silu(gate) * up (down-projection input) */
    size_t off_logits;   /* (R, V) */
    size_t off_loss;     /* (R) per-row cross-entropy */
    size_t off_ids;      /* (N) int32 */
    size_t off_pos;      /* (N) int32 positions */
    size_t off_tgt;      /* (N) int32 targets */
    size_t off_cos;      /* (S, d/2) RoPE table */
    size_t off_sin;      /* (S, d/2) */
    size_t bytes;        /* total, every part 64-byte aligned */
};

/* Sizes the workspace for arch and opts (checked arithmetic: LMS_EINVAL when it overflows or a
 * dimension is not positive). OUT: *plan. */
enum lms_status lms_fwd_plan_make(const struct lms_arch *a, int64_t logits_cols,
                                  const struct lms_engine_opts *opts, struct lms_fwd_plan *plan,
                                  struct lms_error *err);

/* RoPE inverse frequencies (d/2 entries, dst_cap >= d/2) for the default, linear and llama3 rope
 * types, computed in fp32 as transformers does; *attn_scale gets the cos/sin scale (1 for these
 * types). Yarn and dynamic: LMS_EUNSUPPORTED. */
enum lms_status lms_rope_inv_freq(const struct lms_arch *a, float *dst, size_t dst_cap,
                                  float *attn_scale, struct lms_error *err);
/* cos and sin tables (n_pos, d/2) for positions 0..n_pos-1: angle = fp32(pos * inv_freq),
 * inv_freq rounded to bf16 first when inv_freq_bf16 (see lms_engine_opts.rope_bf16). */
enum lms_status lms_rope_table(const struct lms_arch *a, int64_t n_pos, bool inv_freq_bf16,
                               float *cos, float *sin, struct lms_error *err);

enum lms_hook_point {
    LMS_HOOK_EMBED_OUT,      /* (N, H) embedding output; layer -1 */
    LMS_HOOK_ATTN_NORM_OUT,  /* (N, H) input_layernorm output */
    LMS_HOOK_ATTN_CONTEXT,   /* (N, n_h d) attention output before o_proj */
    LMS_HOOK_MLP_NORM_OUT,   /* (N, H) post_attention_layernorm output */
    LMS_HOOK_DOWN_INPUT,     /* (N, F) silu(gate) * up */
    LMS_HOOK_LAYER_OUT,      /* (N, H) residual stream after the layer */
    LMS_HOOK_FINAL_NORM_OUT, /* (N, H) final norm output; layer -1 */
    LMS_HOOK_COUNT
};

/* An activation handed to a hook: valid only during the call. */
struct lms_activation {
    enum lms_hook_point point;
    int64_t layer;     /* 0-based, -1 for global points */
    int64_t batch;     /* B */
    int64_t seq;       /* S */
    int64_t cols;      /* channels */
    const float *data; /* device address, (B*S, cols) row-major, contiguous */
};

/* Called at each requested hook point. May run backend ops on act->data (same backend) or
 * download it; must not keep the pointer. A non-OK status stops the forward and is returned. */
typedef enum lms_status (*lms_hook_fn)(void *ctx, struct lms_backend *be,
                                       const struct lms_activation *act, struct lms_error *err);

/* One forward call. Inputs are host memory. */
struct lms_forward {
    const int32_t *ids;     /* (B, S) token ids, each < V of the embedding */
    int64_t batch;          /* B <= max_batch */
    int64_t seq;            /* S <= max_seq */
    const int32_t *targets; /* (B, S) next-token targets, < 0 = not scored; NULL: no loss */
    float *logits;          /* host (B, S, V) (or (B, V) when last_only) written if not NULL */
    size_t logits_cap;      /* floats available at logits */
    bool last_only;         /* logits of position S-1 of each row only (generation) */
    lms_hook_fn hook;       /* NULL: no hooks */
    void *hook_ctx;
    unsigned hook_mask;     /* bit (1u << point) per requested point */
    const bool *skip_layers; /* NULL: run every layer; else L flags, true = the layer is not run
                              * (its input passes straight on): a depth-pruned model on the
                              * weights already uploaded. Skipped layers fire no hooks. */
    /* OUT */
    double loss_sum;        /* sum of per-token cross-entropy over scored positions (nats) */
    int64_t n_scored;       /* scored positions */
};

struct lms_engine; /* opaque */

/* Validates m (lms_model_validate, supported rope type), plans the workspace for opts, uploads
 * every weight to be in lms__backend_weight_dtype (streamed through a bounded staging buffer)
 * and allocates the workspace. m and be must outlive the engine. OUT: *out. */
enum lms_status lms_engine_new(const struct lms_model *m, struct lms_backend *be,
                               const struct lms_engine_opts *opts, struct lms_engine **out,
                               struct lms_error *err);
void lms_engine_free(struct lms_engine *e); /* NULL does nothing */
/* Runs the model on f->ids; fills f->logits / loss fields as requested. */
enum lms_status lms_engine_forward(struct lms_engine *e, struct lms_forward *f,
                                   struct lms_error *err);
const struct lms_fwd_plan *lms_engine_plan(const struct lms_engine *e);
int64_t lms_engine_logits_cols(const struct lms_engine *e); /* V */
size_t lms_engine_weight_bytes(const struct lms_engine *e);   /* device bytes of weights */
const struct lms_arch *lms_engine_arch(const struct lms_engine *e);
/* The LM head on the device, (V, H) in *dtype (the embedding when tied), for callers that run the
 * head themselves on captured final-norm outputs (distillation's chunked teacher logits). */
const void *lms_engine_lm_head(const struct lms_engine *e, enum lms_dtype *dtype);

#endif
