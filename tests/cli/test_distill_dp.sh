#!/usr/bin/env bash
# distill and score on several processes (mpirun, CPU backend), each checked against the
# one-process run it must reproduce:
#   - 2 ranks against 1 rank with twice the gradient accumulation (the same --gbs): losses and
#     final weights and moments within fp32 reduction-order rounding;
#   - 1 rank under mpirun, and one rank without MPI (LMS_COMM_SELF=1), both through the sharded
#     optimiser path, bit for bit equal to no launcher;
#   - a 2-rank run stopped and resumed on 1 rank, and the reverse, against an uninterrupted run;
#   - --devices checked against the launcher's world, --gbs against mbs x ranks; --dry-run's
#     plan counts the moments per rank;
#   - score on 2 ranks equals score on 1 rank (the raw sums are additive);
#   - a rank killed mid-run: mpirun ends within a bounded time with an error naming it, and the
#     last saved state resumes.
# Skipped (77) when no MPI launcher is given.
set -u

source "$(dirname "$0")/lib.sh"
MPIRUN=${MPIRUN:-}
[ -n "$MPIRUN" ] && [ -x "$MPIRUN" ] || { echo "SKIP: no mpirun (MPIRUN unset)"; exit 77; }
TEACHER=$FIXTURES/models/qwen3-tiny
STUDENT=$FIXTURES/models/qwen3-tiny-distill-reference/student
COMPARE=$ROOT/tests/tools/compare_states.py
# containers run tests as root, which OpenMPI refuses unless told
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# sanitizer builds: OpenMPI's own allocations live until exit (its plugins stay loaded, so that
# LeakSanitizer can name them and the suppressions apply)
export LSAN_OPTIONS="${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$ROOT/tests/cli/lsan-mpi.supp"
export OMPI_MCA_mca_base_component_disable_dlclose=1
[ -n "${ASAN_OPTIONS:-}" ] && export ASAN_OPTIONS="$ASAN_OPTIONS:fast_unwind_on_malloc=0"
# two processes on a small machine: no core binding, TCP/shared memory only, quiet about a
# missing high-speed network
MPI=("$MPIRUN" --oversubscribe --bind-to none --mca btl self,vader,tcp --mca btl_base_warn_component_unused 0)

lms_scratch dp

# a small indexed dataset (ids below the tiny models' vocabulary)
python3 - "$FIXTURES/corpus/val.ids.u16" "$TMP" <<'PY'
import array, struct, sys
src, out = sys.argv[1], sys.argv[2]
ids = array.array("H")
with open(src, "rb") as f:
    ids.frombytes(f.read(2 * 40000))
ids = array.array("i", (i % 512 for i in ids))
n, size = 20, 2000
with open(out + "/data.bin", "wb") as f:
    ids.tofile(f)
with open(out + "/data.idx", "wb") as f:
    f.write(b"MMIDIDX\0\0" + struct.pack("<QBQQ", 1, 4, n, n + 1))
    f.write(struct.pack(f"<{n}i", *[size] * n))
    f.write(struct.pack(f"<{n}q", *[4 * size * i for i in range(n)]))
    f.write(struct.pack(f"<{n + 1}q", *range(n + 1)))
PY
DATA=$TMP/data
# 4 steps of 4 rows x 32 tokens in micro-batches of 1: 4 micro-batches on one process, 2 per
# rank on two; validation on (its rows are split over the ranks too). Seed 1: the rows of seed
# 1234 give one embedding entry a gradient that is rounding noise (|g| ~ 1e-8, Adam's eps), where
# AdamW turns the reduction order's noise into 1 % of a step, past the 1e-5 tolerance below
RUN=(--student "$STUDENT" --teacher "$TEACHER" --data-paths "$DATA" --split 90,10,0
     --seq-length 32 --gbs 4 --mbs 1 --max-steps 4 --warmup-steps 1 --lr 1e-3 --min-lr 1e-4
     --optim-preset gpt --seed 1 --limit-val-batches 1 --val-check-interval 2 --threads 1
     --dtype f32
     --log-dir "$TMP/logs" --quiet --json)

# rank_pid LAUNCHER RANK: the process of that rank among the launcher's children (from /proc)
rank_pid() {
    local d ppid
    for d in /proc/[0-9]*; do
        ppid=$(awk '{print $4}' "$d/stat" 2>/dev/null)
        [ "$ppid" = "$1" ] || continue
        tr '\0' '\n' <"$d/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=$2" &&
            { echo "${d#/proc/}"; return; }
    done
}

# same_losses A.json B.json: step losses and the validation loss within 1e-6 relative
same_losses() {
    python3 - "$1" "$2" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
pairs = [(x["loss"], y["loss"]) for x, y in zip(a["history"], b["history"])]
pairs += [(a["val_loss"], b["val_loss"]), (a["grad_norm"], b["grad_norm"])]
bad = [p for p in pairs if abs(p[0] - p[1]) > 1e-6 * max(abs(p[0]), 1e-12)]
if len(a["history"]) != len(b["history"]) or bad:
    print("losses differ:", bad or "history lengths")
    sys.exit(1)
PY
}

# ---- 2 ranks against 1 rank with twice the accumulation ----
n_checks=$((n_checks + 1))
"$LMSURGEON" distill "${RUN[@]}" --out "$TMP/one" >"$TMP/one.json" 2>"$TMP/err" ||
    { fail "the 1-process run failed"; cat "$TMP/err" >&2; }
"${MPI[@]}" -np 2 "$LMSURGEON" distill "${RUN[@]}" --out "$TMP/two" >"$TMP/two.json" 2>"$TMP/err" ||
    { fail "the 2-rank run failed"; cat "$TMP/err" >&2; }
[ "$(grep -c '"ok":true' "$TMP/two.json")" = 1 ] || fail "the 2-rank run did not print one JSON object (rank 0 alone logs)"
same_losses "$TMP/one.json" "$TMP/two.json" || fail "2 ranks: losses differ from 1 rank"
python3 "$COMPARE" "$TMP/one.state/optimizer.safetensors" "$TMP/two.state/optimizer.safetensors" \
    --rtol 1e-5 || fail "2 ranks: weights or moments differ from 1 rank beyond fp32 rounding"
python3 "$COMPARE" "$TMP/one/model.safetensors" "$TMP/two/model.safetensors" --rtol 1e-5 >/dev/null ||
    fail "2 ranks: the student checkpoint differs from 1 rank"
[ "$(grep -c '"event":"train"' "$TMP/logs/two.metrics.jsonl")" = 4 ] ||
    fail "2 ranks: the metrics do not hold each step once"

# ---- 1 rank under the launcher: bit for bit the run without one ----
n_checks=$((n_checks + 1))
"${MPI[@]}" -np 1 "$LMSURGEON" distill "${RUN[@]}" --out "$TMP/m1" >"$TMP/m1.json" 2>"$TMP/err" ||
    { fail "the 1-rank mpirun failed"; cat "$TMP/err" >&2; }
cmp -s "$TMP/one.state/optimizer.safetensors" "$TMP/m1.state/optimizer.safetensors" ||
    fail "1 rank under mpirun differs from no launcher"
# the same path with no MPI at all (LMS_COMM_SELF, how one GPU checks NCCL)
LMS_COMM_SELF=1 "$LMSURGEON" distill "${RUN[@]}" --out "$TMP/self" >"$TMP/self.json" 2>"$TMP/err" ||
    { fail "LMS_COMM_SELF=1 failed"; cat "$TMP/err" >&2; }
grep -q '"ranks":1,"comm":"self"' "$TMP/self.json" || fail "LMS_COMM_SELF=1 did not open a communicator"
cmp -s "$TMP/one.state/optimizer.safetensors" "$TMP/self.state/optimizer.safetensors" ||
    fail "LMS_COMM_SELF=1 differs from no launcher"

# ---- resume with another number of ranks ----
n_checks=$((n_checks + 1))
"${MPI[@]}" -np 2 "$LMSURGEON" distill "${RUN[@]}" --out "$TMP/r21" --exit-interval 2 \
    >/dev/null 2>"$TMP/err" || { fail "2-rank run to step 2 failed"; cat "$TMP/err" >&2; }
"$LMSURGEON" distill "${RUN[@]}" --out "$TMP/r21" --resume >"$TMP/r21.json" 2>"$TMP/err" ||
    { fail "resuming a 2-rank state on 1 process failed"; cat "$TMP/err" >&2; }
python3 "$COMPARE" "$TMP/one.state/optimizer.safetensors" "$TMP/r21.state/optimizer.safetensors" \
    --rtol 1e-5 >/dev/null || fail "2 ranks then 1: the state differs from the uninterrupted run"
"$LMSURGEON" distill "${RUN[@]}" --out "$TMP/r12" --exit-interval 2 >/dev/null 2>"$TMP/err" ||
    { fail "1-process run to step 2 failed"; cat "$TMP/err" >&2; }
"${MPI[@]}" -np 2 "$LMSURGEON" distill "${RUN[@]}" --out "$TMP/r12" --resume >"$TMP/r12.json" \
    2>"$TMP/err" || { fail "resuming a 1-process state on 2 ranks failed"; cat "$TMP/err" >&2; }
python3 "$COMPARE" "$TMP/one.state/optimizer.safetensors" "$TMP/r12.state/optimizer.safetensors" \
    --rtol 1e-5 >/dev/null || fail "1 then 2 ranks: the state differs from the uninterrupted run"

# ---- options checked against the launcher's world; the plan per rank ----
n_checks=$((n_checks + 1))
"${MPI[@]}" -np 2 "$LMSURGEON" distill "${RUN[@]}" --out "$TMP/bad" --devices 4 --num-nodes 1 \
    >/dev/null 2>"$TMP/err"
rc=$?
[ "$rc" != 0 ] && grep -q "devices 4 x --num-nodes 1 = 4 processes, but the launcher started 2" "$TMP/err" ||
    fail "--devices 4 on 2 ranks: exit $rc, $(head -c 300 "$TMP/err")"
"${MPI[@]}" -np 2 "$LMSURGEON" distill "${RUN[@]}" --out "$TMP/bad" --mbs 4 >/dev/null 2>"$TMP/err"
rc=$?
[ "$rc" != 0 ] && grep -q "not a multiple of --mbs 4 x 2 ranks" "$TMP/err" ||
    fail "--gbs 4 --mbs 4 on 2 ranks: exit $rc, $(head -c 300 "$TMP/err")"
[ ! -e "$TMP/bad" ] || fail "a refused run wrote its output"
"${MPI[@]}" -np 2 "$LMSURGEON" distill "${RUN[@]}" --out "$TMP/dry" --dry-run --devices 2 \
    >"$TMP/dry.out" 2>&1 || fail "2-rank dry run failed"
grep -q "2 x 176576 x 4 B / 2 ranks" "$TMP/dry.out" || fail "the 2-rank plan does not shard the moments"
[ "$(grep -c 'memory plan' "$TMP/dry.out")" = 1 ] || fail "the plan is printed by more than rank 0"

# ---- score: 2 ranks add up to 1 rank ----
n_checks=$((n_checks + 1))
SC=(score "$TEACHER" --data "$DATA" --rows 0:12 --seq-length 32
    --micro-batch-size 2 --axes layers,hidden,ffn,heads,groups --threads 1 --quiet --force)
"$LMSURGEON" "${SC[@]}" -o "$TMP/s1.json" 2>"$TMP/err" || { fail "score on 1 process failed"; cat "$TMP/err" >&2; }
"${MPI[@]}" -np 2 "$LMSURGEON" "${SC[@]}" -o "$TMP/s2.json" 2>"$TMP/err" ||
    { fail "score on 2 ranks failed"; cat "$TMP/err" >&2; }
python3 - "$TMP/s1.json" "$TMP/s2.json" <<'PY' || fail "score: 2 ranks differ from 1 rank"
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
def walk(x, y, path):
    if isinstance(x, dict):
        for k in x:
            if k in ("source",):
                continue
            walk(x[k], y[k], path + "." + k)
    elif isinstance(x, list):
        assert len(x) == len(y), path
        for i, (u, v) in enumerate(zip(x, y)):
            walk(u, v, f"{path}[{i}]")
    elif isinstance(x, float):
        assert abs(x - y) <= 1e-9 * max(abs(x), 1e-30), f"{path}: {x} vs {y}"
    else:
        assert x == y, f"{path}: {x} vs {y}"
walk(a, b, "")
assert b["source"]["rows"] == a["source"]["rows"], (a["source"], b["source"])
PY

# ---- a rank killed mid-run ----
n_checks=$((n_checks + 1))
KILL=("${RUN[@]}")
KILL[15]=400 # --max-steps: long enough to be killed mid-run
"${MPI[@]}" -np 2 "$LMSURGEON" distill "${KILL[@]}" --out "$TMP/k" --save-interval 1 \
    --limit-val-batches 0 >/dev/null 2>"$TMP/kill.err" &
launcher=$!
for _ in $(seq 200); do
    [ -f "$TMP/k.state/trainer_state.json" ] && break
    sleep 0.1
done
victim=$(rank_pid "$launcher" 1)
if [ -z "$victim" ]; then
    fail "kill: no rank 1 process found under mpirun"
    kill "$launcher" 2>/dev/null
else
    kill -9 "$victim"
    t0=$(date +%s)
    # bounded: the others must be gone within 60 s
    for _ in $(seq 600); do
        kill -0 "$launcher" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$launcher" 2>/dev/null; then
        fail "kill: mpirun still runs 60 s after rank 1 died"
        kill -9 "$launcher"
    fi
    wait "$launcher"
    rc=$?
    echo "kill: mpirun ended $(( $(date +%s) - t0 )) s after rank 1 died, exit $rc"
    [ "$rc" != 0 ] || fail "kill: mpirun exited 0 after a rank was killed"
    cat "$TMP/kill.err" >&2
    grep -qi "rank 1" "$TMP/kill.err" || fail "kill: no error naming rank 1: $(head -c 400 "$TMP/kill.err")"
    # the state on disk is whole: one more step from it (on one process)
    "$LMSURGEON" distill "${KILL[@]}" --out "$TMP/k" --resume --limit-val-batches 0 \
        --exit-interval 1 >/dev/null 2>"$TMP/err" ||
        { fail "kill: the last state does not resume"; cat "$TMP/err" >&2; }
fi

# ---- a rank that stops answering (SIGSTOP): the others give up after $LMS_COMM_TIMEOUT ----
n_checks=$((n_checks + 1))
rm -rf "$TMP/k" "$TMP/k.state"
LMS_COMM_TIMEOUT=3 "${MPI[@]}" -np 2 "$LMSURGEON" distill "${KILL[@]}" --out "$TMP/k" \
    --save-interval 1 --limit-val-batches 0 --force >/dev/null 2>"$TMP/stop.err" &
launcher=$!
for _ in $(seq 200); do
    [ -f "$TMP/k.state/trainer_state.json" ] && break
    sleep 0.1
done
victim=$(rank_pid "$launcher" 1)
if [ -z "$victim" ]; then
    fail "stop: no rank 1 process found under mpirun"
    kill "$launcher" 2>/dev/null
else
    kill -STOP "$victim"
    for _ in $(seq 300); do
        kill -0 "$launcher" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$launcher" 2>/dev/null; then
        fail "stop: mpirun still runs 30 s after rank 1 stopped answering"
        kill -9 "$victim" "$launcher" 2>/dev/null
    fi
    wait "$launcher"
    rc=$?
    [ "$rc" != 0 ] || fail "stop: mpirun exited 0"
    grep -q "no answer from the other ranks for 3 s" "$TMP/stop.err" ||
        fail "stop: rank 0 did not report the silent rank: $(head -c 400 "$TMP/stop.err")"
    kill -9 "$victim" 2>/dev/null
fi

echo "$n_checks groups of checks, $n_fail failures"
[ "$n_fail" = 0 ]
