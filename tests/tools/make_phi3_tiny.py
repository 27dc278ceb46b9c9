#!/usr/bin/env python3
"""Writes fixtures/models/phi3-tiny with the reference stack (torch + transformers), never with
lmsurgeon: a tiny Phi3ForCausalLM of random weights from a fixed seed, saved by save_pretrained,
and reference.safetensors, the fp32 eager CPU forward of it on fixed input ids (embed_out,
layer_out.N = the residual stream after decoder layer N, final_norm_out, logits, input_ids).

Every parameter is random (norm weights 1 + 0.2 N(0,1), the others 0.08 N(0,1)), as in the
other tiny fixtures, so that a layout mistake (a wrong split of the fused qkv_proj or
gate_up_proj) changes the outputs.

usage: make_phi3_tiny.py OUT_DIR
"""
import sys

import safetensors
import tokenizers
import torch
import transformers
from safetensors.torch import save_file
from transformers import Phi3Config, Phi3ForCausalLM

SEED = 20260
CONFIG = dict(
    vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    original_max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=None,
    sliding_window=None, attn_implementation="eager", dtype="float32",
)


def main():
    out = sys.argv[1]
    torch.manual_seed(SEED)
    model = Phi3ForCausalLM(Phi3Config(**CONFIG)).to(torch.float32).eval()
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            z = torch.randn(p.shape, generator=g, dtype=torch.float32)
            p.copy_(1 + 0.2 * z if name.endswith("norm.weight") else 0.08 * z)
    model.save_pretrained(out)

    ids = torch.randint(0, CONFIG["vocab_size"], (2, 24), generator=g, dtype=torch.int64)
    got = {}

    def keep(key):
        def hook(_module, _inputs, output):
            got[key] = (output[0] if isinstance(output, tuple) else output).detach().clone()
        return hook

    model.model.embed_tokens.register_forward_hook(keep("embed_out"))
    for i, layer in enumerate(model.model.layers):
        layer.register_forward_hook(keep(f"layer_out.{i}"))
    model.model.norm.register_forward_hook(keep("final_norm_out"))
    with torch.no_grad():
        got["logits"] = model(input_ids=ids, use_cache=False).logits.detach().clone()
    got["input_ids"] = ids
    meta = {
        "torch": torch.__version__, "transformers": transformers.__version__,
        "safetensors": safetensors.__version__, "tokenizers": tokenizers.__version__,
        "what": "fp32 CPU eager forward of this model on input_ids; layer_out.N is the output "
                "of decoder layer N",
    }
    save_file({k: v.contiguous() for k, v in got.items()}, f"{out}/reference.safetensors", meta)


if __name__ == "__main__":
    main()
