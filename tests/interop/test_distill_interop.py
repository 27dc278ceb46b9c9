"""`lmsurgeon distill` against a PyTorch trainer (tests/tools/distill_reference.py): the same
student and teacher, the same token rows (written by --dump-rows), the same schedule, AdamW and
clipping, in fp32. Every step's loss and gradient norm must agree within 1e-3, and the trained
weights closely.

- qwen3-tiny teacher, the 2-layer student of qwen3-tiny-distill-reference, 5 steps of 4 x 32
  tokens in micro-batches of 2, lr 1e-3 -> 1e-4 with one warm-up step, betas 0.9/0.95, weight
  decay 0.1, clip 1.0 (the GPT recipe preset);
- phi3-tiny teacher and a student the tool prunes from it here (layer 2 dropped, FFN 48), the
  same schedule: its fused qkv_proj / gate_up_proj are trained as the split views and written
  fused again. Logits only (--feature-pairs none, the default too);
- feature distillation (intermediate-state pairs, cosine and MSE, combined by the scaled rule)
  from qwen3-tiny: a width-pruned student (hidden 64 -> 48: the learned map is trained with
  it) with a pair at every layer (--feature-every 1), and a depth-pruned one (layer 2 dropped)
  with explicit pairs;
- the cross-entropy weights of the scaled rule (--lm-loss-scale W != 1, --kd-loss-scale):
  L = W L_ce + lambda L_kd (L_ce / L_kd), logits only and with feature pairs;
- `lmsurgeon train` (no teacher: the cross-entropy alone) against a plain PyTorch
  cross-entropy fine-tune, for qwen3-tiny and phi3-tiny.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(os.environ["LMS_SOURCE_ROOT"]) / "tests" / "tools"))
import distill_reference as ref  # noqa: E402

LMS = os.environ["LMSURGEON"]
FIX = Path(os.environ.get("LMS_FIXTURES", "fixtures"))
torch.set_num_threads(2)


def pair(name, tmp_path):
    """(student, teacher) of a case."""
    if name == "qwen3":
        return FIX / "models" / "qwen3-tiny-distill-reference" / "student", FIX / "models" / "qwen3-tiny"
    teacher = FIX / "models" / "phi3-tiny"
    student = tmp_path / "student"
    subprocess.run([LMS, "prune", str(teacher), str(student), "--drop-layers", "2",
                    "--target-ffn-hidden-size", "48", "--quiet"], check=True)
    return student, teacher


@pytest.mark.parametrize("name", ["qwen3", "phi3"])
def test_steps_match_pytorch(name, tmp_path):
    ids = np.fromfile(FIX / "corpus" / "val.ids.u16", dtype="<u2")[:20000].astype(np.int32) % 512
    data = tmp_path / "data.i32"
    ids.tofile(data)
    student, teacher = pair(name, tmp_path)
    steps, gbs, mbs, seq = 5, 4, 2, 32
    out, rows = tmp_path / "out", tmp_path / "rows.i32"
    subprocess.run([LMS, "distill", "--student", str(student), "--teacher", str(teacher),
                    "--data-paths", str(data), "--split", "1", "--seq-length", str(seq),
                    "--gbs", str(gbs), "--mbs", str(mbs), "--max-steps", str(steps),
                    "--warmup-steps", "1", "--lr", "1e-3", "--min-lr", "1e-4",
                    "--optim-preset", "gpt", "--limit-val-batches", "0", "--dtype", "f32",
                    "--log-dir", str(tmp_path), "--out", str(out), "--dump-rows", str(rows),
                    "--threads", "1", "--quiet", "--feature-pairs", "none"], check=True)
    got = [json.loads(line) for line in open(tmp_path / "out.metrics.jsonl")]
    got = [g for g in got if g["event"] == "train"]
    want = ref.train(student, teacher, np.fromfile(rows, dtype="<i4"), seq, gbs, mbs, steps,
                     1e-3, 1e-4, warmup=1, beta2=0.95, eps=1e-8, wd=0.1, clip=1.0,
                     out=tmp_path / "torch")
    assert [g["step"] for g in got] == list(range(1, steps + 1))
    for s in range(steps):
        assert abs(got[s]["lr"] - want["lr"][s]) <= 1e-12 * want["lr"][s], s
        assert abs(got[s]["loss"] - want["loss"][s]) <= 1e-3, (s, got[s], want["loss"][s])
        assert abs(got[s]["lm_loss"] - want["lm_loss"][s]) <= 1e-3, (s, got[s])
        assert abs(got[s]["grad_norm"] - want["grad_norm"][s]) <= 1e-3 * want["grad_norm"][s], s
    # the trained weights: Adam moves every weight by about lr per step whatever the gradient's
    # size, so fp32 rounding differences can show up at that scale; most weights agree closely
    a = load_file(out / "model.safetensors")
    b = load_file(tmp_path / "torch" / "model.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        diff = np.abs(a[k] - b[k])
        assert diff.max() <= 2e-4, (k, diff.max())


# (prune flags, distill feature flags, the pairs the reference trains, 0-based)
FEATURE_CASES = {
    "width-cosine": (["--target-hidden-size", "48"], ["--feature-every", "1",
                                                       "--feature-loss", "cosine"],
                     [(i, i) for i in range(4)], "mlp-norm", "cosine"),
    "width-mse": (["--target-hidden-size", "48"], ["--feature-every", "1", "--feature-loss", "mse"],
                  [(i, i) for i in range(4)], "mlp-norm", "mse"),
    "depth-cosine": (["--drop-layers", "2"], ["--feature-pairs", "1:1,3:4",
                                               "--feature-hook", "attn-norm"],
                     [(0, 0), (2, 3)], "attn-norm", "cosine"),
    "depth-mse": (["--drop-layers", "2"], ["--feature-pairs", "2:3,3:4", "--feature-loss", "mse"],
                  [(1, 2), (2, 3)], "mlp-norm", "mse"),
}


@pytest.mark.parametrize("name", sorted(FEATURE_CASES))
def test_feature_kd_matches_pytorch(name, tmp_path):
    prune, flags, pairs, hook, kind = FEATURE_CASES[name]
    ids = np.fromfile(FIX / "corpus" / "val.ids.u16", dtype="<u2")[:20000].astype(np.int32) % 512
    data = tmp_path / "data.i32"
    ids.tofile(data)
    teacher = FIX / "models" / "qwen3-tiny"
    student = tmp_path / "student"
    subprocess.run([LMS, "prune", str(teacher), str(student), *prune, "--quiet"], check=True)
    steps, gbs, mbs, seq = 3, 4, 2, 32
    out, rows = tmp_path / "out", tmp_path / "rows.i32"
    summary = subprocess.run(
        [LMS, "distill", "--student", str(student), "--teacher", str(teacher),
         "--data-paths", str(data), "--split", "1", "--seq-length", str(seq), "--gbs", str(gbs),
         "--mbs", str(mbs), "--max-steps", str(steps), "--warmup-steps", "1", "--lr", "1e-3",
         "--min-lr", "1e-4", "--optim-preset", "gpt", "--limit-val-batches", "0", "--dtype",
         "f32", "--log-dir", str(tmp_path), "--out", str(out), "--dump-rows", str(rows),
         "--threads", "1", "--json", *flags], check=True, capture_output=True, text=True)
    feat = json.loads(summary.stdout)["features"]
    assert feat["enabled"] and [tuple(p) for p in feat["pairs"]] == [(a + 1, b + 1) for a, b in pairs]
    got = [json.loads(line) for line in open(tmp_path / "out.metrics.jsonl")]
    got = [g for g in got if g["event"] == "train"]
    want = ref.train(student, teacher, np.fromfile(rows, dtype="<i4"), seq, gbs, mbs, steps,
                     1e-3, 1e-4, warmup=1, beta2=0.95, eps=1e-8, wd=0.1, clip=1.0,
                     out=tmp_path / "torch",
                     features={"pairs": pairs, "hook": hook, "kind": kind})
    for s in range(steps):
        assert abs(got[s]["loss"] - want["loss"][s]) <= 1e-3, (s, got[s], want["loss"][s])
        assert abs(got[s]["grad_norm"] - want["grad_norm"][s]) <= 1e-3 * want["grad_norm"][s], \
            (s, got[s]["grad_norm"], want["grad_norm"][s])
    a = load_file(out / "model.safetensors")
    b = load_file(tmp_path / "torch" / "model.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.abs(a[k] - b[k]).max() <= 2e-4, (k, np.abs(a[k] - b[k]).max())


def corpus(tmp_path):
    """The held-out ids folded below the tiny models' vocabulary, as a raw int32 id file."""
    ids = np.fromfile(FIX / "corpus" / "val.ids.u16", dtype="<u2")[:20000].astype(np.int32) % 512
    data = tmp_path / "data.i32"
    ids.tofile(data)
    return data


def run_lmsurgeon(command, models, tmp_path, steps, flags=()):
    """Runs `lmsurgeon COMMAND` for steps steps of 4 x 32 tokens (the schedule and optimiser of
    the cases above) and returns its train records; the rows it read go to rows.i32 and the
    trained model to out/."""
    subprocess.run([LMS, command, *models, "--data-paths", str(corpus(tmp_path)), "--split", "1",
                    "--seq-length", "32", "--gbs", "4", "--mbs", "2", "--max-steps", str(steps),
                    "--warmup-steps", "1", "--lr", "1e-3", "--min-lr", "1e-4", "--optim-preset",
                    "gpt", "--limit-val-batches", "0", "--dtype", "f32", "--log-dir",
                    str(tmp_path), "--out", str(tmp_path / "out"), "--dump-rows",
                    str(tmp_path / "rows.i32"), "--threads", "1", "--quiet", *flags], check=True)
    got = [json.loads(line) for line in open(tmp_path / "out.metrics.jsonl")]
    return [g for g in got if g["event"] == "train"]


def assert_same_run(got, want, tmp_path, steps):
    """Every step's lr, loss, cross-entropy and gradient norm as the PyTorch run's, and the
    trained weights close (as in test_steps_match_pytorch)."""
    assert [g["step"] for g in got] == list(range(1, steps + 1))
    for s in range(steps):
        assert abs(got[s]["lr"] - want["lr"][s]) <= 1e-12 * want["lr"][s], s
        assert abs(got[s]["loss"] - want["loss"][s]) <= 1e-3, (s, got[s], want["loss"][s])
        assert abs(got[s]["lm_loss"] - want["lm_loss"][s]) <= 1e-3, (s, got[s])
        assert abs(got[s]["grad_norm"] - want["grad_norm"][s]) <= 1e-3 * want["grad_norm"][s], \
            (s, got[s]["grad_norm"], want["grad_norm"][s])
    a = load_file(tmp_path / "out" / "model.safetensors")
    b = load_file(tmp_path / "torch" / "model.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.abs(a[k] - b[k]).max() <= 2e-4, (k, np.abs(a[k] - b[k]).max())


def reference(student, teacher, tmp_path, steps, **kw):
    """The PyTorch run on the rows lmsurgeon read, with the same schedule and optimiser."""
    return ref.train(student, teacher, np.fromfile(tmp_path / "rows.i32", dtype="<i4"), 32, 4, 2,
                     steps, 1e-3, 1e-4, warmup=1, beta2=0.95, eps=1e-8, wd=0.1, clip=1.0,
                     out=tmp_path / "torch", **kw)


# (prune flags (None: the distill reference student), distill flags, W, lambda, features)
SCALE_CASES = {
    "logits": (None, ["--feature-pairs", "none"], 0.5, 2.0, None),
    "features": (["--drop-layers", "2"], ["--feature-pairs", "2:3,3:4"], 0.3, 1.0,
                 {"pairs": [(1, 2), (2, 3)], "hook": "mlp-norm", "kind": "cosine"}),
}


@pytest.mark.parametrize("name", sorted(SCALE_CASES))
def test_loss_scales_match_pytorch(name, tmp_path):
    """--lm-loss-scale W weights the cross-entropy and --kd-loss-scale the rescaled KD term."""
    prune, flags, w, lam, features = SCALE_CASES[name]
    teacher = FIX / "models" / "qwen3-tiny"
    student = FIX / "models" / "qwen3-tiny-distill-reference" / "student"
    if prune:
        student = tmp_path / "student"
        subprocess.run([LMS, "prune", str(teacher), str(student), *prune, "--quiet"], check=True)
    steps = 4
    got = run_lmsurgeon("distill", ["--student", str(student), "--teacher", str(teacher)],
                        tmp_path, steps, [*flags, "--lm-loss-scale", str(w), "--kd-loss-scale",
                                          str(lam)])
    want = reference(student, teacher, tmp_path, steps, features=features, lm_loss_scale=w,
                     kd_loss_scale=lam)
    assert_same_run(got, want, tmp_path, steps)


@pytest.mark.parametrize("name", ["qwen3-tiny", "phi3-tiny"])
def test_train_matches_pytorch(name, tmp_path):
    """lmsurgeon train is a cross-entropy fine-tune: PyTorch's, step for step."""
    model = FIX / "models" / name
    steps = 5
    got = run_lmsurgeon("train", ["--model", str(model)], tmp_path, steps)
    want = reference(model, None, tmp_path, steps)
    assert_same_run(got, want, tmp_path, steps)
