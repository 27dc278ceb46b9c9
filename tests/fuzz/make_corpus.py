#!/usr/bin/env python3
"""Regenerates the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/) from the real
Python stack: pickles CPython and torch.distributed.checkpoint write, torch.save zips, safetensors
files, Hugging Face configs and tokenizers, Megatron .idx files, importance files, NeMo / Megatron
configs, NeMo 1 tarballs and reconstruction sidecars, plus truncated and bit-flipped variants of each; also the fixed
tokenizers of fuzz_tokenize_encode (tests/fuzz/tokenizers/). The files are checked in; the replay
tests run them. Deterministic: fixed seeds and names (torch.save adds a random serialization id,
so bytes may differ between runs). The NeMo and Megatron configs are written by the tool itself
(LMSURGEON, default build/cli/lmsurgeon) converting the tiny fixture models.

    python tests/fuzz/make_corpus.py [TARGET...]     # all corpora, or only these ("idx", ...)
"""
import collections
import io
import os
import pickle
import json
import random
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save as st_save

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(HERE, "corpus")
FIX = os.path.join(ROOT, "fixtures")


def emit(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def variants(target, name, data, rnd):
    """The seed, two truncations and three single-byte corruptions."""
    emit(target, name, data)
    emit(target, name + ".trunc-half", data[:len(data) // 2])
    emit(target, name + ".trunc-1", data[:-1])
    for i in range(3):
        b = bytearray(data)
        if b:
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        emit(target, f"{name}.flip{i}", bytes(b))


def torch_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def old_targets():
    for t in ("pickle", "zip", "safetensors"):
        shutil.rmtree(os.path.join(OUT, t), ignore_errors=True)
    rnd = random.Random(1234)
    torch.manual_seed(0)
    # ---- pickle
    objs = {
        "dict": {"a": 1, "b": [1.5, -2, None, True], "c": ("x", b"\x00\xff"), "n": 2 ** 62},
        "nested": [[[]], {"k": {"k": (1, 2, 3)}}, "é" * 10],
        "odict": collections.OrderedDict([("x", 1), ("y", 2)]),
        "memo": [[1, 2]] * 3,
    }
    for p in (2, 3, 4, 5):
        for k, v in objs.items():
            variants("pickle", f"{k}.p{p}", pickle.dumps(v, protocol=p), rnd)
    emit("pickle", "os_system", b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.")
    with tempfile.TemporaryDirectory() as d:
        dcp.save({"w": torch.arange(12, dtype=torch.float32).reshape(3, 4),
                  "b": torch.zeros(2, dtype=torch.bfloat16),
                  "obj": io.BytesIO(b"extra")}, checkpoint_id=d)
        variants("pickle", "dcp_metadata", open(os.path.join(d, ".metadata"), "rb").read(), rnd)
    # ---- zip (torch.save)
    t = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)
    zips = {
        "tensor": t,
        "list": [torch.tensor([0x80, 0x02, 0x4E, 0x2E], dtype=torch.uint8)],
        "state_dict": collections.OrderedDict(
            [("model.embedding.word_embeddings.weight", t),
             ("model.decoder.layers.0.mlp.linear_fc2.weight", torch.ones(3, 2)),
             ("model.decoder.layers.0.self_attention.linear_qkv._extra_state",
              io.BytesIO(b"te")),
             ("tied", t)]),
        "scalars": {"step": torch.tensor(0, dtype=torch.int64),
                    "flops": torch.tensor(0.0, dtype=torch.float64),
                    "do_train": torch.tensor(False)},
        "view": torch.arange(10, dtype=torch.float32)[2:7],
        "noncontig": torch.arange(12, dtype=torch.float32).reshape(3, 4).t(),
    }
    for k, v in zips.items():
        variants("zip", k, torch_bytes(v), rnd)
    # ---- safetensors
    sts = {
        "two": {"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)},
        "empty": {},
        "scalar": {"s": torch.tensor(1.0)},
        "zero_size": {"z": torch.zeros(0, 5, dtype=torch.float16)},
    }
    for k, v in sts.items():
        variants("safetensors", k, st_save(v, metadata={"format": "pt"} if v else None), rnd)
    emit("safetensors", "huge_len", (10 ** 12).to_bytes(8, "little") + b"{}")
    emit("safetensors", "overlap",
         (len(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
              b'"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}')).to_bytes(8, "little") +
         b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
         b'"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}' + b"\0" * 6)


# ---- the newer targets ------------------------------------------------------------------------

def jbytes(obj, indent=None):
    return json.dumps(obj, indent=indent).encode()


def json_variants(target, name, data, rnd):
    """variants() plus a few edits that keep the JSON valid."""
    variants(target, name, data, rnd)
    obj = json.loads(data)
    if isinstance(obj, dict) and obj:
        keys = sorted(obj)
        for i, v in enumerate((-1, 0, 2 ** 40, "x", None, 1.5)):
            o = dict(obj)
            o[keys[rnd.randrange(len(keys))]] = v
            emit(target, f"{name}.edit{i}", jbytes(o))


def st_file(tensors, metadata=None):
    return st_save(tensors, metadata=metadata)


def safetensors_struct(rnd):
    sts = {
        "two": {"a": torch.zeros(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)},
        "mixed": {"i": torch.arange(6, dtype=torch.int64).reshape(2, 3),
                  "h": torch.zeros(3, dtype=torch.float16), "u": torch.ones(5, dtype=torch.uint8),
                  "z": torch.zeros(0, 2), "s": torch.tensor(2.0)},
        "bool_f8": {"m": torch.ones(3, dtype=torch.bool),
                    "f8": torch.zeros(4, dtype=torch.float8_e4m3fn)},
        "empty": {},
    }
    for k, v in sts.items():
        emit("safetensors_struct", k, st_file(v, {"format": "pt"} if v else None))
    # hand-made: sub-byte dtype, padding, unsorted offsets
    hdr = b'{"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},' \
          b'"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}   '
    emit("safetensors_struct", "unsorted_padded", len(hdr).to_bytes(8, "little") + hdr + bytes(8))
    hdr = b'{"q":{"dtype":"F4","shape":[2,3],"data_offsets":[0,3]}}'
    emit("safetensors_struct", "f4", len(hdr).to_bytes(8, "little") + hdr + bytes(3))


def hf_config(rnd):
    for d in sorted(os.listdir(os.path.join(FIX, "models"))):
        p = os.path.join(FIX, "models", d, "config.json")
        if os.path.exists(p):
            json_variants("hf_config", d, open(p, "rb").read(), rnd)
    base = json.load(open(os.path.join(FIX, "models", "llama-tiny", "config.json")))
    for k, v in {"rope31": {"rope_scaling": {"rope_type": "llama3", "factor": 8.0,
                                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                             "original_max_position_embeddings": 8192}},
                 "rope_params": {"rope_parameters": {"rope_type": "default",
                                                     "rope_theta": 10000.0}},
                 "mistral": {"model_type": "mistral", "architectures": ["MistralForCausalLM"],
                             "sliding_window": 4096},
                 "layer_types": {"layer_types": ["full_attention"] * 2},
                 "dtype": {"dtype": "float32"}}.items():
        o = dict(base)
        o.update(v)
        emit("hf_config", k, jbytes(o, 2))


def small_tokenizer(kind):
    """The fixture tokenizer cut to its first 1024 ids, with the pre-tokenizer of kind."""
    t = json.load(open(os.path.join(FIX, "tokenizer", "tokenizer.json")))
    vocab = {k: v for k, v in t["model"]["vocab"].items() if v < 1024}
    t["model"]["vocab"] = vocab
    t["model"]["merges"] = [m for m in t["model"]["merges"]
                            if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]
    split = t["pre_tokenizer"]["pretokenizers"][0]
    if kind == "llama3":
        split["pattern"]["Regex"] = split["pattern"]["Regex"].replace("\\p{N}|", "\\p{N}{1,3}|")
        t["normalizer"] = None
        t["post_processor"] = {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
             "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [], "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1],
                                                             "tokens": ["<|im_start|>"]}}}]}
    elif kind == "gpt2":
        t["normalizer"] = None
        t["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False,
                              "trim_offsets": True, "use_regex": True}
    return t


def tokenizers(rnd):
    d = os.path.join(HERE, "tokenizers")
    os.makedirs(d, exist_ok=True)
    for kind in ("qwen2", "llama3", "gpt2"):
        data = jbytes(small_tokenizer(kind))
        with open(os.path.join(d, kind + ".json"), "wb") as f:
            f.write(data)
    # loader seeds: the same shapes cut further (256 ids), with and without a config
    cfg = open(os.path.join(FIX, "tokenizer", "tokenizer_config.json"), "rb").read()
    for kind in ("qwen2", "llama3", "gpt2"):
        t = small_tokenizer(kind)
        t["model"]["vocab"] = {k: v for k, v in t["model"]["vocab"].items() if v < 300}
        vocab = t["model"]["vocab"]
        t["model"]["merges"] = [m for m in t["model"]["merges"]
                                if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]
        data = jbytes(t)
        variants("tokenizer", kind, data, rnd)
        emit("tokenizer", kind + ".with_config", data + b"\0\0" + cfg)
        t2 = json.loads(data)
        t2["model"]["merges"] = [" ".join(m) for m in t2["model"]["merges"]]
        emit("tokenizer", kind + ".string_merges", jbytes(t2))
    # encode seeds: selector byte (0 qwen2, 1 llama3, 2 gpt2) + text
    texts = [json.loads(l)["text"] for l in open(os.path.join(FIX, "tokenizer",
                                                                   "encode_cases.jsonl"))]
    texts = sorted(set(texts), key=lambda x: (len(x), x))[::3][:40]
    for i, tx in enumerate(texts):
        emit("tokenize_encode", f"case{i:02d}", bytes([i % 3]) + tx.encode())
    for i, raw in enumerate([b"\xff\xfe", b"a\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
                             b"\xc0\xaf", b"<|endoftext|>x<|im_end|>", b"\r\n\r\n  \t 123456"]):
        emit("tokenize_encode", f"bytes{i}", bytes([i % 3]) + raw)


def idx_file(lengths, docs, code=4, version=1):
    n = len(lengths)
    item = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 8: 2}[code]
    ptrs, at = [], 0
    for l in lengths:
        ptrs.append(at)
        at += l * item
    return (b"MMIDIDX\0\0" + struct.pack("<QBQQ", version, code, n, len(docs)) +
            struct.pack(f"<{n}i", *lengths) + struct.pack(f"<{n}q", *ptrs) +
            struct.pack(f"<{len(docs)}q", *docs))


def idx(rnd):
    for f in sorted(os.listdir(os.path.join(ROOT, "tests", "bad", "dataset"))):
        if f.endswith(".idx"):
            emit("idx", "bad_" + f, open(os.path.join(ROOT, "tests", "bad", "dataset", f),
                                          "rb").read())
    cases = {"one": ([5], [0, 1], 4), "three_docs": ([3, 0, 7, 2], [0, 1, 2, 4], 8),
             "u16": ([10, 20], [0, 2], 8), "u8": ([4, 4, 4], [0, 3], 1),
             "i64": ([2, 2], [0, 1, 2], 5), "empty": ([], [0], 4)}
    for k, (lengths, docs, code) in cases.items():
        variants("idx", k, idx_file(lengths, docs, code), rnd)
    emit("idx", "trailing", idx_file([2], [0, 1]) + b"\1\2\3")
    emit("idx", "version2", idx_file([2], [0, 1], version=2))
    emit("idx", "doc_backwards", idx_file([1, 1], [0, 2, 1, 2]))


def importance(rnd):
    g = random.Random(7)
    L, H, F, nh, ng = 3, 8, 12, 4, 2
    r = lambda n: [round(g.random(), 6) for _ in range(n)]
    model = {"num_layers": L, "hidden_size": H, "ffn_hidden_size": F, "num_attention_heads": nh,
             "num_query_groups": ng}
    v1 = {"format": "lmsurgeon-importance", "version": 1, "method": "test", "model": model,
          "layers": r(L), "hidden": r(H), "ffn": [r(F) for _ in range(L)],
          "heads": [r(nh) for _ in range(L)], "query_groups": [r(ng) for _ in range(L)]}
    json_variants("importance", "v1", jbytes(v1), rnd)
    emit("importance", "v1_layers_only", jbytes({"format": "lmsurgeon-importance", "version": 1,
                                                  "model": model, "layers": r(L)}))
    raw = {"rows": 4, "row_length": 16, "cos_rows": 60, "loss_tokens": 56, "base_loss": 120.5,
           "hidden_sq": [r(H) for _ in range(2 * L)], "ffn_sq": [r(F) for _ in range(L)],
           "head_sq": [r(nh) for _ in range(L)], "layer_cos": r(L), "block_cos": r(L - 1),
           "layer_loss": [130.0 + x for x in r(L)], "block_loss": [140.0 + x for x in r(L - 1)]}
    def part(begin, end):
        return {"data": "d", "rows": end - begin, "row_begin": begin, "row_end": end,
                "row_length": 16, "order": "shuffled", "seed": 1234,
                "sampler": "megatron-gpt-dataset", "data_fingerprint": "0123456789abcdef", "model_fingerprint": "fedcba9876543210"}
    merged = {"rows": 4, "row_length": 16, "data": "d", "data_fingerprint": "0123456789abcdef",
              "parts": [part(0, 1), part(1, 4)]}
    for metric, bs in (("bi", 0), ("block-bi", 2), ("ppl", 0), ("contiguous", 2), ("merged", 0)):
        v2 = {"format": "lmsurgeon-importance", "version": 2, "method": "activation",
              "model": model, "source": merged if metric == "merged" else part(0, 4),
              "layer_metric": metric, "layers": r(L), "hidden": r(H),
              "ffn": [r(F) for _ in range(L)], "heads": [r(nh) for _ in range(L)],
              "raw": dict(raw)}
        if metric == "merged":
            v2["layer_metric"] = "bi"
        if bs:
            v2["block_size"] = bs
            v2["blocks"] = r(L - bs + 1)
        else:
            del v2["raw"]["block_cos"], v2["raw"]["block_loss"]
        json_variants("importance", "v2_" + metric, jbytes(v2), rnd)


def run_tool(args):
    exe = os.environ.get("LMSURGEON", os.path.join(ROOT, "build", "cli", "lmsurgeon"))
    subprocess.run([exe] + args, check=True, stdout=subprocess.DEVNULL)


def utf8_variants(target, name, data):
    """Invalid UTF-8 in the string value of normalization (a stray 0xff, an overlong '/', a
    lone continuation byte), the text cut inside a 2-byte character there, and a valid 2-byte
    character split by the end of the YAML reader's 1023-byte line buffer."""
    at = data.index(b"normalization: ") + len(b"normalization: ")
    for tag, junk in (("ff", b"\xff"), ("overlong", b"\xc0\xaf"), ("continuation", b"\x80")):
        emit(target, f"{name}.utf8-{tag}", data[:at] + junk + data[at:])
    emit(target, f"{name}.utf8-cut", data[:at] + b"RMS\xc3")
    col = at - (data.rindex(b"\n", 0, at) + 1)
    emit(target, f"{name}.utf8-long-line",
         data[:at] + b"a" * (1022 - col) + b"\xc3\xa9" * 4 + data[at:])


def nemo_config(rnd):
    with tempfile.TemporaryDirectory() as d:
        for m in ("qwen3-tiny", "llama-tiny", "qwen2-tiny"):
            src = os.path.join(FIX, "models", m)
            run_tool(["convert", src, os.path.join(d, m + ".nemo2"), "--to", "nemo", "--quiet"])
            run_tool(["convert", src, os.path.join(d, m + ".meg"), "--to", "megatron", "--quiet"])
            io_json = open(os.path.join(d, m + ".nemo2", "context", "io.json"), "rb").read()
            if m == "qwen3-tiny":  # io.json is large: corrupted copies of one model only
                variants("nemo_config", m + ".io_json", b"\0" + io_json, rnd)
            else:
                emit("nemo_config", m + ".io_json", b"\0" + io_json)
            run_cfg = open(os.path.join(d, m + ".meg", "iter_0000000", "run_config.yaml"),
                           "rb").read()
            variants("nemo_config", m + ".run_config", b"\1" + run_cfg, rnd)
            model_yaml = open(os.path.join(d, m + ".nemo2", "context", "model.yaml"), "rb").read()
            emit("nemo_config", m + ".model_yaml", b"\2" + model_yaml)
            if m == "qwen3-tiny":
                utf8_variants("nemo_config", m + ".run_config", b"\1" + run_cfg)
            run_tool(["convert", src, os.path.join(d, m + ".nemo"), "--to", "nemo1", "--quiet"])
            with tarfile.open(os.path.join(d, m + ".nemo")) as tf:
                y = tf.extractfile("./model_config.yaml") or tf.extractfile("model_config.yaml")
                model_config = b"\2" + y.read()
                variants("nemo_config", m + ".model_config", model_config, rnd)
                if m == "qwen3-tiny":
                    utf8_variants("nemo_config", m + ".model_config", model_config)


def nemo1(rnd):
    """Small .nemo tarballs: a torch_dist weights folder of two tensors, the YAML and HF config,
    in the tar dialects Python writes, compressed and not."""
    cfg = json.load(open(os.path.join(FIX, "models", "llama-tiny", "config.json")))
    yaml = (b"mcore_gpt: true\nnum_layers: 1\nhidden_size: 8\nffn_hidden_size: 16\n"
            b"num_attention_heads: 2\nnum_query_groups: 1\nkv_channels: 4\n"
            b"padded_vocab_size: 4\nencoder_seq_length: 64\n"
            b"target: nemo.collections.nlp.models.language_modeling.megatron_gpt_model."
            b"MegatronGPTModel\n")
    with tempfile.TemporaryDirectory() as d:
        w = os.path.join(d, "model_weights")
        dcp.save({"model.embedding.word_embeddings.weight": torch.zeros(4, 8),
                  "model.decoder.final_layernorm.weight": torch.ones(8)}, checkpoint_id=w)
        with open(os.path.join(w, "metadata.json"), "w") as f:
            json.dump({"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                       "common_backend": "torch", "common_backend_version": 1}, f)
        with open(os.path.join(d, "model_config.yaml"), "wb") as f:
            f.write(yaml)
        with open(os.path.join(d, "hf_config.json"), "w") as f:
            json.dump(cfg, f)

        def tar(name, fmt, mode="w", members=("model_config.yaml", "hf_config.json",
                                              "model_weights")):
            p = os.path.join(d, name)
            with tarfile.open(p, mode, format=fmt) as tf:
                for m in members:
                    tf.add(os.path.join(d, m), arcname="./" + m)
            return open(p, "rb").read()

        variants("nemo1", "ustar", tar("a.tar", tarfile.USTAR_FORMAT), rnd)
        emit("nemo1", "gnu", tar("b.tar", tarfile.GNU_FORMAT))
        emit("nemo1", "pax", tar("c.tar", tarfile.PAX_FORMAT))
        variants("nemo1", "gzip", tar("d.tgz", tarfile.GNU_FORMAT, "w:gz"), rnd)
        emit("nemo1", "yaml_only", tar("e.tar", tarfile.USTAR_FORMAT,
                                       members=("model_config.yaml",)))


def dcp_metadata(rnd):
    sds = {
        "floats": {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4),
                   "b": torch.zeros(2, dtype=torch.bfloat16)},
        "mixed": {"e": torch.zeros(4, 2, dtype=torch.float16), "i": torch.arange(3),
                  "obj": io.BytesIO(b"extra"), "s": torch.tensor(1.0)},
        "megatron": {"embedding.word_embeddings.weight": torch.zeros(8, 4),
                     "decoder.layers.self_attention.linear_qkv.weight": torch.zeros(2, 8, 4),
                     "output_layer.weight": torch.zeros(8, 4)},
    }
    for k, sd in sds.items():
        with tempfile.TemporaryDirectory() as d:
            dcp.save(sd, checkpoint_id=d)
            variants("dcp_metadata", k, open(os.path.join(d, ".metadata"), "rb").read(), rnd)


def gguf_seeds(rnd):
    """Files written by gguf-py (llama.cpp's own writer): metadata of every value type, F32,
    F16, BF16 and Q8_0 tensors; and a tiny Qwen3 model written by the tool."""
    import gguf
    import numpy as np
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "m.gguf")
        w = gguf.GGUFWriter(p, "qwen3")
        w.add_uint8("u8", 7)
        w.add_int16("i16", -3)
        w.add_float64("f64", 0.5)
        w.add_bool("b", True)
        w.add_string("s", "text")
        w.add_array("strs", ["a", "bc", ""])
        w.add_array("ints", [1, -2, 3])
        x = np.arange(64, dtype=np.float32).reshape(2, 32) / 7
        w.add_tensor("f32", x)
        w.add_tensor("f16", x.astype(np.float16))
        w.add_tensor("q8", gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0),
                     raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        variants("gguf", "gguf_py", open(p, "rb").read(), rnd)
        # a one-layer Llama (Q/K permuted, stand-in byte-level tokenizer carried), as written
        # by the tool in F32 and in Q8_0
        cfg = json.load(open(os.path.join(FIX, "models", "llama-tiny", "config.json")))
        cfg.update(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                   num_key_value_heads=1, head_dim=16, num_hidden_layers=1, vocab_size=288)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(cfg, f)
        run_tool(["init", os.path.join(d, "hf"), "--config", os.path.join(d, "config.json"),
                  "--dtype", "f32", "--quiet"])
        for name, extra in (("tool_llama_f32", []), ("tool_llama_q8_0", ["--dtype", "q8_0"])):
            q = os.path.join(d, name + ".gguf")
            run_tool(["convert", os.path.join(d, "hf"), q, "--to", "gguf", "--quiet"] + extra)
            variants("gguf", name, open(q, "rb").read(), rnd)
        # key_length 12: Q's 32 rows are not whole heads (the reader once leaked here)
        b = bytearray(open(os.path.join(d, "tool_llama_f32.gguf"), "rb").read())
        at = b.index(b"llama.attention.key_length") + len("llama.attention.key_length") + 4
        b[at:at + 4] = struct.pack("<I", 12)
        emit("gguf", "tool_llama_f32_head_dim_12", bytes(b))
        # the same file rewritten by gguf-py without the lmsurgeon.* keys, as llama.cpp's
        # converter leaves one: the reader rebuilds its tokenizer from tokenizer.ggml.*. The
        # stand-in tokenizer has no merges (and gguf-py writes no empty array): one token "ĠĠ"
        # and its merge are added
        r = gguf.GGUFReader(os.path.join(d, "tool_llama_f32.gguf"))
        foreign = os.path.join(d, "foreign.gguf")
        w = gguf.GGUFWriter(foreign, "llama")
        extra = {"tokenizer.ggml.tokens": ["\u0120\u0120"], "tokenizer.ggml.token_type": [1],
                 "tokenizer.ggml.merges": ["\u0120 \u0120"]}
        for key, f in r.fields.items():
            if key.startswith(("GGUF.", "lmsurgeon.")) or key == "general.architecture":
                continue
            sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
            if key in extra:
                w.add_array(key, f.contents() + extra[key])
            else:
                w.add_key_value(key, f.contents(), f.types[0], sub_type=sub)
        for t in r.tensors:
            w.add_tensor(t.name, np.array(t.data))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        variants("gguf", "foreign_llama_f32", open(foreign, "rb").read(), rnd)


def gram(rnd):
    """Reconstruction sidecars (include/lms/recon.h): float64 sums of a a^T and a per layer."""
    def sidecar(layers, ffn, ctx, tokens=16, meta_extra=None, drop=None, dtype=torch.float64,
                poison=False):
        t = {}
        for l in range(layers):
            for name, n in (("mlp.down_proj", ffn), ("self_attn.o_proj", ctx)):
                a = torch.randn(tokens, n, dtype=torch.float64)
                t[f"layers.{l}.{name}.input_gram"] = (a.T @ a).to(dtype)
                t[f"layers.{l}.{name}.input_sum"] = a.sum(0).to(dtype)
        if drop:
            t.pop(drop)
        if poison:
            t["layers.0.mlp.down_proj.input_sum"][0] = float("nan")
        meta = {"format": "lmsurgeon-gram", "version": "1", "num_layers": str(layers),
                "ffn_hidden_size": str(ffn), "attention_context": str(ctx),
                "tokens": str(tokens), "rows": "2", "row_length": str(tokens // 2),
                "model_fingerprint": "0123456789abcdef", "data_fingerprint": "fedcba9876543210"}
        meta.update(meta_extra or {})
        return st_file(t, meta)
    variants("gram", "l1_f3_c2", sidecar(1, 3, 2), rnd)
    variants("gram", "l2_f8_c4", sidecar(2, 8, 4, tokens=32), rnd)
    emit("gram", "rank_deficient", sidecar(1, 6, 4, tokens=2))
    emit("gram", "nan_sum", sidecar(1, 3, 2, poison=True))
    emit("gram", "f32", sidecar(1, 3, 2, dtype=torch.float32))
    emit("gram", "missing_tensor", sidecar(1, 3, 2, drop="layers.0.self_attn.o_proj.input_sum"))
    emit("gram", "dims_lie", sidecar(1, 3, 2, meta_extra={"ffn_hidden_size": "4"}))
    emit("gram", "version_2", sidecar(1, 3, 2, meta_extra={"version": "2"}))
    emit("gram", "huge_layers", sidecar(1, 3, 2, meta_extra={"num_layers": "1000000000"}))


NEW = {"gguf": gguf_seeds, "safetensors_struct": safetensors_struct, "hf_config": hf_config,
       "tokenizer": tokenizers, "idx": idx, "importance": importance,
       "nemo_config": nemo_config, "nemo1": nemo1, "dcp_metadata": dcp_metadata,
       "gram": gram}


def main(only):
    if not only:
        old_targets()
    for name, fn in NEW.items():
        if only and name not in only:
            continue
        shutil.rmtree(os.path.join(OUT, name), ignore_errors=True)
        if name == "tokenizer":
            shutil.rmtree(os.path.join(OUT, "tokenize_encode"), ignore_errors=True)
        torch.manual_seed(0)
        fn(random.Random(name))


if __name__ == "__main__":
    main(sys.argv[1:])
