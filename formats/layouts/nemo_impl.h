/* lmsurgeon: what formats/nemo.c shares with formats/nemo1.c (library-internal).
 *
 * The Megatron key table, the tensor transforms and the config mapping live in nemo.c; the NeMo 1
 * tarball reader and writer reuse them over archive members. */
#ifndef LMS_FORMATS_NEMO_IMPL_H
#define LMS_FORMATS_NEMO_IMPL_H

#include <jansson.h>
#include <stdint.h>

#include "formats/codecs/dcp.h"
#include "lms/format.h"
#include "lms/ir.h"

/* Fills m (initialised, empty) from the Megatron keys of d: arch from the Hugging Face config
 * object hf (consumed: m owns it, also on failure), tensors as views over d's storages. */
enum lms_status lms__nemo_model_read(const struct lms_dcp *d, json_t *hf, const char *fmt_name,
                                     struct lms_model *m, struct lms_error *err);
/* Megatron/NeMo config fields (io.json, run_config.yaml names) and the config class name
 * ("Qwen3Config", "" = Llama) -> an HF config.json object; absent fields take the class
 * defaults (checkpoint-formats.md §4.4), tying and vocabulary rows come from d. OUT: *out. */
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

#endif
