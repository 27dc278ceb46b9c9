#!/usr/bin/env bash
# The row order (README "Row order") against tests/tools/sampler_reference.py, an independent
# Python version of the documented algorithm: it still writes tests/golden/sampler_order.txt
# (which the unit tests hold the C sampler to), and the rows `distill --dump-rows` reads equal
# the ones it computes, for a one-epoch run over many documents, for a run whose final epoch is
# shuffled apart, and with the index in a cache file beside the data; --resume refuses a
# training state whose rows came in the old order.
set -u

source "$(dirname "$0")/lib.sh"
REF=$ROOT/tests/tools/sampler_reference.py
TEACHER=$FIXTURES/models/qwen3-tiny
STUDENT=$FIXTURES/models/qwen3-tiny-distill-reference/student

lms_scratch sampler

python3 "$REF" golden >"$TMP/golden.txt" || fail "sampler_reference.py golden failed"
cmp -s "$TMP/golden.txt" "$ROOT/tests/golden/sampler_order.txt" ||
    fail "tests/golden/sampler_order.txt is not what the reference writes"

# Two Megatron indexed datasets of int32 ids below the tiny models' 512-entry vocabulary: 300
# documents of 20 to 400 tokens, and 20 documents of 10 tokens (200 tokens: a few rows need a
# second epoch)
python3 - "$TMP" <<'EOF'
import array, struct, sys
def write(prefix, lens):
    n = len(lens)
    ids = array.array("i", ((7 * i + 3) % 512 for i in range(sum(lens))))
    with open(prefix + ".bin", "wb") as f:
        ids.tofile(f)
    ptr = [0]
    for l in lens[:-1]:
        ptr.append(ptr[-1] + 4 * l)
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\0\0" + struct.pack("<QBQQ", 1, 4, n, n + 1))
        f.write(struct.pack(f"<{n}i", *lens))
        f.write(struct.pack(f"<{n}q", *ptr))
        f.write(struct.pack(f"<{n + 1}q", *range(n + 1)))
write(sys.argv[1] + "/many", [20 + (d * 97) % 381 for d in range(300)])
write(sys.argv[1] + "/small", [10] * 20)
EOF

# check NAME PREFIX SEQ GBS STEPS SEED SPLIT [ENV...]: distill's rows equal the reference's
check() {
    local name=$1 prefix=$2 seq=$3 gbs=$4 steps=$5 seed=$6 split=$7
    shift 7
    env "$@" "$LMSURGEON" distill --student "$STUDENT" --teacher "$TEACHER" --data-paths "$prefix" \
        --split "$split" --seq-length "$seq" --gbs "$gbs" --mbs "$gbs" --max-steps "$steps" \
        --seed "$seed" --limit-val-batches 0 --threads 1 --log-dir "$TMP/logs" \
        --out "$TMP/out-$name" --dump-rows "$TMP/$name.rows" --quiet </dev/null ||
        { fail "$name: distill failed"; return; }
    python3 "$REF" rows "$prefix" "$TMP/$name.want" --seq-length "$seq" --rows $((gbs * steps)) \
        --seed "$seed" --split "$split" || { fail "$name: reference failed"; return; }
    cmp -s "$TMP/$name.rows" "$TMP/$name.want" || fail "$name: rows differ from the reference"
}

check one-epoch "$TMP/many" 32 8 3 77 969,30,1
check separate-final-epoch "$TMP/small" 32 4 2 5 1
check merged-final-epoch "$TMP/small" 32 4 3 5 1
ls "$TMP"/many.sampler-*.cache >/dev/null 2>&1 && fail "a small index went to a cache file"
check cached "$TMP/many" 32 8 3 77 969,30,1 LMS_SAMPLER_MEMORY_LIMIT=1
ls "$TMP"/many.sampler-*.cache >/dev/null 2>&1 || fail "no cache file beside the data"
cmp -s "$TMP/cached.rows" "$TMP/one-epoch.rows" || fail "the cached index reads other rows"

# a training state saved before the row order changed (no row_order in its configuration) is
# not resumed onto other rows
RUN=(--student "$STUDENT" --teacher "$TEACHER" --data-paths "$TMP/many" --seq-length 32 --gbs 4
     --mbs 4 --max-steps 2 --limit-val-batches 0 --threads 1 --log-dir "$TMP/logs"
     --out "$TMP/r" --quiet)
"$LMSURGEON" distill "${RUN[@]}" --exit-interval 1 </dev/null || fail "first half of a run failed"
python3 - "$TMP/r.state/trainer_state.json" <<'EOF'
import json, sys
state = json.load(open(sys.argv[1]))
assert state["config"]["row_order"] == "megatron-gpt-dataset", state["config"]
del state["config"]["row_order"]
json.dump(state, open(sys.argv[1], "w"))
EOF
"$LMSURGEON" distill "${RUN[@]}" --resume </dev/null 2>"$TMP/err"
rc=$?
[ "$rc" = 2 ] && grep -q "row_order was absent" "$TMP/err" ||
    fail "resuming a state of the old row order: exit $rc, $(cat "$TMP/err")"

if [ "$n_fail" -gt 0 ]; then
    echo "$n_fail check(s) failed" >&2
    exit 1
fi
echo "sampler order: all checks passed"
