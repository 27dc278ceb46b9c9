"""NeMo 2 / Megatron torch_dist checkpoints against stock PyTorch.

- HF -> NeMo -> HF and HF -> Megatron -> HF are bit-exact for every fixture (tensors, config,
  tokenizer and generation files).
- torch.distributed.checkpoint loads the weights/ the tool writes into empty tensors built from
  the stored metadata, on CPU without a process group, and the values equal the HF fixture after
  the HF -> Megatron transforms computed here, independently of the tool.
- torch.load(weights_only=True) reads common.pt and every _extra_state payload.
- A checkpoint written by torch's own dcp.save (Megatron keys and layout built here from the HF
  fixture) is read by the tool and converts to HF bit-exactly.
- Bad inputs fail with exit code 3 and a message naming the problem; nothing is written.
"""
import io
import json
import os
import shutil
import subprocess
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file

LMS = os.environ.get("LMSURGEON", "lmsurgeon")
FIX = os.environ.get("LMS_FIXTURES", "fixtures")

MODELS = [
    "models/llama-tiny",
    "models/qwen2-tiny",
    "models/qwen3-tiny",
    "models/qwen3-tiny-bf16-sharded",
    "models/qwen3-tiny-distill-reference/student",
    "teacher",
    "models/phi3-tiny",
]
SIDE_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "generation_config.json"]

warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")


def run(*args, ok=True):
    p = subprocess.run([LMS, *args], capture_output=True, text=True)
    if ok:
        assert p.returncode == 0, p.stderr
    return p


def hf_tensors(d):
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors") and f != "reference.safetensors":
            out.update(load_file(os.path.join(d, f)))
    return out


def split_fused(t, cfg):
    """Phi-3 stores q/k/v as one qkv_proj ([q; k; v] rows) and gate/up as one gate_up_proj
    ([gate; up] rows): the same tensors under the separate names the other families use."""
    nh, ng = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or cfg["hidden_size"] // nh
    out = {}
    for k, v in t.items():
        if k.endswith("self_attn.qkv_proj.weight"):
            p = k[:-len("qkv_proj.weight")]
            out[p + "q_proj.weight"], out[p + "k_proj.weight"], out[p + "v_proj.weight"] = \
                v.split([nh * d, ng * d, ng * d], 0)
        elif k.endswith("mlp.gate_up_proj.weight"):
            p = k[:-len("gate_up_proj.weight")]
            out[p + "gate_proj.weight"], out[p + "up_proj.weight"] = v.chunk(2, 0)
        else:
            out[k] = v
    return out


def assert_same_hf(src, dst):
    a, b = hf_tensors(src), hf_tensors(dst)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)), k
    with open(os.path.join(src, "config.json"), "rb") as f1, \
            open(os.path.join(dst, "config.json"), "rb") as f2:
        assert json.loads(f1.read()) == json.loads(f2.read())
    for f in SIDE_FILES:
        if os.path.exists(os.path.join(src, f)):
            with open(os.path.join(src, f), "rb") as f1, open(os.path.join(dst, f), "rb") as f2:
                assert f1.read() == f2.read(), f


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("fmt", ["nemo", "megatron"])
def test_round_trip(tmp_path, model, fmt):
    src = os.path.join(FIX, model)
    mid, back = tmp_path / "mid", tmp_path / "back"
    run("convert", src, str(mid), "--to", fmt, "--quiet")
    run("convert", str(mid), str(back), "--to", "hf", "--quiet")
    assert_same_hf(src, str(back))
    if fmt == "nemo":  # NeMo -> NeMo reproduces the same tensors
        again = tmp_path / "again"
        run("convert", str(mid), str(again), "--to", "nemo", "--quiet")
        a, b = load_dcp(str(mid / "weights")), load_dcp(str(again / "weights"))
        assert sorted(a) == sorted(b)
        for k in a:
            assert torch.equal(a[k], b[k]), k


def load_dcp(d):
    reader = dcp.FileSystemReader(d)
    md = reader.read_metadata()
    sd = {k: torch.empty(v.size, dtype=v.properties.dtype)
          for k, v in md.state_dict_metadata.items() if hasattr(v, "size")}
    dcp.load(sd, storage_reader=reader)
    return sd


def megatron_state(src):
    """The Megatron tensors of an HF checkpoint (keys, stacked layers, fused QKV and fc1),
    computed here."""
    cfg = json.load(open(os.path.join(src, "config.json")))
    t = split_fused(hf_tensors(src), cfg)
    L = cfg["num_hidden_layers"]
    nh, ng = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or cfg["hidden_size"] // nh
    p = nh // ng

    def fuse(q, k, v):
        blocks = []
        for g in range(ng):
            blocks += [q[g * p * d:(g + 1) * p * d], k[g * d:(g + 1) * d], v[g * d:(g + 1) * d]]
        return torch.cat(blocks, 0)

    def stack(fn):
        return torch.stack([fn(i) for i in range(L)], 0)

    lp = "model.layers.{}."
    out = {
        "embedding.word_embeddings.weight": t["model.embed_tokens.weight"],
        "decoder.final_layernorm.weight": t["model.norm.weight"],
        "decoder.layers.self_attention.linear_qkv.layer_norm_weight":
            stack(lambda i: t[lp.format(i) + "input_layernorm.weight"]),
        "decoder.layers.self_attention.linear_qkv.weight": stack(lambda i: fuse(
            *[t[lp.format(i) + f"self_attn.{x}_proj.weight"] for x in "qkv"])),
        "decoder.layers.self_attention.linear_proj.weight":
            stack(lambda i: t[lp.format(i) + "self_attn.o_proj.weight"]),
        "decoder.layers.mlp.linear_fc1.layer_norm_weight":
            stack(lambda i: t[lp.format(i) + "post_attention_layernorm.weight"]),
        "decoder.layers.mlp.linear_fc1.weight": stack(lambda i: torch.cat(
            [t[lp.format(i) + "mlp.gate_proj.weight"], t[lp.format(i) + "mlp.up_proj.weight"]])),
        "decoder.layers.mlp.linear_fc2.weight":
            stack(lambda i: t[lp.format(i) + "mlp.down_proj.weight"]),
    }
    if lp.format(0) + "self_attn.q_proj.bias" in t:
        out["decoder.layers.self_attention.linear_qkv.bias"] = stack(lambda i: fuse(
            *[t[lp.format(i) + f"self_attn.{x}_proj.bias"] for x in "qkv"]))
    if lp.format(0) + "self_attn.q_norm.weight" in t:
        out["decoder.layers.self_attention.q_layernorm.weight"] = \
            stack(lambda i: t[lp.format(i) + "self_attn.q_norm.weight"])
        out["decoder.layers.self_attention.k_layernorm.weight"] = \
            stack(lambda i: t[lp.format(i) + "self_attn.k_norm.weight"])
    if "lm_head.weight" in t:
        out["output_layer.weight"] = t["lm_head.weight"]
    return out, L, "q_norm" in str(list(t))


@pytest.mark.parametrize("model", ["models/llama-tiny", "models/qwen2-tiny", "models/qwen3-tiny",
                                   "teacher", "models/phi3-tiny"])
def test_torch_dcp_reads_what_we_write(tmp_path, model):
    src = os.path.join(FIX, model)
    out = tmp_path / "nemo"
    run("convert", src, str(out), "--to", "nemo", "--quiet")
    w = str(out / "weights")
    assert json.load(open(os.path.join(w, "metadata.json"))) == {
        "sharded_backend": "torch_dist", "sharded_backend_version": 1,
        "common_backend": "torch", "common_backend_version": 1}
    assert torch.load(os.path.join(w, "common.pt"), weights_only=True) == {"content_metadata": {}}
    want, L, qk = megatron_state(src)
    got = load_dcp(w)
    assert sorted(got) == sorted("module." + k for k in want)
    for k, v in want.items():
        assert got["module." + k].dtype == v.dtype, k
        assert torch.equal(got["module." + k], v), k
    # every chunk's byte range is a loadable torch.save zip of the chunk's shape
    md = dcp.FileSystemReader(w).read_metadata()
    blob = open(os.path.join(w, "__0_0.distcp"), "rb").read()
    n_extra = 0
    for idx, info in md.storage_data.items():
        item = blob[info.offset:info.offset + info.length]
        obj = torch.load(io.BytesIO(item), weights_only=True)
        meta = md.state_dict_metadata[idx.fqn]
        if hasattr(meta, "size"):
            chunk = [c for c in meta.chunks if tuple(c.offsets) == tuple(idx.offset)][0]
            assert tuple(obj.shape) == tuple(chunk.sizes)
        else:
            assert "_extra_state/shard_" in idx.fqn
            assert isinstance(obj, list) and len(obj) == 1
            assert obj[0].dtype == torch.uint8 and obj[0].tolist() == [0x80, 0x02, 0x4E, 0x2E]
            n_extra += 1
    assert n_extra == L * (7 if qk else 5) + 1
    assert f"module.decoder.layers.self_attention.linear_qkv._extra_state/shard_0_{L}" in \
        md.state_dict_metadata


def test_megatron_layout(tmp_path):
    src = os.path.join(FIX, "models/qwen3-tiny")
    out = tmp_path / "mg"
    run("convert", src, str(out), "--to", "megatron", "--quiet")
    assert open(out / "latest_checkpointed_iteration.txt").read().strip() == "0"
    it = str(out / "iter_0000000")
    common = torch.load(os.path.join(it, "common.pt"), weights_only=True)
    assert common["checkpoint_version"] == 3.0 and common["iteration"] == 0
    want, _, _ = megatron_state(src)
    got = load_dcp(it)
    for k, v in want.items():
        assert torch.equal(got[k], v), k
    assert os.path.exists(os.path.join(it, "tokenizer", "generation_config.json"))
    # the TrainState of iteration 0, in both places Bridge looks, readable in torch's
    # restricted mode, with the dtypes Bridge's TrainState.state_dict produces
    for f in [out / "latest_train_state.pt", out / "iter_0000000" / "train_state.pt"]:
        ts = torch.load(f, weights_only=True)
        want_dt = {"step": torch.int64, "consumed_train_samples": torch.int64,
                   "skipped_train_samples": torch.int64, "consumed_valid_samples": torch.int64,
                   "floating_point_operations_so_far": torch.float64, "do_train": torch.bool,
                   "do_valid": torch.bool, "do_test": torch.bool}
        for k, dt in want_dt.items():
            assert ts[k].dtype == dt and ts[k].dim() == 0 and ts[k].item() == 0, k
    # run_config.yaml: a ConfigContainer-shaped YAML whose model section matches the HF config
    import yaml
    rc = yaml.safe_load(open(os.path.join(it, "run_config.yaml")))
    cfg = json.load(open(os.path.join(src, "config.json")))
    m = rc["model"]
    assert m["_target_"].endswith("Qwen3ModelProvider")
    assert m["num_layers"] == cfg["num_hidden_layers"]
    assert m["hidden_size"] == cfg["hidden_size"]
    assert m["ffn_hidden_size"] == cfg["intermediate_size"]
    assert m["num_attention_heads"] == cfg["num_attention_heads"]
    assert m["num_query_groups"] == cfg["num_key_value_heads"]
    assert m["kv_channels"] == cfg["head_dim"]
    assert m["layernorm_epsilon"] == cfg["rms_norm_eps"]  # a float, not the string "1e-06"
    assert m["vocab_size"] == cfg["vocab_size"] and m["qk_layernorm"] is True
    assert m["tensor_model_parallel_size"] == 1 and m["pipeline_model_parallel_size"] == 1
    assert rc["checkpoint"]["ckpt_format"] == "torch_dist"


@pytest.mark.parametrize("model", ["models/qwen3-tiny", "models/qwen2-tiny", "models/llama-tiny",
                                   "models/phi3-tiny"])
@pytest.mark.parametrize("keep_hf_config", [True, False])
def test_we_read_what_torch_writes(tmp_path, model, keep_hf_config):
    """dcp.save of the Megatron state dict (fc1 and the embedding split into row chunks the way
    a TP=2 save tiles them is not expressible without a process group, so torch writes whole
    tensors here; multi-chunk tilings are covered by the C unit tests)."""
    src = os.path.join(FIX, model)
    ours = tmp_path / "ours"
    run("convert", src, str(ours), "--to", "nemo", "--quiet")
    theirs = tmp_path / "theirs"
    shutil.copytree(ours / "context", theirs / "context")
    if not keep_hf_config:  # config from io.json alone
        os.remove(theirs / "context" / "hf_config.json")
    want, _, _ = megatron_state(src)
    sd = {"module." + k: v.clone() for k, v in want.items()}
    dcp.save(sd, checkpoint_id=str(theirs / "weights"))
    with open(theirs / "weights" / "metadata.json", "w") as f:
        json.dump({"sharded_backend": "torch_dist", "sharded_backend_version": 1,
                   "common_backend": "torch", "common_backend_version": 1}, f)
    torch.save({"content_metadata": {}}, theirs / "weights" / "common.pt")
    back = tmp_path / "back"
    run("convert", str(theirs), str(back), "--to", "hf", "--quiet")
    a, b = hf_tensors(src), hf_tensors(str(back))
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if keep_hf_config:
        assert json.load(open(back / "config.json")) == json.load(open(os.path.join(src,
                                                                                    "config.json")))
    else:
        c, o = json.load(open(back / "config.json")), json.load(open(os.path.join(src,
                                                                                  "config.json")))
        for k in ["num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                  "num_key_value_heads", "vocab_size", "tie_word_embeddings"]:
            assert c[k] == o[k], k


# ---- bad inputs --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def good_nemo(tmp_path_factory):
    d = tmp_path_factory.mktemp("good") / "nemo"
    run("convert", os.path.join(FIX, "models/qwen3-tiny"), str(d), "--to", "nemo", "--quiet")
    return d


def corrupt(good, tmp_path, edit):
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    edit(bad)
    return bad


def expect_bad(path, tmp_path, needle, code=3):
    out = tmp_path / "out"
    p = run("convert", str(path), str(out), "--to", "hf", "--quiet", ok=False)
    assert p.returncode == code, (p.returncode, p.stderr)
    assert needle in p.stderr, p.stderr
    assert not out.exists()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".out")]


def test_bad_disallowed_global(good_nemo, tmp_path):
    def edit(d):
        # a pickle that would call os.system("true") if it were executed
        with open(d / "weights" / ".metadata", "wb") as f:
            f.write(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.")
    expect_bad(corrupt(good_nemo, tmp_path, edit), tmp_path, "'os.system' is not allowed")


def test_bad_truncated_distcp(good_nemo, tmp_path):
    def edit(d):
        p = d / "weights" / "__0_0.distcp"
        data = open(p, "rb").read()
        open(p, "wb").write(data[:len(data) // 2])
    expect_bad(corrupt(good_nemo, tmp_path, edit), tmp_path, "past the end of '__0_0.distcp'")


def rewrite_metadata(d, fn):
    p = d / "weights" / ".metadata"
    md = dcp.FileSystemReader(str(d / "weights")).read_metadata()
    fn(md)
    import pickle
    with open(p, "wb") as f:
        pickle.dump(md, f, protocol=2)


def test_bad_chunk_range_past_end(good_nemo, tmp_path):
    def edit(d):
        def fn(md):
            for idx, info in md.storage_data.items():
                if idx.fqn.endswith("final_layernorm.weight"):
                    info.offset += 10 ** 9
        rewrite_metadata(d, fn)
    expect_bad(corrupt(good_nemo, tmp_path, edit), tmp_path, "past the end of")


def test_bad_chunks_do_not_tile(good_nemo, tmp_path):
    def edit(d):
        def fn(md):
            m = md.state_dict_metadata["module.decoder.layers.mlp.linear_fc1.weight"]
            m.chunks = m.chunks[:-1]
        rewrite_metadata(d, fn)
    expect_bad(corrupt(good_nemo, tmp_path, edit), tmp_path, "do not tile")


def test_bad_unknown_backend(good_nemo, tmp_path):
    def edit(d):
        with open(d / "weights" / "metadata.json", "w") as f:
            json.dump({"sharded_backend": "zarr2000", "sharded_backend_version": 1}, f)
    expect_bad(corrupt(good_nemo, tmp_path, edit), tmp_path, "sharded_backend 'zarr2000'", code=3)


def test_bad_missing_io_json(good_nemo, tmp_path):
    def edit(d):
        os.remove(d / "context" / "io.json")
        os.remove(d / "context" / "hf_config.json")
    bad = corrupt(good_nemo, tmp_path, edit)
    out = tmp_path / "out"
    p = run("convert", str(bad), str(out), "--to", "hf", "--quiet", ok=False)
    assert p.returncode != 0 and not out.exists()


# ---- megatron-core ------------------------------------------------------------------------------

MCORE_LOAD = r'''
import sys, torch, torch.distributed as dist, warnings
warnings.filterwarnings("ignore")
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=0, world_size=1)
from megatron.core import dist_checkpointing as dc
from megatron.core.dist_checkpointing import ShardedTensor, ShardedObject
from megatron.core.transformer.mlp import apply_swiglu_sharded_factory
w, L, out = sys.argv[1], int(sys.argv[3]), sys.argv[4]
md = torch.distributed.checkpoint.FileSystemReader(w).read_metadata()
sd = {}
for k, v in md.state_dict_metadata.items():
    if not hasattr(v, "size"):
        key, shard = k.split("/shard_")
        off, shp = shard.split("_")
        sd[k] = ShardedObject(key, None, (int(shp),), (int(off),), replica_id=0)
    elif ".layers." in k:
        for l in range(L):
            st = ShardedTensor.from_rank_offsets(
                k, torch.empty(tuple(v.size)[1:], dtype=v.properties.dtype), (0, l, L),
                replica_id=0, prepend_axis_num=1)
            if "linear_fc1.weight" in k:
                st = apply_swiglu_sharded_factory(st, ((0, l, L),))
            sd[f"{k}.{l}"] = st
    else:
        sd[k] = ShardedTensor.from_rank_offsets(
            k, torch.empty(tuple(v.size), dtype=v.properties.dtype), replica_id=0,
            allow_shape_mismatch=("embedding" in k or "output_layer" in k))
got = dc.load(sd, w)  # default strictness: every requested key must exist with its shape
res = {}
for k, v in got.items():
    if isinstance(v, torch.Tensor):
        base, _, l = k.rpartition(".")
        if l.isdigit() and ".layers." in base:
            res.setdefault(base, {})[int(l)] = v
        else:
            res[k] = v
res = {k: torch.stack([v[i] for i in range(L)]) if isinstance(v, dict) else v
       for k, v in res.items()}
res["__common__"] = dc.load_common_state_dict(w)
torch.save(res, out)
'''


def test_megatron_core_loads_what_we_write(tmp_path):
    pytest.importorskip("megatron.core")
    src = os.path.join(FIX, "models/qwen3-tiny")
    out = tmp_path / "nemo"
    run("convert", src, str(out), "--to", "nemo", "--quiet")
    want, L, _ = megatron_state(src)
    res_path = tmp_path / "res.pt"
    p = subprocess.run([os.sys.executable, "-c", MCORE_LOAD, str(out / "weights"),
                        str(tmp_path / "pg"), str(L), str(res_path)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    got = torch.load(res_path, weights_only=False)
    assert got.pop("__common__") == {"content_metadata": {}}
    extra = [k for k in got if "/shard_" in k]
    assert len(extra) == 7 * L + 1
    for k in extra:  # mcore hands back the object inside the one-element list
        assert got.pop(k).tolist() == [0x80, 0x02, 0x4E, 0x2E], k
    assert sorted(got) == sorted("module." + k for k in want)
    for k, v in want.items():
        assert torch.equal(got["module." + k], v), k


# ---- configs from every place NeMo and Megatron keep them; sizes on disk -----------------------

def expect_one_line_error(path, tmp_path, needles, code=3):
    out = tmp_path / "out"
    p = run("convert", str(path), str(out), "--to", "hf", "--quiet", ok=False)
    assert p.returncode == code, (p.returncode, p.stderr)
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    for n in needles:
        assert n in p.stderr, p.stderr
    assert not out.exists()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".out")]


@pytest.mark.parametrize("model,dtype", [("models/qwen3-tiny", "float32"),
                                         ("models/qwen3-tiny-bf16-sharded", "bfloat16")])
@pytest.mark.parametrize("fmt", ["megatron", "nemo"])
def test_params_dtype_without_hf_config(tmp_path, model, dtype, fmt):
    """Without our hf_config.json the dtype comes from params_dtype (a nested
    {_target_: torch.float32, _call_: false} block in run_config.yaml, a pyref in io.json)."""
    mid, back = tmp_path / "mid", tmp_path / "back"
    run("convert", os.path.join(FIX, model), str(mid), "--to", fmt, "--quiet")
    os.remove(mid / ("iter_0000000" if fmt == "megatron" else "context") / "hf_config.json")
    run("convert", str(mid), str(back), "--to", "hf", "--quiet")
    c = json.load(open(back / "config.json"))
    assert (c.get("torch_dtype") or c.get("dtype")) == dtype


def test_io_json_has_nemos_structure(tmp_path):
    """Our io.json has the object kinds NeMo's io_dump writes (compared with a context NeMo
    2.7.3 wrote, fixtures/nemo/contexts/): every BuildableTraverserMetadata's own metadata is a
    pyref to its class, argument-name tuples hold plain strings, and the root TrainerContext has
    model, trainer (with a MegatronStrategy) and extra."""
    out = tmp_path / "q"
    run("convert", os.path.join(FIX, "models/qwen3-tiny"), str(out), "--to", "nemo", "--quiet")
    ours = json.load(open(out / "context" / "io.json"))
    theirs = json.load(open(os.path.join(FIX, "nemo/contexts/explicit-qwen3-teacher-shape/io.json")))
    for io_json in (ours, theirs):
        objs = io_json["objects"]
        assert io_json["version"] == "0.0.1" and io_json["root"] == {"type": "ref",
                                                                      "key": "trainer_context_1"}
        assert set(io_json["refcounts"]) == set(objs)
        kinds = {}
        for name, o in objs.items():
            kinds.setdefault((o["type"]["module"], o["type"]["name"]), []).append(o)
        for m in kinds[("fiddle._src.config", "BuildableTraverserMetadata")]:
            assert m["metadata"] == {"type": "pyref", "module": "fiddle._src.config",
                                     "name": "BuildableTraverserMetadata"}
        for t in kinds[("builtins", "tuple")]:
            assert t["metadata"] is None
            assert all(isinstance(v, str) for _, v in t["items"])
        root = objs["trainer_context_1"]
        assert [a for a, _ in root["items"]] == ["Attr(name='model')", "Attr(name='trainer')",
                                                  "Attr(name='extra')"]
        trainer = objs[dict(root["items"])["Attr(name='trainer')"]["key"]]
        strat = objs[dict(trainer["items"])["Attr(name='strategy')"]["key"]]
        meta = objs[strat["metadata"]["key"]]
        assert dict(meta["items"])["Attr(name='fn_or_cls')"]["name"] == "MegatronStrategy"


def nemo_context_checkpoint(tmp_path, context):
    """qwen3-tiny's weights under a context/ NeMo wrote (model.yaml kept or not)."""
    d = tmp_path / "ckpt"
    run("convert", os.path.join(FIX, "models/qwen3-tiny"), str(d), "--to", "nemo", "--quiet")
    shutil.rmtree(d / "context")
    shutil.copytree(os.path.join(FIX, "nemo/contexts", context), d / "context")
    return d


def test_preset_class_read_from_nemo_context(tmp_path):
    """A context NeMo wrote for Qwen3Model(Qwen3Config600M()): its config object has no items;
    model.yaml, or without it the preset's class defaults, give Qwen3-0.6B's shape, which the
    tool reads and checks against the weights (qwen3-tiny's, so the shapes disagree)."""
    d = nemo_context_checkpoint(tmp_path, "preset-qwen3-600m")
    expect_one_line_error(d, tmp_path, ["checkpoint has 4 layers, config says 28"])
    os.remove(d / "context" / "model.yaml")
    expect_one_line_error(d, tmp_path, ["checkpoint has 4 layers, config says 28"])


def test_unknown_preset_class(tmp_path):
    d = nemo_context_checkpoint(tmp_path, "preset-qwen3-600m")
    os.remove(d / "context" / "model.yaml")
    text = (d / "context" / "io.json").read_text()
    (d / "context" / "io.json").write_text(text.replace("Qwen3Config600M", "Qwen3Config900M"))
    expect_one_line_error(d, tmp_path, ["'Qwen3Config900M'", "io.json", "num_layers"])


def test_nemo_written_context_with_our_weights(tmp_path):
    """The context NeMo wrote for an explicit Qwen3Config with the teacher's shape, over the
    teacher's weights: the config comes from io.json and converts to the teacher exactly."""
    d = tmp_path / "ckpt"
    run("convert", os.path.join(FIX, "teacher"), str(d), "--to", "nemo", "--quiet")
    shutil.rmtree(d / "context")
    shutil.copytree(os.path.join(FIX, "nemo/contexts/explicit-qwen3-teacher-shape"),
                    d / "context")
    back = tmp_path / "back"
    run("convert", str(d), str(back), "--to", "hf", "--quiet")
    a, b = hf_tensors(os.path.join(FIX, "teacher")), hf_tensors(str(back))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    c, o = json.load(open(back / "config.json")), json.load(open(os.path.join(FIX, "teacher",
                                                                                "config.json")))
    for k in ["num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
              "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings",
              "rms_norm_eps"]:
        assert c.get(k) == o.get(k), k
    # NeMo was given seq_length only: Qwen3Config's max_position_embeddings (40960) stands, and
    # NeMo's own HF exporter writes that value too
    assert c["max_position_embeddings"] == 40960
    assert (c.get("torch_dtype") or c.get("dtype")) == "bfloat16"


def megatron_lm_like(tmp_path, args_value):
    """qwen3-tiny in the Megatron layout with only a common.pt holding args_value as 'args' (as
    Megatron-LM writes it: no run_config.yaml, no hf_config.json)."""
    d = tmp_path / "lm"
    run("convert", os.path.join(FIX, "models/qwen3-tiny"), str(d), "--to", "megatron",
        "--quiet")
    it = d / "iter_0000000"
    for f in ["run_config.yaml", "hf_config.json"]:
        os.remove(it / f)
    torch.save({"args": args_value, "checkpoint_version": 3.0, "iteration": 0},
               it / "common.pt")
    return d


def test_megatron_lm_args_not_a_namespace(tmp_path):
    d = megatron_lm_like(tmp_path, {"num_layers": 4})
    expect_one_line_error(d, tmp_path, ["common.pt", "not an argparse.Namespace"])


def test_megatron_lm_args_disallowed_global(tmp_path):
    import argparse
    d = megatron_lm_like(tmp_path, argparse.Namespace(num_layers=4, init_method=os.system))
    expect_one_line_error(d, tmp_path, ["common.pt", "system' is not allowed"])


def test_megatron_lm_args_bad_value(tmp_path):
    import argparse
    d = megatron_lm_like(tmp_path, argparse.Namespace(num_layers="4", swiglu=True))
    expect_one_line_error(d, tmp_path, ["common.pt", "args.num_layers is not a positive integer"])


def test_megatron_lm_no_config_anywhere(tmp_path):
    d = megatron_lm_like(tmp_path, None)
    torch.save({"checkpoint_version": 3.0}, d / "iter_0000000" / "common.pt")
    expect_one_line_error(d, tmp_path, ["no hf_config.json, run_config.yaml or Megatron-LM args"])


@pytest.mark.parametrize("fmt", ["nemo", "megatron", "hf"])
def test_inspect_bytes_on_disk(tmp_path, fmt):
    """inspect counts every file under the checkpoint (weights/ and iter_N/ are subdirectories;
    DCP's .metadata is a dot file)."""
    out = tmp_path / "c"
    run("convert", os.path.join(FIX, "teacher"), str(out), "--to", fmt, "--quiet")
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(out) for f in fs)
    got = json.loads(run("inspect", "--json", str(out)).stdout)
    assert got["bytes_on_disk"] == total
