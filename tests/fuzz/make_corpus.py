#!/usr/bin/env python3
"""Regenerates the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/) from the real
Python stack: pickles CPython and torch.distributed.checkpoint write, torch.save zips, safetensors
files, plus truncated and bit-flipped variants of each. The files are checked in; the replay
tests run them. Deterministic: fixed seeds and names (torch.save adds a random serialization id, so bytes may differ between runs).

    python tests/fuzz/make_corpus.py
"""
import collections
import io
import os
import pickle
import random
import shutil
import tempfile

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save as st_save

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")


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


def main():
    shutil.rmtree(OUT, ignore_errors=True)
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


if __name__ == "__main__":
    main()
