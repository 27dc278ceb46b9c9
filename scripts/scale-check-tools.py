#!/usr/bin/env python3
"""Helpers of scripts/scale-check (standard library only, except hf-loss: torch, transformers).

  line REC NAME LOG         one stage's summary line, from REC/NAME.step and LOG's "@ " notes
  steps METRICS STUDENT TEACHER PLAN OUT
                            per-step tokens/s and model TFLOP/s of a distillation, from its
                            metrics file and the two models' `lmsurgeon inspect --json`
  hf-loss MODEL IDS SEQ ROWS DEVICE EVAL OUT
                            the mean next-token loss transformers computes on the first ROWS
                            windows of SEQ ids of IDS (raw .u16/.i32), against `lmsurgeon eval`
  report REC OUT TOTAL BUDGET PRUNE DRY
                            OUT/report.txt and OUT/report.json from every stage's record
"""
import array
import glob
import json
import math
import os
import sys

ORDER = ["build", "init", "convert", "data", "score", "prune-depth", "prune-width",
         "distill-depth", "export-depth", "check-depth", "distill-width", "export-width",
         "check-width"]
TOLERANCE = 0.01  # |transformers bf16 loss - eval fp32 loss|, nats per token, mean of >= 2,000 positions
MIB = 1 << 20


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_step(rec, name):
    """The fields `step` wrote: status, exit, seconds, peak RSS (kB), peak and idle GPU memory
    (MiB), peak disk use of the work directory (kB)."""
    try:
        with open(os.path.join(rec, name + ".step")) as f:
            w = f.read().split()
    except OSError:
        return None
    plan = load(os.path.join(rec, name + ".plan.json"))
    plan_bytes = plan.get("memory", {}).get("total") if isinstance(plan, dict) else None
    return {"stage": w[0], "status": w[1], "exit": int(w[2]), "seconds": float(w[3]),
            "peak_rss_bytes": int(w[4]) * 1024, "peak_gpu_bytes": int(w[5]) * MIB,
            "gpu_idle_bytes": int(w[6]) * MIB, "gpu_plan_bytes": plan_bytes,
            "peak_disk_bytes": int(w[7]) * 1024}


def notes_of(log, status="pass"):
    """The "@ " lines of a stage's log; for a stage that failed, its last lines as well."""
    try:
        with open(log, errors="replace") as f:
            lines = [l.rstrip("\n") for l in f]
    except OSError:
        return []
    notes = [l[2:] for l in lines if l.startswith("@ ")]
    if status in ("fail", "timeout"):
        notes += ["log: " + l for l in [l for l in lines if not l.startswith("@ ")][-3:]]
    return notes


def gb(b):
    return "%.2f GB" % (b / 1e9)


def summary(s):
    gpu = "GPU -"
    if s["peak_gpu_bytes"]:
        gpu = "GPU %s" % gb(s["peak_gpu_bytes"])
        if s["gpu_plan_bytes"]:
            gpu += " (plan %s)" % gb(s["gpu_plan_bytes"])
    return "%-14s %-8s %7.1f s  RSS %-9s  %-28s disk %s" % (
        s["stage"], s["status"], s["seconds"], gb(s["peak_rss_bytes"]), gpu,
        gb(s["peak_disk_bytes"]))


def cmd_line(rec, name, log):
    s = read_step(rec, name)
    print(summary(s))
    for n in notes_of(log, s["status"]):
        print("    " + n)
    sys.stdout.flush()


def cmd_steps(metrics, student, teacher, plan, out):
    ps = load(student)["n_params"]
    pt = load(teacher)["n_params"]
    flop_per_token = 6 * ps + 2 * pt
    rows = []
    with open(metrics) as f:
        for line in f:
            r = json.loads(line)
            if r.get("event") == "train":
                tps = r["tokens_per_second"]
                rows.append({"step": r["step"], "loss": r["loss"], "tokens_per_second": tps,
                             "model_tflops": flop_per_token * tps / 1e12,
                             "elapsed_s": r["elapsed_s"]})
            elif r.get("event") == "validation":
                print("@ validation at step %d: loss %.5f" % (r["step"], r["val_loss"]))
    if not rows:
        print("no training steps in '%s'" % metrics)
        return 1
    for r in rows:
        print("@ step %d: %.0f tokens/s, %.1f model TFLOP/s, loss %.5f" % (
            r["step"], r["tokens_per_second"], r["model_tflops"], r["loss"]))
    later = rows[1:] or rows
    mean_tps = sum(r["tokens_per_second"] for r in later) / len(later)
    print("@ throughput: %.0f tokens/s, %.1f model TFLOP/s (steps %d-%d; (6 x %d student + 2 x "
          "%d teacher params) x tokens/s)" % (mean_tps, flop_per_token * mean_tps / 1e12,
                                               later[0]["step"], later[-1]["step"], ps, pt))
    p = load(plan) or {}
    json.dump({"student_params": ps, "teacher_params": pt, "flop_per_token": flop_per_token,
               "steps": rows, "mean_tokens_per_second": mean_tps,
               "mean_model_tflops": flop_per_token * mean_tps / 1e12,
               "memory_plan": p.get("memory")}, open(out, "w"), indent=1)
    return 0


def cmd_hf_loss(model, ids_path, seq, rows, device, eval_json, out):
    import time
    import torch
    import transformers
    seq, rows = int(seq), int(rows)
    ids = array.array("H" if ids_path.endswith(".u16") else "i")
    with open(ids_path, "rb") as f:
        ids.frombytes(f.read(rows * seq * ids.itemsize))
    x = torch.tensor(list(ids), dtype=torch.long).view(rows, seq)
    dev = "cuda" if device.startswith("cuda") else "cpu"
    t0 = time.time()
    pretrained = transformers.AutoModelForCausalLM.from_pretrained
    try:  # straight onto the device where transformers can (no copy through host memory)
        m = pretrained(model, dtype=torch.bfloat16, device_map=dev)
    except (ImportError, TypeError, ValueError):  # older transformers: torch_dtype, accelerate
        m = pretrained(model, torch_dtype=torch.bfloat16)
    m.to(dev).eval()
    t1 = time.time()
    with torch.no_grad():
        logits = m(input_ids=x.to(dev)).logits.float()
        if dev == "cuda":
            torch.cuda.synchronize()
        t2 = time.time()
        v = logits.shape[-1]
        # positions 0..S-2 predict 1..S-1, the mean over every predicted position (eval's)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, v),
                                                 x[:, 1:].reshape(-1).to(dev)).item()
    ours = load(eval_json)["loss"]
    diff = abs(loss - ours)
    ok = math.isfinite(loss) and diff <= TOLERANCE
    print("@ transformers %s (bf16, %s): loss %.5f vs eval %.5f: |diff| %.5f %s %.2f (ln V = %.3f); "
          "load %.1f s, forward %.2f s" % (transformers.__version__, dev, loss, ours, diff,
                                           "<=" if ok else "> FAIL", TOLERANCE, math.log(v),
                                           t1 - t0, t2 - t1))
    json.dump({"transformers_loss": loss, "eval_loss": ours, "abs_diff": diff,
               "tolerance": TOLERANCE, "ok": ok, "vocab": v, "rows": rows, "seq_length": seq,
               "load_s": t1 - t0, "forward_s": t2 - t1}, open(out, "w"), indent=1)
    return 0 if ok else 1


def cmd_report(rec, out, total, budget, prune, dry):
    stages = [s for s in (read_step(rec, n) for n in ORDER) if s]
    logs = os.path.join(os.path.dirname(rec), "logs")
    for s in stages:
        s["notes"] = notes_of(os.path.join(logs, s["stage"] + ".log"), s["status"])
    distill = {k: load(os.path.join(rec, "distill-%s.steps.json" % k)) for k in ("depth", "width")}
    checks = {k: load(os.path.join(rec, "check-%s.hf.json" % k)) for k in ("depth", "width")}
    disk = max([s["peak_disk_bytes"] for s in stages] or [0])
    lines = ["scripts/scale-check: %s s of a %s s budget%s; prune: %s" % (
        total, budget, " (dry run on cpu, fixture size)" if dry == "1" else "",
        "score once, both prunes with --importance" if prune == "importance"
        else "the reference commands as written, each calibrating")]
    env = os.path.join(logs, "env.log")
    if os.path.exists(env):
        lines += [l.rstrip("\n") for l in open(env)]
    lines.append("")
    for s in stages:
        lines.append(summary(s))
        lines += ["    " + n for n in s["notes"]]
    lines.append("")
    lines.append("peak disk use of the work directory: %s (limit 60 GB)" % gb(disk))
    lines.append("model TFLOP/s = (6 x student params + 2 x teacher params) x tokens/s")
    bad = [s["stage"] for s in stages if s["status"] not in ("pass", "skip")]
    skipped = [s["stage"] for s in stages if s["status"] == "skip"]
    lines.append("failed: %s" % (", ".join(bad) or "none"))
    if skipped:
        lines.append("skipped: %s (see the notes above)" % ", ".join(skipped))
    unfinished = [s["stage"] for s in stages if s["status"] in ("no-time", "timeout")]
    if unfinished:
        lines.append("to finish on the same machine (the work directory is kept): "
                     "SCALE_CHECK_STAGES=\"%s\" scripts/scale-check%s OUTDIR"
                     % (" ".join(unfinished), " --dry-run" if dry == "1" else ""))
    with open(os.path.join(out, "report.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    rep = {"total_seconds": int(total), "budget_seconds": int(budget), "dry_run": dry == "1",
           "prune": prune, "stages": stages, "passed": not bad, "skipped": skipped,
           "peak_disk_bytes": disk, "distill": distill, "transformers_check": checks,
           "model_tflops_formula": "(6 x student params + 2 x teacher params) x tokens/s"}
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(rep, f, indent=1)
    return 0


def main(argv):
    cmds = {"line": (cmd_line, 3), "steps": (cmd_steps, 5), "hf-loss": (cmd_hf_loss, 7),
            "report": (cmd_report, 6)}
    if len(argv) < 2 or argv[1] not in cmds or len(argv) - 2 != cmds[argv[1]][1]:
        sys.stderr.write(__doc__)
        return 2
    fn, _ = cmds[argv[1]]
    return fn(*argv[2:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
