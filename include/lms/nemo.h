/* lmsurgeon: NeMo 2 and Megatron-Bridge / Megatron-LM checkpoint formats, built on the torch_dist
 * checkpoint codec (formats/codecs/dcp.h).
 *
 *   "nemo"      <ckpt>/context/{io.json, model.yaml, hf_config.json, nemo_tokenizer/}
 *               <ckpt>/weights/  torch_dist, keys prefixed "module."
 *   "megatron"  <save>/latest_checkpointed_iteration.txt ("0")
 *               <save>/iter_0000000/  torch_dist (unprefixed keys), run_config.yaml,
 *               hf_config.json, tokenizer/
 *
 * context/hf_config.json and iter_N/hf_config.json are this tool's own artifacts: the Hugging
 * Face config.json of the model, so that HF -> NeMo/Megatron -> HF is exact. Checkpoints without
 * it (written by NeMo or Megatron) take the config from io.json or run_config.yaml. */
#ifndef LMS_NEMO_H
#define LMS_NEMO_H

#include "lms/format.h"

extern const struct lms_format lms_format_nemo;
extern const struct lms_format lms_format_megatron;
/* "nemo1": NeMo 1.x .nemo tarballs, formats/layouts/nemo1.c */
extern const struct lms_format lms_format_nemo1;

#endif
