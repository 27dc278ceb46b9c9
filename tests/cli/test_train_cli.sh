#!/usr/bin/env bash
# train (distill's run without a teacher): the options only a teacher gives a meaning are
# refused with one usage line, as is --teacher itself; distill without --teacher is the same run
# and says so; the rows are distill's (--dump-rows); the memory plan has no teacher; the state
# records no teacher, so neither kind of state resumes as the other; a run stopped by
# --exit-interval and resumed ends with the same bytes as an uninterrupted one. And a
# distillation state from before --lm-loss-scale weighted the cross-entropy does not resume.
set -u

source "$(dirname "$0")/lib.sh"
MODEL=$FIXTURES/models/qwen3-tiny
STUDENT=$FIXTURES/models/qwen3-tiny-distill-reference/student

lms_scratch train

# held-out text ids folded below the tiny models' 512-entry vocabulary, as a raw int32 id file
python3 - "$FIXTURES/corpus/val.ids.u16" "$TMP/data.i32" <<'EOF'
import array, sys
ids = array.array("H")
with open(sys.argv[1], "rb") as f:
    ids.frombytes(f.read(2 * 20000))
with open(sys.argv[2], "wb") as f:
    array.array("i", (i % 512 for i in ids)).tofile(f)
EOF
# 4 steps of 4 rows x 32 tokens
OPTS=(--data-paths "$TMP/data.i32" --split 1 --seq-length 32 --gbs 4 --mbs 2 --max-steps 4
      --warmup-steps 1 --lr 1e-3 --min-lr 1e-4 --optim-preset gpt --limit-val-batches 0
      --threads 1 --log-dir "$TMP/logs")

# expect CODE PATTERN CMD ARGS...: exit code CODE, stderr one line matching PATTERN, stdout empty
expect() {
    local code=$1 pat=$2
    shift 2
    n_checks=$((n_checks + 1))
    "$LMSURGEON" "$@" >"$TMP/out" 2>"$TMP/err" </dev/null
    local rc=$?
    if [ "$rc" != "$code" ] || ! grep -q -- "$pat" "$TMP/err" || [ "$(wc -l <"$TMP/err")" != 1 ] ||
        [ -s "$TMP/out" ] || grep -q -i "sanitizer" "$TMP/err"; then
        fail "$*: exit $rc (want $code /$pat/), stderr:"
        cat "$TMP/err" >&2
    fi
}

# run NAME CMD ARGS...: a run that must succeed
run() {
    local name=$1
    shift
    n_checks=$((n_checks + 1))
    "$LMSURGEON" "$@" >"$TMP/$name.out" 2>"$TMP/err" </dev/null ||
        { fail "$name: $* failed"; cat "$TMP/err" >&2; }
}

# the refusals: every option only a teacher gives a meaning, in train and in distill without
# --teacher; --teacher in train; no model
for opt in "--kd-loss reverse-kl" "--kd-temperature 2" "--kd-top-k 5" "--kd-loss-scale 1" \
    "--lm-loss-scale 0" "--feature-pairs none" "--feature-every 2" "--feature-hook attn-norm" \
    "--feature-loss mse" "--feature-loss-scale 1"; do
    # shellcheck disable=SC2086 # the option and its value are two words
    expect 2 "^lmsurgeon train: ${opt%% *} needs a teacher" train --model "$MODEL" "${OPTS[@]}" \
        --out "$TMP/x" $opt
    # shellcheck disable=SC2086
    expect 2 "^lmsurgeon distill: ${opt%% *} needs a teacher" distill --student "$MODEL" \
        "${OPTS[@]}" --out "$TMP/x" $opt
done
expect 2 "train takes no --teacher" train --model "$MODEL" --teacher "$MODEL" "${OPTS[@]}" \
    --out "$TMP/x"
expect 2 "train takes no --teacher" train --model "$MODEL" --teacher-path "$MODEL" "${OPTS[@]}" \
    --out "$TMP/x"
expect 2 "--model (or --student, --model-path) is required" train "${OPTS[@]}" --out "$TMP/x"
[ -e "$TMP/x" ] || [ -e "$TMP/x.state" ] && fail "a refused run wrote '$TMP/x'"

# the memory plan has no teacher (text and --json)
run dry train --model "$MODEL" "${OPTS[@]}" --out "$TMP/dry" --dry-run
grep -q "model weights" "$TMP/dry.out" || fail "--dry-run prints no model weights"
grep -qi "teacher" "$TMP/dry.out" && fail "train's memory plan names a teacher: $(cat "$TMP/dry.out")"
run dryjson train --model "$MODEL" "${OPTS[@]}" --out "$TMP/dry" --dry-run --json
python3 - "$TMP/dryjson.out" <<'EOF' || fail "--dry-run --json: a teacher in the plan"
import json, sys
s = json.loads(open(sys.argv[1]).read())
assert s["ok"] and s["dry_run"] and s["teacher"] is None and s["memory"]["teacher"] == 0, s
EOF
# on a GPU (planned without opening one): the runtime scratch sized from the model's widths
run drycuda train --model "$MODEL" "${OPTS[@]}" --out "$TMP/dry" --dry-run --device cuda \
    --max-memory 64G
grep -q "runtime and GEMM scratch" "$TMP/drycuda.out" || fail "--device cuda: no runtime line"
grep -qi "teacher" "$TMP/drycuda.out" && fail "train's device plan names a teacher"
[ -e "$TMP/dry" ] && fail "--dry-run wrote its output"

# train, and distill without --teacher: the same bytes, and distill says what it does
run a train --model "$MODEL" "${OPTS[@]}" --out "$TMP/a" --dump-rows "$TMP/a.rows"
grep -q "^training '$MODEL' without a teacher: 4 steps" "$TMP/a.out" ||
    fail "train's start line: $(head -3 "$TMP/a.out")"
run d distill --model-path "$MODEL" "${OPTS[@]}" --out "$TMP/d"
grep -q "^training '$MODEL' without a teacher (no --teacher given: as lmsurgeon train)" \
    "$TMP/d.out" || fail "distill without --teacher does not say so: $(head -3 "$TMP/d.out")"
cmp -s "$TMP/a/model.safetensors" "$TMP/d/model.safetensors" ||
    fail "distill without --teacher trained another model than train"
python3 - "$TMP/logs/a.metrics.jsonl" <<'EOF' || fail "train's metrics"
import json, sys
train = [json.loads(l) for l in open(sys.argv[1])]
assert [l["step"] for l in train if l["event"] == "train"] == [1, 2, 3, 4], train
# the loss trained is the cross-entropy the log reports beside it
assert all(l["loss"] == l["lm_loss"] and l["loss"] > 0 for l in train), train
EOF

# the rows are distill's rows: a distillation with the same data options reads the same ones
run kd distill --student "$STUDENT" --teacher "$MODEL" "${OPTS[@]}" --out "$TMP/kd" \
    --dump-rows "$TMP/kd.rows"
cmp -s "$TMP/a.rows" "$TMP/kd.rows" || fail "train read other rows than distill"

# stopped after step 2, resumed (as distill --model-path, the same run): the same bytes; a
# distillation does not resume a training state
run b train --student "$MODEL" "${OPTS[@]}" --out "$TMP/b" --exit-interval 2 --quiet
grep -q '"step": 2' "$TMP/b.state/trainer_state.json" || fail "--exit-interval 2 did not stop at step 2"
expect 2 "another configuration (teacher was null, now {" distill --student "$MODEL" \
    --teacher "$MODEL" "${OPTS[@]}" --out "$TMP/b" --resume
run b2 distill --model "$MODEL" "${OPTS[@]}" --out "$TMP/b" --resume --json
cmp -s "$TMP/a/model.safetensors" "$TMP/b/model.safetensors" ||
    fail "resumed after step 2: the model differs from the uninterrupted run"
cmp -s "$TMP/a.state/optimizer.safetensors" "$TMP/b.state/optimizer.safetensors" ||
    fail "resumed after step 2: the optimiser state differs from the uninterrupted run"
python3 - "$TMP/b2.out" <<'EOF' || fail "the resumed run's --json summary"
import json, sys
s = json.loads(open(sys.argv[1]).read())
assert s["ok"] and s["teacher"] is None and s["start_step"] == 2 and s["steps"] == 4, s
assert not s["features"]["enabled"] and s["features"]["student"] is None, s
EOF
# and a training does not resume a distillation's state
expect 2 "another configuration (teacher was {" train --model "$STUDENT" "${OPTS[@]}" \
    --out "$TMP/kd" --resume

# --lm-loss-scale W other than 0 and 1 weights the cross-entropy term since the state records
# it (loss.lm_loss_weighted): a state saved without the key was trained with another loss
run w distill --student "$STUDENT" --teacher "$MODEL" "${OPTS[@]}" --out "$TMP/w" \
    --lm-loss-scale 0.5 --exit-interval 2 --quiet
python3 - "$TMP/w.state/trainer_state.json" <<'EOF' || fail "the state does not record the weighting"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["config"]["loss"].pop("lm_loss_weighted") is True, s["config"]["loss"]
json.dump(s, open(sys.argv[1], "w"))
EOF
expect 2 "another configuration (loss.lm_loss_weighted was absent, now true)" distill \
    --student "$STUDENT" --teacher "$MODEL" "${OPTS[@]}" --out "$TMP/w" --lm-loss-scale 0.5 \
    --resume

echo "$((n_checks - n_fail)) passed, $n_fail failed"
[ "$n_fail" = 0 ]
