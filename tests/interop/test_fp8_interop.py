"""Interop: lmsurgeon's fine-grained FP8 checkpoints (--dtype fp8) against the Python stack.

- The bytes follow the block rule as PyTorch computes it: per 128 x 128 block of each linear
  weight, scale_inv = max|w| / 448 (1 for an all-zero block), codes = float8_e4m3fn(w / scale_inv)
  saturated to +-448; the other tensors are the original's bf16.
- transformers opens the output on the CPU with FineGrainedFP8Config(dequantize=True), and its
  logits equal those of lmsurgeon's own dequantised weights (fp8 -> f32 by lmsurgeon); the
  difference to the bf16 original (the FP8 error) is printed and bounded.
- lmsurgeon reads an FP8 checkpoint written by PyTorch (partial blocks along both dimensions) and
  gets PyTorch's dequantised weights, bit for bit.
"""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, FineGrainedFP8Config

LMS = os.environ["LMSURGEON"]
FIX = Path(os.environ["LMS_FIXTURES"])
B = 128
LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

torch.set_num_threads(2)


def run(*args):
    proc = subprocess.run([LMS, *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


def tensors_of(path):
    found = {}
    for f in sorted(Path(path).glob("model*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                found[k] = st.get_tensor(k)
    return found


def is_linear(name):
    return name.endswith(".weight") and any(f".{p}." in name for p in LINEAR)


def quantise(w):
    """The block rule, in PyTorch: (codes float8_e4m3fn, scale_inv float32 per block)."""
    w = w.float()
    rows, cols = w.shape
    br, bc = -(-rows // B), -(-cols // B)
    padded = torch.zeros(br * B, bc * B)
    padded[:rows, :cols] = w
    blocks = padded.view(br, B, bc, B)
    amax = blocks.abs().amax(dim=(1, 3))
    scale = amax / 448.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = (blocks / scale[:, None, :, None]).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    return q.view(br * B, bc * B)[:rows, :cols].contiguous(), scale


def dequantise(q, scale):
    rows, cols = q.shape
    s = scale.repeat_interleave(B, 0).repeat_interleave(B, 1)[:rows, :cols]
    return q.float() * s


def ids_for(vocab):
    return torch.randint(0, vocab, (2, 48), generator=torch.Generator().manual_seed(3))


def logits_of(model):
    model.eval()
    with torch.no_grad():
        return model(ids_for(model.config.vocab_size)).logits.float()


@pytest.fixture(scope="module")
def teacher_fp8(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp8") / "teacher-fp8"
    run("convert", FIX / "teacher", out, "--dtype", "fp8", "--quiet")
    return out


def test_bytes_follow_the_block_rule(teacher_fp8):
    src = tensors_of(FIX / "teacher")
    out = tensors_of(teacher_fp8)
    config = json.loads((teacher_fp8 / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "fp8", "fmt": "e4m3",
                                             "activation_scheme": "dynamic",
                                             "weight_block_size": [128, 128]}
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    n_fp8 = 0
    for name, w in src.items():
        if is_linear(name):
            q, scale = quantise(w)
            assert out[name].dtype == torch.float8_e4m3fn, name
            assert torch.equal(out[name].view(torch.uint8), q.view(torch.uint8)), name
            assert torch.equal(out[name + "_scale_inv"], scale), name
            n_fp8 += 1
        else:
            assert out[name].dtype == torch.bfloat16, name
            assert torch.equal(out[name], w.to(torch.bfloat16)), name
    assert n_fp8 == 7 * 12
    assert set(out) == set(src) | {n + "_scale_inv" for n in src if is_linear(n)}


def test_transformers_loads_and_matches(teacher_fp8, tmp_path):
    fp8_model = AutoModelForCausalLM.from_pretrained(
        str(teacher_fp8), dtype=torch.float32,
        quantization_config=FineGrainedFP8Config(dequantize=True))
    got = logits_of(fp8_model)
    # lmsurgeon's own dequantisation, written as f32 and loaded plainly
    deq = tmp_path / "dequantised"
    run("convert", teacher_fp8, deq, "--dtype", "f32", "--quiet")
    assert "quantization_config" not in json.loads((deq / "config.json").read_text())
    ours = logits_of(AutoModelForCausalLM.from_pretrained(str(deq), dtype=torch.float32))
    print(f"\ntransformers' dequantised FP8 vs lmsurgeon's fp8 -> f32: max |diff| "
          f"{(got - ours).abs().max().item():.3g}")
    assert torch.allclose(got, ours, rtol=1e-5, atol=1e-5), (got - ours).abs().max()
    # against the bf16 original: the FP8 error
    ref = logits_of(AutoModelForCausalLM.from_pretrained(str(FIX / "teacher"),
                                                         dtype=torch.float32))
    diff = (got - ref).abs()
    top1 = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    print(f"\nFP8 vs bf16 teacher logits: max |diff| {diff.max().item():.4f}, mean |diff| "
          f"{diff.mean().item():.4f} (logit std {ref.std().item():.3f}), top-1 agreement "
          f"{100 * top1:.1f}% of {got.shape[0] * got.shape[1]} positions")
    assert diff.mean().item() < 0.1 * ref.std().item()
    assert top1 >= 0.9


def test_reads_fp8_written_by_torch(tmp_path):
    # qwen3-tiny: hidden 64, ffn 160: blocks cut short along rows and columns
    src_dir = FIX / "models" / "qwen3-tiny"
    src = tensors_of(src_dir)
    fp8_dir = tmp_path / "torch-fp8"
    fp8_dir.mkdir()
    tensors, want = {}, {}
    for name, w in src.items():
        if is_linear(name):
            q, scale = quantise(w)
            tensors[name], tensors[name + "_scale_inv"] = q, scale
            want[name] = dequantise(q, scale)
        else:
            tensors[name] = w.to(torch.bfloat16)
            want[name] = tensors[name].float()
    save_file(tensors, str(fp8_dir / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src_dir / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3",
                                     "activation_scheme": "dynamic",
                                     "weight_block_size": [128, 128]}
    (fp8_dir / "config.json").write_text(json.dumps(config))
    for aux in src_dir.glob("tokenizer*"):
        shutil.copy(aux, fp8_dir)
    out = tmp_path / "f32"
    run("convert", fp8_dir, out, "--dtype", "f32", "--quiet")
    got = tensors_of(out)
    assert set(got) == set(want)
    for name, w in want.items():
        assert torch.equal(got[name], w), name
    # re-quantising what came from FP8 gives the same bytes back
    again = tmp_path / "again"
    run("convert", fp8_dir, again, "--dtype", "fp8", "--quiet")
    back = tensors_of(again)
    for name, t in tensors.items():
        if t.dtype == torch.float8_e4m3fn:
            assert torch.equal(back[name].view(torch.uint8), t.view(torch.uint8)), name
        else:
            assert torch.equal(back[name], t), name
