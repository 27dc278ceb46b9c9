"""NeMo 1 .nemo tarballs against Python's tarfile and torch.

- A .nemo built here the way NeMo 1 saves one (tarfile, members under ./, model_config.yaml in
  NeMo 1 names, no file of this tool) with weights as model_weights.ckpt (torch.save of a state
  dict with NeMo 1 mcore keys, including _extra_state BytesIO values, or pre-mcore
  language_model.* keys), or as model_weights/ (a torch DCP save with "model." keys), plain or
  gzip-compressed, converts to HF with the fixture's tensors bit for bit, and transformers'
  from_pretrained gives the same logits as the fixture.
- The .nemo the tool writes (--to nemo1) is read by tarfile, its common.pt and every chunk by
  torch.load(weights_only=True), its weights by torch.distributed.checkpoint with the values of
  the HF -> Megatron transforms computed here; HF -> nemo1 -> HF is bit-exact.
"""
import io
import json
import os
import sys
import tarfile

import pytest
import torch
import torch.distributed.checkpoint as dcp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_nemo import FIX, assert_same_hf, hf_tensors, load_dcp, megatron_state, run  # noqa: E402

MODELS = ["models/llama-tiny", "models/qwen2-tiny", "models/qwen3-tiny", "teacher"]


def nemo1_config(src):
    """model_config.yaml as NeMo 1's HF converters write it (megatron_*_config.yaml + HF)."""
    c = json.load(open(os.path.join(src, "config.json")))
    nh = c["num_attention_heads"]
    kv = c.get("head_dim") or c["hidden_size"] // nh
    theta = c.get("rope_theta") or c.get("rope_parameters", {}).get("rope_theta", 10000.0)
    lines = [
        "mcore_gpt: true",
        "micro_batch_size: 4",
        f"encoder_seq_length: {c['max_position_embeddings']}",
        "max_position_embeddings: ${.encoder_seq_length}",
        f"num_layers: {c['num_hidden_layers']}",
        f"hidden_size: {c['hidden_size']}",
        f"ffn_hidden_size: {c['intermediate_size']}",
        f"num_attention_heads: {nh}",
        f"num_query_groups: {c['num_key_value_heads']}",
        f"kv_channels: {kv}",
        "init_method_std: 0.02",
        "normalization: 'rmsnorm'",
        f"layernorm_epsilon: {c['rms_norm_eps']}",
        "bias: False",
        f"qkv_bias: {c['model_type'] == 'qwen2'}",
        "activation: 'fast-swiglu'",
        "position_embedding_type: 'rope'",
        f"rotary_base: {float(theta)}",
        f"share_embeddings_and_output_weights: {c.get('tie_word_embeddings', False)}",
        f"override_vocab_size: {c['vocab_size']}",
        "make_vocab_size_divisible_by: 128",
        "precision: bf16",
        "tokenizer:",
        "  library: 'huggingface'",
        "  type: nemo:tokenizer.json",
        "  model: null",
        "optim:",
        "  name: fused_adam",
        "  lr: 0.0001",
    ]
    return "\n".join(lines) + "\n"


LEGACY = {  # mcore suffix -> pre-mcore (language_model.encoder) suffix
    "self_attention.linear_qkv.weight": "self_attention.query_key_value.weight",
    "self_attention.linear_qkv.bias": "self_attention.query_key_value.bias",
    "self_attention.linear_proj.weight": "self_attention.dense.weight",
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "post_attention_layernorm.weight",
    "mlp.linear_fc1.weight": "mlp.dense_h_to_4h.weight",
    "mlp.linear_fc2.weight": "mlp.dense_4h_to_h.weight",
}


def state_dict(src, legacy=False):
    """NeMo 1's model_weights.ckpt: per-layer keys, "model." prefix, plus the
    _extra_state values (io.BytesIO) Transformer Engine modules put in a state dict."""
    want, L, _ = megatron_state(src)
    sd = {}
    for k, v in want.items():
        if k.startswith("decoder.layers."):
            suffix = k[len("decoder.layers."):]
            for l in range(L):
                if legacy:
                    sd[f"model.language_model.encoder.layers.{l}.{LEGACY[suffix]}"] = v[l].clone()
                else:
                    sd[f"model.decoder.layers.{l}.{suffix}"] = v[l].clone()
                    if suffix.endswith("linear_qkv.weight"):
                        sd[f"model.decoder.layers.{l}.self_attention.linear_qkv._extra_state"] = \
                            io.BytesIO(b"te-extra-state")
        elif legacy:
            name = {"decoder.final_layernorm.weight": "encoder.final_layernorm.weight"}.get(k, k)
            sd["model.language_model." + name] = v.clone()
        else:
            sd["model." + k] = v.clone()
    if not legacy:
        sd["model.rotary_pos_emb.inv_freq"] = torch.ones(4)
    return sd


def add_bytes(tar, name, data):
    info = tarfile.TarInfo("./" + name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def build_nemo(src, path, weights, compress=False):
    """A NeMo 1 tarball of the HF checkpoint src, built with tarfile as NeMo's save_to does."""
    stage = path.parent / (path.name + ".stage")
    stage.mkdir()
    with tarfile.open(path, "w:gz" if compress else "w") as tar:
        add_bytes(tar, "model_config.yaml", nemo1_config(src).encode())
        if weights == "ckpt" or weights == "legacy":
            buf = io.BytesIO()
            torch.save(state_dict(src, legacy=weights == "legacy"), buf)
            add_bytes(tar, "model_weights.ckpt", buf.getvalue())
        else:
            want, _, _ = megatron_state(src)
            wdir = stage / "model_weights"
            dcp.save({"model." + k: v.clone() for k, v in want.items()}, checkpoint_id=str(wdir))
            with open(wdir / "metadata.json", "w") as f:
                json.dump({"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                           "common_backend": "torch", "common_backend_version": 1}, f)
            torch.save({}, wdir / "common.pt")
            tar.add(str(wdir), arcname="./model_weights")
        for f in ["tokenizer.json", "tokenizer_config.json"]:
            if os.path.exists(os.path.join(src, f)):
                add_bytes(tar, f, open(os.path.join(src, f), "rb").read())
    return path


def logits(d):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
    m.eval()
    ids = torch.arange(1, 17).reshape(2, 8) % m.config.vocab_size
    with torch.no_grad():
        return m(ids).logits


def check_against_fixture(src, back):
    a, b = hf_tensors(src), hf_tensors(str(back))
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k].view(torch.uint8),
                                                         b[k].view(torch.uint8)), k
    c, o = json.load(open(back / "config.json")), json.load(open(os.path.join(src, "config.json")))
    for k in ["model_type", "num_hidden_layers", "hidden_size", "intermediate_size",
              "num_attention_heads", "num_key_value_heads", "vocab_size", "rms_norm_eps",
              "tie_word_embeddings"]:
        assert c[k] == o[k], k
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        if os.path.exists(os.path.join(src, f)):
            assert open(back / f, "rb").read() == open(os.path.join(src, f), "rb").read(), f
    assert torch.equal(logits(src), logits(str(back)))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("weights", ["ckpt", "dist"])
def test_read_nemo1(tmp_path, model, weights):
    src = os.path.join(FIX, model)
    nemo = build_nemo(src, tmp_path / "m.nemo", weights)
    p = run("inspect", str(nemo), "--json")
    assert json.loads(p.stdout)["format"] == "nemo1"
    back = tmp_path / "hf"
    run("convert", str(nemo), str(back), "--to", "hf", "--quiet")
    check_against_fixture(src, back)


@pytest.mark.parametrize("weights", ["legacy", "dist"])
def test_read_nemo1_variants(tmp_path, weights):
    """gzip-compressed tarballs (NeMo < 1.7) and pre-mcore key names."""
    src = os.path.join(FIX, "models/qwen2-tiny")
    nemo = build_nemo(src, tmp_path / "m.nemo", weights, compress=weights == "dist")
    back = tmp_path / "hf"
    run("convert", str(nemo), str(back), "--to", "hf", "--quiet")
    check_against_fixture(src, back)
    tmp = os.environ.get("TMPDIR", "/tmp")
    assert not [f for f in os.listdir(tmp) if f.startswith("lms-nemo1-")
                and os.path.getmtime(os.path.join(tmp, f)) > os.path.getmtime(nemo)]


@pytest.mark.parametrize("model", ["models/qwen3-tiny", "models/llama-tiny", "teacher",
                                   "models/phi3-tiny"])
def test_python_reads_what_we_write(tmp_path, model):
    src = os.path.join(FIX, model)
    nemo = tmp_path / "out.nemo"
    run("convert", src, str(nemo), "--to", "nemo1", "--quiet")
    with tarfile.open(nemo) as tar:  # plain ustar, members under ./
        names = tar.getnames()
        assert "./model_config.yaml" in names and "./model_weights/.metadata" in names
        common = tar.extractfile("./model_weights/common.pt").read()
        assert torch.load(io.BytesIO(common), weights_only=True) == {"content_metadata": {}}
        tar.extractall(tmp_path / "x", filter="data")
    w = str(tmp_path / "x" / "model_weights")
    want, L, _ = megatron_state(src)
    got = load_dcp(w)
    assert sorted(got) == sorted("model." + k for k in want)
    for k, v in want.items():
        assert torch.equal(got["model." + k], v), k
    md = dcp.FileSystemReader(w).read_metadata()
    blob = open(os.path.join(w, "__0_0.distcp"), "rb").read()
    for idx, info in md.storage_data.items():
        obj = torch.load(io.BytesIO(blob[info.offset:info.offset + info.length]),
                         weights_only=True)
        assert isinstance(obj, (torch.Tensor, list)), idx.fqn
    cfg = open(tmp_path / "x" / "model_config.yaml").read()
    assert f"num_layers: {L}\n" in cfg and "mcore_gpt: true\n" in cfg
    back = tmp_path / "back"
    run("convert", str(nemo), str(back), "--to", "hf", "--quiet")
    assert_same_hf(src, str(back))


def test_nemo1_output_refuses_existing(tmp_path):
    src = os.path.join(FIX, "models/qwen3-tiny")
    nemo = tmp_path / "out.nemo"
    nemo.write_bytes(b"keep")
    p = run("convert", src, str(nemo), "--to", "nemo1", "--quiet", ok=False)
    assert p.returncode != 0 and nemo.read_bytes() == b"keep"
    run("convert", src, str(nemo), "--to", "nemo1", "--quiet", "--force")
    assert tarfile.is_tarfile(nemo)
    assert os.listdir(tmp_path) == ["out.nemo"]


def test_bad_nemo1(tmp_path):
    src = os.path.join(FIX, "models/qwen3-tiny")
    good = tmp_path / "good.nemo"
    run("convert", src, str(good), "--to", "nemo1", "--quiet")
    data = good.read_bytes()
    cases = {
        "truncated.nemo": data[:len(data) // 3],
        "escape.nemo": None,
        "noconfig.nemo": None,
    }
    with tarfile.open(tmp_path / "escape.nemo", "w") as tar:
        add_bytes(tar, "model_config.yaml", b"num_layers: 1\n")
        info = tarfile.TarInfo("../evil")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with tarfile.open(tmp_path / "noconfig.nemo", "w") as tar:
        add_bytes(tar, "hello.txt", b"hi")
    (tmp_path / "truncated.nemo").write_bytes(cases["truncated.nemo"])
    for name in cases:
        out = tmp_path / (name + ".out")
        p = run("convert", str(tmp_path / name), str(out), "--to", "hf", "--quiet", ok=False)
        assert p.returncode == 3, (name, p.returncode, p.stderr)
        assert name in p.stderr, p.stderr
        assert not out.exists()


PRUNE = ["--target-num-layers", "3", "--target-ffn-hidden-size", "96",
         "--target-num-attention-heads", "2", "--target-hidden-size", "48"]


@pytest.mark.parametrize("fmt", ["megatron", "nemo", "nemo1"])
def test_prune_through_megatron_layouts(tmp_path, fmt):
    """Surgery has no format-specific code: HF -> fmt, prune in fmt, back to HF gives exactly
    the files of pruning the HF checkpoint directly (weight-magnitude ranking, so the ranking
    reads the weights through the fmt reader's views too)."""
    src = os.path.join(FIX, "models/qwen3-tiny")
    direct = tmp_path / "direct"
    run("prune", src, str(direct), *PRUNE, "--quiet")
    ext = ".nemo" if fmt == "nemo1" else ""
    mid, pruned, back = (tmp_path / ("mid" + ext), tmp_path / ("pruned" + ext),
                         tmp_path / "back")
    run("convert", src, str(mid), "--to", fmt, "--quiet")
    run("prune", str(mid), str(pruned), *PRUNE, "--quiet")
    p = run("inspect", str(pruned), "--json")
    assert json.loads(p.stdout)["format"] == fmt
    run("convert", str(pruned), str(back), "--to", "hf", "--quiet")
    for f in sorted(os.listdir(direct)):
        assert open(direct / f, "rb").read() == open(back / f, "rb").read(), f
    assert sorted(os.listdir(direct)) == sorted(os.listdir(back))
