#!/usr/bin/env python3
"""Writes a synthetic Hugging Face checkpoint directory of a chosen shape.

Pure standard library (runs with a bare system python3). The output is what
transformers' save_pretrained writes: config.json, canonical safetensors shards
(tensors ordered by dtype rank then name, header padded with spaces to 8 bytes,
__metadata__ {"format": "pt"}), and model.safetensors.index.json (2-space indent,
sorted keys, trailing newline) when there is more than one shard. Shards are
filled in state-dict order; a new shard starts when the next tensor would pass
--max-shard-size.

Tensor bytes come from a pool of pseudo-random bytes (os.urandom, then masked so
that every float is finite and of weight-like magnitude: |x| in [2^-7, 2)); each
tensor starts at a random place in the pool. Several GB are written at disk speed.

  make_checkpoint.py --arch qwen3 --layers 4 --hidden 4096 --ffn 12288 --heads 32 \\
      --kv-heads 8 --head-dim 128 --vocab 151936 --dtype bf16 --max-shard-size 2GB OUT
"""
import argparse
import json
import os
import random
import struct
import sys

DTYPES = {  # name -> (safetensors dtype, bytes per element, torch name)
    "bf16": ("BF16", 2, "bfloat16"),
    "f16": ("F16", 2, "float16"),
    "f32": ("F32", 4, "float32"),
}
POOL_BYTES = 64 << 20


def parse_size(text):
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}
    t = text.strip().upper()
    num = t.rstrip("KMGTIB")
    unit = t[len(num):].strip()
    if unit not in units:
        raise argparse.ArgumentTypeError("bad size %r" % text)
    return int(float(num) * units[unit])


def make_pool(dtype, rng_bytes):
    """Random bytes whose every element is a finite float with |x| in [2^-7, 2)."""
    pool = bytearray(rng_bytes)
    st, size, _ = DTYPES[dtype]
    if st == "BF16" or st == "F32":
        # top byte: sign | exponent[7:1]; keep sign and two exponent bits -> exp in 120..127
        table = bytes((b & 0x83) | 0x3C for b in range(256))
        pool[size - 1::size] = pool[size - 1::size].translate(table)
    else:
        # F16 top byte: sign | exponent(5) | mantissa[9:8]; exp in 8..15 -> |x| in [2^-7, 2)
        table = bytes((b & 0x8F) | 0x20 for b in range(256))
        pool[1::2] = pool[1::2].translate(table)
    return bytes(pool)


def tensor_list(a):
    """(name, shape) in PyTorch state-dict order."""
    H, F, d = a.hidden, a.ffn, a.head_dim
    q, kv = a.heads * d, a.kv_heads * d
    out = [("model.embed_tokens.weight", [a.vocab, H])]
    for i in range(a.layers):
        p = "model.layers.%d." % i
        out += [(p + "self_attn.q_proj.weight", [q, H]),
                (p + "self_attn.k_proj.weight", [kv, H]),
                (p + "self_attn.v_proj.weight", [kv, H]),
                (p + "self_attn.o_proj.weight", [H, q])]
        if a.arch == "qwen3":
            out += [(p + "self_attn.q_norm.weight", [d]), (p + "self_attn.k_norm.weight", [d])]
        out += [(p + "mlp.gate_proj.weight", [F, H]),
                (p + "mlp.up_proj.weight", [F, H]),
                (p + "mlp.down_proj.weight", [H, F]),
                (p + "input_layernorm.weight", [H]),
                (p + "post_attention_layernorm.weight", [H])]
    out.append(("model.norm.weight", [H]))
    if not a.tie:
        out.append(("lm_head.weight", [a.vocab, H]))
    return out


def config(a):
    torch_dtype = DTYPES[a.dtype][2]
    if a.arch == "qwen3":
        return {
            "architectures": ["Qwen3ForCausalLM"], "attention_bias": False,
            "attention_dropout": 0.0, "bos_token_id": None, "dtype": torch_dtype,
            "eos_token_id": None, "head_dim": a.head_dim, "hidden_act": "silu",
            "hidden_size": a.hidden, "initializer_range": 0.02, "intermediate_size": a.ffn,
            "layer_types": ["full_attention"] * a.layers, "max_position_embeddings": 40960,
            "max_window_layers": a.layers, "model_type": "qwen3",
            "num_attention_heads": a.heads, "num_hidden_layers": a.layers,
            "num_key_value_heads": a.kv_heads, "pad_token_id": None, "rms_norm_eps": 1e-06,
            "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
            "sliding_window": None, "tie_word_embeddings": a.tie,
            "transformers_version": "5.17.0", "use_cache": True, "use_sliding_window": False,
            "vocab_size": a.vocab,
        }
    return {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 1, "dtype": torch_dtype, "eos_token_id": 2, "head_dim": a.head_dim,
        "hidden_act": "silu", "hidden_size": a.hidden, "initializer_range": 0.02,
        "intermediate_size": a.ffn, "max_position_embeddings": 8192, "mlp_bias": False,
        "model_type": "llama", "num_attention_heads": a.heads, "num_hidden_layers": a.layers,
        "num_key_value_heads": a.kv_heads, "pad_token_id": None, "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
        "tie_word_embeddings": a.tie, "transformers_version": "5.17.0", "use_cache": True,
        "vocab_size": a.vocab,
    }


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_shard(path, tensors, st_dtype, esize, pool, rng):
    # one dtype throughout, so canonical order is by name
    tensors = sorted(tensors, key=lambda t: t[0].encode("utf-8"))
    header = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, shape in tensors:
        n = esize
        for s in shape:
            n *= s
        header[name] = {"dtype": st_dtype, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    view = memoryview(pool)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name, _ in tensors:
            h = header[name]
            left = h["data_offsets"][1] - h["data_offsets"][0]
            pos = rng.randrange(len(pool) // esize) * esize
            while left > 0:
                step = min(left, len(pool) - pos)
                f.write(view[pos:pos + step])
                left -= step
                pos = 0


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=["qwen3", "llama"], default="qwen3")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--ffn", type=int, default=768)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=None, help="default hidden / heads")
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--tie", action="store_true", help="tied embeddings (no lm_head.weight)")
    p.add_argument("--max-shard-size", type=parse_size, default=parse_size("5GB"))
    p.add_argument("--seed", type=int, default=0, help="seed for tensor placement in the pool")
    p.add_argument("out", help="output directory (created; must not exist or be empty)")
    a = p.parse_args(argv)
    if a.head_dim is None:
        a.head_dim = a.hidden // a.heads
    if os.path.exists(a.out) and os.listdir(a.out):
        p.error("%s exists and is not empty" % a.out)
    os.makedirs(a.out, exist_ok=True)

    st_dtype, esize, _ = DTYPES[a.dtype]
    tensors = tensor_list(a)
    sizes = []
    for _, shape in tensors:
        n = esize
        for s in shape:
            n *= s
        sizes.append(n)
    shards, used = [[]], 0
    for t, n in zip(tensors, sizes):
        if used > 0 and used + n > a.max_shard_size:
            shards.append([])
            used = 0
        shards[-1].append(t)
        used += n
    rng = random.Random(a.seed)
    total = sum(sizes)
    pool = make_pool(a.dtype, os.urandom(min(POOL_BYTES, max(total, 4096))))
    names = []
    for i, group in enumerate(shards):
        name = ("model.safetensors" if len(shards) == 1
                else "model-%05d-of-%05d.safetensors" % (i + 1, len(shards)))
        names.append(name)
        write_shard(os.path.join(a.out, name), group, st_dtype, esize, pool, rng)
    if len(shards) > 1:
        wm = {t[0]: names[i] for i, group in enumerate(shards) for t in group}
        write_json(os.path.join(a.out, "model.safetensors.index.json"), {
            "metadata": {"total_parameters": total // esize, "total_size": total},
            "weight_map": wm})
    write_json(os.path.join(a.out, "config.json"), config(a))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
