#!/usr/bin/env bash
# prune --target-params --rank-by distill: the candidates come back in both documented orders
# (by post-prune loss, and the distilled ones by post-distillation loss), the written model is
# the first of the distillation order, and its post-distillation loss is what the documented
# recipe gives when run by hand: prune --candidate K, distill on the calibration rows after the
# held-out ones, eval on the held-out rows (both cut from the data by the independent
# tests/tools/sampler_reference.py). Bad flag combinations are one-line usage errors.
set -u

source "$(dirname "$0")/lib.sh"
lms_scratch prune-rank
export TMPDIR=$TMP/tmp
mkdir -p "$TMPDIR"
passes=0
pass() { passes=$((passes + 1)); }

t="$FIXTURES/teacher"
d="$FIXTURES/corpus/val.ids.u16"
# calibration: 2 windows of 64 tokens, 4 held out; 3 candidates, the best 2 distilled for 512
# tokens each: 512 / (2 x 64) = 4 steps of one micro-batch of 2 rows
S=64 N=2 E=4 MBS=2 TOKENS=512
search=(--target-params 9M --search-num-layers 10:11:1 --num-candidates 3 --eval-samples $E
        --data-paths "$d" --num-train-samples $N --seq-length $S --mbs $MBS
        --layer-selection block-bi --threads 1)

# expect CODE SUBSTRING ARGS...: exit code, one stderr line containing SUBSTRING, nothing written
expect() {
    local code=$1 needle=$2
    shift 2
    "$LMSURGEON" prune "$@" >"$TMP/stdout" 2>"$TMP/stderr"
    local rc=$?
    if [ "$rc" -ne "$code" ] || [ "$(wc -l <"$TMP/stderr")" -ne 1 ] \
        || ! grep -qF -- "$needle" "$TMP/stderr" || [ -e "$TMP/out" ] \
        || [ -n "$(ls -A "$TMPDIR")" ]; then
        fail "prune $* -> rc=$rc (want $code), stderr: $(cat "$TMP/stderr")"
    else
        pass
    fi
}
expect 2 "unknown --rank-by 'best'" "$t" "$TMP/out" "${search[@]}" --rank-by best
expect 2 "give --target-params" "$t" "$TMP/out" --data-paths "$d" --target-num-layers 8 --rank-by distill
expect 2 "needs calibration data" "$t" "$TMP/out" --target-params 9M --rank-by distill
expect 2 "invalid --rank-top '0'" "$t" "$TMP/out" "${search[@]}" --rank-by distill --rank-top 0
expect 2 "invalid --rank-tokens '2Q'" "$t" "$TMP/out" "${search[@]}" --rank-by distill --rank-tokens 2Q
expect 2 "need --rank-by distill" "$t" "$TMP/out" "${search[@]}" --rank-top 2
expect 2 "need --rank-by distill" "$t" "$TMP/out" "${search[@]}" --rank-by loss --rank-tokens 1M
expect 2 "less than one distillation step" "$t" "$TMP/out" "${search[@]}" --rank-by distill --rank-tokens 100
expect 2 "more for the ranking distillation" "$t" "$TMP/out" "${search[@]}" --rank-by distill --rank-tokens 1B
# a failure while ranking (no temporary directory can be made) writes nothing
TMPDIR=$TMP/missing expect 4 "creating a temporary directory in '$TMP/missing'" "$t" "$TMP/out" \
    "${search[@]}" --rank-by distill --rank-tokens 512 --quiet

# the search ranked by distillation, written
"$LMSURGEON" prune "$t" "$TMP/out" "${search[@]}" --rank-by distill --rank-tokens $TOKENS --rank-top 2 \
    --json >"$TMP/rank.json" 2>"$TMP/stderr"
rc=$?
if [ $rc -ne 0 ] || [ -n "$(ls -A "$TMPDIR")" ]; then
    fail "prune --rank-by distill: rc=$rc, temporaries: $(ls -A "$TMPDIR"), $(cat "$TMP/stderr")"
fi
# the same search ranked by loss alone: its table is the loss order of the distilled search
"$LMSURGEON" prune "$t" "$TMP/out-loss" "${search[@]}" --dry-run --json >"$TMP/loss.json" 2>/dev/null \
    || fail "prune --rank-by loss"

# the orders, and the written model is row 1, the first of the distillation order
python3 - "$TMP/rank.json" "$TMP/loss.json" "$TMP/out/config.json" >"$TMP/chosen" <<'PY' \
    || fail "orders: $(cat "$TMP/chosen")"
import json, sys
rank, loss = (json.load(open(p))["search"] for p in sys.argv[1:3])
cfg = json.load(open(sys.argv[3]))
c = rank["candidates"]
n = len(c)
def shape(x):
    return tuple(x[k] for k in ("num_layers", "ffn_hidden_size", "hidden_size",
                                "num_attention_heads"))
lo, do = rank["loss_order"], rank["distill_order"]
errors = []
if sorted(lo) != list(range(1, n + 1)):
    errors.append(f"loss_order {lo} is not a permutation of the rows")
if [c[r - 1]["loss"] for r in lo] != sorted(x["loss"] for x in c):
    errors.append("loss_order is not sorted by post-prune loss")
if [c[r - 1]["loss_rank"] for r in lo] != list(range(1, n + 1)):
    errors.append("loss_rank disagrees with loss_order")
if [shape(c[r - 1]) for r in lo] != [shape(x) for x in loss["candidates"]]:
    errors.append("loss_order is not the table of --rank-by loss")
if any(abs(c[r - 1]["loss"] - x["loss"]) > 1e-6 for r, x in zip(lo, loss["candidates"])):
    errors.append("post-prune losses differ from --rank-by loss")
if len(do) != 2 or do != [1, 2]:
    errors.append(f"distill_order {do}: the 2 distilled candidates lead the table")
dl = [c[r - 1]["distill_loss"] for r in do]
if dl != sorted(dl) or any(v is None for v in dl):
    errors.append(f"distill_order is not sorted by post-distillation loss: {dl}")
if sorted(c[r - 1]["loss_rank"] for r in do) != [1, 2]:
    errors.append("the distilled candidates are not the best 2 by post-prune loss")
if any(x["distill_loss"] is not None or x["distill_rank"] is not None for x in c[2:]):
    errors.append("a candidate that was not distilled has a post-distillation loss")
if [i for i, x in enumerate(c) if x["chosen"]] != [0]:
    errors.append("the chosen row is not row 1")
if (cfg["num_hidden_layers"], cfg["intermediate_size"], cfg["hidden_size"],
        cfg["num_attention_heads"]) != shape(c[do[0] - 1]):
    errors.append(f"the written model is not the first of the distillation order: {cfg}")
if errors:
    print("; ".join(errors))
    sys.exit(1)
print(c[0]["loss_rank"], "%.4f" % c[0]["distill_loss"])
for r in lo:
    print(f"loss order: row {r} {shape(c[r - 1])} {c[r - 1]['loss']:.4f}", file=sys.stderr)
for r in do:
    print(f"distill order: row {r} {shape(c[r - 1])} {c[r - 1]['distill_loss']:.4f}",
          file=sys.stderr)
PY
[ $n_fail -eq 0 ] && pass
read -r K want <"$TMP/chosen"

# the oracle: the documented recipe by hand. Held-out rows [N, N+E); distillation rows
# [N+E, N+E+R) with R = steps x mbs + 1, steps = tokens / (mbs x S)
steps=$((TOKENS / (MBS * S)))
R=$((steps * MBS + 1))
ref="$ROOT/tests/tools/sampler_reference.py"
python3 "$ref" calib-rows "$d" "$TMP/held.i32" --seq-length $S --from $N --to $((N + E)) \
    && python3 "$ref" calib-rows "$d" "$TMP/train.i32" --seq-length $S --from $((N + E)) \
        --to $((N + E + R)) \
    || fail "sampler_reference.py calib-rows"
"$LMSURGEON" prune "$t" "$TMP/cand" "${search[@]}" --candidate "$K" --quiet \
    && "$LMSURGEON" distill --student "$TMP/cand" --teacher "$t" --data-paths "$TMP/train.i32" \
        --split 1 --seq-length $S --gbs $MBS --mbs $MBS --max-steps $steps \
        --warmup-steps $((steps / 10)) --lr 1e-4 --min-lr 1e-5 --optim-preset gpt \
        --feature-pairs none --limit-val-batches 0 --save-state never --seed 1234 \
        --log-dir "$TMP" --out "$TMP/distilled" --threads 1 --quiet \
    && "$LMSURGEON" eval "$TMP/distilled" --data "$TMP/held.i32" --seq-length $S --num-samples $E \
        --batch-size $MBS --threads 1 --json >"$TMP/eval.json" \
    || fail "the recipe by hand"
got=$(python3 -c 'import json,sys; print("%.4f" % json.load(open(sys.argv[1]))["loss"])' \
    "$TMP/eval.json" 2>/dev/null)
if [ "$got" != "$want" ]; then
    fail "post-distillation loss of row 1 (candidate $K by loss): search $want, by hand $got"
else
    pass
fi

# the text table carries both losses and both ranks; progress goes to stderr
"$LMSURGEON" prune "$t" "$TMP/out-text" "${search[@]}" --dry-run --rank-by distill \
    --rank-tokens $TOKENS --rank-top 2 >"$TMP/stdout" 2>"$TMP/stderr"
if [ $? -ne 0 ] || ! grep -q "rank .*loss by loss distilled" "$TMP/stdout" \
    || ! grep -q "^ *1 .* $want  <- pruned to" "$TMP/stdout" \
    || [ "$(grep -c '^distilled [12]/2 (rank [12] by loss): loss' "$TMP/stderr")" -ne 2 ]; then
    fail "text table: $(cat "$TMP/stdout" "$TMP/stderr")"
else
    pass
fi

# SIGINT while a candidate is distilled: exit 130, no output and no temporary left
"$LMSURGEON" prune "$t" "$TMP/out-int" "${search[@]}" --rank-by distill --rank-tokens 64k --quiet \
    2>"$TMP/stderr" &
pid=$!
for _ in $(seq 200); do
    ls "$TMPDIR"/lms-rank-*/candidate-* >/dev/null 2>&1 && break
    sleep 0.1
done
kill -INT $pid
wait $pid
rc=$?
if [ $rc -ne 130 ] || [ -e "$TMP/out-int" ] || [ -n "$(ls -A "$TMPDIR")" ]; then
    fail "SIGINT: rc=$rc, left: $(ls -A "$TMPDIR" "$TMP/out-int" 2>&1), $(cat "$TMP/stderr")"
else
    pass
fi

echo "$passes passed, $n_fail failed"
[ "$n_fail" -eq 0 ]
