"""PyTorch peer of bench/forward_gpu: transformers' Qwen3Model (no LM head), bf16, SDPA attention,
random weights created on the GPU, same shape and timing rule (CUDA events, one warm-up, median of
--iters). Prints one JSON object. Run by bench/forward-gpu."""
import argparse
import json
import sys

import torch
from transformers import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3Model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--iters", type=int, default=3)
    a = ap.parse_args()
    cfg = Qwen3Config(vocab_size=151936, hidden_size=4096, intermediate_size=12288,
                      num_hidden_layers=a.layers, num_attention_heads=32, num_key_value_heads=8,
                      head_dim=128, max_position_embeddings=40960, rope_theta=1e6,
                      rms_norm_eps=1e-6, tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = Qwen3Model(cfg)
    model.eval()
    ids = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), device="cuda")
    times = []
    with torch.inference_mode():
        for _ in range(a.iters + 1):
            e0 = torch.cuda.Event(enable_timing=True)
            e1 = torch.cuda.Event(enable_timing=True)
            e0.record()
            out = model(input_ids=ids, use_cache=False).last_hidden_state
            e1.record()
            torch.cuda.synchronize()
            times.append(e0.elapsed_time(e1) / 1e3)
    med = sorted(times[1:])[len(times[1:]) // 2]
    n = a.batch * a.seq
    qkv, nq, f, h, L = (32 + 16) * 128, 32 * 128, 12288, 4096, a.layers
    mm = 2.0 * n * L * h * (qkv + nq + 3 * f)
    at = 4.0 * L * a.batch * 32 * 128 * a.seq * (a.seq + 1) / 2
    print(json.dumps({
        "impl": "transformers", "torch": torch.__version__, "batch": a.batch, "seq": a.seq,
        "layers": L, "iters": a.iters, "seconds_median": med, "seconds_warmup": times[0],
        "tokens_per_second": n / med, "matmul_tflops": mm / med / 1e12,
        "total_tflops": (mm + at) / med / 1e12,
        "output_finite": bool(torch.isfinite(out).all().item()),
    }))


if __name__ == "__main__":
    sys.exit(main())
