"""Checkpoints written by megatron-core's own dist_checkpointing.save are read by the tool.

The state dict is built here from the HF fixture the way megatron-core's GPT model builds its
sharded state dict: per-layer ShardedTensors stacked along a prepended layer axis
(ShardedTensor.from_rank_offsets with (0, layer, L)), tensor-parallel axes added as Megatron's
make_tp_sharded_tensor_for_checkpoint does (replica_id (0, 0, 0) for split tensors,
(0, tp_rank, 0) for replicated ones), the fused fc1 through mcore's apply_swiglu_sharded_factory,
and the TransformerEngine _extra_state entries as ShardedObjects (BytesIO as TE 1.x returns, an
empty uint8 tensor as TE 2.x returns). It is saved with dist_checkpointing.save (torch_dist
backend) from a gloo process group on 127.0.0.1:

- TP=1, one process, in the NeMo 2 layout (context/ from the tool's own HF -> NeMo conversion,
  hf_config.json removed so the config comes from io.json, "module." key prefix);
- TP=2, two processes (torch.multiprocessing.spawn), in the Megatron-LM iter_N layout
  (hf_config.json removed so the config comes from run_config.yaml). Each rank holds its shard:
  fused QKV column-parallel (the query groups of the rank, [q_g, k_g, v_g] per group), fc1 with
  the rank's slice of gate and of up (swiglu sharding), linear_proj and fc2 row-parallel (split
  along the input dim), embedding and output layer vocab-parallel, norms replicated.

- TP=2, two processes, as plain Megatron-LM saves: the model under "model", the command-line
  arguments as an argparse.Namespace under "args" in the common state, RNG state objects, no
  run_config.yaml (the config comes from args).

`lmsurgeon convert --to hf` of each gives the HF fixture's tensors bit for bit and its config
fields.
"""
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_nemo import FIX, hf_tensors, run  # noqa: E402

MCORE_SAVE = r'''
import io, json, os, sys, warnings
warnings.filterwarnings("ignore")
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def rank_state(src, prefix, r, T, ShardedTensor, ShardedObject, swiglu):
    """Rank r's sharded state dict of the HF checkpoint src at tensor-parallel size T."""
    from safetensors.torch import load_file
    cfg = json.load(open(os.path.join(src, "config.json")))
    t = {}
    for f in sorted(os.listdir(src)):
        if f.endswith(".safetensors"):
            t.update(load_file(os.path.join(src, f)))
    L, nh, ng = cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or cfg["hidden_size"] // nh
    for l in range(L):  # Phi-3 stores [q; k; v] and [gate; up] fused
        pre = f"model.layers.{l}."
        if pre + "self_attn.qkv_proj.weight" in t:
            q, k, v = t.pop(pre + "self_attn.qkv_proj.weight").split([nh * d, ng * d, ng * d], 0)
            t[pre + "self_attn.q_proj.weight"], t[pre + "self_attn.k_proj.weight"] = q, k
            t[pre + "self_attn.v_proj.weight"] = v
            g, u = t.pop(pre + "mlp.gate_up_proj.weight").chunk(2, 0)
            t[pre + "mlp.gate_proj.weight"], t[pre + "mlp.up_proj.weight"] = g, u
    p, f = nh // ng, cfg["intermediate_size"]
    assert ng % T == 0 and f % T == 0 and nh % T == 0
    gr, fr, hr = ng // T, f // T, nh * d // T  # per rank: query groups, ffn rows, proj columns

    def qkv(q, k, v):  # the rank's query groups, each [q_g (p heads), k_g, v_g]
        blocks = []
        for g in range(r * gr, (r + 1) * gr):
            blocks += [q[g * p * d:(g + 1) * p * d], k[g * d:(g + 1) * d], v[g * d:(g + 1) * d]]
        return torch.cat(blocks, 0).clone()

    def split(x, axis):  # the rank's contiguous slice along axis (column/row/vocab parallel)
        n = x.shape[axis] // T
        return x.narrow(axis, r * n, n).clone()

    sd = {}
    split_id, repl_id = (0, 0, 0), (0, r, 0)

    def tp(key, x, axis, *lay):  # make_tp_sharded_tensor_for_checkpoint
        pre = len(lay)
        return ShardedTensor.from_rank_offsets(prefix + key, x, *lay, (axis + pre, r, T),
                                               replica_id=split_id, prepend_axis_num=pre,
                                               allow_shape_mismatch=not lay)

    def repl(key, x, *lay):  # make_sharded_tensor_for_checkpoint
        return ShardedTensor.from_rank_offsets(prefix + key, x, *lay, replica_id=repl_id,
                                               prepend_axis_num=len(lay))

    sd["embedding.word_embeddings.weight"] = tp(
        "embedding.word_embeddings.weight", split(t["model.embed_tokens.weight"], 0), 0)
    sd["decoder.final_layernorm.weight"] = repl(
        "decoder.final_layernorm.weight", t["model.norm.weight"].clone())
    if "lm_head.weight" in t:
        sd["output_layer.weight"] = tp("output_layer.weight", split(t["lm_head.weight"], 0), 0)
        sd["output_layer._extra_state"] = ShardedObject(
            prefix + "output_layer._extra_state", io.BytesIO(), (1,), (0,), replica_id=repl_id)
    a, m = "decoder.layers.self_attention.", "decoder.layers.mlp."
    for l in range(L):
        h = lambda n: t[f"model.layers.{l}.{n}"]
        lay = (0, l, L)
        sd[f"{a}linear_qkv.weight.{l}"] = tp(a + "linear_qkv.weight", qkv(
            *[h(f"self_attn.{x}_proj.weight") for x in "qkv"]), 0, lay)
        if f"model.layers.{l}.self_attn.q_proj.bias" in t:
            sd[f"{a}linear_qkv.bias.{l}"] = tp(a + "linear_qkv.bias", qkv(
                *[h(f"self_attn.{x}_proj.bias") for x in "qkv"]), 0, lay)
        sd[f"{a}linear_qkv.layer_norm_weight.{l}"] = repl(
            a + "linear_qkv.layer_norm_weight", h("input_layernorm.weight").clone(), lay)
        if f"model.layers.{l}.self_attn.q_norm.weight" in t:
            for x in "qk":
                sd[f"{a}{x}_layernorm.weight.{l}"] = repl(
                    f"{a}{x}_layernorm.weight", h(f"self_attn.{x}_norm.weight").clone(), lay)
        sd[f"{a}linear_proj.weight.{l}"] = tp(
            a + "linear_proj.weight", split(h("self_attn.o_proj.weight"), 1), 1, lay)
        gate, up = h("mlp.gate_proj.weight"), h("mlp.up_proj.weight")
        fc1 = torch.cat([split(gate, 0), split(up, 0)], 0)  # [gate_r; up_r] as a rank holds it
        sd[f"{m}linear_fc1.weight.{l}"] = swiglu(tp(m + "linear_fc1.weight", fc1, 0, lay),
                                                 (lay,))
        sd[f"{m}linear_fc1.layer_norm_weight.{l}"] = repl(
            m + "linear_fc1.layer_norm_weight", h("post_attention_layernorm.weight").clone(), lay)
        sd[f"{m}linear_fc2.weight.{l}"] = tp(
            m + "linear_fc2.weight", split(h("mlp.down_proj.weight"), 1), 1, lay)
        for n, v in [(a + "linear_qkv", io.BytesIO()), (a + "linear_proj", io.BytesIO()),
                     (m + "linear_fc1", torch.empty(0, dtype=torch.uint8)),
                     (m + "linear_fc2", torch.empty(0, dtype=torch.uint8))]:
            sd[f"{n}._extra_state.{l}"] = ShardedObject(prefix + n + "._extra_state", v, (L,),
                                                        (l,), replica_id=repl_id)
    return sd


def megatron_lm_state(src, model, r, T, ShardedObject):
    """What Megatron-LM's save_checkpoint hands to dist_checkpointing.save: the model under
    "model", its command-line arguments as an argparse.Namespace under "args" (the only config it
    keeps), the checkpoint version, iteration and FLOP count, and the RNG state of every rank as
    a ShardedObject."""
    import argparse
    from megatron.core.transformer.enums import AttnBackend
    cfg = json.load(open(os.path.join(src, "config.json")))
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(
        cfg.get("dtype") or cfg.get("torch_dtype"), torch.float32)
    theta = cfg.get("rope_theta") or cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)
    args = argparse.Namespace(
        num_layers=cfg["num_hidden_layers"], hidden_size=cfg["hidden_size"],
        ffn_hidden_size=cfg["intermediate_size"], num_attention_heads=cfg["num_attention_heads"],
        group_query_attention=cfg["num_key_value_heads"] != cfg["num_attention_heads"],
        num_query_groups=cfg["num_key_value_heads"],
        kv_channels=cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"],
        max_position_embeddings=cfg["max_position_embeddings"], seq_length=4096,
        position_embedding_type="rope", rotary_base=int(theta), rotary_percent=1.0,
        use_rope_scaling=False, normalization="RMSNorm", norm_epsilon=cfg["rms_norm_eps"],
        swiglu=True, untie_embeddings_and_output_weights=not cfg.get("tie_word_embeddings"),
        add_bias_linear=False, add_qkv_bias=cfg["model_type"] == "qwen2",
        qk_layernorm=cfg["model_type"] == "qwen3", vocab_size=None,
        padded_vocab_size=cfg["vocab_size"], make_vocab_size_divisible_by=128,
        tensor_model_parallel_size=T, pipeline_model_parallel_size=1, bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16, params_dtype=dtype, attention_backend=AttnBackend.auto,
        transformer_impl="transformer_engine", tokenizer_type="HuggingFaceTokenizer",
        tokenizer_model=None, data_path=["corpus_text_document"], lr=3e-4, iteration=10,
        save="checkpoints", load=None, seed=1234)
    rng = {"random_rng_state": [3, tuple(range(8)), None],
           "np_rng_state": ("MT19937", [0] * 4, 0, 0, 0.0),
           "torch_rng_state": torch.zeros(16, dtype=torch.uint8), "cuda_rng_state": None,
           "rng_tracker_states": {}}
    return {"model": model, "args": args, "checkpoint_version": 3.0, "iteration": 10,
            "num_floating_point_operations_so_far": 0,
            "rng_state": [ShardedObject("rng_state", [rng], (1, T), (0, r), replica_id=0)]}


def worker(r, T, port, jobs):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=r, world_size=T)
    if not torch.cuda.is_available():
        # megatron-core's torch_dist writer assumes a GPU in two places of an otherwise
        # device-agnostic save: it ends the (CPU) tensor preload with torch.cuda.synchronize()
        # and broadcasts its failure flag from torch.cuda.current_device(); on CPU: no-op, "cpu"
        torch.cuda.synchronize = lambda *args, **kwargs: None
        torch.cuda.current_device = lambda: "cpu"
    from megatron.core import dist_checkpointing as dc
    from megatron.core.dist_checkpointing import ShardedObject, ShardedTensor
    from megatron.core.transformer.mlp import apply_swiglu_sharded_factory
    for src, out, prefix, common in jobs:
        sd = rank_state(src, prefix, r, T, ShardedTensor, ShardedObject,
                        apply_swiglu_sharded_factory)
        if common.pop("megatron_lm_args", False):
            sd = megatron_lm_state(src, sd, r, T, ShardedObject)
        sd.update(common)
        dc.save(sd, out, content_metadata={} if prefix else None)
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    T, port, jobs = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
    if T == 1:
        worker(0, 1, port, jobs)
    else:
        mp.spawn(worker, args=(T, port, jobs), nprocs=T, join=True)
'''


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mcore_save(tmp_path, tp, jobs):
    """Runs MCORE_SAVE (world size tp) over jobs: [src, out dir, key prefix, common state]."""
    script = tmp_path / "mcore_save.py"
    script.write_text(MCORE_SAVE)
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    p = subprocess.run([sys.executable, str(script), str(tp), str(free_port()),
                        json.dumps([[str(x) if isinstance(x, os.PathLike) else x for x in j]
                                    for j in jobs])],
                       capture_output=True, text=True, timeout=180, env=env)
    assert p.returncode == 0, p.stderr[-4000:]
    for j in jobs:
        assert json.load(open(os.path.join(j[1], "metadata.json"))) == {
            "sharded_backend": "torch_dist", "sharded_backend_version": 1,
            "common_backend": "torch", "common_backend_version": 1}


def check_hf(src, back):
    a, b = hf_tensors(src), hf_tensors(str(back))
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)), k
    c, o = json.load(open(back / "config.json")), json.load(open(os.path.join(src,
                                                                              "config.json")))
    for k in ["num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
              "num_key_value_heads", "vocab_size", "tie_word_embeddings", "rms_norm_eps"]:
        assert c.get(k) == o.get(k), k


MODELS = ["models/qwen3-tiny", "models/qwen2-tiny", "models/llama-tiny"]
# Phi-3 is named by NeMo 2's config class; a Megatron-LM save names no family and the Bridge file
# names the generic GPT provider, so without our hf_config.json those read as Llama
NEMO_MODELS = MODELS + ["models/phi3-tiny"]


@pytest.fixture(scope="module")
def tp1_nemo(tmp_path_factory):
    """TP=1 saves of every model in the NeMo 2 layout, from one megatron-core process."""
    pytest.importorskip("megatron.core")
    base = tmp_path_factory.mktemp("tp1")
    jobs, out = [], {}
    for i, model in enumerate(NEMO_MODELS):
        ours, theirs = base / f"ours{i}", base / f"theirs{i}"
        run("convert", os.path.join(FIX, model), str(ours), "--to", "nemo", "--quiet")
        shutil.copytree(ours / "context", theirs / "context")
        os.remove(theirs / "context" / "hf_config.json")  # the config comes from io.json
        (theirs / "weights").mkdir()
        jobs.append([os.path.join(FIX, model), theirs / "weights", "module.", {}])
        out[model] = theirs
    mcore_save(base, 1, jobs)
    return out


@pytest.fixture(scope="module")
def tp2_megatron(tmp_path_factory):
    """TP=2 saves of every model in the Megatron-LM layout, from two megatron-core processes."""
    pytest.importorskip("megatron.core")
    base = tmp_path_factory.mktemp("tp2")
    jobs, out = [], {}
    for i, model in enumerate(MODELS):
        theirs = base / f"theirs{i}"
        run("convert", os.path.join(FIX, model), str(theirs), "--to", "megatron", "--quiet")
        it = theirs / "iter_0000000"
        for f in os.listdir(it):  # keep run_config.yaml, the tokenizer and the train state
            if f.endswith(".distcp") or f in [".metadata", "metadata.json", "common.pt",
                                              "hf_config.json"]:
                os.remove(it / f)
        rc = (it / "run_config.yaml").read_text()
        assert "tensor_model_parallel_size: 1" in rc
        (it / "run_config.yaml").write_text(rc.replace("tensor_model_parallel_size: 1",
                                                       "tensor_model_parallel_size: 2"))
        jobs.append([os.path.join(FIX, model), it, "", {"checkpoint_version": 3.0,
                                                        "iteration": 0}])
        out[model] = theirs
        # the same weights saved as Megatron-LM saves them: args in common.pt, iteration 10
        lm = base / f"megatron_lm{i}"
        (lm / "iter_0000010").mkdir(parents=True)
        (lm / "latest_checkpointed_iteration.txt").write_text("10")
        jobs.append([os.path.join(FIX, model), lm / "iter_0000010", "",
                     {"megatron_lm_args": True}])
        out["megatron-lm:" + model] = lm
    mcore_save(base, 2, jobs)
    return out


@pytest.mark.parametrize("model", NEMO_MODELS)
def test_mcore_save_tp1_nemo(tmp_path, tp1_nemo, model):
    back = tmp_path / "back"
    run("convert", str(tp1_nemo[model]), str(back), "--to", "hf", "--quiet")
    check_hf(os.path.join(FIX, model), back)


@pytest.mark.parametrize("model", MODELS)
def test_mcore_save_tp2_megatron(tmp_path, tp2_megatron, model):
    it = tp2_megatron[model] / "iter_0000000"
    # two ranks wrote: the split tensors are two chunks per layer (fc1: gate_0, gate_1, up_0,
    # up_1), stored in both ranks' files
    import torch.distributed.checkpoint as dcp
    md = dcp.FileSystemReader(str(it)).read_metadata()
    qkv = md.state_dict_metadata["decoder.layers.self_attention.linear_qkv.weight"]
    L = qkv.size[0]
    assert len(qkv.chunks) == 2 * L
    fc1 = md.state_dict_metadata["decoder.layers.mlp.linear_fc1.weight"]
    assert len(fc1.chunks) == 4 * L
    proj = md.state_dict_metadata["decoder.layers.self_attention.linear_proj.weight"]
    assert sorted(c.offsets[2] for c in proj.chunks)[L] > 0  # split along the input dim
    emb = md.state_dict_metadata["embedding.word_embeddings.weight"]
    assert len(emb.chunks) == 2
    norm = md.state_dict_metadata["decoder.final_layernorm.weight"]
    assert len(norm.chunks) == 1
    assert {i.relative_path.split("_")[2] for i in md.storage_data.values()} == {"0", "1"}
    extra = [k for k in md.state_dict_metadata if "._extra_state/shard_" in k]
    assert len(extra) == 4 * L + ("output_layer.weight" in md.state_dict_metadata)
    assert torch.load(it / "common.pt", weights_only=True)["checkpoint_version"] == 3.0
    back = tmp_path / "back"
    run("convert", str(tp2_megatron[model]), str(back), "--to", "hf", "--quiet")
    check_hf(os.path.join(FIX, model), back)


@pytest.mark.parametrize("model", MODELS)
def test_megatron_lm_save(tmp_path, tp2_megatron, model):
    """A save laid out as Megatron-LM's save_checkpoint writes it (no run_config.yaml, no
    tokenizer, the config only in the pickled args) converts to HF exactly."""
    lm = tp2_megatron["megatron-lm:" + model]
    assert not (lm / "iter_0000010" / "run_config.yaml").exists()
    back = tmp_path / "back"
    run("convert", str(lm), str(back), "--to", "hf", "--quiet")
    check_hf(os.path.join(FIX, model), back)
