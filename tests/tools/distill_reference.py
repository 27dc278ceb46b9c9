"""A PyTorch logit-distillation trainer, the reference `lmsurgeon distill` (and `lmsurgeon
train`) is checked against.

Independent of lmsurgeon: transformers models in fp32 (eager attention), forward
KL(teacher || student) summed over the vocabulary and averaged over positions, gradient
accumulation over micro-batches, torch.nn.utils.clip_grad_norm_, torch.optim.AdamW with weight
decay on matrices only (biases and 1-D norm weights in a group without decay), and the learning
rate set each step from the schedule: linear warm-up lr (s+1)/(W+1) for s <= W, then cosine to
min_lr at s = M. The token rows are read from a file (int32, seq + 1 ids each, in step order;
`lmsurgeon distill --dump-rows` writes it), so both trainers see the same batches.

The loss: L_kd, the KL above (plus the scaled feature loss with features). With a cross-entropy
weight W > 0 (--lm-loss-scale) the KD term is rescaled to the cross-entropy's value with the
ratio taken without gradient and weighted by lambda (--kd-loss-scale):
L = W L_ce + lambda L_kd (L_ce / L_kd). Without a teacher the loss is L_ce alone (a plain
cross-entropy fine-tune).

    python distill_reference.py --student S [--teacher T] --rows FILE --seq 64 --gbs 4 --mbs 2 \
        --steps 3 --lr 1e-3 --min-lr 1e-4 --warmup 1 --beta2 0.95 --eps 1e-8 --wd 0.1 \
        [--clip 1.0] [--lm-loss-scale W] [--kd-loss-scale LAMBDA] [--threads 2] [--out DIR]

Prints one JSON object: per-step loss, lm loss (cross-entropy of the student on the next
tokens, trained on only with W > 0 or without a teacher), gradient norm (before clipping), lr,
and training tokens/s; --out saves the trained student with save_pretrained (fp32).
"""
import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
import transformers


def lr_at(s, lr, min_lr, warmup, max_steps):
    if warmup > 0 and s <= warmup:
        return lr * (s + 1) / (warmup + 1)
    if s > max_steps or max_steps <= warmup:
        return min_lr
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (max_steps - warmup)))


def load(path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager")


def kd_loss(student_logits, teacher_logits, temperature=1.0):
    """Forward KL(p_teacher || q_student) per position, summed over the vocabulary, averaged
    over positions."""
    V = student_logits.shape[-1]
    log_q = F.log_softmax(student_logits.reshape(-1, V) / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.reshape(-1, V) / temperature, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean()


def feature_loss(s, t, kind):
    """Per token 1 - cos(s, t) (torch's cosine_similarity) or the mean squared error over the
    channels, averaged over all positions."""
    s, t = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
    if kind == "mse":
        return ((s - t) ** 2).mean(-1).mean()
    return (1 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)).mean()


class Captures:
    """Forward hooks keeping the output of one normalisation module per paired layer."""

    def __init__(self, model, layers, hook):
        name = "post_attention_layernorm" if hook == "mlp-norm" else "input_layernorm"
        self.out = {}
        self.handles = []
        for i in sorted(set(layers)):
            module = getattr(model.model.layers[i], name)
            self.handles.append(module.register_forward_hook(self._keep(i)))

    def _keep(self, i):
        def hook(module, args, output):
            self.out[i] = output
        return hook


def combine(kd, ce, lm_loss_scale, kd_loss_scale):
    """The loss trained: the KD term alone, or with a cross-entropy weight W > 0 the KD term
    rescaled to the cross-entropy's value (ratio without gradient) and weighted:
    W L_ce + lambda L_kd (L_ce / L_kd)."""
    if not lm_loss_scale:
        return kd
    return lm_loss_scale * ce + kd_loss_scale * kd * (ce.detach() / kd.detach())


def train(student_dir, teacher_dir, rows, seq, gbs, mbs, steps, lr, min_lr, warmup=0,
          beta1=0.9, beta2=0.999, eps=1e-8, wd=0.01, clip=1.0, out=None, features=None,
          lm_loss_scale=0.0, kd_loss_scale=1.0):
    """Trains and returns the per-step record; rows: int array (steps * gbs, seq + 1).

    teacher_dir None: no teacher, the loss is the cross-entropy on the next tokens alone.
    features: None (logits only) or {"pairs": [(student layer, teacher layer), ...] (0-based),
    "hook": "mlp-norm" | "attn-norm", "kind": "cosine" | "mse"}: an intermediate-state loss
    L_f, the mean over the pairs, through a learned linear map (identity on the diagonal, bias
    0, trained with the student) when the hidden sizes differ, combined by the Minitron rule
    L = L_logits + L_f (L_logits / L_f) with the ratio's values taken without gradient.
    lm_loss_scale, kd_loss_scale: W and lambda of combine()."""
    S = seq
    rows = np.asarray(rows)
    assert rows.size == steps * gbs * (S + 1), "rows do not hold steps x gbs rows"
    assert teacher_dir is not None or not features, "feature pairs need a teacher"
    rows = torch.from_numpy(rows.astype(np.int64)).reshape(steps, gbs, S + 1)
    student = load(student_dir).train()
    teacher = load(teacher_dir).eval() if teacher_dir is not None else None
    for p in teacher.parameters() if teacher is not None else []:
        p.requires_grad_(False)
    decay = [p for n, p in student.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in student.named_parameters() if p.ndim < 2]
    params = list(student.parameters())
    hmap = None
    if features:
        pairs = features["pairs"]
        s_cap = Captures(student, [a for a, _ in pairs], features["hook"])
        t_cap = Captures(teacher, [b for _, b in pairs], features["hook"])
        H, Ht = student.config.hidden_size, teacher.config.hidden_size
        if H != Ht:
            hmap = torch.nn.Linear(H, Ht)
            with torch.no_grad():
                hmap.weight.copy_(torch.eye(Ht, H))
                hmap.bias.zero_()
            decay.append(hmap.weight)
            no_decay.append(hmap.bias)
            params += [hmap.weight, hmap.bias]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(beta1, beta2), eps=eps)
    n_micro = gbs // mbs
    rec = {"loss": [], "lm_loss": [], "grad_norm": [], "lr": []}
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(steps):
        lr_s = lr_at(s, lr, min_lr, warmup, steps)
        for g in opt.param_groups:
            g["lr"] = lr_s
        opt.zero_grad(set_to_none=True)
        loss_sum = lm_sum = 0.0
        for i in range(n_micro):
            batch = rows[s, i * mbs:(i + 1) * mbs]
            ids, tgt = batch[:, :S], batch[:, 1:]
            s_logits = student(ids).logits
            lm = F.cross_entropy(s_logits.reshape(-1, s_logits.shape[-1]), tgt.reshape(-1))
            if teacher is None:
                loss = lm
            else:
                with torch.no_grad():
                    t_logits = teacher(ids).logits
                loss = kd_loss(s_logits, t_logits)
                if features:
                    parts = []
                    for a, b in features["pairs"]:
                        hs = s_cap.out[a]
                        parts.append(feature_loss(hmap(hs) if hmap else hs, t_cap.out[b],
                                                  features["kind"]))
                    lf = torch.stack(parts).mean()
                    loss = loss + lf * (loss.detach() / lf.detach())
                loss = combine(loss, lm, lm_loss_scale, kd_loss_scale)
            (loss / n_micro).backward()
            loss_sum += loss.item()
            lm_sum += lm.item()
        norm = torch.nn.utils.clip_grad_norm_(params,
                                              clip if clip > 0 else float("inf"))
        opt.step()
        rec["loss"].append(loss_sum / n_micro)
        rec["lm_loss"].append(lm_sum / n_micro)
        rec["grad_norm"].append(float(norm))
        rec["lr"].append(lr_s)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    rec["seconds"] = secs
    rec["cpu_seconds"] = cpu
    rec["tokens_per_second"] = steps * gbs * S / secs
    rec["tokens_per_cpu_second"] = steps * gbs * S / cpu
    if out:
        student.save_pretrained(out)
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--student", required=True)
    ap.add_argument("--teacher")
    ap.add_argument("--rows", required=True)
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--gbs", type=int, required=True)
    ap.add_argument("--mbs", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--min-lr", type=float, required=True)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.999)
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--wd", type=float, default=0.01)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--lm-loss-scale", type=float, default=0.0)
    ap.add_argument("--kd-loss-scale", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = np.fromfile(a.rows, dtype="<i4")
    rec = train(a.student, a.teacher, rows, a.seq, a.gbs, a.mbs, a.steps, a.lr, a.min_lr,
                a.warmup, a.beta1, a.beta2, a.eps, a.wd, a.clip, a.out,
                lm_loss_scale=a.lm_loss_scale, kd_loss_scale=a.kd_loss_scale)
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
