"""The Python peers of bench/convert --exports, run with the interop venv's python:

  convert_peers.py gguf IN OUT.gguf f16|bf16|q8_0   gguf-py (llama.cpp's Python package): the
      checkpoint's tensors under llama.cpp's names, written with gguf.GGUFWriter, matrices in
      the type asked for (quantised with gguf.quants, as convert_hf_to_gguf.py does), 1-D
      tensors F32, the architecture keys and the byte-level BPE tokenizer of tokenizer.json
  convert_peers.py fp8 IN OUT                       transformers' fine-grained FP8: every linear
      weight quantised by the quantiser's own block function (Fp8Quantize, 128 x 128 blocks,
      float scales), the rest bf16, saved shard by shard with safetensors, config.json with
      quantization_config

Each reads tensors lazily (safe_open), fsyncs what it wrote (lmsurgeon does) and prints one
JSON line: {"seconds": work time after the imports, "bytes": tensor bytes written}.
"""
import json
import os
import sys
import time

import torch
from safetensors import safe_open
from safetensors.torch import save_file

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

GGUF_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def shards(src):
    index = os.path.join(src, "model.safetensors.index.json")
    if os.path.exists(index):
        return sorted(set(json.load(open(index))["weight_map"].values()))
    return ["model.safetensors"]


def tensors(src):
    for shard in shards(src):
        with safe_open(os.path.join(src, shard), framework="pt") as f:
            for key in f.keys():
                yield shard, key, f.get_tensor(key)


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")  # model.layers.N.<module>.weight|bias
    module = ".".join(parts[3:-1])
    return "blk.%s.%s.%s" % (parts[2], GGUF_NAMES.get(module, module), parts[-1])


def fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def gguf_export(src, out, kind):
    import gguf
    import numpy as np
    q = gguf.GGMLQuantizationType
    want = {"f16": q.F16, "bf16": q.BF16, "q8_0": q.Q8_0}[kind]
    cfg = json.load(open(os.path.join(src, "config.json")))
    arch = cfg["model_type"]
    w = gguf.GGUFWriter(out, arch)
    w.add_name(os.path.basename(out))
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_key_length(cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"]))
    w.add_value_length(cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"]))
    w.add_file_type({"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[kind])
    tok = os.path.join(src, "tokenizer.json")
    if os.path.exists(tok):
        t = json.load(open(tok))
        vocab = t["model"]["vocab"]
        ids = {i: s for s, i in vocab.items()}
        for a in t.get("added_tokens", []):
            ids[a["id"]] = a["content"]
        n = cfg["vocab_size"]
        w.add_tokenizer_model("gpt2")
        w.add_token_list([ids.get(i, "[PAD%d]" % i) for i in range(n)])
        w.add_token_types([1 if i in ids else 5 for i in range(n)])
        merges = t["model"].get("merges", [])
        w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    nbytes = 0
    for _, key, t in tensors(src):
        data = t.to(torch.float32).numpy()
        if data.ndim <= 1:
            arr, typ = data, q.F32
        elif want == q.F16:
            arr, typ = data.astype(np.float16), q.F16
        elif want == q.Q8_0 and data.shape[-1] % 32:
            arr, typ = data.astype(np.float16), q.F16
        else:
            arr, typ = gguf.quants.quantize(data, want), want
        nbytes += arr.nbytes
        w.add_tensor(gguf_name(key), arr, raw_dtype=typ)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    fsync_path(out)
    return nbytes


def fp8_export(src, out):
    from transformers.integrations.finegrained_fp8 import Fp8Quantize
    from transformers.utils.quantization_config import FineGrainedFP8Config

    class Quantizer:  # what Fp8Quantize reads of the HF quantiser
        quantization_config = FineGrainedFP8Config(weight_block_size=(128, 128))

    op = Fp8Quantize(Quantizer())
    os.makedirs(out, exist_ok=True)
    nbytes = 0
    weight_map = {}
    for shard in shards(src):
        result = {}
        with safe_open(os.path.join(src, shard), framework="pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                if key.endswith(".weight") and key.split(".")[-2] in LINEAR:
                    result.update(op._quantize_one(key, t))
                else:
                    result[key] = t.to(torch.bfloat16)
        path = os.path.join(out, shard)
        save_file(result, path, metadata={"format": "pt"})
        fsync_path(path)
        nbytes += sum(v.numel() * v.element_size() for v in result.values())
        weight_map.update({k: shard for k in result})
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3",
                                  "activation_scheme": "dynamic",
                                  "weight_block_size": [128, 128]}
    for name, obj in (("config.json", cfg),
                      ("model.safetensors.index.json", {"metadata": {"total_size": nbytes},
                                                        "weight_map": weight_map})):
        with open(os.path.join(out, name), "w") as f:
            json.dump(obj, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
    return nbytes


def main():
    what, src, out = sys.argv[1:4]
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    n = gguf_export(src, out, sys.argv[4]) if what == "gguf" else fp8_export(src, out)
    print(json.dumps({"seconds": time.perf_counter() - t0, "bytes": n}))


if __name__ == "__main__":
    main()
