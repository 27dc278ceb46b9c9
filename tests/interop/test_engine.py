"""The forward engine against PyTorch transformers (fp32, eager attention).

- teacher: logits of one 512-token window of the held-out ids, and every layer's output;
- qwen3-tiny-bf16-sharded: the sharded bf16 checkpoint, upcast to fp32 by both sides, against a
  reference transformers computes here from the same bf16 weights (no stored golden exists);
- llama-tiny with a llama3 rope scaling and a linear one, written here into a copy of the
  checkpoint, so the scaled RoPE variants are compared with transformers too.

Each comparison: max abs error <= 1e-4 x max |value| of the transformers tensor.
"""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
import transformers

FIX = os.environ.get("LMS_FIXTURES", "fixtures")
DUMP = os.environ.get("LMS_ENGINE_DUMP")

torch.set_num_threads(2)


def hf_forward(model_dir, ids):
    m = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    layers = {}
    hooks = [
        layer.register_forward_hook(
            lambda mod, inp, out, i=i: layers.__setitem__(i, out[0] if isinstance(out, tuple) else out)
        )
        for i, layer in enumerate(m.model.layers)
    ]
    with torch.no_grad():
        out = m(torch.from_numpy(ids.astype(np.int64)), output_hidden_states=True)
    for h in hooks:
        h.remove()
    n = len(m.model.layers)
    return (
        out.logits.numpy(),
        np.stack([layers[i].numpy() for i in range(n)]),
        out.hidden_states[-1].numpy(),  # after the final norm
    )


def engine_forward(tmp_path, model_dir, ids, n_layers, hidden):
    assert DUMP, "LMS_ENGINE_DUMP is not set (run through meson test)"
    b, s = ids.shape
    ids_path = tmp_path / "ids.bin"
    ids.astype("<i4").tofile(ids_path)
    prefix = str(tmp_path / "out")
    subprocess.run([DUMP, model_dir, str(ids_path), str(b), str(s), prefix], check=True)
    logits = np.fromfile(prefix + ".logits", dtype="<f4").reshape(b, s, -1)
    layers = np.fromfile(prefix + ".layers", dtype="<f4").reshape(n_layers, b, s, hidden)
    final = np.fromfile(prefix + ".final_norm", dtype="<f4").reshape(b, s, hidden)
    return logits, layers, final


def assert_close(name, got, want):
    assert got.shape == want.shape, (name, got.shape, want.shape)
    err = np.abs(got.astype(np.float64) - want).max()
    scale = np.abs(want).max()
    assert err <= 1e-4 * scale, f"{name}: max abs error {err:.3g} > 1e-4 x {scale:.4g}"


def compare(tmp_path, model_dir, ids):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    want_logits, want_layers, want_final = hf_forward(model_dir, ids)
    got_logits, got_layers, got_final = engine_forward(
        tmp_path, model_dir, ids, cfg["num_hidden_layers"], cfg["hidden_size"]
    )
    for i in range(want_layers.shape[0]):
        assert_close(f"layer_out.{i}", got_layers[i], want_layers[i])
    assert_close("final_norm_out", got_final, want_final)
    assert_close("logits", got_logits, want_logits)


def test_teacher_window_logits(tmp_path):
    ids = np.fromfile(os.path.join(FIX, "corpus", "val.ids.u16"), dtype="<u2")[:512]
    compare(tmp_path, os.path.join(FIX, "teacher"), ids.reshape(1, 512))


def test_bf16_sharded_against_torch_from_same_weights(tmp_path):
    rng = np.random.default_rng(7)
    ids = rng.integers(0, 512, size=(2, 40))
    compare(tmp_path, os.path.join(FIX, "models", "qwen3-tiny-bf16-sharded"), ids)


@pytest.mark.parametrize(
    "scaling",
    [
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 64},
        {"rope_type": "linear", "factor": 4.0},
    ],
)
def test_scaled_rope_against_torch(tmp_path, scaling):
    src = os.path.join(FIX, "models", "llama-tiny")
    dst = tmp_path / "model"
    shutil.copytree(src, dst)
    cfg = json.load(open(dst / "config.json"))
    cfg["rope_parameters"] = dict(scaling, rope_theta=cfg["rope_parameters"]["rope_theta"])
    json.dump(cfg, open(dst / "config.json", "w"), indent=2)
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 512, size=(2, 200))
    compare(tmp_path, str(dst), ids)
