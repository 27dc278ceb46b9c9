"""Interop: the GGUF files lmsurgeon writes, read by llama.cpp's own Python reader (gguf-py).

Every fixture, the teacher, and the teacher pruned on hidden size and heads (so that the head
dimension is no longer hidden / heads) is converted to GGUF (as stored, and as Q8_0). gguf-py
opens each file; its metadata must match the Hugging Face config, and its tensors, dequantised
by gguf-py and with llama.cpp's Q/K row permutation undone for the llama architecture, must
equal the Hugging Face weights: exactly for F32 and BF16, within Q8_0's block error (half a
quantisation step d = max|x| / 127 per block of 32, plus 127 times the fp16 rounding of d) for
Q8_0, whose bytes also equal gguf-py's own quantiser.
The round trip HF -> GGUF -> HF gives back the same tensors bit for bit, the same config.json
and the same tokenizer files. Phi-3 becomes llama.cpp's phi3, whose attn_qkv and ffn_up hold
the bytes of the Hugging Face qkv_proj and gate_up_proj. A Qwen3 with YaRN rope scaling gets
llama.cpp's rope.scaling keys, round-trips, and is rebuilt from those keys without the carried
config; a disagreement between the two, a malformed phi3 file, and what llama.cpp cannot run
(dynamic scaling, a Phi-3 whose heads x head_dim is not its hidden size) are refused. A Llama with llama3 rope scaling gets rope_freqs.weight equal to
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
from safetensors.torch import load_file, save_file

LMS = os.environ["LMSURGEON"]
FIX = Path(os.environ["LMS_FIXTURES"])
MODELS = ["models/qwen3-tiny", "models/llama-tiny", "models/qwen2-tiny", "models/phi3-tiny",
          "teacher"]
ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "phi3": "phi3"}

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
# phi3's fused tensors (convert_hf_to_gguf.py keeps Phi-3's fusions under these names)
PHI3_NAMES = {"attn_qkv.weight": "self_attn.qkv_proj.weight",
              "ffn_up.weight": "mlp.gate_up_proj.weight"}
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


def hf_name(name, arch=None):
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    _, layer, tail = name.split(".", 2)
    names = dict(HF_NAMES, **PHI3_NAMES) if arch == "phi3" else HF_NAMES
    return f"model.layers.{layer}.{names[tail]}"


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
    if arch == "phi3":  # what llama.cpp's converter adds for Phi-3
        want.update({"rope.dimension_count": head_dim,
                     "attention.sliding_window": cfg.get("sliding_window") or 0,
                     "rope.scaling.original_context_length": cfg["original_max_position_embeddings"]})
    for k, v in want.items():
        assert field(reader, f"{arch}.{k}") == v, k
    eps = field(reader, f"{arch}.attention.layer_norm_rms_epsilon")
    assert eps == pytest.approx(cfg["rms_norm_eps"], rel=1e-6)
    rope = cfg.get("rope_parameters") or {}
    theta = rope.get("rope_theta", cfg.get("rope_theta"))
    assert field(reader, f"{arch}.rope.freq_base") == pytest.approx(theta, rel=1e-6)
    return arch


def check_tensors(reader, hf, cfg, arch, q8):
    names = {hf_name(t.name, arch) for t in reader.tensors}
    assert names == set(hf), names ^ set(hf)
    for t in reader.tensors:
        ref = hf[hf_name(t.name, arch)].float().numpy()
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


def bf16_copy(src, out):
    """A Hugging Face checkpoint rounded to bf16 with torch (the config says so)."""
    out.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    cfg["dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file({k: v.to(torch.bfloat16) for k, v in hf_tensors(src).items()},
              str(out / "model.safetensors"))
    return out


@pytest.mark.parametrize("rel", MODELS + ["models/phi3-tiny:bf16"])
def test_round_trip_bit_exact(rel, tmp_path):
    src = FIX / rel.split(":")[0]
    if rel.endswith(":bf16"):
        src = bf16_copy(src, tmp_path / "bf16")
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


def refused(*args):
    """Runs a command that must fail as bad input: exit 3, one line naming the problem."""
    proc = subprocess.run([LMS, *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr


def make_qwen3_yarn(tmp_path, **extra):
    """qwen3-tiny with YaRN rope scaling (transformers 5's rope_parameters)."""
    src = FIX / "models/qwen3-tiny"
    out = tmp_path / "yarn"
    out.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    cfg["max_position_embeddings"] = 128
    cfg["rope_parameters"] = {"rope_theta": 1000000.0, "rope_type": "yarn", "factor": 4.0,
                              "original_max_position_embeddings": 32, **extra}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "model.safetensors").symlink_to(src / "model.safetensors")
    return out


def test_yarn_keys_and_round_trip(tmp_path):
    """YaRN as llama.cpp's converter writes it, and back to the same config and tensors."""
    src = make_qwen3_yarn(tmp_path, beta_fast=32.0, beta_slow=1.0)
    run("convert", src, tmp_path / "m.gguf", "--to", "gguf", "--quiet")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    assert field(reader, "qwen3.rope.scaling.type") == "yarn"
    assert field(reader, "qwen3.rope.scaling.factor") == 4.0
    assert field(reader, "qwen3.rope.scaling.original_context_length") == 32
    assert field(reader, "qwen3.rope.scaling.yarn_beta_fast") == 32.0
    assert field(reader, "qwen3.rope.scaling.yarn_beta_slow") == 1.0
    run("convert", tmp_path / "m.gguf", tmp_path / "back", "--to", "hf", "--quiet")
    a, b = hf_tensors(src), hf_tensors(tmp_path / "back")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((src / "config.json").read_text()) == \
        json.loads((tmp_path / "back" / "config.json").read_text())


def test_yarn_rebuilt_without_carried_config(tmp_path):
    """Without lmsurgeon.hf_config (as llama.cpp's converter writes files), rope_scaling comes
    from llama.cpp's keys, and transformers computes the same rotary frequencies from it."""
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    src = make_qwen3_yarn(tmp_path)
    path = tmp_path / "m.gguf"
    run("convert", src, path, "--to", "gguf", "--quiet")
    path.write_bytes(path.read_bytes().replace(b"lmsurgeon.hf_config", b"lmsurgeon.hf_confiX"))
    run("convert", path, tmp_path / "back", "--to", "hf", "--quiet")
    cfg = json.loads((tmp_path / "back" / "config.json").read_text())
    assert cfg["rope_scaling"] == {"rope_type": "yarn", "factor": 4.0,
                                   "original_max_position_embeddings": 32}
    want, want_attn = ROPE_INIT_FUNCTIONS["yarn"](AutoConfig.from_pretrained(str(src)), "cpu")
    got, got_attn = ROPE_INIT_FUNCTIONS["yarn"](AutoConfig.from_pretrained(str(tmp_path / "back")),
                                                "cpu")
    assert torch.equal(want, got) and want_attn == got_attn


def test_yarn_disagreeing_with_carried_config_is_refused(tmp_path):
    """A file whose rope.scaling.factor is not its carried config's: exit 3, nothing written."""
    src = make_qwen3_yarn(tmp_path)
    path = tmp_path / "m.gguf"
    run("convert", src, path, "--to", "gguf", "--quiet")
    reader = gguf.GGUFReader(path)
    f = reader.get_field("qwen3.rope.scaling.factor")
    data = bytearray(path.read_bytes())
    off = f.parts[f.data[0]].ctypes.data - reader.data.ctypes.data
    assert np.frombuffer(bytes(data[off:off + 4]), np.float32)[0] == 4.0
    data[off:off + 4] = np.float32(2.0).tobytes()
    path.write_bytes(bytes(data))
    err = refused("convert", path, tmp_path / "back", "--to", "hf")
    assert "yarn" in err and "factor" in err and str(path) in err
    assert not (tmp_path / "back").exists()


@pytest.mark.parametrize("rope, needle", [
    ({"rope_type": "dynamic", "factor": 4.0}, "dynamic (NTK)"),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
      "beta_fast": 8.0}, "beta_fast"),
])
def test_rope_llama_cpp_cannot_run_is_refused(rope, needle, tmp_path):
    src = make_qwen3_yarn(tmp_path)
    cfg = json.loads((src / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_theta": 1000000.0, **rope}
    (src / "config.json").write_text(json.dumps(cfg))
    err = refused("convert", src, tmp_path / "m.gguf", "--to", "gguf")
    assert needle in err and str(tmp_path / "m.gguf") in err
    assert not (tmp_path / "m.gguf").exists()


def patched_phi3(tmp_path, key, value=None, rename=None):
    """phi3-tiny's GGUF with one u32 key set to value, or renamed."""
    path = tmp_path / "p.gguf"
    run("convert", FIX / "models/phi3-tiny", path, "--to", "gguf", "--quiet")
    reader = gguf.GGUFReader(path)
    data = bytearray(path.read_bytes())
    if rename:
        assert data.count(key.encode()) == 1
        data = data.replace(key.encode(), rename.encode())
    else:
        f = reader.get_field(key)
        off = f.parts[f.data[0]].ctypes.data - reader.data.ctypes.data
        data[off:off + 4] = np.uint32(value).tobytes()
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("key, value, rename, needle", [
    # one KV head: the metadata implies [q; k; v] of 32 + 8 + 8 rows, the file has 64
    ("phi3.attention.head_count_kv", 1, None, "'blk.0.attn_qkv.weight' is not [48, 32]"),
    # FFN 48: [gate; up] of 96 rows, the file has 128
    ("phi3.feed_forward_length", 48, None, "'blk.0.ffn_up.weight' is not [96, 32]"),
    ("phi3.block_count", None, "phi3.block_counX", "'phi3.block_count' is missing"),
])
def test_bad_phi3_file_is_refused(key, value, rename, needle, tmp_path):
    path = patched_phi3(tmp_path, key, value, rename)
    err = refused("convert", path, tmp_path / "back", "--to", "hf")
    assert needle in err and str(path) in err
    assert not (tmp_path / "back").exists()


def test_phi3_pruned_hidden_is_refused(tmp_path):
    """llama.cpp sizes phi3's attention tensors from the hidden size: a Phi-3 pruned on hidden
    size alone (4 heads x 8 != 24) is refused rather than written for llama.cpp to reject."""
    run("prune", FIX / "models/phi3-tiny", tmp_path / "p", "--target-hidden-size", 24, "--quiet")
    err = refused("convert", tmp_path / "p", tmp_path / "p.gguf", "--to", "gguf")
    assert "heads x head_dim = hidden size (4 x 8 is not 24)" in err
    assert not (tmp_path / "p.gguf").exists()
