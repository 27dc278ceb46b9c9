"""Interop: pruned checkpoints load with transformers and compute what a model pruned
independently in PyTorch (tests/tools/prune_oracle.py) computes, for every fixture and every
axis, with scores from an importance file and from the weight-magnitude fallback."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

sys.path.insert(0, str(Path(os.environ["LMS_SOURCE_ROOT"]) / "tests" / "tools"))
import prune_oracle as oracle  # noqa: E402

LMS = os.environ["LMSURGEON"]
FIX = Path(os.environ["LMS_FIXTURES"])
MODELS = ["models/qwen3-tiny", "models/llama-tiny", "models/qwen2-tiny", "models/phi3-tiny"]
torch.set_num_threads(2)


def load(path):
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model.eval()


def logits_of(model):
    ids = torch.randint(0, model.config.vocab_size, (2, 21), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        return model(ids).logits


def state_dict_of(model):
    """The model's tensors under the unfused names the oracle works on (Phi-3 fuses some)."""
    return oracle.unfuse({k: v.clone() for k, v in model.state_dict().items()}, model.config)


def oracle_logits(src_model, **keep):
    new_sd, cfg = oracle.prune_state_dict(state_dict_of(src_model), src_model.config, **keep)
    if cfg.model_type == "phi3":
        new_sd = oracle.fuse(new_sd)
    if cfg.tie_word_embeddings:
        new_sd["lm_head.weight"] = new_sd["model.embed_tokens.weight"]
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    missing, unexpected = model.load_state_dict(new_sd, strict=False)
    assert not unexpected and not [m for m in missing if "rotary" not in m], (missing, unexpected)
    return logits_of(model)


def prune(src, out, *args):
    proc = subprocess.run([LMS, "prune", str(src), str(out), "--json", *args],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def random_importance(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    L, H, F = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size
    nh, ng = cfg.num_attention_heads, cfg.num_key_value_heads
    rnd = lambda *s: torch.rand(*s, generator=g).tolist()
    return {"format": "lmsurgeon-importance", "version": 1, "method": "test",
            "model": {"num_layers": L, "hidden_size": H, "ffn_hidden_size": F,
                      "num_attention_heads": nh, "num_query_groups": ng},
            "layers": rnd(L), "hidden": rnd(H), "ffn": rnd(L, F), "heads": rnd(L, nh),
            "query_groups": rnd(L, ng)}


def keep_sets(cfg, scores, layers=None, hidden=None, ffn=None, heads=None, groups=None):
    """Kept indices an implementation of the spec must choose from these scores."""
    L, nh, ng = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
    r = nh // ng
    keep = {}
    if layers == "scores":  # an importance file with layer scores selects by them by default
        keep["keep_layers"] = oracle.rank_keep(scores["layers"], L - 1)
    elif layers is not None:
        keep["keep_layers"] = layers
    if hidden:
        keep["keep_hidden"] = oracle.rank_keep(scores["hidden"], hidden)
    if ffn:
        keep["keep_ffn"] = [oracle.rank_keep(scores["ffn"][l], ffn) for l in range(L)]
    kg = None
    if groups:
        kg = [oracle.rank_keep(scores["query_groups"][l], groups) for l in range(L)]
        keep["keep_groups"] = kg
    if heads:
        g2 = groups or ng
        rk = heads // g2
        kh = []
        for l in range(L):
            chosen = []
            for g in (kg[l] if kg else range(ng)):
                local = oracle.rank_keep(scores["heads"][l][g * r:(g + 1) * r], rk)
                chosen += [g * r + j for j in local]
            kh.append(chosen)
        keep["keep_heads"] = kh
    return keep


def cases(cfg):
    L, H, F = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size
    nh, ng = cfg.num_attention_heads, cfg.num_key_value_heads
    half_heads = ng * (nh // ng // 2)
    return {
        "drop_layers": (["--drop-layers", "2"], dict(layers=[l for l in range(L) if l != 1])),
        "target_layers": (["--target-num-layers", str(L - 1), "--layer-selection", "contiguous-last"],
                          dict(layers=[l for l in range(L) if l != L - 2])),
        "layer_scores": (["--target-num-layers", str(L - 1)], dict(layers="scores")),
        "ffn": (["--target-ffn-hidden-size", str(F * 3 // 4)], dict(ffn=F * 3 // 4)),
        "hidden": (["--target-hidden-size", str(H * 3 // 4)], dict(hidden=H * 3 // 4)),
        "heads": (["--target-num-attention-heads", str(half_heads)], dict(heads=half_heads)),
        "groups": (["--target-num-query-groups", "1"], dict(groups=1)),
        "combined": (["--drop-layers", "1", "--target-ffn-hidden-size", str(F // 2),
                      "--target-hidden-size", str(H // 2),
                      "--target-num-attention-heads", str(half_heads)],
                     dict(layers=list(range(1, L)), ffn=F // 2, hidden=H // 2, heads=half_heads)),
    }


def close(got, ref):
    scale = ref.abs().max()
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5 * scale), (got - ref).abs().max() / scale


@pytest.mark.parametrize("rel", MODELS)
@pytest.mark.parametrize("case", ["drop_layers", "target_layers", "layer_scores", "ffn", "hidden", "heads",
                                  "groups", "combined"])
def test_axis_with_importance_file(rel, case, tmp_path):
    src = FIX / rel
    cfg = AutoConfig.from_pretrained(str(src))
    scores = random_importance(cfg, seed=hash(case) % 1000)
    imp = tmp_path / "importance.json"
    imp.write_text(json.dumps(scores))
    args, want = cases(cfg)[case]
    out = tmp_path / "out"
    prune(src, out, *args, "--importance", str(imp))
    written = json.loads((out / "config.json").read_text())
    assert written["head_dim"] == (getattr(cfg, "head_dim", None)
                                   or cfg.hidden_size // cfg.num_attention_heads)
    got = logits_of(load(out))
    ref = oracle_logits(load(src), **keep_sets(cfg, scores, **want))
    close(got, ref)


@pytest.mark.parametrize("rel", MODELS)
def test_magnitude_fallback(rel, tmp_path):
    src = FIX / rel
    cfg = AutoConfig.from_pretrained(str(src))
    model = load(src)
    scores = oracle.magnitude_scores(state_dict_of(model), cfg)
    args, want = cases(cfg)["combined"]
    out = tmp_path / "out"
    res = prune(src, out, *args)
    assert "weight magnitude" in res["scores"]
    close(logits_of(load(out)), oracle_logits(model, **keep_sets(cfg, scores, **want)))


def test_dry_run_writes_nothing(tmp_path):
    out = tmp_path / "out"
    res = prune(FIX / "teacher", out, "--dry-run", "--target_num_layers", "8",
                "--target_ffn_hidden_size", "512")
    assert res["dry_run"] and not out.exists() and list(tmp_path.iterdir()) == []
    assert res["shape"]["layers"] == [12, 8] and res["shape"]["ffn_hidden_size"] == [768, 512]
    assert res["shape"]["kept_layers"] == [0, 1, 2, 3, 4, 5, 6, 11]
