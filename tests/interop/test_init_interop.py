"""Interop: what `lmsurgeon init` writes loads in transformers and is initialised as transformers
initialises the same config.

For the tiny fixtures' configs and for small versions of the presets (one or two layers, a
2,048-id vocabulary), the output loads with AutoModelForCausalLM.from_pretrained, with the config
transformers reads matching the preset, and runs a forward pass to finite logits. Every tensor is
compared with the same tensor of AutoModelForCausalLM.from_config(config) under transformers'
own _init_weights: norms and biases equal exactly, weights have its mean and standard deviation
(the config's initializer_range) within sampling error, and pad_token_id's embedding row is zero
in both. The byte-level stand-in tokenizer loads with `tokenizers` and AutoTokenizer and encodes
like lmsurgeon's own tokenizer.
"""
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

LMS = os.environ["LMSURGEON"]
FIX = Path(os.environ["LMS_FIXTURES"])
CONFIGS = ["qwen3-tiny", "qwen2-tiny", "llama-tiny", "phi3-tiny"]
PRESETS = {  # preset: (overrides, what the Hub config of that model says)
    "qwen3-0.6b": (["--num-layers", "2"], {"hidden_size": 1024, "intermediate_size": 3072,
                                          "num_attention_heads": 16, "num_key_value_heads": 8,
                                          "head_dim": 128, "tie_word_embeddings": True}),
    "qwen2.5-0.5b": (["--num-layers", "1"], {"hidden_size": 896, "intermediate_size": 4864,
                                            "num_attention_heads": 14, "num_key_value_heads": 2}),
    "llama-3.2-1b": (["--num-layers", "1"], {"hidden_size": 2048, "intermediate_size": 8192,
                                            "num_attention_heads": 32, "num_key_value_heads": 8,
                                            "tie_word_embeddings": True}),
}

torch.set_num_threads(2)


def init(out, *args):
    proc = subprocess.run([LMS, "init", str(out), "--json", *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def compare_with_transformers_init(path):
    """Each tensor of the model at path against transformers' initialisation of its config."""
    ours = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    config = AutoConfig.from_pretrained(str(path))
    torch.manual_seed(0)
    theirs = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    std = config.initializer_range
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for name, x in a.items():
        y = b[name]
        assert x.shape == y.shape, name
        if "norm" in name or name.endswith(".bias"):
            assert torch.equal(x, y), name  # ones and zeros
            continue
        n = x.numel()
        # sampling error of a std estimate is std / sqrt(2n); 6 of those, plus bf16 rounding
        tol = 6 / (2 * n) ** 0.5 + 2e-3
        assert abs(x.std().item() / std - 1) < tol, (name, x.std().item(), std)
        assert abs(y.std().item() / std - 1) < tol, (name, "transformers", y.std().item())
        assert abs(x.mean().item()) < 6 * std / n ** 0.5, (name, x.mean().item())
    return ours, config


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_initialises_as_transformers(name, tmp_path):
    init(tmp_path / "m", "--config", str(FIX / "models" / name / "config.json"), "--seed", "3")
    model, config = compare_with_transformers_init(tmp_path / "m")
    ids = torch.randint(0, config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (2, 17, config.vocab_size) and torch.isfinite(logits).all()


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_loads_and_initialises_as_transformers(preset, tmp_path):
    overrides, hub = PRESETS[preset]
    info = init(tmp_path / "m", "--preset", preset, "--vocab-size", "2048", *overrides)
    assert info["dtype"] == "BF16"
    model, config = compare_with_transformers_init(tmp_path / "m")
    for k, v in hub.items():
        assert getattr(config, k) == v, (k, getattr(config, k), v)
    assert sum(p.numel() for p in model.parameters()) == info["n_params"]
    ids = torch.randint(0, 2048, (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_pad_row_is_zero_as_in_transformers(tmp_path):
    cfg = json.loads((FIX / "models" / "llama-tiny" / "config.json").read_text())
    cfg["pad_token_id"] = 5
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    init(tmp_path / "m", "--config", str(tmp_path / "config.json"))
    model, _ = compare_with_transformers_init(tmp_path / "m")
    emb = model.get_input_embeddings().weight
    assert torch.count_nonzero(emb[5]) == 0
    assert torch.count_nonzero(emb[4]) == emb.shape[1] and torch.count_nonzero(emb[6]) == emb.shape[1]


def test_standin_tokenizer_in_tokenizers_and_transformers(tmp_path):
    init(tmp_path / "m", "--config", str(FIX / "models" / "qwen3-tiny" / "config.json"))
    tk = Tokenizer.from_file(str(tmp_path / "m" / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(str(tmp_path / "m"))
    assert len(auto) == 257 and auto.eos_token_id == 256 and auto.pad_token_id == 256
    texts = ["Hello, world!", "  spaces\tand\nnewlines \r\n", "caf\u00e9 \u65e5\u672c\u8a9e \U0001f600",
             "ends with<|endoftext|>", "\x01\x7f control"]
    for text in texts:
        want = list(text.replace("<|endoftext|>", "").encode()) + \
            ([256] if "<|endoftext|>" in text else [])
        assert tk.encode(text).ids == want, text
        assert auto(text)["input_ids"] == want, text
        assert tk.decode(want, skip_special_tokens=False) == text
        ours = subprocess.run([LMS, "tokenize", "--tokenizer", str(tmp_path / "m"), "--text", text],
                              capture_output=True, text=True, check=True).stdout.split()
        assert [int(i) for i in ours] == want, text
