/* lmsurgeon: what distillation does around the training engine: the learning-rate schedule, the
 * optimiser settings and parameter groups, the blended token data the steps read, the memory
 * plan made before the first step, and the resumable training state.
 *
 * The engine (include/lms/train.h) computes losses and gradients and applies one AdamW update
 * per parameter tensor; everything here decides which numbers it is called with. */
#ifndef LMS_DISTILL_H
#define LMS_DISTILL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lms/dataset.h"
#include "lms/error.h"
#include "lms/ir.h"
#include "lms/json.h"

/* ---- learning-rate schedule ---------------------------------------------------------------- */

/* Linear warm-up then cosine decay to a floor. With step s counted from 0, warm-up W, total M,
 * peak lr and floor min_lr:
 *   s <= W (W > 0):  lr * (s + 1) / (W + 1)
 *   W < s <= M:      min_lr + (lr - min_lr) * (1 + cos(pi * (s - W) / (M - W))) / 2
 *   s > M:           min_lr
 * (So with W = 0 the first step already decays, and the peak is reached at s = W.) */
struct lms_lr_schedule {
    double lr;         /* peak */
    double min_lr;     /* floor */
    int64_t warmup;    /* W >= 0 */
    int64_t max_steps; /* M > 0 */
};

double lms_lr_at(const struct lms_lr_schedule *s, int64_t step);

/* ---- optimiser presets ------------------------------------------------------------------ */

/* The engine (include/lms/train.h) applies AdamW with decay grouping and global-norm clipping;
 * these are the named settings the command offers. */
enum lms_optim_preset {
    LMS_OPTIM_PARITY,   /* the single-script NeMo 2 defaults: betas 0.9/0.999, eps 1e-8, weight
                         * decay 0.01 */
    LMS_OPTIM_MEGATRON, /* Megatron-family recipes: betas 0.9/0.95, eps 1e-5, weight decay 0.1 */
    LMS_OPTIM_GPT,      /* the GPT recipe the shipped teacher and its distillation baselines were
                         * trained with (PyTorch AdamW): betas 0.9/0.95, eps 1e-8, wd 0.1 */
    LMS_OPTIM_PRESET_COUNT
};

struct lms_adamw_opts;
/* Fills o with a preset (clip 1.0 in all; lr and step left 0). */
void lms_optim_preset_apply(enum lms_optim_preset p, struct lms_adamw_opts *o);
/* Parses "parity", "megatron" or "gpt"; false otherwise. */
bool lms_optim_preset_parse(const char *s, enum lms_optim_preset *out);

/* ---- token data: a weighted blend of indexed datasets ------------------------------------ */

/* One component of --data-paths: a dataset prefix (PREFIX.bin/.idx, or a raw .u16/.i32 id file)
 * and its weight. */
struct lms_blend_source {
    char *path; /* owned */
    double weight;
};

/* Parses --data-paths values as Megatron writes them: one or more prefixes ("a" or "a b", each
 * then weighted by its token count), or weight/prefix pairs ("0.3 a 0.7 b", weights positive and
 * normalised). OUT: *out (free with lms_blend_sources_free), *n_out. LMS_EINVAL with a message
 * naming the value at fault. */
enum lms_status lms_blend_sources_parse(char *const *args, int n_args,
                                        struct lms_blend_source **out, int *n_out,
                                        struct lms_error *err);
void lms_blend_sources_free(struct lms_blend_source *s, int n);

struct lms_blend_opts {
    int64_t row_len;     /* tokens per row: seq_length + 1 (inputs plus the shifted labels) */
    int64_t stride;      /* distance between row starts in a dataset: seq_length */
    int64_t n_rows;      /* rows the run will read (> 0) */
    int64_t min_tokens;  /* refuse a split holding fewer tokens than this (one batch) */
    uint64_t seed;
    const char *split;   /* megatron-core --split string ("969,30,1") */
    int which;           /* LMS_SPLIT_TRAIN / _VALID */
    bool shuffle;        /* shuffled document and row order (training); else data order */
};

struct lms_blend; /* opaque; immutable after open */

/* Opens every source, applies the split to each, and plans n_rows rows: row k comes from the
 * source the Megatron blending rule picks (the one furthest below its share so far) and is that
 * source's next row. Errors name the source ("data 'x': the validation split of --split 98,2,0
 * holds 0 documents"). OUT: *out. */
enum lms_status lms_blend_open(const struct lms_blend_source *src, int n_src,
                               const struct lms_blend_opts *o, struct lms_blend **out,
                               struct lms_error *err);
void lms_blend_free(struct lms_blend *b); /* NULL does nothing */
int64_t lms_blend_tokens(const struct lms_blend *b); /* tokens of the split, all sources */
/* Copies row k (0 <= k < n_rows; row_len ids) to dst (dst_cap >= row_len). */
enum lms_status lms_blend_row(const struct lms_blend *b, int64_t k, int32_t *dst, size_t dst_cap,
                              struct lms_error *err);
/* Source a row comes from (for tests and statistics). */
int lms_blend_row_source(const struct lms_blend *b, int64_t k);

/* ---- memory plan ------------------------------------------------------------------------- */

/* Bytes a run needs, decided before the first step. */
struct lms_distill_memory {
    uint64_t weights;     /* student fp32 master weights (what the steps compute with) */
    uint64_t moments;     /* AdamW first and second moments, fp32 */
    uint64_t gradients;   /* fp32 gradient accumulators */
    uint64_t activations; /* student activations kept for backward, logits chunks and their
                           * gradient, one micro-batch */
    uint64_t save;        /* host copy of the student in the output dtype, while saving */
    uint64_t teacher;     /* teacher weights plus its forward workspace */
    uint64_t data;        /* token rows of one micro-batch and the loaders' plans */
    uint64_t runtime;     /* on a device: the runtime's context, GEMM workspace and the bf16
                           * operand scratch of the largest GEMM (0 on the CPU) */
    uint64_t total;       /* what must fit: on the CPU everything above; on a device the
                           * device-resident parts (not save and data, which stay on the host) */
    uint64_t host;        /* on a device: save + data, held in host memory */
    uint64_t available;   /* what the machine (or device) offers (0 = unknown) */
};

struct lms_train_plan;
/* The plan of a run: the trainer's own plan (from lms_train_plan_make), the teacher's weights
 * and forward workspace at micro-batch mbs x seq (weights held as teacher_weight_bytes per
 * parameter on the device; none when teacher is NULL: a run without a teacher), a host copy of
 * the student in out_bytes per parameter while saving, and the data loaders' row tables
 * (n_rows_planned rows). */
struct lms_distill_shape {
    const struct lms_train_plan *trainer;
    const struct lms_arch *student; /* sizes the GEMM scratch when there is no teacher */
    const struct lms_arch *teacher;
    int64_t teacher_params;
    size_t teacher_weight_bytes;
    size_t out_bytes;
    int64_t mbs, seq;
    int64_t n_rows_planned;
    bool device;          /* the run is on a GPU: plan device memory (see lms_distill_memory) */
};
enum lms_status lms_distill_memory_plan(const struct lms_distill_shape *s,
                                        struct lms_distill_memory *out, struct lms_error *err);

/* Bytes of memory this process may still use: the smaller of MemAvailable and the cgroup's
 * memory.max minus memory.current; 0 when neither can be read. */
uint64_t lms_memory_available(void);

/* ---- resumable training state ---------------------------------------------------------- */

/* A directory written atomically (lms_outdir, replacing the previous one) holding:
 *   trainer_state.json      {"format": "lmsurgeon-train-state", "version": 1, "step": k, ...}:
 *                           the finished step count, data position, seed, the configuration
 *                           that must not change on resume, metrics so far (the caller's JSON)
 *   optimizer.safetensors   fp32 tensors: for every trained parameter NAME its master weights
 *                           "NAME", and AdamW moments "NAME.exp_avg", "NAME.exp_avg_sq"
 * Everything a resumed run needs, so that it continues bit for bit; the student checkpoint
 * written beside it is not read back. */
struct lms_state_tensor {
    char name[256];
    int ndim;
    int64_t shape[LMS_MAX_DIMS];
    const float *data; /* host memory, numel(shape) floats */
};

/* Writes dir atomically: with replace over an existing one (the previous save of the run),
 * without only where nothing is or appears at dir during the write (LMS_EEXIST, see
 * lms/outdir.h). meta is written as trainer_state.json (indent 2); it must hold "format" and
 * "version" (the caller's). */
enum lms_status lms_train_state_write(const char *dir, const json_t *meta,
                                      const struct lms_state_tensor *t, size_t n, bool replace,
                                      struct lms_error *err);

struct lms_st_file;
struct lms_train_state {
    json_t *meta;               /* trainer_state.json; owned */
    struct lms_st_file *tensors; /* optimizer.safetensors, mapped; owned, read through
                                  * lms_train_state_get */
};
/* Reads dir/trainer_state.json (checking format and version) and maps optimizer.safetensors. */
enum lms_status lms_train_state_read(const char *dir, struct lms_train_state *s,
                                     struct lms_error *err);
/* Copies tensor name (fp32, exactly shape) into dst. Errors name the tensor and the state; a
 * value that is not finite (NaN, infinity) is LMS_EFORMAT. */
enum lms_status lms_train_state_get(const struct lms_train_state *s, const char *dir,
                                    const char *name, int ndim, const int64_t *shape, float *dst,
                                    struct lms_error *err);
void lms_train_state_release(struct lms_train_state *s);

#define LMS_TRAIN_STATE_FORMAT "lmsurgeon-train-state"
#define LMS_TRAIN_STATE_VERSION 1

#endif
