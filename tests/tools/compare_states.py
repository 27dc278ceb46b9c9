#!/usr/bin/env python3
"""Compares two training states or checkpoints of the same tensors (safetensors, fp32/bf16/fp16)
tensor by tensor: each tensor's largest absolute difference, relative to the largest magnitude
in the reference tensor, must stay within --rtol. Standard library only (the multi-rank tests
run without the interop venv).

usage: compare_states.py REFERENCE.safetensors OTHER.safetensors [--rtol R] [--exact]
Exit 0 when every tensor is within tolerance (or bit-identical with --exact), 1 otherwise."""
import array
import json
import struct
import sys


def load(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        blob = raw[base + a:base + b]
        dt = info["dtype"]
        if dt == "F32":
            vals = array.array("f")
            vals.frombytes(blob)
        elif dt in ("BF16", "F16"):
            h = array.array("H")
            h.frombytes(blob)
            if dt == "BF16":
                vals = array.array("f")
                vals.frombytes(array.array("I", (x << 16 for x in h)).tobytes())
            else:
                vals = [struct.unpack("<e", struct.pack("<H", x))[0] for x in h]
        else:
            raise SystemExit(f"{path}: tensor {name}: dtype {dt} not handled")
        out[name] = (tuple(info["shape"]), vals, blob)
    return out


def main():
    args = sys.argv[1:]
    exact = "--exact" in args
    rtol = 1e-5
    if "--rtol" in args:
        rtol = float(args[args.index("--rtol") + 1])
    files = [a for a in args if not a.startswith("--") and a != str(rtol)]
    ref, other = load(files[0]), load(files[1])
    if set(ref) != set(other):
        print(f"tensor names differ: {sorted(set(ref) ^ set(other))[:5]}")
        return 1
    worst, worst_name, bad = 0.0, "", 0
    for name, (shape, a, blob) in ref.items():
        shape_b, b, blob_b = other[name]
        if shape != shape_b:
            print(f"{name}: shape {shape} vs {shape_b}")
            return 1
        if exact:
            if blob != blob_b:
                print(f"{name}: not bit-identical")
                bad += 1
            continue
        scale = max((abs(x) for x in a), default=0.0) or 1e-30
        d = max((abs(x - y) for x, y in zip(a, b)), default=0.0) / scale
        if d != d or d > rtol:
            print(f"{name}: largest difference {d:.3g} of its largest magnitude (> {rtol:g})")
            bad += 1
        if d > worst:
            worst, worst_name = d, name
    if not exact:
        print(f"{len(ref)} tensors, largest relative difference {worst:.3g} ({worst_name})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
