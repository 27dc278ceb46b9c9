"""A PyTorch oracle for activation importance, written independently of lmsurgeon with
transformers forward hooks on the same rows (used by tests/interop/test_score_interop.py and
bench/score).

Statistics (the Minitron calibration pass): for an activation X (B, S, C) at a hook point,
m[b, c] = mean_t |X[b, t, c]|, Q[c] += sum_b m[b, c]^2 over all rows, A[c] = sqrt(Q[c]).
  FFN neuron: A at the input of mlp.down_proj
  head: sqrt(sum of Q over the head's d channels) at the input of self_attn.o_proj
  query group: sqrt(sum of its heads' squared scores)
  hidden: sum over input_layernorm and post_attention_layernorm outputs of every layer of A
  Block Influence of layer l: 1 - mean over token rows of cos(layer input, layer output)
  block-bi: the same between the input of layer s and the output of layer s+n-1
  ppl / contiguous: LM loss (next-token cross-entropy, fp32) with layer l / layers s..s+n-1
  removed, minus the full model's loss.

Rows: `rows` is a list of (S,) int64 tensors (the caller decides which windows); the oracle
runs them in micro-batches of `mbs` rows, fp32 eager attention.

Command line: python importance_oracle.py MODEL IDS.u16 --seq S --rows FROM:TO [--mbs B]
[--metric bi|block-bi|ppl|contiguous] [--block n] [--threads N] [-o OUT.json]: rows are the
non-overlapping windows FROM..TO-1 of the id file in stream order; prints tokens/s."""
import argparse
import json
import math
import sys
import time

import numpy as np
import torch


def load_model(path, device="cpu", dtype=torch.float32, attn="eager"):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn)
    return model.to(device).eval()


def windows(ids_path, seq, begin, end):
    ids = np.fromfile(ids_path, dtype="<u2")
    return [torch.from_numpy(ids[k * seq:(k + 1) * seq].astype(np.int64)) for k in range(begin, end)]


def _loss_sum(model, x):
    logits = model(input_ids=x, use_cache=False).logits.float()
    lp = torch.log_softmax(logits[:, :-1], dim=-1)
    tgt = x[:, 1:]
    return float(-lp.gather(-1, tgt.unsqueeze(-1)).double().sum()), tgt.numel()


def _with_layers(model, keep):
    """Runs with only the kept decoder layers (a shallow view: nothing copied)."""
    inner = model.model
    full = inner.layers
    inner.layers = torch.nn.ModuleList([full[i] for i in keep])
    return full


def score(model, rows, mbs=4, metric="bi", block=0, groups=True):
    cfg = model.config
    L, H = cfg.num_hidden_layers, cfg.hidden_size
    nh, ng = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or H // nh
    layers = model.model.layers
    dev = next(model.parameters()).device
    hidden_sq = torch.zeros(L, 2, H, dtype=torch.float64, device=dev)
    ffn_sq = torch.zeros(L, cfg.intermediate_size, dtype=torch.float64, device=dev)
    ctx_sq = torch.zeros(L, nh * d, dtype=torch.float64, device=dev)
    layer_cos = torch.zeros(L, dtype=torch.float64, device=dev)
    n_starts = L - block + 1 if block else 0
    block_cos = torch.zeros(max(n_starts, 0), dtype=torch.float64, device=dev)
    inputs = {}
    n_cos = 0

    def stat(x):
        m = x.float().abs().double().mean(dim=1)  # (B, C)
        return (m * m).sum(0)

    def add(dst, x):
        dst.add_(stat(x))  # returns None: a hook that returns a value would replace it

    hooks = []
    for l, layer in enumerate(layers):
        hooks.append(layer.input_layernorm.register_forward_hook(
            lambda mod, a, out, l=l: add(hidden_sq[l, 0], out)))
        hooks.append(layer.post_attention_layernorm.register_forward_hook(
            lambda mod, a, out, l=l: add(hidden_sq[l, 1], out)))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(
            lambda mod, a, l=l: add(ffn_sq[l], a[0])))
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(
            lambda mod, a, l=l: add(ctx_sq[l], a[0])))

        def pre(mod, args, kwargs, l=l):
            x = args[0] if args else kwargs["hidden_states"]
            inputs[l] = x.detach().float()

        def post(mod, args, kwargs, out, l=l):
            y = out[0] if isinstance(out, tuple) else out
            y = y.float()
            cos = torch.nn.functional.cosine_similarity(inputs[l].double(), y.double(), dim=-1)
            layer_cos[l] += cos.sum()
            s = l - block + 1
            if block and s >= 0:
                c = torch.nn.functional.cosine_similarity(inputs[s].double(), y.double(), dim=-1)
                block_cos[s] += c.sum()

        hooks.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        hooks.append(layer.register_forward_hook(post, with_kwargs=True))
    base_loss, n_tok = 0.0, 0
    variants = L if metric == "ppl" else n_starts if metric == "contiguous" else 0
    var_loss = [0.0] * variants
    with torch.no_grad():
        for i in range(0, len(rows), mbs):
            x = torch.stack(rows[i:i + mbs]).to(dev)
            if metric in ("ppl", "contiguous"):
                s_, n_ = _loss_sum(model, x)
                base_loss += s_
                n_tok += n_
            else:
                model(input_ids=x, use_cache=False)
            n_cos += x.numel()
            inputs.clear()
        for h in hooks:
            h.remove()
        for v in range(variants):
            drop = {v} if metric == "ppl" else set(range(v, v + block))
            full = _with_layers(model, [l for l in range(L) if l not in drop])
            try:
                for i in range(0, len(rows), mbs):
                    var_loss[v] += _loss_sum(model, torch.stack(rows[i:i + mbs]).to(dev))[0]
            finally:
                model.model.layers = full
    if dev.type == "cuda":
        torch.cuda.synchronize()
    hidden_sq, ffn_sq, ctx_sq = hidden_sq.cpu(), ffn_sq.cpu(), ctx_sq.cpu()
    layer_cos, block_cos = layer_cos.cpu(), block_cos.cpu()
    r = nh // ng
    head_sq = ctx_sq.view(L, nh, d).sum(-1)
    out = {
        "hidden": hidden_sq.sqrt().sum((0, 1)).tolist(),
        "ffn": ffn_sq.sqrt().tolist(),
        "heads": head_sq.sqrt().tolist(),
        "raw": {"hidden_sq": hidden_sq.view(2 * L, H).tolist(), "ffn_sq": ffn_sq.tolist(),
                "head_sq": head_sq.tolist(), "rows": len(rows)},
    }
    if groups:
        out["query_groups"] = head_sq.view(L, ng, r).sum(-1).sqrt().tolist()
    if metric in ("bi", "block-bi"):
        out["layers"] = (1 - layer_cos / n_cos).tolist()
        out["raw"]["layer_cos"] = layer_cos.tolist()
        out["raw"]["cos_rows"] = n_cos
    if metric == "block-bi":
        out["blocks"] = (1 - block_cos / n_cos).tolist()
    if metric == "ppl":
        out["layers"] = [(v - base_loss) / n_tok for v in var_loss]
    if metric == "contiguous":
        out["blocks"] = [(v - base_loss) / n_tok for v in var_loss]
    if metric in ("ppl", "contiguous"):
        out["base_loss"] = base_loss / n_tok
    return out


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("ids")
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--rows", default="0:64")
    p.add_argument("--mbs", type=int, default=4)
    p.add_argument("--metric", default="bi")
    p.add_argument("--block", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("-o", "--output")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    b, e = (int(v) for v in a.rows.split(":"))
    model = load_model(a.model)
    rows = windows(a.ids, a.seq, b, e)
    t0 = time.perf_counter()
    out = score(model, rows, a.mbs, a.metric, a.block)
    secs = time.perf_counter() - t0
    out["seconds"] = secs
    out["tokens_per_second"] = (e - b) * a.seq / secs
    if a.output:
        with open(a.output, "w") as f:
            json.dump(out, f)
    print(json.dumps({"seconds": secs, "tokens_per_second": out["tokens_per_second"],
                      "layers": out.get("layers")}))


if __name__ == "__main__":
    sys.exit(main())
