#!/usr/bin/env bash
# GPU check of the NCCL path of data-parallel distillation (scripts/gpu-check step "nccl"):
#  1. COMM_TEST (the test_comm_nccl executable), when given: NCCL loaded, joined and run in
#     place on device buffers by a one-rank communicator;
#  2. `mpirun -np 1 lmsurgeon distill --device cuda` (or, where there is no mpirun, the same run
#     with LMS_COMM_SELF=1: one rank without MPI) - the sharded optimiser step with its NCCL
#     reduce-scatter and all-gather - against the same run with no launcher. The CUDA kernels' own run-to-run determinism is measured first (two runs with no
# launcher): when those agree bit for bit the NCCL run must too, else it must agree as closely
# as they do (relative 1e-5). Several GPUs cannot be tested on one; the CPU tests
# (tests/cli/test_distill_dp.sh) cover the same code paths with MPI.
# Skips (77) without libnccl.so.2 or CUDA training support (step 2; step 1 still counts).
#   LMSURGEON=build-gpu/cli/lmsurgeon COMM_TEST=build-gpu/tests/gpu/test_comm_nccl \
#       tests/gpu/nccl_one_rank.sh
set -u
: "${LMSURGEON:?LMSURGEON must name the lmsurgeon binary}"
ROOT=${LMS_SOURCE_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
FIXTURES=${LMS_FIXTURES:-$ROOT/fixtures}
MPIRUN=${MPIRUN:-$(command -v mpirun)}
# NCCL from the system, else from the Python environment's nvidia-nccl wheel
if ! ldconfig -p 2>/dev/null | grep -q libnccl.so.2; then
    lib=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)
    [ -n "$lib" ] && [ -e "$lib/libnccl.so.2" ] ||
        lib=$(dirname "$(find "${VENV:-$HOME/.cache/lmsurgeon/venv}" -name libnccl.so.2 2>/dev/null | head -1)")
    [ -e "$lib/libnccl.so.2" ] || { echo "SKIP: no libnccl.so.2"; exit 77; }
    export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "libnccl.so.2 from $lib"
fi
if [ -n "${COMM_TEST:-}" ]; then
    LMS_TEST_DEVICE=cuda "$COMM_TEST"
    rc=$?
    [ "$rc" = 77 ] && { echo "SKIP: no CUDA device"; exit 77; }
    [ "$rc" = 0 ] || { echo "FAIL: $COMM_TEST"; exit 1; }
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
TMP=$(mktemp -d "${TMPDIR:-/tmp}/lms-nccl.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
RUN=(distill --student "$FIXTURES/models/qwen3-tiny-distill-reference/student"
     --teacher "$FIXTURES/models/qwen3-tiny" --data-paths "$FIXTURES/corpus/val.ids.u16"
     --split 1 --seq-length 32 --gbs 4 --mbs 2 --max-steps 3 --warmup-steps 1 --lr 1e-3
     --min-lr 1e-4 --optim-preset gpt --limit-val-batches 0 --dtype f32 --device cuda
     --log-dir "$TMP/logs" --quiet --json)
# the tiny models have 512 ids: fold the corpus into them
python3 -c 'import array,sys; a=array.array("H"); a.frombytes(open(sys.argv[1],"rb").read(80000)); array.array("H",(x%512 for x in a)).tofile(open(sys.argv[2],"wb"))' \
    "$FIXTURES/corpus/val.ids.u16" "$TMP/ids.u16"
RUN[6]=$TMP/ids.u16
"$LMSURGEON" "${RUN[@]}" --out "$TMP/a" >"$TMP/a.json" 2>"$TMP/err"
rc=$?
if [ "$rc" != 0 ]; then
    grep -q "no training support" "$TMP/err" && { echo "SKIP: $(cat "$TMP/err")"; exit 77; }
    echo "FAIL: the run without launcher failed: $(cat "$TMP/err")"; exit 1
fi
"$LMSURGEON" "${RUN[@]}" --out "$TMP/b" >"$TMP/b.json" 2>"$TMP/err" || { echo "FAIL: second run: $(cat "$TMP/err")"; exit 1; }
if [ -n "$MPIRUN" ]; then
    "$MPIRUN" -np 1 --bind-to none "$LMSURGEON" "${RUN[@]}" --out "$TMP/n" >"$TMP/n.json" 2>"$TMP/err"
else
    LMS_COMM_SELF=1 "$LMSURGEON" "${RUN[@]}" --out "$TMP/n" >"$TMP/n.json" 2>"$TMP/err"
fi
rc=$?
if [ "$rc" != 0 ]; then
    grep -q "has no MPI" "$TMP/err" && { echo "SKIP: this build has no MPI"; exit 77; }
    echo "FAIL: mpirun -np 1 failed: $(cat "$TMP/err")"; exit 1
fi
grep -q '"comm":"nccl"' "$TMP/n.json" || { echo "FAIL: the 1-rank run did not use NCCL: $(cat "$TMP/n.json")"; exit 1; }
if cmp -s "$TMP/a.state/optimizer.safetensors" "$TMP/b.state/optimizer.safetensors"; then
    cmp -s "$TMP/a.state/optimizer.safetensors" "$TMP/n.state/optimizer.safetensors" ||
        { echo "FAIL: NCCL with 1 rank differs from no launcher (deterministic kernels)"; exit 1; }
    echo "NCCL 1 rank = no launcher, bit for bit"
else
    python3 "$ROOT/tests/tools/compare_states.py" "$TMP/a.state/optimizer.safetensors" \
        "$TMP/n.state/optimizer.safetensors" --rtol 1e-5 ||
        { echo "FAIL: NCCL with 1 rank differs from no launcher"; exit 1; }
    echo "NCCL 1 rank = no launcher within 1e-5 (the kernels are not bit-deterministic run to run)"
fi
