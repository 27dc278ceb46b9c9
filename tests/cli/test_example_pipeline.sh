#!/usr/bin/env bash
# examples/pipeline.c, the library used as a batch script would use it (the installed shared
# library and the public headers only), against the command-line tool given the same options:
# its NeMo 2 conversion, its calibrated and pruned student and its distilled student are
# byte-identical to what `lmsurgeon convert`, `prune` and `distill` write.
set -u

source "$(dirname "$0")/lib.sh"
PIPELINE=${LMS_EXAMPLE_PIPELINE:-}
[ -x "$PIPELINE" ] || { echo "SKIP: the example program is not built here"; exit 77; }
TEACHER=$FIXTURES/teacher
DATA=$FIXTURES/corpus/val.ids.u16

lms_scratch example
same_files() { # DIR_A DIR_B: every file of A is in B with the same bytes, and B has no other
    local a=$1 b=$2 f
    n_checks=$((n_checks + 1))
    [ "$( (cd "$a" && find . -type f | sort) )" = "$( (cd "$b" && find . -type f | sort) )" ] ||
        { fail "$a and $b hold different files"; return; }
    for f in $(cd "$a" && find . -type f); do
        cmp -s "$a/$f" "$b/$f" || fail "$a/$f differs from $b/$f"
    done
}

mkdir "$TMP/lib" "$TMP/cli"
n_checks=$((n_checks + 1))
if ! "$PIPELINE" "$TEACHER" "$DATA" "$TMP/lib" > "$TMP/lib.out" 2> "$TMP/lib.err"; then
    fail "the example failed: $(cat "$TMP/lib.err")"
fi
n_checks=$((n_checks + 1))
[ "$(grep -c '^distill step' "$TMP/lib.out")" = 3 ] || fail "the example logged no 3 steps: $(cat "$TMP/lib.out")"

"$LMSURGEON" convert "$TEACHER" "$TMP/cli/teacher-nemo" --to nemo --quiet ||
    fail "lmsurgeon convert failed"
"$LMSURGEON" prune "$TEACHER" "$TMP/cli/student" --data-paths "$DATA" --num-train-samples 8 \
    --seq-length 64 --threads 1 --target-ffn-hidden-size "$(python3 -c "
import json; print(json.load(open('$TEACHER/config.json'))['intermediate_size'] * 3 // 4)")" \
    --target-num-layers "$(python3 -c "
import json; print(json.load(open('$TEACHER/config.json'))['num_hidden_layers'] - 2)")" \
    --layer-selection bi --quiet || fail "lmsurgeon prune failed"
"$LMSURGEON" distill --student "$TMP/cli/student" --teacher "$TEACHER" --data-paths "$DATA" \
    --split 1 --seq-length 32 --gbs 4 --mbs 2 --max-steps 3 --lr 1e-3 --min-lr 1e-4 \
    --limit-val-batches 0 --threads 1 --out "$TMP/cli/distilled" --log-dir "$TMP/cli/logs" \
    --quiet || fail "lmsurgeon distill failed"

# the NeMo 2 metadata records no time or path, so whole directories compare
same_files "$TMP/lib/teacher-nemo" "$TMP/cli/teacher-nemo"
same_files "$TMP/lib/student" "$TMP/cli/student"
n_checks=$((n_checks + 1))
cmp -s "$TMP/lib/distilled/model.safetensors" "$TMP/cli/distilled/model.safetensors" ||
    fail "the distilled students differ"

echo "$((n_checks - n_fail)) of $n_checks checks passed"
[ "$n_fail" -eq 0 ]
