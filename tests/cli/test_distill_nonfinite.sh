#!/usr/bin/env bash
# distill: a step whose loss or gradient norm is not finite updates nothing. Without
# --skip-nonfinite the run stops with exit 7 (a diverged run, not a usage error), the state of
# the last finished step saved and a message that names the likely cause (the learning rate,
# or a --kd-temperature that overflows the scaled logits); with --skip-nonfinite N up to N such
# steps are skipped, consuming their rows, and a run stopped and resumed with the allowance
# ends with the same bytes as a run that had it from the start. A training state holding NaN is
# refused on --resume as bad input (exit 3), naming the tensor.
set -u

source "$(dirname "$0")/lib.sh"
TEACHER=$FIXTURES/models/qwen3-tiny
STUDENT=$FIXTURES/models/qwen3-tiny-distill-reference/student

lms_scratch nonfinite

# ids below the tiny models' 512-entry vocabulary, as a raw .u16 id file
python3 -c 'import array, sys; a = array.array("H", (i * 7919 % 512 for i in range(4096)))
a.tofile(open(sys.argv[1], "wb"))' "$TMP/small.u16"
LOUD=(--student "$STUDENT" --teacher "$TEACHER" --data-paths "$TMP/small.u16" --split 1
      --seq-length 16 --gbs 2 --mbs 1 --max-steps 6 --warmup-steps 1 --min-lr 0
      --limit-val-batches 0 --threads 1 --log-dir "$TMP/logs")
R=("${LOUD[@]}" --quiet)

# run CODE PATTERN ARGS...: distill exits CODE with one stderr line matching PATTERN
run() {
    local code=$1 pat=$2
    shift 2
    n_checks=$((n_checks + 1))
    "$LMSURGEON" distill "$@" >"$TMP/out" 2>"$TMP/err" </dev/null
    local rc=$?
    if [ "$rc" != "$code" ] || [ "$(wc -l <"$TMP/err")" != 1 ] ||
        ! grep -q -- "$pat" "$TMP/err" || grep -q -i sanitizer "$TMP/err"; then
        fail "distill $*: exit $rc (want $code /$pat/), stderr: $(head -c 600 "$TMP/err")"
    fi
}

# state_field DIR KEY: a value of DIR/trainer_state.json ("absent" when missing)
state_field() {
    python3 -c 'import json, sys
try:
    print(json.load(open(sys.argv[1] + "/trainer_state.json")).get(sys.argv[2], "absent"))
except OSError:
    print("no state")' "$@"
}

run 2 "invalid --skip-nonfinite '-1'" "${R[@]}" --out "$TMP/x" --skip-nonfinite -1
run 2 "invalid --skip-nonfinite 'many'" "${R[@]}" --out "$TMP/x" --skip-nonfinite many

# --lr 1e10: the first updates blow the weights up (finite), the next loss is not finite; the
# run stops there and saves the last finished step
run 7 "the loss is not finite (nan): the run diverged after [0-9]* updates: lower --lr (now 1e+10)" \
    "${R[@]}" --lr 1e10 --out "$TMP/b"
saved=$(grep -o "the state after step [0-9]* is in '$TMP/b.state'" "$TMP/err" |
    sed 's/the state after step \([0-9]*\) .*/\1/')
n_checks=$((n_checks + 1))
if [ -z "$saved" ] || [ "$(state_field "$TMP/b.state" step)" != "$saved" ] ||
    [ ! -d "$TMP/b" ]; then
    fail "the diverged run did not save the step it names ('$saved'): $(cat "$TMP/err")"
fi

# the same run allowed to skip: it finishes, skipping every step from the first that is not
# finite; stopping and resuming with the allowance gives the same bytes
n_checks=$((n_checks + 1))
if ! "$LMSURGEON" distill "${LOUD[@]}" --lr 1e10 --out "$TMP/a" --skip-nonfinite 10 \
    >"$TMP/out" 2>"$TMP/err"; then
    fail "the run with --skip-nonfinite 10 failed: $(cat "$TMP/err")"
fi
n_checks=$((n_checks + 1))
want=$((6 - saved))
[ "$(state_field "$TMP/a.state" skipped_steps)" = "$want" ] &&
    [ "$(grep -c '"event":"skipped"' "$TMP/logs/a.metrics.jsonl")" = "$want" ] ||
    fail "skipped steps: state $(state_field "$TMP/a.state" skipped_steps), metrics" \
        "$(grep -c skipped "$TMP/logs/a.metrics.jsonl"), want $want"
first="warning: step $((saved + 1)): the loss is not finite (nan): skipped (1 of"
grep -q -- "$first --skip-nonfinite 10)" "$TMP/err" || fail "no warning for the first skipped step: $(head -c 300 "$TMP/err")"
n_checks=$((n_checks + 1))
if ! "$LMSURGEON" distill "${R[@]}" --lr 1e10 --out "$TMP/b" --resume --skip-nonfinite 10 \
    >"$TMP/out" 2>"$TMP/err"; then
    fail "resuming the diverged run with --skip-nonfinite 10 failed: $(cat "$TMP/err")"
fi
for f in model.safetensors; do
    cmp -s "$TMP/a/$f" "$TMP/b/$f" || fail "resumed student $f differs from the uninterrupted one"
done
cmp -s "$TMP/a.state/optimizer.safetensors" "$TMP/b.state/optimizer.safetensors" ||
    fail "resumed state differs from the uninterrupted one"

# --lr 1e30: an update overflows the weights themselves; such a state is never saved
run 7 "the weights after step [0-9]* are not finite ('.*' holds inf.*(now 1e+30).*nothing saved" \
    "${R[@]}" --lr 1e30 --out "$TMP/c"
[ -e "$TMP/c" ] || [ -e "$TMP/c.state" ] && fail "weights that are not finite were saved"

# a temperature so small that the scaled logits overflow: the message says so
run 7 "step 1: the loss is not finite (\(nan\|-\?inf\)): --kd-temperature 1e-30 divides the logits by 1e-30" \
    "${R[@]}" --lr 1e-3 --kd-temperature 1e-30 --out "$TMP/t"
grep -q "lower --lr" "$TMP/err" && fail "a temperature overflow advises lowering --lr"

# NaN in the saved optimiser state: refused on --resume, naming the tensor
n_checks=$((n_checks + 1))
if ! "$LMSURGEON" distill "${R[@]}" --lr 1e-3 --out "$TMP/s" --exit-interval 1 \
    >"$TMP/out" 2>"$TMP/err"; then
    fail "the one-step run failed: $(cat "$TMP/err")"
fi
python3 - "$TMP/s.state/optimizer.safetensors" <<'EOF'
import json, struct, sys
path = sys.argv[1]
data = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
begin = header["model.norm.weight.exp_avg"]["data_offsets"][0]
data[8 + n + begin + 4:8 + n + begin + 8] = struct.pack("<f", float("nan"))
open(path, "wb").write(data)
EOF
run 3 "training state '$TMP/s.state': tensor 'model.norm.weight.exp_avg' holds a value that \
is not finite (nan at element 1)" "${R[@]}" --lr 1e-3 --out "$TMP/s" --resume

echo "$n_checks non-finite checks, $n_fail failures"
[ "$n_fail" = 0 ]
