"""A small PyTorch oracle for structured pruning: slices a Hugging Face model with given kept
indices independently of lmsurgeon, and computes the reference
rankings (importance file scores, or weight magnitudes) the same way the spec defines them.
Used by tests/interop/test_prune_interop.py."""
import copy
import math

import torch


def _head_dim(cfg):
    return cfg.head_dim if getattr(cfg, "head_dim", None) else cfg.hidden_size // cfg.num_attention_heads


def unfuse(sd, cfg):
    """Phi-3 stores q/k/v as one qkv_proj ([q; k; v] rows) and gate/up as one gate_up_proj
    ([gate; up] rows): the state dict with them split into the names the oracle works on."""
    d = _head_dim(cfg)
    q, kv = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    out = {}
    for k, t in sd.items():
        if k.endswith("self_attn.qkv_proj.weight"):
            p = k[:-len("qkv_proj.weight")]
            out[p + "q_proj.weight"], out[p + "k_proj.weight"], out[p + "v_proj.weight"] = \
                t[:q], t[q:q + kv], t[q + kv:]
        elif k.endswith("mlp.gate_up_proj.weight"):
            p = k[:-len("gate_up_proj.weight")]
            out[p + "gate_proj.weight"], out[p + "up_proj.weight"] = t.chunk(2, 0)
        else:
            out[k] = t
    return out


def fuse(sd):
    """The inverse of unfuse: Phi-3's fused tensors from the split ones."""
    out = {}
    for k, t in sd.items():
        if k.endswith("self_attn.q_proj.weight"):
            p = k[:-len("q_proj.weight")]
            out[p + "qkv_proj.weight"] = torch.cat(
                [t, sd[p + "k_proj.weight"], sd[p + "v_proj.weight"]], 0)
        elif k.endswith("mlp.gate_proj.weight"):
            p = k[:-len("gate_proj.weight")]
            out[p + "gate_up_proj.weight"] = torch.cat([t, sd[p + "up_proj.weight"]], 0)
        elif not k.endswith(("self_attn.k_proj.weight", "self_attn.v_proj.weight",
                             "mlp.up_proj.weight")):
            out[k] = t
    return out


def rank_keep(scores, k):
    """Top k by score (ties to the lower index), returned in ascending index order."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return sorted(order[:k])


def heads_expand(heads, d):
    return [h * d + e for h in heads for e in range(d)]


def magnitude_scores(sd, cfg):
    """Weight-magnitude scores: L2 norm of every row/column a channel owns."""
    L = cfg.num_hidden_layers
    d = cfg.head_dim if getattr(cfg, "head_dim", None) else cfg.hidden_size // cfg.num_attention_heads
    nh, ng = cfg.num_attention_heads, cfg.num_key_value_heads
    r = nh // ng
    sq = lambda t: t.double() ** 2
    hidden = sq(sd["model.embed_tokens.weight"]).sum(0)
    if "lm_head.weight" in sd and not cfg.tie_word_embeddings:  # tied: one tensor, counted once
        hidden += sq(sd["lm_head.weight"]).sum(0)
    ffn, heads = [], []
    for l in range(L):
        p = f"model.layers.{l}."
        for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
            hidden += sq(sd[p + n + ".weight"]).sum(0)
        for n in ("self_attn.o_proj", "mlp.down_proj"):
            hidden += sq(sd[p + n + ".weight"]).sum(1)
        f = sq(sd[p + "mlp.gate_proj.weight"]).sum(1) + sq(sd[p + "mlp.up_proj.weight"]).sum(1) \
            + sq(sd[p + "mlp.down_proj.weight"]).sum(0)
        ffn.append(f.sqrt().tolist())
        rows = sq(sd[p + "self_attn.q_proj.weight"]).sum(1) + sq(sd[p + "self_attn.o_proj.weight"]).sum(0)
        heads.append(rows.view(nh, d).sum(1).sqrt().tolist())
    groups = [[math.sqrt(sum(h[g * r + j] ** 2 for j in range(r))) for g in range(ng)] for h in heads]
    return {"hidden": hidden.sqrt().tolist(), "ffn": ffn, "heads": heads, "query_groups": groups}


def prune_state_dict(sd, cfg, keep_layers=None, keep_hidden=None, keep_ffn=None,
                     keep_groups=None, keep_heads=None):
    """Returns (new_sd, new_cfg). keep_* per the spec; per-layer lists indexed by original layer."""
    L = cfg.num_hidden_layers
    d = cfg.head_dim if getattr(cfg, "head_dim", None) else cfg.hidden_size // cfg.num_attention_heads
    nh, ng = cfg.num_attention_heads, cfg.num_key_value_heads
    r = nh // ng
    layers = keep_layers if keep_layers is not None else list(range(L))
    H = torch.tensor(keep_hidden) if keep_hidden is not None else None
    out = {}

    def cols(t, idx):
        return t if idx is None else t.index_select(1, torch.as_tensor(idx))

    def rows(t, idx):
        return t if idx is None else t.index_select(0, torch.as_tensor(idx))

    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        if k in sd:
            out[k] = cols(sd[k], H)
    out["model.norm.weight"] = rows(sd["model.norm.weight"], H)
    for new, l in enumerate(layers):
        p, q = f"model.layers.{l}.", f"model.layers.{new}."
        groups = keep_groups[l] if keep_groups is not None else list(range(ng))
        heads = keep_heads[l] if keep_heads is not None else [g * r + j for g in groups for j in range(r)]
        F = keep_ffn[l] if keep_ffn is not None else None
        hrows, grows = heads_expand(heads, d), heads_expand(groups, d)
        for k, t in sd.items():
            if not k.startswith(p):
                continue
            name = k[len(p):]
            if name in ("input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.o_proj.bias"):
                v = rows(t, H)
            elif name == "self_attn.q_proj.weight":
                v = rows(cols(t, H), hrows)
            elif name == "self_attn.q_proj.bias":
                v = rows(t, hrows)
            elif name in ("self_attn.k_proj.weight", "self_attn.v_proj.weight"):
                v = rows(cols(t, H), grows)
            elif name in ("self_attn.k_proj.bias", "self_attn.v_proj.bias"):
                v = rows(t, grows)
            elif name == "self_attn.o_proj.weight":
                v = cols(rows(t, H), hrows)
            elif name in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                v = rows(cols(t, H), F)
            elif name == "mlp.down_proj.weight":
                v = cols(rows(t, H), F)
            else:
                v = t
            out[q + name] = v.contiguous()
    c = copy.deepcopy(cfg)
    c.num_hidden_layers = len(layers)
    c.hidden_size = len(keep_hidden) if keep_hidden is not None else cfg.hidden_size
    c.intermediate_size = len(keep_ffn[layers[0]]) if keep_ffn is not None else cfg.intermediate_size
    g2 = len(keep_groups[layers[0]]) if keep_groups is not None else ng
    h2 = len(keep_heads[layers[0]]) if keep_heads is not None else g2 * r
    c.num_attention_heads, c.num_key_value_heads, c.head_dim = h2, g2, d
    if getattr(c, "layer_types", None):
        c.layer_types = [cfg.layer_types[l] for l in layers]
    return out, c
