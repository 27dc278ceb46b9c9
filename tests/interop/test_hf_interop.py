"""Interop: what lmsurgeon writes opens with the reference stack and computes the same numbers.

Every fixture is converted by the lmsurgeon binary (same dtype resharded, and cast to bf16 / f16 /
f32); every output file opens with safetensors.safe_open and holds the same tensors as the input;
every output loads with transformers.AutoModelForCausalLM.from_pretrained and gives the logits of
its input (fp32 within 1e-6 relative; casts compared with the same cast done by PyTorch).
"""
import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

LMS = os.environ["LMSURGEON"]
FIX = Path(os.environ["LMS_FIXTURES"])
MODELS = ["models/qwen3-tiny", "models/llama-tiny", "models/qwen2-tiny",
          "models/qwen3-tiny-bf16-sharded", "teacher", "models/phi3-tiny"]
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}

torch.manual_seed(0)
torch.set_num_threads(2)


def convert(src, dst, *args):
    proc = subprocess.run([LMS, "convert", str(src), str(dst), "--json", *args],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] is True
    return out


def tensors_of(path):
    found = {}
    for f in sorted(Path(path).glob("model*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            assert st.metadata() == {"format": "pt"}
            for k in st.keys():
                assert k not in found
                found[k] = st.get_tensor(k)
    return found


def logits(path, dtype=None):
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    model.eval()
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (2, 33), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids).logits.float()


@pytest.mark.parametrize("rel", MODELS)
def test_reshard_same_dtype(rel, tmp_path):
    src = FIX / rel
    out = tmp_path / "out"
    res = convert(src, out, "--max-shard-size", "100kB")
    files = sorted(p.name for p in out.glob("model*.safetensors"))
    assert len(files) == res["n_shards"] > 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors_of(out))
    a, b = tensors_of(src), tensors_of(out)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in b.values())
    ref, got = logits(src), logits(out)
    assert torch.equal(ref, got)


@pytest.mark.parametrize("rel", MODELS)
@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32"])
def test_cast_matches_pytorch_cast(rel, dtype, tmp_path):
    src = FIX / rel
    out = tmp_path / "out"
    convert(src, out, "--dtype", dtype)
    want_dtype = DTYPES[dtype]
    a, b = tensors_of(src), tensors_of(out)
    for k in a:
        assert b[k].dtype == want_dtype, k
        ref = a[k].to(want_dtype)
        # NaN-free fixtures: bit equality with PyTorch's own cast
        assert torch.equal(ref, b[k]), k
    cfg = json.loads((out / "config.json").read_text())
    assert cfg.get("dtype", cfg.get("torch_dtype")) == str(want_dtype).replace("torch.", "")
    ref = logits(src, dtype=want_dtype)  # PyTorch casts the weights while loading
    got = logits(out, dtype=want_dtype)
    if want_dtype == torch.float32:
        assert torch.allclose(got, ref, rtol=1e-6, atol=0)
    else:
        assert torch.equal(got, ref)


def test_fp32_logits_unchanged_within_1e6(tmp_path):
    src = FIX / "models/qwen3-tiny"
    out = tmp_path / "out"
    convert(src, out, "--dtype", "f32", "--max-shard-size", "300kB")
    ref, got = logits(src), logits(out)
    rel = ((got - ref).abs() / ref.abs().clamp_min(1e-30)).max().item()
    assert rel <= 1e-6


def test_nan_inf_survive_casts(tmp_path):
    """Special values written by torch survive a cast exactly as torch casts them."""
    from safetensors.torch import save_file
    src = tmp_path / "src"
    src.mkdir()
    cfg = json.loads((FIX / "models/qwen3-tiny/config.json").read_text())
    (src / "config.json").write_text(json.dumps(cfg))
    with safe_open(str(FIX / "models/qwen3-tiny/model.safetensors"), framework="pt") as st:
        tensors = {k: st.get_tensor(k) for k in st.keys()}
    w = tensors["model.norm.weight"]
    w[:6] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 1e-40, 70000.0])
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    for dtype in ("bf16", "f16"):
        out = tmp_path / dtype
        convert(src, out, "--dtype", dtype)
        got = tensors_of(out)["model.norm.weight"]
        ref = w.to(DTYPES[dtype])
        assert torch.equal(torch.isnan(got), torch.isnan(ref))
        mask = ~torch.isnan(ref)
        assert torch.equal(got[mask], ref[mask])
