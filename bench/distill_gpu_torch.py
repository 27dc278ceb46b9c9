"""PyTorch peer of bench/distill_gpu: one full training step of transformers' Qwen3ForCausalLM in
PyTorch eager mode (no torch.compile) on the same shape: fp32 master weights, bf16 autocast for
the forward and backward, SDPA attention, cross-entropy over the whole vocabulary, global
gradient-norm clipping at 1.0 and AdamW (foreach) with the same hyper-parameters. Random weights
are created on the GPU. Same FLOP count and timing rule as distill_gpu (wall clock around whole
steps ending in a sync, one warm-up, median of --iters). Prints one JSON object. Run by
bench/distill-gpu."""
import argparse
import json
import sys
import time

import torch
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3ForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--iters", type=int, default=3)
    a = ap.parse_args()
    cfg = Qwen3Config(vocab_size=151936, hidden_size=4096, intermediate_size=12288,
                      num_hidden_layers=a.layers, num_attention_heads=32, num_key_value_heads=8,
                      head_dim=128, max_position_embeddings=40960, rope_theta=1e6,
                      rms_norm_eps=1e-6, tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-5,
                            weight_decay=0.1, foreach=True)
    ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), device="cuda")
    times, losses = [], []
    for _ in range(a.iters + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    med = sorted(times[1:])[len(times[1:]) // 2]
    n = a.batch * a.seq
    qkv, nq, f, h, L, V = (32 + 16) * 128, 32 * 128, 12288, 4096, a.layers, 151936
    mm = 6.0 * n * (L * (h * qkv + nq * h + 3 * f * h) + V * h)
    at = 3 * 4.0 * L * a.batch * 32 * 128 * a.seq * (a.seq + 1) / 2
    print(json.dumps({
        "impl": "pytorch-eager", "torch": torch.__version__, "batch": a.batch, "seq": a.seq,
        "layers": L, "iters": a.iters, "seconds_median": med, "seconds_warmup": times[0],
        "tokens_per_second": n / med, "model_tflops": (mm + at) / med / 1e12,
        "matmul_tflops": mm / med / 1e12, "loss_first": losses[0], "loss_last": losses[-1],
        "peak_bytes": torch.cuda.max_memory_allocated(),
    }))


if __name__ == "__main__":
    sys.exit(main())
