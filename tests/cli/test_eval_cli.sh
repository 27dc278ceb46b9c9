#!/usr/bin/env bash
# eval and generate misuse: usage errors exit 2, a device that is not compiled in or not present
# exits 6, missing data exits 4, a model that is not a checkpoint exits 3 or 4; each prints one
# "lmsurgeon CMD: ..." line on stderr naming the culprit, nothing on stdout (one JSON object with
# ok=false under --json). Any sanitizer report on stderr fails the test.
set -u

source "$(dirname "$0")/lib.sh"
TEACHER=$FIXTURES/teacher
IDS=$FIXTURES/corpus/val.ids.u16

lms_scratch eval

# expect CODE PATTERN ARGS...: exit code CODE, stderr one line matching PATTERN, stdout empty
expect() {
    local code=$1 pat=$2
    shift 2
    n_checks=$((n_checks + 1))
    "$LMSURGEON" "$@" >"$TMP/out" 2>"$TMP/err" </dev/null
    local rc=$?
    local lines
    lines=$(wc -l <"$TMP/err")
    if [ "$rc" != "$code" ] || ! grep -q -- "$pat" "$TMP/err" || [ "$lines" != 1 ] ||
        [ -s "$TMP/out" ] || grep -q -i "sanitizer" "$TMP/err"; then
        fail "lmsurgeon $*: exit $rc (want $code), stderr:"
        cat "$TMP/err" >&2
    fi
}

expect 2 "expected one MODEL" eval --data "$IDS"
expect 2 "required" eval "$TEACHER"
expect 2 "unknown device 'gpu'" eval "$TEACHER" --data "$IDS" --device gpu
expect 2 "ordinal" eval "$TEACHER" --data "$IDS" --device cuda:x
expect 2 "invalid --seq-length" eval "$TEACHER" --data "$IDS" --seq-length 1
expect 2 "exclude" eval "$TEACHER" --data "$IDS" --all --num-samples 3
expect 2 "full windows" eval "$TEACHER" --data "$IDS" --num-samples 100000000
expect 4 "no '$TMP/nothing.idx'" eval "$TEACHER" --data "$TMP/nothing"
expect 6 "device 'cuda:7'" eval "$TEACHER" --data "$IDS" --device cuda:7 --num-samples 1
expect 2 "unknown precision 'fp8'" eval "$TEACHER" --data "$IDS" --precision fp8
# no NVIDIA device node: plain --device cuda fails with one line naming cuda:0, exit 6 (a build
# without nvcc says it has no CUDA backend; one with it, that no usable device is present)
if [ ! -e /dev/nvidiactl ] && [ ! -e /dev/nvidia0 ]; then
    expect 6 "device 'cuda:0'" eval "$TEACHER" --data "$IDS" --device cuda --num-samples 1
    expect 6 "device 'cuda:0'" generate "$TEACHER" --prompt x --device cuda --max-new-tokens 1
fi
mkdir -p "$TMP/notamodel"
echo '{}' >"$TMP/notamodel/config.json"
n_checks=$((n_checks + 1))
"$LMSURGEON" eval "$TMP/notamodel" --data "$IDS" --num-samples 1 >"$TMP/out" 2>"$TMP/err"
rc=$?
if [ "$rc" != 3 ] && [ "$rc" != 4 ]; then
    fail "eval of a directory that is not a checkpoint exits $rc"
    cat "$TMP/err" >&2
fi
expect 2 "required" generate "$TEACHER"
expect 2 "invalid --max-new-tokens" generate "$TEACHER" --prompt x --max-new-tokens 0
# (a prompt plus new tokens past the model's positions is no longer refused: it runs with a
# warning, as eval, score, prune and distill do; tests/cli/test_positions.sh checks that)

# --json failure: one object with ok=false on stdout
n_checks=$((n_checks + 1))
"$LMSURGEON" eval "$TEACHER" --data "$TMP/nothing" --json >"$TMP/out" 2>/dev/null
grep -q '"ok":false' "$TMP/out" || fail "eval --json failure did not print ok=false"
# --help
for c in eval generate; do
    n_checks=$((n_checks + 1))
    "$LMSURGEON" $c --help | grep -q "usage: lmsurgeon $c" || fail "$c --help"
done

echo "$n_checks checks, $n_fail failed"
[ "$n_fail" = 0 ]
