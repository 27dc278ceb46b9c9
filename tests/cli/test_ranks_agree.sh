#!/usr/bin/env bash
# Ranks started with different options (mpirun's MPMD form, `-np 1 A : -np 1 B`): distill and
# score end every rank before any step with one line naming the first option that differs, the
# launcher's status is the usage error (2), and nothing is written. Checked for each kind of
# option that used to crash a run (--max-steps, --save-interval, --limit-val-batches) or to mix
# two runs into one model (--lr, --gbs, --seed, --seq-length), and for inputs that differ in
# content only (a teacher with one weight changed, same path layout). Skipped (77) when no MPI
# launcher is given.
set -u

source "$(dirname "$0")/lib.sh"
MPIRUN=${MPIRUN:-}
[ -n "$MPIRUN" ] && [ -x "$MPIRUN" ] || { echo "SKIP: no mpirun (MPIRUN unset)"; exit 77; }
TEACHER=$FIXTURES/models/qwen3-tiny
STUDENT=$FIXTURES/models/qwen3-tiny-distill-reference/student
# as in test_distill_dp.sh: root in containers, OpenMPI's allocations under LeakSanitizer, two
# processes on a small machine
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export LSAN_OPTIONS="${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$ROOT/tests/cli/lsan-mpi.supp"
export OMPI_MCA_mca_base_component_disable_dlclose=1
# (full stacks, so that the suppressions see OpenMPI's frames; ignored by builds without ASan)
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}fast_unwind_on_malloc=0"
MPI=("$MPIRUN" --oversubscribe --bind-to none --mca btl self,vader,tcp --mca btl_base_warn_component_unused 0)

lms_scratch ranks

# ids below the tiny models' 512-entry vocabulary, as a Megatron dataset of 20 documents, and
# other ids as a raw int32 file
python3 - "$FIXTURES/corpus/val.ids.u16" "$TMP" <<'EOF'
import array, struct, sys
ids = array.array("H")
with open(sys.argv[1], "rb") as f:
    ids.frombytes(f.read(2 * 40000))
out, n, size = sys.argv[2], 20, 2000
with open(out + "/data.bin", "wb") as f:
    array.array("i", (i % 512 for i in ids)).tofile(f)
with open(out + "/data.idx", "wb") as f:
    f.write(b"MMIDIDX\0\0" + struct.pack("<QBQQ", 1, 4, n, n + 1))
    f.write(struct.pack(f"<{n}i", *[size] * n))
    f.write(struct.pack(f"<{n}q", *[4 * size * i for i in range(n)]))
    f.write(struct.pack(f"<{n + 1}q", *range(n + 1)))
with open(out + "/other.i32", "wb") as f:
    array.array("i", ((i + 3) % 512 for i in ids)).tofile(f)
EOF
# the teacher with one weight changed
cp -r "$TEACHER" "$TMP/teacher2"
python3 - "$TMP/teacher2/model.safetensors" <<'EOF'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(-2, 2)
    b = f.read(1)
    f.seek(-2, 2)
    f.write(bytes([b[0] ^ 0x40]))
EOF

# disagree CMD OPTION "ARGS OF RANK 0" "ARGS OF RANK 1": the launcher ends with 2, the one
# lmsurgeon line names OPTION, nothing is written under $TMP/out*
disagree() {
    local cmd=$1 option=$2 a0=$3 a1=$4
    n_checks=$((n_checks + 1))
    # shellcheck disable=SC2086 # the argument strings are word lists
    timeout 120 "${MPI[@]}" -np 1 "$LMSURGEON" "$cmd" $a0 : -np 1 "$LMSURGEON" "$cmd" $a1 \
        >"$TMP/stdout" 2>"$TMP/stderr"
    local rc=$?
    local lines
    lines=$(grep -c "^lmsurgeon $cmd" "$TMP/stderr")
    if [ "$rc" != 2 ] || [ "$lines" != 1 ] ||
        ! grep -q "^lmsurgeon $cmd: error: the ranks were started with different $option;" "$TMP/stderr"; then
        fail "$cmd with ranks differing in $option: exit $rc, $lines lines (want 2, one naming $option):"
        grep -v "^---\|^$" "$TMP/stderr" | head -5 >&2
    fi
    if compgen -G "$TMP/out*" >/dev/null; then
        fail "$cmd with ranks differing in $option wrote $(echo "$TMP"/out*)"
        rm -rf "$TMP"/out*
    fi
}

D="--student $STUDENT --data-paths $TMP/data --split 90,10,0 --seq-length 16 --gbs 4 --mbs 1 --max-steps 4
   --threads 1 --log-dir $TMP/out-logs --out $TMP/out --quiet"
T="--teacher $TEACHER"
disagree distill --max-steps "$D $T --max-steps 10" "$D $T --max-steps 12"
disagree distill --save-interval "$D $T --save-interval 1" "$D $T --save-interval 2"
disagree distill --limit-val-batches "$D $T --limit-val-batches 0" "$D $T --limit-val-batches 1"
disagree distill --lr "$D $T --lr 1e-3" "$D $T --lr 2e-3"
disagree distill --gbs "$D $T --gbs 4" "$D $T --gbs 8"
disagree distill --seed "$D $T --seed 1" "$D $T --seed 2"
disagree distill --seq-length "$D $T --seq-length 16" "$D $T --seq-length 24"
disagree distill --teacher "$D $T" "$D --teacher $TMP/teacher2"
# the first that differs is named
disagree distill --seq-length "$D $T --seq-length 24 --lr 1e-3" "$D $T --lr 2e-3"

S="$TEACHER -o $TMP/out.json --num-samples 4 --seq-length 16 --micro-batch-size 1 --threads 1 --quiet"
disagree score --seq-length "$S --data $TMP/data" "$S --data $TMP/data --seq-length 32"
disagree score --data "$S --data $TMP/data" "$S --data $TMP/other.i32"
disagree score --rows "$S --data $TMP/data" "$S --data $TMP/data --num-samples 6"

echo "$n_checks checks, $n_fail failures"
[ "$n_fail" = 0 ]
