#!/usr/bin/env bash
# distill's feature (intermediate-state) distillation options: the default (logits only, for a
# depth-pruned and a width-pruned student alike) as the start summary and --json report it,
# --feature-pairs none / LIST and --feature-every (every layer with its source layer), the
# memory plan counting the pairs' captures and the learned map, the usage errors (exit 2, one
# line naming the flag, nothing written), and --resume refusing a changed --feature-loss.
set -u

source "$(dirname "$0")/lib.sh"
TEACHER=$FIXTURES/teacher # 12 layers, hidden 256
DATA=$FIXTURES/corpus/val.ids.u16

lms_scratch features

RUN=(--teacher "$TEACHER" --data-paths "$DATA" --gbs 2 --mbs 1 --seq-length 32 --max-steps 1
     --limit-val-batches 0 --threads 1 --log-dir "$TMP/logs")
DRY=(--teacher "$TEACHER" --data-paths "$DATA" --gbs 2 --mbs 2 --seq-length 64 --max-steps 1
     --limit-val-batches 0 --dry-run --json --out "$TMP/dry")

"$LMSURGEON" prune "$TEACHER" "$TMP/depth" --target-num-layers 8 --quiet &&
    "$LMSURGEON" prune "$TEACHER" "$TMP/width" --target-hidden-size 224 --quiet ||
    { echo "FAIL: prune"; exit 1; }

# dry_features NAME STUDENT FLAGS... -> $TMP/NAME.json
dry_features() {
    local name=$1 student=$2
    shift 2
    "$LMSURGEON" distill --student "$student" "${DRY[@]}" "$@" >"$TMP/$name.json" 2>"$TMP/err" ||
        { fail "$name: --dry-run $* failed"; cat "$TMP/err" >&2; }
}

# the defaults, as --json reports them: 1-based student:teacher pairs
n_checks=$((n_checks + 1))
dry_features depth "$TMP/depth"
dry_features width "$TMP/width"
dry_features width-none "$TMP/width" --feature-pairs none
dry_features width-all "$TMP/width" --feature-every 1
dry_features width-every "$TMP/width" --feature-every 4 --feature-loss mse --feature-hook attn-norm
dry_features depth-list "$TMP/depth" --feature-pairs 2:3,8:12
python3 - "$TMP" <<'PY' || fail "the feature choices reported by --json are wrong"
import json, sys
d = sys.argv[1]
f = {n: json.load(open(f"{d}/{n}.json"))["features"]
     for n in ("depth", "width", "width-none", "width-all", "width-every", "depth-list")}
assert f["depth"]["default"] and f["depth"]["student"] == "depth-pruned", f["depth"]
assert not f["depth"]["enabled"] and f["depth"]["pairs"] == [], f["depth"]
assert f["width"]["default"] and f["width"]["student"] == "width-pruned", f["width"]
assert not f["width"]["enabled"] and f["width"]["pairs"] == [], f["width"]
assert not f["width-none"]["default"] and not f["width-none"]["enabled"], f["width-none"]
assert not f["width-all"]["default"] and f["width-all"]["enabled"], f["width-all"]
assert f["width-all"]["pairs"] == [[i, i] for i in range(1, 13)], f["width-all"]
assert (f["width-all"]["hook"], f["width-all"]["loss"]) == ("mlp-norm", "cosine"), f["width-all"]
assert f["width-every"]["pairs"] == [[4, 4], [8, 8], [12, 12]], f["width-every"]
assert (f["width-every"]["hook"], f["width-every"]["loss"]) == ("attn-norm", "mse")
assert f["depth-list"]["pairs"] == [[2, 3], [8, 12]] and f["depth-list"]["enabled"]
PY

# the plan counts the pairs: the teacher's captured norm outputs (N x 256 floats each), the
# mapped student rows and their gradient (2 x N x 256), and the map (256 x 224 + 256) in the
# weights, gradients and moments; N = 2 x 64 tokens
n_checks=$((n_checks + 1))
python3 - "$TMP" <<'PY' || fail "the memory plan does not count the feature pairs"
import json, sys
d = sys.argv[1]
a = json.load(open(f"{d}/width-all.json"))["memory"]
b = json.load(open(f"{d}/width.json"))["memory"]
N, Ht, H = 128, 256, 224
assert a["activations"] - b["activations"] == (12 + 2) * N * Ht * 4, (a, b)
P = Ht * H + Ht
assert a["weights"] - b["weights"] == P * 4, (a["weights"], b["weights"])
assert a["moments"] - b["moments"] == 2 * P * 4, (a["moments"], b["moments"])
PY

# the start summary says what was chosen
n_checks=$((n_checks + 1))
"$LMSURGEON" distill --student "$TMP/depth" "${RUN[@]}" --out "$TMP/depth-out" >"$TMP/depth.out" \
    2>"$TMP/err" || { fail "distilling the depth-pruned student failed"; cat "$TMP/err" >&2; }
grep -qx "loss: depth-pruned student: logits only (default)" "$TMP/depth.out" ||
    { fail "the start summary of the depth-pruned student"; cat "$TMP/depth.out" >&2; }
"$LMSURGEON" distill --student "$TMP/width" "${RUN[@]}" --out "$TMP/width-out" >"$TMP/width.out" \
    2>"$TMP/err" || { fail "distilling the width-pruned student failed"; cat "$TMP/err" >&2; }
grep -qx "loss: width-pruned student: logits only (default)" "$TMP/width.out" ||
    { fail "the start summary of the width-pruned student"; cat "$TMP/width.out" >&2; }
n_checks=$((n_checks + 1))
"$LMSURGEON" distill --student "$TMP/width" "${RUN[@]}" --feature-every 1 --out "$TMP/all-out" \
    >"$TMP/all.out" 2>"$TMP/err" ||
    { fail "distilling with every layer paired failed"; cat "$TMP/err" >&2; }
grep -qx "loss: logits + intermediate states, 12 pairs at mlp-norm, cosine loss" "$TMP/all.out" ||
    { fail "the start summary of --feature-every 1"; cat "$TMP/all.out" >&2; }

# usage errors: exit 2, one line naming the flag, nothing written
usage() {
    local flag=$1
    shift
    n_checks=$((n_checks + 1))
    "$LMSURGEON" distill --student "$TMP/width" "${RUN[@]}" --out "$TMP/bad" "$@" >/dev/null \
        2>"$TMP/err"
    local rc=$?
    [ "$rc" = 2 ] || fail "$*: exit $rc, expected 2"
    [ "$(wc -l <"$TMP/err")" = 1 ] && grep -q -- "$flag" "$TMP/err" ||
        { fail "$*: not one line naming $flag"; cat "$TMP/err" >&2; }
    [ ! -e "$TMP/bad" ] && [ ! -e "$TMP/bad.state" ] || fail "$*: wrote an output"
}
usage --feature-pairs --feature-pairs 13:1
usage --feature-pairs --feature-pairs 1:13
usage --feature-pairs --feature-pairs 0:1
usage --feature-pairs --feature-pairs 2:3,4:5,2:3
usage --feature-pairs --feature-pairs 2-3
usage --feature-pairs --feature-pairs 1:-1
usage --feature-pairs --feature-pairs=' 1:1'
usage --feature-pairs --feature-pairs ""
usage --feature-every --feature-every 13
usage --feature-every --feature-every 0
usage --feature-loss --feature-loss l1
usage --feature-hook --feature-hook layer-out
usage --feature-loss-scale --feature-loss-scale 0.5

# --resume refuses a changed --feature-loss, and continues with the same one
n_checks=$((n_checks + 1))
"$LMSURGEON" distill --student "$TMP/width" "${RUN[@]}" --max-steps 2 --feature-every 1 \
    --exit-interval 1 --feature-loss mse --out "$TMP/r" --quiet 2>"$TMP/err" ||
    { fail "the run to resume failed"; cat "$TMP/err" >&2; }
"$LMSURGEON" distill --student "$TMP/width" "${RUN[@]}" --max-steps 2 --out "$TMP/r" --resume \
    --feature-every 1 --quiet 2>"$TMP/err"
rc=$?
[ "$rc" = 2 ] && grep -q 'loss.features.loss was "mse", now "cosine"' "$TMP/err" ||
    { fail "--resume with another --feature-loss: exit $rc"; cat "$TMP/err" >&2; }
"$LMSURGEON" distill --student "$TMP/width" "${RUN[@]}" --max-steps 2 --out "$TMP/r" --resume \
    --feature-every 1 --feature-loss mse --json >"$TMP/r.json" 2>"$TMP/err" ||
    { fail "--resume with the same --feature-loss failed"; cat "$TMP/err" >&2; }
python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); assert s["steps"] == 2 and s["start_step"] == 1, s' \
    "$TMP/r.json" || fail "the resumed run did not finish its steps"
# ... with the same bytes as a run never stopped (the learned map's weights and moments are in
# the state)
"$LMSURGEON" distill --student "$TMP/width" "${RUN[@]}" --max-steps 2 --feature-every 1 \
    --feature-loss mse --out "$TMP/whole" --quiet 2>"$TMP/err" || { fail "the uninterrupted run failed"; cat "$TMP/err" >&2; }
cmp -s "$TMP/r/model.safetensors" "$TMP/whole/model.safetensors" ||
    fail "the resumed feature-KD run differs from the uninterrupted one"

echo "$((n_checks - n_fail))/$n_checks checks passed"
[ "$n_fail" = 0 ]
