"""Interop: the GGUF files lmsurgeon writes, read by llama.cpp's own Python reader (gguf-py).

Every fixture, the teacher, and the teacher pruned on hidden size and heads (so that the head
dimension is no longer hidden / heads) is converted to GGUF (as stored, and as Q8_0). gguf-py
opens each file; its metadata must match the Hugging Face config, and its tensors, dequantised
by gguf-py and with llama.cpp's Q/K row permutation undone for the llama architecture, must
equal the Hugging Face weights: exactly for F32 and BF16, within Q8_0's block error (half a
quantisation step d = max|x| / 127 per block of 32, plus 127 times the fp16 rounding of d) for
Q8_0, whose bytes also equal gguf-py's own quantiser.
The round trip HF -> GGUF -> HF gives back the same tensors bit for bit, the same config.json
and the same tokenizer files. A Llama with llama3 rope scaling gets rope_freqs.weight equal to
transformers' unscaled / llama3-scaled inverse frequencies, round-trips the same way (F32 and
BF16), and a file whose rope_freqs.weight disagrees with its carried config, or has no carried
config, is refused.
"""
import filecmp
import json
import os
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

LMS = os.environ["LMSURGEON"]
FIX = Path(os.environ["LMS_FIXTURES"])
MODELS = ["models/qwen3-tiny", "models/llama-tiny", "models/qwen2-tiny", "teacher"]
ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}

# The Hugging Face name of each llama.cpp tensor name (blk.N. prefix stripped).
HF_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight", "attn_k_norm.weight": "self_attn.k_norm.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}


def run(*args):
    proc = subprocess.run([LMS, *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


def hf_tensors(path):
    found = {}
    for f in sorted(Path(path).glob("model*.safetensors")):
        found.update(load_file(str(f)))
    return found


def hf_name(name):
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    _, layer, tail = name.split(".", 2)
    return f"model.layers.{layer}.{HF_NAMES[tail]}"


def unpermute(w, n_head):
    """Undoes convert_hf_to_gguf.py's LlamaModel.permute (the two rotary halves interleaved)."""
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def field(reader, key):
    f = reader.get_field(key)
    assert f is not None, key
    return f.contents()


def dequantised(t):
    """gguf-py's view of a tensor as float32 in HF (row-major [out, in]) shape."""
    data = gguf.quants.dequantize(t.data, t.tensor_type)
    return np.asarray(data, dtype=np.float32).reshape(tuple(reversed([int(x) for x in t.shape])))


def check_metadata(reader, cfg):
    arch = ARCH[cfg["model_type"]]
    assert field(reader, "general.architecture") == arch
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    want = {
        "block_count": cfg["num_hidden_layers"], "embedding_length": cfg["hidden_size"],
        "feed_forward_length": cfg["intermediate_size"], "attention.head_count": heads,
        "attention.head_count_kv": cfg["num_key_value_heads"],
        "attention.key_length": head_dim, "attention.value_length": head_dim,
        "context_length": cfg["max_position_embeddings"], "vocab_size": cfg["vocab_size"],
    }
    for k, v in want.items():
        assert field(reader, f"{arch}.{k}") == v, k
    eps = field(reader, f"{arch}.attention.layer_norm_rms_epsilon")
    assert eps == pytest.approx(cfg["rms_norm_eps"], rel=1e-6)
    rope = cfg.get("rope_parameters") or {}
    theta = rope.get("rope_theta", cfg.get("rope_theta"))
    assert field(reader, f"{arch}.rope.freq_base") == pytest.approx(theta, rel=1e-6)
    return arch


def check_tensors(reader, hf, cfg, arch, q8):
    names = {hf_name(t.name) for t in reader.tensors}
    assert names == set(hf), names ^ set(hf)
    for t in reader.tensors:
        ref = hf[hf_name(t.name)].float().numpy()
        got = dequantised(t)
        if arch == "llama" and t.name.split(".")[-2] in ("attn_q", "attn_k"):
            heads = cfg["num_attention_heads"] if "attn_q" in t.name else cfg["num_key_value_heads"]
            got = unpermute(got, heads)
        assert got.shape == ref.shape, t.name
        if len(ref.shape) == 1:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.name
        if q8 and t.tensor_type == gguf.GGMLQuantizationType.Q8_0:
            blocks = ref.reshape(-1, 32)
            # half a step of d = max|x| / 127, plus up to 127 times the fp16 rounding of d
            d = np.abs(blocks).max(axis=1, keepdims=True) / 127
            tol = d * (0.5 + 127 * 2.0**-11) * 1.0001 + 1e-30
            assert (np.abs(got.reshape(-1, 32) - blocks) <= tol).all(), t.name
        elif t.tensor_type == gguf.GGMLQuantizationType.F16:
            np.testing.assert_array_equal(got, ref.astype(np.float16).astype(np.float32))
        else:
            np.testing.assert_array_equal(got, ref, err_msg=t.name)


def check_file(path, hf_dir, q8=False):
    reader = gguf.GGUFReader(str(path))
    cfg = json.loads((Path(hf_dir) / "config.json").read_text())
    arch = check_metadata(reader, cfg)
    check_tensors(reader, hf_tensors(hf_dir), cfg, arch, q8)
    return reader


@pytest.mark.parametrize("rel", MODELS)
def test_gguf_py_reads_what_we_write(rel, tmp_path):
    src = FIX / rel
    run("convert", src, tmp_path / "m.gguf", "--to", "gguf", "--quiet")
    reader = check_file(tmp_path / "m.gguf", src)
    if (src / "tokenizer.json").exists():
        tok = json.loads((src / "tokenizer.json").read_text())
        tokens = field(reader, "tokenizer.ggml.tokens")
        assert field(reader, "tokenizer.ggml.model") == "gpt2"
        assert len(tokens) >= len(tok["model"]["vocab"])
        for text, i in tok["model"]["vocab"].items():
            assert tokens[i] == text
        merges = field(reader, "tokenizer.ggml.merges")
        want = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
        assert merges == want
        types = field(reader, "tokenizer.ggml.token_type")
        for added in tok["added_tokens"]:
            assert tokens[added["id"]] == added["content"]
            assert types[added["id"]] == (3 if added["special"] else 4)
    else:  # llama.cpp refuses a file without tokenizer.ggml.model; "none" loads on ids alone
        assert field(reader, "tokenizer.ggml.model") == "none"


@pytest.mark.parametrize("rel", MODELS)
def test_q8_0(rel, tmp_path):
    src = FIX / rel
    out = json.loads(run("convert", src, tmp_path / "m.gguf", "--to", "gguf", "--dtype", "q8_0",
                         "--json").stdout)
    assert out["dtype"] == "Q8_0"
    reader = check_file(tmp_path / "m.gguf", src, q8=True)
    assert any(t.tensor_type == gguf.GGMLQuantizationType.Q8_0 for t in reader.tensors)


def test_q8_0_matches_gguf_py_quantiser(tmp_path):
    """Our Q8_0 bytes equal gguf-py's quantiser (bit-exact with ggml's reference rule)."""
    src = FIX / "models/qwen3-tiny"
    run("convert", src, tmp_path / "m.gguf", "--to", "gguf", "--dtype", "q8_0", "--quiet")
    hf = hf_tensors(src)
    for t in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors:
        if t.tensor_type == gguf.GGMLQuantizationType.Q8_0:
            ref = gguf.quants.quantize(hf[hf_name(t.name)].float().numpy(), t.tensor_type)
            np.testing.assert_array_equal(np.asarray(t.data).reshape(-1), ref.reshape(-1))


def test_pruned_head_dim(tmp_path):
    """Hidden pruned so that head_dim != hidden / heads: key_length carries the real d."""
    pruned = tmp_path / "pruned"
    run("prune", FIX / "teacher", pruned, "--target-hidden-size", 192,
        "--target-num-attention-heads", 4, "--quiet")
    cfg = json.loads((pruned / "config.json").read_text())
    assert cfg["hidden_size"] // cfg["num_attention_heads"] != cfg["head_dim"]
    run("convert", pruned, tmp_path / "p.gguf", "--to", "gguf", "--quiet")
    check_file(tmp_path / "p.gguf", pruned)


@pytest.mark.parametrize("rel", MODELS)
def test_round_trip_bit_exact(rel, tmp_path):
    src = FIX / rel
    run("convert", src, tmp_path / "m.gguf", "--to", "gguf", "--quiet")
    run("convert", tmp_path / "m.gguf", tmp_path / "back", "--to", "hf", "--quiet")
    a, b = hf_tensors(src), hf_tensors(tmp_path / "back")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k].view(-1).view(torch.uint8), b[k].view(-1).view(torch.uint8)), k
    assert json.loads((src / "config.json").read_text()) == \
        json.loads((tmp_path / "back" / "config.json").read_text())
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        if (src / f).exists():
            assert filecmp.cmp(src / f, tmp_path / "back" / f, shallow=False), f


def make_llama3_rope(tmp_path, dtype):
    """A small Llama with Llama 3.1's rope scaling (transformers 4's rope_scaling style), whose
    8 rotary frequencies fall in all three bands of the scaling."""
    cfg = json.loads((FIX / "models/llama-tiny/config.json").read_text())
    cfg.pop("rope_parameters")
    cfg.update(num_attention_heads=4, head_dim=16, rope_theta=10000.0,
               rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "llama3"
    run("init", out, "--config", tmp_path / "config.json", "--dtype", dtype, "--no-tokenizer",
        "--seed", 5, "--quiet")
    return out


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_llama3_rope_freqs_and_round_trip(dtype, tmp_path):
    """rope_freqs.weight is transformers' unscaled inverse frequencies divided by its llama3 ones
    (what llama.cpp divides by), and HF -> GGUF -> HF keeps every tensor and the config."""
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    src = make_llama3_rope(tmp_path, dtype)
    run("convert", src, tmp_path / "m.gguf", "--to", "gguf", "--quiet")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    t = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
    assert t.tensor_type == gguf.GGMLQuantizationType.F32
    config = AutoConfig.from_pretrained(str(src))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    plain = 1.0 / (10000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))
    want = (plain / scaled).numpy()
    assert want.min() == 1.0 and want.max() == 8.0 and ((want > 1) & (want < 8)).any()
    np.testing.assert_allclose(np.asarray(t.data), want, rtol=1e-6)
    run("convert", tmp_path / "m.gguf", tmp_path / "back", "--to", "hf", "--quiet")
    a, b = hf_tensors(src), hf_tensors(tmp_path / "back")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k].view(-1).view(torch.uint8), b[k].view(-1).view(torch.uint8)), k
    assert json.loads((src / "config.json").read_text()) == \
        json.loads((tmp_path / "back" / "config.json").read_text())


def test_llama3_rope_freqs_mismatch_is_refused(tmp_path):
    """A rope_freqs.weight that is not what the carried rope_scaling gives: one line, exit 3,
    nothing written."""
    src = make_llama3_rope(tmp_path, "f32")
    path = tmp_path / "m.gguf"
    run("convert", src, path, "--to", "gguf", "--quiet")
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == "rope_freqs.weight")
    data = bytearray(path.read_bytes())
    data[t.data_offset + 4:t.data_offset + 8] = np.float32(3.0).tobytes()  # the smoothed value
    path.write_bytes(bytes(data))
    proc = subprocess.run([LMS, "convert", path, tmp_path / "back", "--to", "hf"],
                          capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "rope_freqs.weight" in proc.stderr
    assert not (tmp_path / "back").exists()


def test_llama3_rope_freqs_without_carried_config_is_refused(tmp_path):
    """rope_freqs.weight in a file without lmsurgeon.hf_config (as llama.cpp's converter writes
    them): the four factors cannot be recovered, so one line, exit 3, nothing written."""
    src = make_llama3_rope(tmp_path, "f32")
    path = tmp_path / "m.gguf"
    run("convert", src, path, "--to", "gguf", "--quiet")
    data = path.read_bytes()
    assert data.count(b"lmsurgeon.hf_config") == 1
    path.write_bytes(data.replace(b"lmsurgeon.hf_config", b"lmsurgeon.hf_confiX"))
    proc = subprocess.run([LMS, "convert", path, tmp_path / "back", "--to", "hf"],
                          capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "rope_freqs.weight" in proc.stderr
    assert not (tmp_path / "back").exists()
