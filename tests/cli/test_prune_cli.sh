#!/usr/bin/env bash
# prune from the command line: invalid targets are refused with their message before anything is
# written, --dry-run writes nothing, and a failed run leaves no output.
set -u
lms=${LMSURGEON:?}
fix=${LMS_FIXTURES:?}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fails=0; passes=0

# expect CODE SUBSTRING ARGS...: exit code, one stderr line containing SUBSTRING, no output dir
expect() {
    local code=$1 needle=$2
    shift 2
    "$lms" prune "$@" >"$work/stdout" 2>"$work/stderr"
    local rc=$? lines
    lines=$(wc -l <"$work/stderr")
    if [ "$rc" -ne "$code" ] || [ "$lines" -ne 1 ] || ! grep -qF -- "$needle" "$work/stderr" \
        || [ -e "$work/out" ] || ls -a "$work" | grep -q 'lms-tmp' \
        || grep -qE 'runtime error|AddressSanitizer' "$work/stderr"; then
        echo "FAIL: prune $* -> rc=$rc (want $code), stderr: $(cat "$work/stderr")"
        fails=$((fails + 1))
    else
        passes=$((passes + 1))
    fi
}

t="$fix/teacher"
expect 2 "larger than the current" "$t" "$work/out" --target-ffn-hidden-size 1000
expect 2 "larger than the current" "$t" "$work/out" --target-num-layers 13
expect 2 "positive integer" "$t" "$work/out" --target-hidden-size 0
expect 2 "positive integer" "$t" "$work/out" --target-num-layers -3
expect 2 "not a multiple" "$t" "$work/out" --target-num-attention-heads 3
expect 2 "more than the 4 heads per group" "$t" "$work/out" --target-num-query-groups 1 --target-num-attention-heads 6
expect 2 "outside 1..12" "$t" "$work/out" --drop-layers 13
expect 2 "outside 1..12" "$t" "$work/out" --drop-layers 0
expect 2 "drops every layer" "$t" "$work/out" --drop-layers 1-12
expect 2 "only one of" "$t" "$work/out" --drop-layers 2 --target-num-layers 8
expect 2 "unknown --layer-selection" "$t" "$work/out" --target-num-layers 8 --layer-selection best
expect 2 "needs an --importance" "$t" "$work/out" --target-num-layers 8 --layer-selection importance
expect 2 "expected IN and OUT" "$t"
expect 3 "format" "$t" "$work/out" --target-ffn-hidden-size 512 --importance "$fix/teacher/config.json"
expect 4 "does not exist" "$work/missing" "$work/out" --target-num-layers 2

# --dry-run writes nothing, also with an output path given
"$lms" prune "$t" "$work/out" --dry-run --target_num_layers 8 --target_ffn_hidden_size 512 \
    >"$work/stdout" 2>"$work/stderr"
if [ $? -ne 0 ] || [ -e "$work/out" ] || ! grep -q "12 -> 8" "$work/stdout"; then
    echo "FAIL: --dry-run"; fails=$((fails + 1))
else
    passes=$((passes + 1))
fi

# the reference workflow's spelling works end to end
"$lms" prune --restore_path "$t" --save_path "$work/out" --target_num_layers 8 --quiet
if [ $? -ne 0 ] || [ ! -f "$work/out/config.json" ] || ! grep -q '"num_hidden_layers": 8' "$work/out/config.json"; then
    echo "FAIL: underscore flags"; fails=$((fails + 1))
else
    passes=$((passes + 1))
fi

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
