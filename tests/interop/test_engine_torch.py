"""The forward engine against PyTorch transformers (fp32, eager attention): logits, final-norm
output and, per layer, the layer output and the hook points importance scoring reads (norm
outputs, o_proj input, down_proj input).

- teacher: logits of one 512-token window of the held-out ids, and every layer's output;
- qwen3-tiny-bf16-sharded: the sharded bf16 checkpoint, upcast to fp32 by both sides, against a
  reference transformers computes here from the same bf16 weights (no stored golden exists);
- llama-tiny with a llama3 rope scaling and a linear one, written here into a copy of the
  checkpoint, so the scaled RoPE variants are compared with transformers too;
- phi3-tiny, whose fused qkv_proj and gate_up_proj the reader splits into views.

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


HOOKS = ("attn_norm", "ctx", "mlp_norm", "down_in")


def hf_forward(model_dir, ids):
    """transformers' logits, final-norm output and, per layer: the layer output, the outputs of
    input_layernorm and post_attention_layernorm, and the inputs of o_proj and down_proj."""
    m = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    got = {k: {} for k in ("layers",) + HOOKS}

    def keep(kind, i):
        return lambda mod, inp, out: got[kind].__setitem__(
            i, out[0] if isinstance(out, tuple) else out)

    def keep_input(kind, i):
        return lambda mod, inp: got[kind].__setitem__(i, inp[0])

    hooks = []
    for i, layer in enumerate(m.model.layers):
        hooks.append(layer.register_forward_hook(keep("layers", i)))
        hooks.append(layer.input_layernorm.register_forward_hook(keep("attn_norm", i)))
        hooks.append(layer.post_attention_layernorm.register_forward_hook(keep("mlp_norm", i)))
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(keep_input("ctx", i)))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(keep_input("down_in", i)))
    with torch.no_grad():
        out = m(torch.from_numpy(ids.astype(np.int64)), output_hidden_states=True)
    for h in hooks:
        h.remove()
    n = len(m.model.layers)
    res = {k: np.stack([v[i].numpy() for i in range(n)]) for k, v in got.items()}
    res["logits"] = out.logits.numpy()
    res["final_norm"] = out.hidden_states[-1].numpy()  # after the final norm
    return res


def engine_forward(tmp_path, model_dir, ids, cfg):
    assert DUMP, "LMS_ENGINE_DUMP is not set (run through meson test)"
    b, s = ids.shape
    L, H, F = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]
    D = cfg["num_attention_heads"] * cfg.get("head_dim", H // cfg["num_attention_heads"])
    ids_path = tmp_path / "ids.bin"
    ids.astype("<i4").tofile(ids_path)
    prefix = str(tmp_path / "out")
    subprocess.run([DUMP, model_dir, str(ids_path), str(b), str(s), prefix], check=True)

    def load(ext, *shape):
        return np.fromfile(prefix + "." + ext, dtype="<f4").reshape(*shape)

    return {
        "logits": load("logits", b, s, -1),
        "final_norm": load("final_norm", b, s, H),
        "layers": load("layers", L, b, s, H),
        "attn_norm": load("attn_norm", L, b, s, H),
        "mlp_norm": load("mlp_norm", L, b, s, H),
        "ctx": load("ctx", L, b, s, D),
        "down_in": load("down_in", L, b, s, F),
    }


def assert_close(name, got, want):
    assert got.shape == want.shape, (name, got.shape, want.shape)
    err = np.abs(got.astype(np.float64) - want).max()
    scale = np.abs(want).max()
    assert err <= 1e-4 * scale, f"{name}: max abs error {err:.3g} > 1e-4 x {scale:.4g}"


def compare(tmp_path, model_dir, ids):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    want = hf_forward(model_dir, ids)
    got = engine_forward(tmp_path, model_dir, ids, cfg)
    for kind in ("layers",) + HOOKS:
        for i in range(want[kind].shape[0]):
            assert_close(f"{kind}.{i}", got[kind][i], want[kind][i])
    assert_close("final_norm_out", got["final_norm"], want["final_norm"])
    assert_close("logits", got["logits"], want["logits"])


def test_teacher_window_logits(tmp_path):
    ids = np.fromfile(os.path.join(FIX, "corpus", "val.ids.u16"), dtype="<u2")[:512]
    compare(tmp_path, os.path.join(FIX, "teacher"), ids.reshape(1, 512))


def test_phi3_against_torch(tmp_path):
    rng = np.random.default_rng(11)
    ids = rng.integers(0, 512, size=(2, 40))
    compare(tmp_path, os.path.join(FIX, "models", "phi3-tiny"), ids)


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


def write_indexed(prefix, docs):
    """Megatron MMIDIDX .bin/.idx (uint16 ids, one sequence per document)."""
    with open(prefix + ".bin", "wb") as f:
        for d in docs:
            f.write(np.asarray(d, dtype="<u2").tobytes())
    lengths = np.array([len(d) for d in docs], dtype="<i4")
    pointers = np.concatenate([[0], np.cumsum(lengths[:-1]) * 2]).astype("<i8")
    doc_idx = np.arange(len(docs) + 1, dtype="<i8")
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(np.array([1], dtype="<u8").tobytes())
        f.write(np.array([8], dtype="<u1").tobytes())
        f.write(np.array([len(docs)], dtype="<u8").tobytes())
        f.write(np.array([len(docs) + 1], dtype="<u8").tobytes())
        f.write(lengths.tobytes())
        f.write(pointers.tobytes())
        f.write(doc_idx.tobytes())


def test_eval_cli_against_torch(tmp_path):
    """lmsurgeon eval on 6 windows of 128 tokens (raw .u16 and the same ids as an indexed dataset
    split into uneven documents) gives transformers' mean next-token cross-entropy."""
    lms = os.environ["LMSURGEON"]
    teacher = os.path.join(FIX, "teacher")
    raw = os.path.join(FIX, "corpus", "val.ids.u16")
    S, N = 128, 6
    ids = np.fromfile(raw, dtype="<u2")[: S * N + 300].astype(np.int64)
    m = transformers.AutoModelForCausalLM.from_pretrained(
        teacher, dtype=torch.float32, attn_implementation="eager").eval()
    x = torch.from_numpy(ids[: S * N].reshape(N, S))
    with torch.no_grad():
        lg = m(x).logits[:, :-1]
        want = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]),
                                                 x[:, 1:].reshape(-1)).item()
    cuts = [0, 5, 200, 201, 650, len(ids)]
    write_indexed(str(tmp_path / "val"), [ids[a:b] for a, b in zip(cuts, cuts[1:])])
    for data in (raw, str(tmp_path / "val")):
        out = subprocess.run([lms, "eval", teacher, "--data", data, "--seq-length", str(S),
                              "--num-samples", str(N), "--batch-size", "4", "--json"],
                             check=True, stdout=subprocess.PIPE).stdout
        res = json.loads(out)
        assert res["ok"] and res["n_windows"] == N and res["n_scored"] == N * (S - 1)
        assert abs(res["loss"] - want) < 1e-4, (data, res["loss"], want)
        assert abs(res["perplexity"] - np.exp(want)) < 1e-3 * np.exp(want)


def test_generate_cli_matches_transformers_greedy():
    lms = os.environ["LMSURGEON"]
    teacher = os.path.join(FIX, "teacher")
    prompt = "def main():\n    "
    tok = transformers.AutoTokenizer.from_pretrained(teacher)
    m = transformers.AutoModelForCausalLM.from_pretrained(
        teacher, dtype=torch.float32, attn_implementation="eager").eval()
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        gen = m.generate(**enc, max_new_tokens=12, do_sample=False, num_beams=1)
    want_ids = gen[0, enc["input_ids"].shape[1]:].tolist()
    out = subprocess.run([lms, "generate", teacher, "--prompt", prompt, "--max-new-tokens", "12",
                          "--json"], check=True, stdout=subprocess.PIPE).stdout
    res = json.loads(out)
    assert res["prompt_ids"] == enc["input_ids"][0].tolist()
    assert res["ids"] == want_ids
    assert res["text"] == tok.decode(want_ids, skip_special_tokens=True)
