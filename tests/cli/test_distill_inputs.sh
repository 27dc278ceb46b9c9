#!/usr/bin/env bash
# distill --resume knows its inputs by content, not by path: a run stopped after step 2 is
# refused, with the changed input named, when resumed with a teacher of the same shape but other
# weights, with other tokens under the same file name, or with another student of the same
# shape; it resumes when the same files have moved (other folders, other names), and then ends
# with the same bytes as the run that never stopped.
set -u

source "$(dirname "$0")/lib.sh"
TEACHER=$FIXTURES/models/qwen3-tiny # 4 layers

lms_scratch inputs

# the data (ids folded below the tiny model's 512-entry vocabulary, as a Megatron dataset of 20
# documents) and, under the same file name in another folder, the same layout with other ids
mkdir -p "$TMP/a" "$TMP/b"
python3 - "$FIXTURES/corpus/val.ids.u16" "$TMP" <<'EOF'
import array, struct, sys
src, out = sys.argv[1], sys.argv[2]
ids = array.array("H")
with open(src, "rb") as f:
    ids.frombytes(f.read(2 * 40000))
n, size = 20, 2000
for folder, shift in (("a", 0), ("b", 7)):
    with open(f"{out}/{folder}/data.bin", "wb") as f:
        array.array("i", ((i + shift) % 512 for i in ids)).tofile(f)
    with open(f"{out}/{folder}/data.idx", "wb") as f:
        f.write(b"MMIDIDX\0\0" + struct.pack("<QBQQ", 1, 4, n, n + 1))
        f.write(struct.pack(f"<{n}i", *[size] * n))
        f.write(struct.pack(f"<{n}q", *[4 * size * i for i in range(n)]))
        f.write(struct.pack(f"<{n + 1}q", *range(n + 1)))
EOF
# a teacher of the same shape with one weight changed (the last bf16/fp32 byte of the file)
cp -r "$TEACHER" "$TMP/teacher2"
python3 - "$TMP/teacher2/model.safetensors" <<'EOF'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(-2, 2)
    b = f.read(1)
    f.seek(-2, 2)
    f.write(bytes([b[0] ^ 0x40]))
EOF
# two students of the same shape: layers 1-2 and layers 2-3 of the teacher
"$LMSURGEON" prune "$TEACHER" "$TMP/s12" --keep-layers 1,2 --quiet &&
    "$LMSURGEON" prune "$TEACHER" "$TMP/s23" --keep-layers 2,3 --quiet ||
    fail "pruning the students failed"

RUN=(--split 1 --seq-length 32 --gbs 4 --mbs 2 --max-steps 4 --warmup-steps 1 --lr 1e-3
     --min-lr 1e-4 --limit-val-batches 0 --threads 1 --log-dir "$TMP/logs" --quiet)
ORIG=(--student "$TMP/s12" --teacher "$TEACHER" --data-paths "$TMP/a/data")

# the run that never stops, and the one stopped after step 2
"$LMSURGEON" distill "${ORIG[@]}" "${RUN[@]}" --out "$TMP/whole" 2>"$TMP/err" ||
    { fail "the 4-step run failed"; cat "$TMP/err" >&2; }
"$LMSURGEON" distill "${ORIG[@]}" "${RUN[@]}" --out "$TMP/part" --exit-interval 2 2>"$TMP/err" ||
    { fail "the stopped run failed"; cat "$TMP/err" >&2; }
cp -r "$TMP/part.state" "$TMP/state-after-2"

# refused CHANGED PATTERN ARGS...: --resume with ARGS exits 2 with one line naming the field,
# and leaves the state as it was
refused() {
    local what=$1 pat=$2
    shift 2
    n_checks=$((n_checks + 1))
    "$LMSURGEON" distill "$@" "${RUN[@]}" --out "$TMP/part" --resume >"$TMP/out" 2>"$TMP/err"
    local rc=$?
    if [ "$rc" != 2 ] || ! grep -q -- "$pat" "$TMP/err" || [ "$(wc -l <"$TMP/err")" != 1 ]; then
        fail "--resume with $what: exit $rc (want 2, /$pat/), stderr:"; cat "$TMP/err" >&2
    fi
    diff -r "$TMP/part.state" "$TMP/state-after-2" >/dev/null ||
        fail "--resume with $what changed the state"
}
refused "another teacher" "another configuration (teacher.fingerprint was \"[0-9a-f]\{16\}\", now" \
    --student "$TMP/s12" --teacher "$TMP/teacher2" --data-paths "$TMP/a/data"
refused "other tokens under the same name" "(data\[0\].fingerprint was" \
    --student "$TMP/s12" --teacher "$TEACHER" --data-paths "$TMP/b/data"
refused "another student of the same shape" "(student.fingerprint was" \
    --student "$TMP/s23" --teacher "$TEACHER" --data-paths "$TMP/a/data"

# the same files moved: student, teacher and data in other folders under other names
n_checks=$((n_checks + 1))
mkdir "$TMP/moved"
mv "$TMP/s12" "$TMP/moved/student"
cp -r "$TEACHER" "$TMP/moved/teacher"
mv "$TMP/a/data.bin" "$TMP/moved/tokens.bin"
mv "$TMP/a/data.idx" "$TMP/moved/tokens.idx"
"$LMSURGEON" distill --student "$TMP/moved/student" --teacher "$TMP/moved/teacher" \
    --data-paths "$TMP/moved/tokens" "${RUN[@]}" --out "$TMP/part" --resume 2>"$TMP/err" ||
    { fail "--resume with the same inputs moved failed"; cat "$TMP/err" >&2; }
cmp -s "$TMP/whole/model.safetensors" "$TMP/part/model.safetensors" &&
    cmp -s "$TMP/whole.state/optimizer.safetensors" "$TMP/part.state/optimizer.safetensors" ||
    fail "resumed with moved inputs: the student or state differs from the uninterrupted run"

echo "$n_checks checks, $n_fail failures"
[ "$n_fail" = 0 ]
