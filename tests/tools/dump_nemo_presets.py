"""Writes fixtures/nemo/presets.json: the dataclass defaults of NeMo 2's model-config classes
(Qwen3, Qwen2/2.5, Llama 2/3/3.1/3.2, Code Llama, Mistral; inherited fields included), as
nemo_toolkit 2.7.3 defines them. Run it in the NeMo environment (scripts/setup-venv-nemo):

    $(scripts/setup-venv-nemo)/bin/python tests/tools/dump_nemo_presets.py > fixtures/nemo/presets.json

tests/unit/test_nemo_config.c checks formats/layouts/nemo_presets.c against this file."""
import os

os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")  # see tests/interop/test_nemo_client.py
os.environ["CUDA_HOME"] = os.path.join(os.sep, "nonexistent-cuda")
import dataclasses, json, sys, warnings
warnings.filterwarnings("ignore")
import torch
from nemo.collections.llm.gpt.model import llama, qwen2, qwen3, mistral, base
FIELDS = ["num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
          "num_query_groups", "kv_channels", "layernorm_epsilon", "rotary_base", "rotary_percent",
          "seq_length", "max_position_embeddings", "share_embeddings_and_output_weights",
          "vocab_size", "make_vocab_size_divisible_by", "add_qkv_bias", "add_bias_linear",
          "qk_layernorm", "gated_linear_unit", "normalization", "position_embedding_type",
          "window_size", "scale_factor", "low_freq_factor", "high_freq_factor",
          "old_context_len", "params_dtype", "bf16", "fp16"]
out = {}
for mod in (llama, qwen2, qwen3, mistral):
    for name, cls in vars(mod).items():
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls) and issubclass(cls, base.GPTConfig)):
            continue
        if cls.__module__ != mod.__name__ or "MoE" in name or "Llama4" in name or "A3B" in name or "A22B" in name or "Embedding" in name or "Nemotron" in name:
            continue
        vals = {}
        for f in dataclasses.fields(cls):
            if f.name not in FIELDS:
                continue
            if f.default is not dataclasses.MISSING:
                v = f.default
            elif f.default_factory is not dataclasses.MISSING:
                v = f.default_factory()
            else:
                continue
            if isinstance(v, torch.dtype):
                v = str(v)
            if isinstance(v, tuple):
                v = list(v)
            vals[f.name] = v
        out[name] = {"module": mod.__name__, "parent": cls.__mro__[1].__name__, "fields": vals}
json.dump(out, sys.stdout, indent=1, sort_keys=True)
