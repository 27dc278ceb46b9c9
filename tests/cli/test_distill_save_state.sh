#!/usr/bin/env bash
# distill --save-state: what a run leaves on disk. interval (the default) writes the training
# state DIR.state/ at every save; end writes the student alone at --save-interval and the state
# only when the process stops (end, --exit-interval, SIGINT), from which --resume ends with the
# bytes of an uninterrupted run; never writes no state (and removes an earlier run's on --force),
# and refuses --exit-interval and --resume. The student's bytes never depend on the mode.
set -u

source "$(dirname "$0")/lib.sh"
TEACHER=$FIXTURES/models/qwen3-tiny
STUDENT=$FIXTURES/models/qwen3-tiny-distill-reference/student

lms_scratch save-state

# held-out text ids folded into the tiny models' 512-entry vocabulary, as a raw int32 id file
python3 - "$FIXTURES/corpus/val.ids.u16" "$TMP/ids.i32" <<'EOF'
import array, sys
ids = array.array("H")
with open(sys.argv[1], "rb") as f:
    ids.frombytes(f.read(2 * 200000))
array.array("i", (i % 512 for i in ids)).tofile(open(sys.argv[2], "wb"))
EOF
# 4 steps of 4 rows x 32 tokens; --save-interval 1 so that every step saves
RUN=(--student "$STUDENT" --teacher "$TEACHER" --data-paths "$TMP/ids.i32" --split 1
     --seq-length 32 --gbs 4 --mbs 2 --max-steps 4 --warmup-steps 1 --lr 1e-3 --min-lr 1e-4
     --optim-preset gpt --limit-val-batches 0 --threads 1 --log-dir "$TMP/logs" --save-interval 1)

# run NAME ARGS...: a distill run to $TMP/NAME that must succeed
run() {
    local name=$1
    shift
    n_checks=$((n_checks + 1))
    "$LMSURGEON" distill "${RUN[@]}" --out "$TMP/$name" "$@" >"$TMP/$name.out" 2>"$TMP/err" ||
        { fail "distill --out $name $*: exit $?"; cat "$TMP/err" >&2; }
}

# state_step DIR: the step recorded in DIR/trainer_state.json
state_step() {
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["step"])' \
        "$1/trainer_state.json" 2>/dev/null
}

# expect CODE PATTERN ARGS...: exit CODE, one line on stderr matching PATTERN, nothing written
expect() {
    local code=$1 pat=$2
    shift 2
    n_checks=$((n_checks + 1))
    "$LMSURGEON" distill "$@" >"$TMP/out" 2>"$TMP/err" </dev/null
    local rc=$?
    if [ "$rc" != "$code" ] || ! grep -q -- "$pat" "$TMP/err" || [ "$(wc -l <"$TMP/err")" != 1 ] ||
        [ -s "$TMP/out" ]; then
        fail "distill $*: exit $rc (want $code /$pat/), stderr:"
        cat "$TMP/err" >&2
    fi
}

# the reference: today's behaviour, the state beside the student at the end
run ref
[ "$(state_step "$TMP/ref.state")" = 4 ] || fail "default: no state of step 4"
run interval --save-state interval
cmp -s "$TMP/ref/model.safetensors" "$TMP/interval/model.safetensors" &&
    cmp -s "$TMP/ref.state/optimizer.safetensors" "$TMP/interval.state/optimizer.safetensors" ||
    fail "--save-state interval differs from the default"

# never: the same student, no state, the summary says so
run never --save-state never --json
[ -e "$TMP/never.state" ] && fail "--save-state never wrote '$TMP/never.state'"
cmp -s "$TMP/ref/model.safetensors" "$TMP/never/model.safetensors" ||
    fail "--save-state never: the student differs from the default run's"
python3 -c 'import json, sys; s = json.load(open(sys.argv[1])); assert s["state"] is None, s' \
    "$TMP/never.out" || fail "--save-state never: --json's state is not null"

# never with --force over an earlier run's state: that state goes once the student is written
cp -r "$TMP/ref.state" "$TMP/never.state"
run never --save-state never --force
[ -e "$TMP/never.state" ] && fail "--save-state never --force left an earlier run's state"
grep -q "no training state (--save-state never)" "$TMP/never.out" ||
    fail "--save-state never: the summary does not say that no state was written"

# end, stopped by --exit-interval: the state of step 3, resumed to the reference's bytes
run end --save-state end --exit-interval 3
[ "$(state_step "$TMP/end.state")" = 3 ] || fail "--save-state end: no state at the --exit-interval stop"
run end --save-state end --resume
cmp -s "$TMP/ref/model.safetensors" "$TMP/end/model.safetensors" &&
    cmp -s "$TMP/ref.state/optimizer.safetensors" "$TMP/end.state/optimizer.safetensors" ||
    fail "--save-state end, resumed after step 3: differs from the uninterrupted run"
[ "$(state_step "$TMP/end.state")" = 4 ] || fail "--save-state end: no state of step 4 at the end"

# end: the saves before the stop write the student alone. A run killed (SIGKILL) once its first
# student is on disk has no state; with interval the state is written before the student.
LONG=(--max-steps 1000 --seq-length 64)
for mode in end interval; do
    n_checks=$((n_checks + 1))
    "$LMSURGEON" distill "${RUN[@]}" "${LONG[@]}" --out "$TMP/kill-$mode" --save-state "$mode" \
        --quiet 2>"$TMP/err" &
    pid=$!
    for _ in $(seq 1200); do
        [ -e "$TMP/kill-$mode/config.json" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.02
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    [ -e "$TMP/kill-$mode/config.json" ] || { fail "$mode: no student appeared"; continue; }
    if [ "$mode" = end ]; then
        [ -e "$TMP/kill-end.state" ] && fail "--save-state end wrote a state at a --save-interval save"
    else
        [ -n "$(state_step "$TMP/kill-interval.state")" ] || fail "--save-state interval: no state at a save"
    fi
done

# SIGINT to run PID once its metrics file (run NAME) records step 2; returns the run's exit code
interrupt_after_step2() {
    local pid=$1 name=$2
    for _ in $(seq 600); do
        grep -q '"step":2' "$TMP/logs/$name.metrics.jsonl" 2>/dev/null && break
        sleep 0.02
    done
    kill -INT "$pid"
    wait "$pid"
}

# end and SIGINT: the state of the last finished step, and the resumed run ends where an
# uninterrupted one does
n_checks=$((n_checks + 1))
SIG=(--max-steps 12 --seq-length 64)
"$LMSURGEON" distill "${RUN[@]}" "${SIG[@]}" --out "$TMP/sig" --save-state end >"$TMP/sig.out" \
    2>"$TMP/sig.err" &
interrupt_after_step2 $! sig
rc=$?
if [ "$rc" = 130 ]; then
    step=$(state_step "$TMP/sig.state")
    [ -n "$step" ] && [ "$step" -ge 2 ] || fail "--save-state end: SIGINT saved no state"
    run sig "${SIG[@]}" --save-state end --resume
    run sig-ref "${SIG[@]}"
    cmp -s "$TMP/sig/model.safetensors" "$TMP/sig-ref/model.safetensors" ||
        fail "--save-state end, resumed after SIGINT: the student differs"
elif [ "$rc" = 0 ]; then
    echo "note: the run finished before SIGINT arrived; SIGINT path not exercised" >&2
else
    fail "--save-state end, SIGINT: exit $rc (want 130)"; cat "$TMP/sig.err" >&2
fi

# never and SIGINT: the student of the last finished step, no state, exit 130
n_checks=$((n_checks + 1))
"$LMSURGEON" distill "${RUN[@]}" "${LONG[@]}" --out "$TMP/sig-never" --save-state never \
    --quiet 2>"$TMP/sig.err" &
interrupt_after_step2 $! sig-never
rc=$?
if [ "$rc" = 130 ]; then
    grep -q "interrupted: the student after step [0-9]* is in .*--save-state never" "$TMP/sig.err" ||
        fail "--save-state never, SIGINT: message: $(cat "$TMP/sig.err")"
    [ -f "$TMP/sig-never/config.json" ] || fail "--save-state never, SIGINT: no student"
    [ -e "$TMP/sig-never.state" ] && fail "--save-state never, SIGINT: a state was written"
else
    fail "--save-state never, SIGINT: exit $rc (want 130)"; cat "$TMP/sig.err" >&2
fi

# refusals
expect 2 "unknown --save-state 'always'" "${RUN[@]}" --out "$TMP/x" --save-state always
expect 2 "exit-interval needs a training state" "${RUN[@]}" --out "$TMP/x" --save-state never \
    --exit-interval 2
expect 2 "resume with --save-state never" "${RUN[@]}" --out "$TMP/end" --save-state never --resume
[ -e "$TMP/x" ] && fail "a refused run wrote '$TMP/x'"
n_checks=$((n_checks + 1))
"$LMSURGEON" distill --help | grep -q -- "--save-state WHEN" || fail "--help does not list --save-state"

echo "distill --save-state: $n_checks checks, $n_fail failures"
[ "$n_fail" = 0 ]
