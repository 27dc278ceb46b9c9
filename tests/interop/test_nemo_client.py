"""NeMo 2.7.3 itself against the NeMo 2 checkpoints the tool writes, and the tool against the
checkpoints NeMo writes, on a CPU (runs in the NeMo environment of scripts/setup-venv-nemo).

For every fixture and for a pruned teacher (`lmsurgeon prune`, then `convert --to nemo`):
- `nemo.lightning.io.load_context` of our output, with `subpath='model'` (the model, its config
  equal to the HF config, its tokenizer) and whole (TrainerContext with trainer and strategy);
- NeMo's own weight loading into the model it builds from our context (MegatronStrategy,
  MegatronCheckpointIO, strictness `raise_unexpected`: every key NeMo's model asks for exists);
- NeMo's forward gives the logits of transformers on the HF original (the fixture's
  reference.safetensors where it has one, else transformers in this environment);
- the reverse: NeMo saves the loaded model as its trainer does (`strategy.save_checkpoint`:
  dist_checkpointing.save into weights/, `TrainerContext.io_dump` into context/) and
  `lmsurgeon convert --to hf` of that gives the HF original's tensors bit for bit.
A model built from a preset config class (no items in io.json) is saved by NeMo and read from
model.yaml; without model.yaml the unknown class is a one-line error (exit 3, nothing written).
The _extra_state objects we write are checked against strict loading of NeMo's CPU (local spec)
model: it asks for every one of its keys, and the only checkpoint keys it does not ask for are
the Transformer-Engine-only extra states.

What a CPU-only machine needs (NeMo 2.7.3 / megatron-core 0.15.3 assume a GPU in these places):
- megatron-core 0.15.3 compiles a CUDA extension at import when it finds a CUDA toolkit and
  fails with an uncaught IndexError when no GPU is visible: CUDA_HOME points nowhere and an
  architecture list is given, so the build fails cleanly and is skipped.
- megatron-core's torch_dist writer ends with torch.cuda.synchronize() and broadcasts from
  torch.cuda.current_device() (the same two stubs as test_mcore_save.py).
- NeMo's MegatronCheckpointIO.load_checkpoint asserts torch.cuda.is_initialized() in a helper
  that only moves CUDA tensors to the current GPU; on a CPU there are none: it is the identity.
- NeMo creates a CUDA stream to wrap the model in DDP unless the trainer is testing: the
  trainer's state is set to testing (no optimizer, no DDP), as for inference.
- The forward uses megatron-core's inference RNG tracker (the training one keeps CUDA RNG
  states), an explicit causal mask (the default one is allocated on "cuda") and fp32.
- Llama's config classes switch on fused kernels that need Transformer Engine or apex
  (apply_rope_fusion, persist_layer_norm, ...): those are set back to megatron-core's defaults
  for the CPU, nothing else in the config changes.
NeMo's HF exporter cannot run on a CPU: it maps the Transformer-Engine parameter names
(linear_qkv.layer_norm_weight), and without Transformer Engine (which needs CUDA) NeMo builds
megatron-core's local layer spec (input_layernorm.weight). Its forward is compared instead.
"""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import warnings

if not os.path.exists(os.path.join(os.sep, "dev", "nvidia0")):  # no GPU: see above
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    os.environ["CUDA_HOME"] = os.path.join(os.sep, "nonexistent-cuda")
warnings.filterwarnings("ignore")

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("nemo.collections.llm")
import logging  # noqa: E402

import fiddle as fdl  # noqa: E402
from lightning.pytorch.trainer.states import TrainerFn  # noqa: E402
from megatron.core import dist_checkpointing  # noqa: E402
from megatron.core.dist_checkpointing.validation import StrictHandling  # noqa: E402
from megatron.core.tensor_parallel.random import initialize_rng_tracker  # noqa: E402
from nemo import lightning as nl  # noqa: E402
from nemo.collections import llm  # noqa: E402
from nemo.lightning import _strategy_lib, io  # noqa: E402
from nemo.lightning.io.pl import TrainerContext  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

logging.disable(logging.WARNING)

LMS = os.environ.get("LMSURGEON", "lmsurgeon")
FIX = os.environ.get("LMS_FIXTURES", "fixtures")

# name -> HF source folder (relative to fixtures/), or None: built by the test
MODELS = {
    "llama-tiny": "models/llama-tiny",
    "qwen2-tiny": "models/qwen2-tiny",
    "qwen3-tiny": "models/qwen3-tiny",
    "qwen3-tiny-bf16-sharded": "models/qwen3-tiny-bf16-sharded",
    "student": "models/qwen3-tiny-distill-reference/student",
    "teacher": "teacher",
    "pruned-teacher": None,
    "phi3-tiny": "models/phi3-tiny",
}
NEMO_CLASS = {"llama": "LlamaModel", "qwen2": "Qwen2Model", "qwen3": "Qwen3Model",
              "phi3": "Phi3Model"}
# what Llama's config classes switch on that needs Transformer Engine, apex or CUDA
GPU_ONLY_FUSIONS = ["apply_rope_fusion", "persist_layer_norm", "bias_activation_fusion",
                    "masked_softmax_fusion", "bias_dropout_fusion"]


def cpu_stubs():
    if torch.cuda.is_available():
        return
    import nemo.lightning.io.pl as nemo_io_pl
    torch.cuda.synchronize = lambda *args, **kwargs: None
    torch.cuda.current_device = lambda: "cpu"
    nemo_io_pl._fix_tensors_device = lambda ckpt: ckpt


cpu_stubs()


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


def check_same_hf(src, back, norms_f32=False):
    """back holds src's tensors bit for bit. norms_f32: a model NeMo built without Transformer
    Engine keeps its RMSNorm weights in fp32 (megatron-core's local norm ignores params_dtype),
    so it saves bf16 norms upcast: those must hold exactly the original values."""
    a, b = hf_tensors(src), hf_tensors(back)
    assert sorted(a) == sorted(b)
    for k in a:
        x, y = a[k], b[k]
        if norms_f32 and "norm" in k and x.dtype != y.dtype:
            assert y.dtype == torch.float32, k
            y = y.to(x.dtype)
            assert torch.equal(y.float(), b[k]), k  # the upcast lost nothing
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert torch.equal(x.view(torch.uint8), y.view(torch.uint8)), k
    c = json.load(open(os.path.join(back, "config.json")))
    o = json.load(open(os.path.join(src, "config.json")))
    for k in ["num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
              "num_key_value_heads", "vocab_size", "tie_word_embeddings", "rms_norm_eps",
              "model_type"]:
        assert c.get(k) == o.get(k), k
    head_dim = o.get("head_dim") or o["hidden_size"] // o["num_attention_heads"]
    assert c["head_dim"] == head_dim


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """HF sources (qwen3-tiny with the fixture tokenizer added, the pruned teacher) and our
    NeMo 2 conversion of each."""
    base = tmp_path_factory.mktemp("nemo")
    src = {}
    for name, rel in MODELS.items():
        src[name] = os.path.join(FIX, rel) if rel else None
    tok = base / "qwen3-tiny-tok"
    shutil.copytree(src["qwen3-tiny"], tok)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(os.path.join(FIX, "tokenizer", f), tok / f)
    src["qwen3-tiny"] = str(tok)
    src["pruned-teacher"] = str(base / "pruned-hf")
    run("prune", os.path.join(FIX, "teacher"), src["pruned-teacher"], "--target-num-layers", "8",
        "--target-ffn-hidden-size", "512", "--target-hidden-size", "192",
        "--target-num-attention-heads", "4", "--quiet")
    ours = {}
    for name in MODELS:
        ours[name] = str(base / name)
        run("convert", src[name], ours[name], "--to", "nemo", "--quiet")
    return base, src, ours


def load_context(path, subpath=None):
    """io.load_context(path/context, subpath) unbuilt, with Llama's GPU-only fusions off."""
    cfg = io.load_context(os.path.join(path, "context"), subpath=subpath, build=False)
    model = cfg if subpath == "model" else cfg.model
    if model.__fn_or_cls__.__name__ == "LlamaModel":
        for k in GPU_ONLY_FUSIONS:
            setattr(model.config, k, False)
    return cfg


def model_config(path, cpu_forward=False):
    """The model config NeMo builds from path/context (subpath 'model'), unbuilt."""
    cfg = load_context(path, "model")
    if cpu_forward:  # compute in fp32, as the reference does
        cfg.config.masked_softmax_fusion = False
        cfg.config.bf16 = False
        cfg.config.params_dtype = torch.float32
    return cfg


def cpu_trainer():
    trainer = nl.Trainer(devices=1, accelerator="cpu", strategy=nl.MegatronStrategy(
        ddp="pytorch", setup_optimizers=False, ckpt_async_save=False,
        ckpt_load_strictness="raise_unexpected"), logger=False, enable_checkpointing=False)
    trainer.state.fn = TrainerFn.TESTING
    return trainer


def restore(model, path, trainer=None):
    """NeMo's own weight loading (what its exporters' nemo_load does), into model."""
    trainer = trainer or cpu_trainer()
    model.config.perform_initialization = False
    trainer.strategy.connect(model)
    trainer.strategy.setup_environment()
    with _strategy_lib.megatron_cpu_init_context(model.config):
        model.configure_model()
    trainer.strategy.setup(trainer)
    trainer.strategy.load_checkpoint(path)
    return trainer


def reference_logits(src, ids=None):
    """transformers on the HF original: the fixture's stored forward, or transformers here."""
    ref = os.path.join(src, "reference.safetensors")
    # (the teacher's stored forward used bf16-rounded RoPE frequencies; fixtures/README.md)
    if ids is None and os.path.exists(ref) and os.path.basename(src) != "teacher":
        r = load_file(ref)
        return r["input_ids"], r["logits"]
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.from_pretrained(src)
    rp = json.load(open(os.path.join(src, "config.json"))).get("rope_parameters")
    if rp:  # written by transformers 5 (rope_parameters), read here by transformers 4.57
        cfg.rope_theta = rp["rope_theta"]
    m = AutoModelForCausalLM.from_pretrained(src, config=cfg, torch_dtype=torch.float32)
    if ids is None:
        ids = torch.randint(0, cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return ids, m(ids).logits


@dataclasses.dataclass
class Qwen3ConfigLmsTiny(llm.Qwen3Config):
    """A preset config class the way NeMo's own are written (values as class defaults, built
    without arguments), with qwen3-tiny's shape."""
    num_layers: int = 4
    hidden_size: int = 64
    ffn_hidden_size: int = 160
    num_attention_heads: int = 4
    num_query_groups: int = 2
    kv_channels: int = 32
    vocab_size: int = 512
    share_embeddings_and_output_weights: bool = False


def test_preset_class_saved_by_nemo(work):
    """Qwen3Model(<preset>()) as NeMo's recipes build it: io.json's config object has no items;
    the tool reads the values from model.yaml. Without model.yaml, the class (not one of NeMo's
    presets) is named in a one-line error, exit code 3, and nothing is written. It runs first:
    once a strategy has been set up in the process, NeMo records every field of a new config
    object in io.json."""
    base, src, ours = work
    model, trainer = llm.Qwen3Model(Qwen3ConfigLmsTiny()), cpu_trainer()
    saved = base / "nemo-saved-preset"
    # dumped before the strategy writes the parallel sizes into the config (after that, NeMo's
    # io.json lists every field of the config object)
    TrainerContext(model=model, trainer=trainer, extra={}).io_dump(saved / "context",
                                                                  yaml_attrs=["model"])
    restore(model, ours["qwen3-tiny"], trainer)
    trainer.strategy.save_checkpoint({}, saved)
    io_json = json.load(open(saved / "context" / "io.json"))
    cfg = [o for o in io_json["objects"].values() if "<root>.model.config" in o.get("paths", [])]
    assert len(cfg) == 1 and cfg[0]["items"] == []
    back = base / "back-preset"
    run("convert", str(saved), str(back), "--to", "hf", "--quiet")
    check_same_hf(src["qwen3-tiny"], str(back))
    os.remove(saved / "context" / "model.yaml")
    p = run("convert", str(saved), str(base / "never"), "--to", "hf", ok=False)
    assert p.returncode == 3, p.stderr
    assert "Qwen3ConfigLmsTiny" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (base / "never").exists()


@pytest.mark.parametrize("name", list(MODELS))
def test_load_context(work, name):
    _, src, ours = work
    hf = json.load(open(os.path.join(src[name], "config.json")))
    model = fdl.build(load_context(ours[name], "model"))
    assert type(model).__name__ == NEMO_CLASS[hf["model_type"]]
    c = model.config
    assert (c.num_layers, c.hidden_size, c.ffn_hidden_size, c.num_attention_heads,
            c.num_query_groups, c.kv_channels, c.vocab_size) == (
        hf["num_hidden_layers"], hf["hidden_size"], hf["intermediate_size"],
        hf["num_attention_heads"], hf["num_key_value_heads"],
        hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"], hf["vocab_size"])
    assert c.share_embeddings_and_output_weights == hf.get("tie_word_embeddings", False)
    assert c.layernorm_epsilon == hf["rms_norm_eps"]
    theta = hf.get("rope_theta") or hf["rope_parameters"]["rope_theta"]
    assert c.rotary_base == theta
    has_tok = os.path.exists(os.path.join(src[name], "tokenizer.json"))
    assert (model.tokenizer is not None) == has_tok
    if has_tok:
        assert type(model.tokenizer).__name__ == "AutoTokenizer"
        assert model.tokenizer.vocab_size > 0
    whole = fdl.build(load_context(ours[name]))
    assert isinstance(whole, TrainerContext)
    assert type(whole.trainer).__name__ == "Trainer"
    assert type(whole.trainer.strategy).__name__ == "MegatronStrategy"
    assert whole.extra == {}
    assert type(whole.model).__name__ == type(model).__name__


@pytest.mark.parametrize("name", list(MODELS))
def test_nemo_loads_and_computes(work, name):
    """NeMo's loading of our weights and its forward against transformers on the original."""
    _, src, ours = work
    model = fdl.build(model_config(ours[name], cpu_forward=True))
    restore(model, ours[name])
    initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    ids, want = reference_logits(src[name])
    b, s = ids.shape
    mask = torch.triu(torch.ones(s, s, dtype=torch.bool), 1).view(1, 1, s, s)
    with torch.no_grad():
        got = model(ids, torch.arange(s).expand(b, s), mask)
    err = (got.float() - want).abs().max().item()
    assert err <= 2e-5 * want.abs().max().item(), err


@pytest.mark.parametrize("name", list(MODELS))
def test_nemo_save_converts_exactly(work, name):
    """NeMo saves what it loaded from our checkpoint, as its trainer saves; the tool converts
    that (config from NeMo's io.json and model.yaml) back to the HF original exactly."""
    base, src, ours = work
    model = fdl.build(model_config(ours[name]))
    trainer = restore(model, ours[name])
    saved = base / f"nemo-saved-{name}"
    trainer.strategy.save_checkpoint({}, saved)
    TrainerContext.from_trainer(trainer).io_dump(saved / "context", yaml_attrs=["model"])
    assert not (saved / "context" / "hf_config.json").exists()
    back = base / f"back-{name}"
    run("convert", str(saved), str(back), "--to", "hf", "--quiet")
    check_same_hf(src[name], str(back), norms_f32=True)


@pytest.mark.parametrize("name", ["qwen3-tiny", "llama-tiny"])
def test_extra_state_under_strict_loading(work, name):
    """Every key NeMo's CPU model (megatron-core's local layer spec) requests is in our
    checkpoint; the only keys it does not request are the extra states that Transformer Engine
    modules keep and local ones do not: core_attention, q/k_layernorm and final_layernorm."""
    _, src, ours = work
    model = fdl.build(model_config(ours[name]))
    trainer = restore(model, ours[name])
    sd = trainer.strategy.megatron_parallel.sharded_state_dict()  # what NeMo's loader requests
    _, missing, unexpected = dist_checkpointing.load(
        sd, os.path.join(ours[name], "weights"), strict=StrictHandling.RETURN_ALL)
    assert unexpected == set()
    te_only = {"module.decoder.layers.self_attention.core_attention._extra_state",
               "module.decoder.final_layernorm._extra_state"}
    if name.startswith("qwen3"):
        te_only |= {"module.decoder.layers.self_attention.q_layernorm._extra_state",
                    "module.decoder.layers.self_attention.k_layernorm._extra_state"}
    assert {k.split("/shard_")[0] for k in missing} == te_only
