/* lmsurgeon: Hugging Face checkpoints (config.json + safetensors, single file or sharded).
 *
 * A checkpoint directory holds config.json, either model.safetensors or
 * model-0000K-of-0000N.safetensors shards with model.safetensors.index.json (its weight_map
 * names the shard of every tensor), and files that travel with the model (tokenizer, generation
 * config, chat template), which are copied unchanged. */
#ifndef LMS_HF_H
#define LMS_HF_H

#include <jansson.h>

#include "lms/error.h"
#include "lms/format.h"
#include "lms/ir.h"

/* Parses a config.json object into arch. Keys the IR does not model are left in the object for
 * the writer. Errors name the key and the value ("'hidden_size' is -3"). */
enum lms_status lms_hf_config_parse(const json_t *config, struct lms_arch *arch,
                                    struct lms_error *err);
/* Builds the config.json object for arch: a copy of base (the config the model was read from,
 * may be NULL) with every modelled key rewritten, in the style of base (rope_parameters block or
 * top-level rope_theta/rope_scaling; dtype or torch_dtype). OUT: *out, one reference. */
enum lms_status lms_hf_config_build(const struct lms_arch *arch, const json_t *base,
                                    json_t **out, struct lms_error *err);

/* The "hf" format (formats/layouts/hf_checkpoint.c). */
extern const struct lms_format lms_format_hf;

/* Names of the files copied along with a checkpoint when present. NULL-terminated. */
extern const char *const lms_hf_aux_files[];

#endif
