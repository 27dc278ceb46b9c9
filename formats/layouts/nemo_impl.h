/* lmsurgeon: what the Megatron-Core based layouts share (library-internal): the key table
 * (lms/arch.h), the two directions of the tensor mapping (mcore_views_write.c,
 * mcore_views_read.c), the config translation (nemo_config.c, nemo_yaml.c, nemo_presets.c,
 * megatron_args.c) and the side files (mcore_sidecars.c). The "nemo" (nemo2.c), "megatron"
 * (megatron.c) and "nemo1" (nemo1.c) layouts are built from them. */
#ifndef LMS_FORMATS_NEMO_IMPL_H
#define LMS_FORMATS_NEMO_IMPL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "formats/codecs/dcp.h"
#include "lms/arch.h"
#include "lms/format.h"
#include "lms/ir.h"
#include "lms/json.h"
#include "lms/outdir.h"

/* Ceiling for the JSON files of a checkpoint (io.json, hf_config.json). */
#define LMS_NEMO_JSON_MAX_BYTES (64u << 20)

/* The Megatron-Core GPT key names (LMS_MCORE_*) and the per-layer key table are in lms/arch.h:
 * every family maps onto that one model. */

/* ---- tensors (mcore_views_write.c, mcore_views_read.c) -------------------------------------- */

/* Writes the torch_dist checkpoint of m into the existing directory dir, keys prefixed with
 * prefix ("module." for NeMo 2); bridge selects the common.pt of Megatron-Bridge. */
enum lms_status lms__nemo_write_weights(const struct lms_model *m, const char *dir,
                                        const char *prefix, bool bridge,
                                        const struct lms_write_opts *o, struct lms_write_result *r,
                                        struct lms_error *err);

/* Fills m (initialised, empty) from the Megatron keys of d: arch from the Hugging Face config
 * object hf (consumed: m owns it, also on failure), tensors as views over d's storages. */
enum lms_status lms__nemo_model_read(const struct lms_dcp *d, json_t *hf, const char *fmt_name,
                                     struct lms_model *m, struct lms_error *err);
/* ---- config (nemo_config.c, nemo_yaml.c, nemo_presets.c, megatron_args.c) ------------------ */

/* The NeMo model and config classes of an arch. */
void lms__nemo_class_of(const struct lms_arch *a, const char **module, const char **model_cls,
                        const char **config_cls);
/* io.json for an arch: what NeMo's trainer writes into context/ when it saves, TrainerContext(
 * model=<Model>(config=<Config>(...), tokenizer=AutoTokenizer('nemo_tokenizer')),
 * trainer=Trainer(accelerator='auto', strategy=MegatronStrategy(), devices=1), extra={}).
 * Without tokenizer files the model gets no tokenizer argument (NeMo then takes none).
 * Returns a new JSON object. */
json_t *lms__nemo_io_json(const struct lms_arch *a, bool with_tokenizer);
/* model.yaml / run_config.yaml text: "<indent>key: value" lines for the config fields of a,
 * appended to out. */
enum lms_status lms__nemo_yaml_config(const struct lms_arch *a, const char *indent,
                                      struct lms_buf_str *out, struct lms_error *err);
/* Megatron/NeMo config fields (io.json, run_config.yaml names) and the config class name
 * ("Qwen3Config", "" = Llama) -> an HF config.json object; absent fields take the class
 * defaults, tying and vocabulary rows come from d. OUT: *out. */
enum lms_status lms__nemo_hf_from_fields(const json_t *f, const char *cls,
                                         const struct lms_dcp *d, json_t **out,
                                         struct lms_error *err);
/* Flat "key: value" scalars of a YAML text: the keys indented by two under the top-level
 * "section:" line, or the top-level keys when section is NULL. Nested blocks and lists are
 * skipped; "_target_" goes to cls (last dotted component). OUT: *out (one reference). */
enum lms_status lms__nemo_yaml_fields(const char *text, size_t len, const char *section,
                                      json_t **out, char *cls, size_t cls_cap,
                                      struct lms_error *err);
/* The default field values of a NeMo 2 model-config class (Qwen3Config600M, Llama31Config8B,
 * ...; nemo_presets.c), or NULL when the class is not in the table. OUT: a new JSON object. */
json_t *lms__nemo_preset_fields(const char *cls);
/* Completes the config fields f of class cls (io.json / model.yaml / run_config.yaml) with the
 * class defaults: a known preset's values, otherwise those of the family's base class, once f
 * holds the structural sizes itself (an unknown class without them is an error naming it and
 * where: from). */
enum lms_status lms__nemo_class_defaults(json_t *f, const char *cls, const char *from,
                                         struct lms_error *err);
/* The model-config fields of a NeMo 2 context/ folder, where NeMo keeps them: the items of the
 * config object in io.json (what the caller passed; NeMo builds the model from these), then
 * model.yaml's config section (every field, defaults expanded), then the class defaults (a
 * preset class such as Qwen3Config600M() has no items). cls gets the config class name.
 * OUT: *out (one reference). */
enum lms_status lms__nemo_context_fields(const char *context, json_t **out, char *cls,
                                        size_t cls_cap, struct lms_error *err);
/* The config fields of a plain Megatron-LM save from the "args" Namespace in its common.pt
 * (megatron_args.c); *out is NULL when common.pt has no args. cls gets a label starting with
 * the family's name ("Qwen3 (Megatron-LM args)").
 * OUT: *out (one reference). */
enum lms_status lms__megatron_args_fields(const char *common_pt, json_t **out, char *cls,
                                          size_t cls_cap, struct lms_error *err);
/* Writes the torch_dist checkpoint of m with key prefix (NeMo 1: "model.") as a data file at
 * offset base of fd, the small files in memory (lms_dcp_write_data). */
enum lms_status lms__nemo_write_weights_fd(const struct lms_model *m, int fd, const char *path,
                                           uint64_t base, const char *prefix,
                                           const struct lms_write_opts *o,
                                           struct lms_dcp_w_files *files,
                                           struct lms_write_result *r, struct lms_error *err);

/* ---- side files (mcore_sidecars.c) ------------------------------------------------------- */

/* Adds the known HF side files found in dir to m, in lms_hf_aux_files order. */
enum lms_status lms__nemo_add_aux_from(struct lms_model *m, const char *dir,
                                       struct lms_error *err);
/* v dumped with style (LMS_JSON_*) and a final newline, written to path. */
enum lms_status lms__nemo_write_json_file(const char *path, const json_t *v, unsigned style,
                                          struct lms_error *err);
/* The model's arch as a NeMo/Megatron writer writes it (o->dtype, when given, replaces the
 * dtype), after checking the model is whole. */
enum lms_status lms__nemo_written_arch(const struct lms_model *m, const struct lms_write_opts *o,
                                       struct lms_arch *a, struct lms_error *err);
/* The files every NeMo/Megatron output carries beside the weights: our hf_config.json (exact
 * HF round trips) in config_dir and the tokenizer/generation files in tokenizer_dir (both
 * relative to the output directory od). */
enum lms_status lms__nemo_write_sidecars(const struct lms_model *m, const struct lms_arch *a,
                                         const struct lms_outdir *od, const char *config_dir,
                                         const char *tokenizer_dir, struct lms_write_result *r,
                                         struct lms_error *err);
/* mkdir 0755; an existing directory is fine. */
enum lms_status lms__nemo_make_dir(const char *path, struct lms_error *err);
/* The opening every Megatron-family directory writer shares: the config to write
 * (lms__nemo_written_arch), the output directory begun (lms_outdir_begin, replacing only with
 * o->force) and its subdirectories dirs[0..n_dirs) made, parents first, then the weights
 * (torch_dist) written into dirs[weights_dir] with key prefix and layer stacking as the layout
 * wants. On failure nothing is left (the directory is finished as failed). OUT: *a, *od (finish
 * it with lms_outdir_finish), *r. */
enum lms_status lms__nemo_begin_dir(const struct lms_model *m, const char *path,
                                    const struct lms_write_opts *o, const char *const *dirs,
                                    size_t n_dirs, size_t weights_dir, const char *prefix,
                                    bool stacked, struct lms_arch *a, struct lms_outdir *od,
                                    struct lms_write_result *r, struct lms_error *err);
/* The reading tail of both layouts: the torch_dist checkpoint in weights, arch from the HF
 * config object hf (consumed: m owns it, also on failure). Errors name the file at fault. */
enum lms_status lms__nemo_finish_read(const char *weights, json_t *hf, const char *fmt_name,
                                      struct lms_model *m, struct lms_error *err);
/* The JSON object in path, or *out = NULL when there is no such file. */
enum lms_status lms__nemo_load_hf_config_if(const char *path, json_t **out,
                                            struct lms_error *err);

#endif
