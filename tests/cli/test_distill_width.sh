#!/usr/bin/env bash
# distill of width-pruned students, the reference workflow's second path: the teacher pruned on
# hidden channels alone (`--target-hidden-size`), on FFN neurons, attention heads and query
# groups alone, and on all four at once, each distilled one step from its unpruned teacher; the
# same from a NeMo 2 conversion of the teacher (pruned and distilled as NeMo). The memory plan of
# the student pruned on every axis (--dry-run --json) against the sizes worked out here from the
# two shapes, the teacher counted at its own widths. A run that fails after opening its metrics
# file leaves no empty one behind.
set -u

source "$(dirname "$0")/lib.sh"
TEACHER=$FIXTURES/teacher # 12 layers, hidden 256, FFN 768, 8 heads in 2 query groups
DATA=$FIXTURES/corpus/val.ids.u16

lms_scratch width

RUN=(--data-paths "$DATA" --gbs 2 --mbs 1 --seq-length 32 --max-steps 1 --limit-val-batches 0
     --threads 1 --log-dir "$TMP/logs" --quiet --json)

# prune_and_distill NAME TEACHER PRUNE_ARGS...: prunes TEACHER into NAME, distills NAME one step
# from TEACHER; the student must come out with its pruned shape and a finite loss
prune_and_distill() {
    local name=$1 teacher=$2
    shift 2
    n_checks=$((n_checks + 1))
    if ! "$LMSURGEON" prune "$teacher" "$TMP/$name" "$@" --quiet 2>"$TMP/err"; then
        fail "$name: prune $* failed"; cat "$TMP/err" >&2; return
    fi
    if ! "$LMSURGEON" distill --student "$TMP/$name" --teacher "$teacher" "${RUN[@]}" \
        --out "$TMP/$name-out" >"$TMP/$name.json" 2>"$TMP/err"; then
        fail "$name: distill failed"; cat "$TMP/err" >&2; return
    fi
    python3 - "$TMP/$name.json" <<'EOF' || fail "$name: the run's summary is wrong"
import json, math, sys
s = json.load(open(sys.argv[1]))
assert s["ok"] and s["steps"] == 1 and math.isfinite(s["loss"]) and s["loss"] > 0, s
EOF
    "$LMSURGEON" inspect "$TMP/$name-out" --json >"$TMP/$name.inspect" 2>"$TMP/err" ||
        { fail "$name: the distilled student does not read back"; cat "$TMP/err" >&2; }
    "$LMSURGEON" inspect "$TMP/$name" --json >"$TMP/$name.pruned" 2>/dev/null
    python3 - "$TMP/$name.pruned" "$TMP/$name.inspect" <<'EOF' ||
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
keys = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups")
def dims(j):
    flat = dict(j)
    for v in j.values():
        if isinstance(v, dict):
            flat.update(v)
    return [flat.get(k) for k in keys]
assert dims(a) == dims(b) and None not in dims(a), (dims(a), dims(b))
EOF
        fail "$name: the distilled student does not keep its pruned shape"
}

# each width axis alone, then all of them at once
prune_and_distill hidden "$TEACHER" --target-hidden-size 224
prune_and_distill ffn "$TEACHER" --target-ffn-hidden-size 512
prune_and_distill heads "$TEACHER" --target-num-attention-heads 4
prune_and_distill groups "$TEACHER" --target-num-query-groups 1
prune_and_distill all "$TEACHER" --target-hidden-size 192 --target-ffn-hidden-size 512 \
    --target-num-attention-heads 4 --target-num-query-groups 1 --target-num-layers 10

# the reference workflow's checkpoints are NeMo 2: the teacher converted, pruned on width as
# NeMo, distilled from the NeMo teacher; the student is written as NeMo
n_checks=$((n_checks + 1))
if "$LMSURGEON" convert "$TEACHER" "$TMP/teacher.nemo" --to nemo --quiet 2>"$TMP/err"; then
    prune_and_distill nemo-width "$TMP/teacher.nemo" --target-hidden-size 224 \
        --target-ffn-hidden-size 512
    [ -d "$TMP/nemo-width-out/weights" ] && [ -d "$TMP/nemo-width-out/context" ] ||
        fail "the NeMo student was not written as NeMo 2"
else
    fail "convert to NeMo failed"; cat "$TMP/err" >&2
fi

# the memory plan of the student pruned on every axis, each part from the two shapes (fp32 on
# the CPU, every buffer of the trainer's and the teacher's workspaces; alignment adds less than
# 4 KiB): the teacher's forward workspace has the teacher's widths, and the final-norm output
# the trainer keeps for the teacher's logits is as wide as the teacher (N x 256), not the
# student (N x 192). Logits only (--feature-pairs none, also the default): intermediate-state
# pairs are planned on top (test_distill_features)
n_checks=$((n_checks + 1))
if "$LMSURGEON" distill --student "$TMP/all" --teacher "$TEACHER" --data-paths "$DATA" \
    --gbs 2 --mbs 2 --seq-length 512 --max-steps 3 --limit-val-batches 0 --dry-run --json \
    --feature-pairs none --out "$TMP/dry" >"$TMP/dry.json" 2>"$TMP/err"; then
    python3 - "$TMP/dry.json" <<'EOF' || fail "the memory plan of a width-pruned student is wrong"
import json, sys
m = json.load(open(sys.argv[1]))["memory"]
B, S, V, d = 2, 512, 4096, 32
N = B * S
def shape(L, H, F, nh, ng):
    return dict(L=L, H=H, F=F, nh=nh, ng=ng, nq=nh * d, qkv=(nh + 2 * ng) * d)
st, te = shape(10, 192, 512, 4, 1), shape(12, 256, 768, 8, 2)
def n_params(s):  # q | k | v, o, two norms, gate | up | down, q/k norms; embedding, head, norm
    per = s["qkv"] * s["H"] + s["nq"] * s["H"] + 2 * s["H"] + 3 * s["F"] * s["H"] + 2 * d
    return s["L"] * per + 2 * V * s["H"] + s["H"]
P, PT = n_params(st), n_params(te)
L = st["L"]
R = min(N, (64 << 20) // (V * 4))  # logits rows per chunk (64 MiB)
f = 4
s = st
fixed = 3 * N * f + N + 2 * S * (d // 2) * f + f
per_layer = (2 * N * s["qkv"] + 2 * N * s["nh"] + N * s["ng"] + N * s["nq"] + 3 * N * s["H"]
             + 2 * N + 3 * N * s["F"]) * f
saved = (N * s["H"] * (L + 1) + N * s["H"] + N) * f + L * per_layer
logits = 2 * R * V * f + 2 * R * f
backward = (2 * N * s["H"] + N * s["nq"] + N * s["qkv"] + 3 * N * s["F"]) * f
teacher_capture = N * te["H"] * f + N * f
acts = fixed + saved + logits + backward + teacher_capture
t = te
teacher_ws = (2 * N * t["H"] + N * t["qkv"] + N * t["nq"] + 3 * N * t["F"] + R * V + R + 3 * N
              + 2 * S * (d // 2)) * f
teacher = PT * 4 + teacher_ws
def near(got, want, tol, what):
    assert want <= got <= want + tol, f"{what}: {got}, expected {want} (+ up to {tol})"
near(m["activations"], acts, 4096, "activations")
near(m["teacher"], teacher, 4096, "teacher")
near(m["weights"], P * 4, 64 * 32 * (L + 2), "weights")
near(m["gradients"], P * 4, 64 * 32 * (L + 2), "gradients")
near(m["moments"], 2 * P * 4, 2 * 64 * 32 * (L + 2), "moments")
near(m["save"], P * 2, 0, "save (bf16)")
assert m["total"] == sum(m[k] for k in ("weights", "moments", "gradients", "activations",
                                        "save", "teacher", "data")), m
EOF
else
    fail "--dry-run of the width-pruned student failed"; cat "$TMP/err" >&2
fi

# a run that fails after opening its metrics file (here --dump-rows cannot be written) leaves
# no empty metrics file
n_checks=$((n_checks + 1))
"$LMSURGEON" distill --student "$TMP/ffn" --teacher "$TEACHER" "${RUN[@]}" --out "$TMP/dump-out" \
    --dump-rows "$TMP/no-such-dir/rows" >/dev/null 2>"$TMP/err"
rc=$?
[ "$rc" = 4 ] || { fail "--dump-rows into a missing folder: exit $rc, want 4"; cat "$TMP/err" >&2; }
[ -e "$TMP/logs/dump-out.metrics.jsonl" ] && fail "a failed run left '$TMP/logs/dump-out.metrics.jsonl'"

echo "$n_checks checks, $n_fail failures"
[ "$n_fail" = 0 ]
