#!/usr/bin/env bash
# distill: bad inputs get one clear line and the documented exit code with nothing written
# (teacher and student vocabularies that differ, gbs not a multiple of mbs, data shorter than one
# batch, --resume with a changed configuration, a run that cannot fit in memory, a full disk at a
# save: the last good state survives); the reference workflow's command line runs as written;
# --dry-run writes nothing; a run stopped by --exit-interval or by SIGINT and resumed ends with
# the same bytes as an uninterrupted run.
set -u

source "$(dirname "$0")/lib.sh"
TEACHER=$FIXTURES/models/qwen3-tiny
STUDENT=$FIXTURES/models/qwen3-tiny-distill-reference/student
BIG=$FIXTURES/teacher

lms_scratch distill
MNT=
cleanup() { # the scratch directory, and the tmpfs of the full-disk check
    [ -n "$MNT" ] && umount "$MNT" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

# ids below the tiny models' 512-entry vocabulary: held-out text ids folded into range, as a
# Megatron indexed dataset of 20 documents of 2000 ids (written here by the layout's definition:
# magic, version, dtype 4 = int32, counts, lengths, pointers, document index) and as a short raw
# int32 id file
python3 - "$FIXTURES/corpus/val.ids.u16" "$TMP" <<'EOF'
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
with open(out + "/short.i32", "wb") as f:
    ids[:100].tofile(f)
EOF
DATA=$TMP/data
# the small run every check starts from: 4 steps of 4 rows x 32 tokens
RUN=(--student "$STUDENT" --teacher "$TEACHER" --data-paths "$DATA" --split 1 --seq-length 32
     --gbs 4 --mbs 2 --max-steps 4 --warmup-steps 1 --lr 1e-3 --min-lr 1e-4 --optim-preset gpt
     --limit-val-batches 0 --threads 1 --log-dir "$TMP/logs")

# expect CODE PATTERN ARGS...: exit code CODE, stderr one line matching PATTERN, stdout empty
expect() {
    local code=$1 pat=$2
    shift 2
    n_checks=$((n_checks + 1))
    "$LMSURGEON" distill "$@" >"$TMP/out" 2>"$TMP/err" </dev/null
    local rc=$?
    if [ "$rc" != "$code" ] || ! grep -q -- "$pat" "$TMP/err" || [ "$(wc -l <"$TMP/err")" != 1 ] ||
        [ -s "$TMP/out" ] || grep -q -i "sanitizer" "$TMP/err"; then
        fail "distill $*: exit $rc (want $code /$pat/), stderr:"
        cat "$TMP/err" >&2
    fi
}

expect 2 "--student" --teacher "$TEACHER" --data-paths "$DATA"
expect 2 "--data-paths is required" --student "$STUDENT" --teacher "$TEACHER"
expect 2 "not a multiple of --mbs 3" "${RUN[@]}" --out "$TMP/x" --mbs 3
expect 2 "WEIGHT PREFIX pairs" "${RUN[@]}" --out "$TMP/x" --data-paths 0.5 "$DATA" 0.5
expect 2 "unknown --optim-preset" "${RUN[@]}" --out "$TMP/x" --optim-preset sgd
expect 3 "vocabulary" "${RUN[@]}" --out "$TMP/x" --teacher "$BIG"
expect 3 "fewer than one batch" "${RUN[@]}" --out "$TMP/x" --data-paths "$TMP/short.i32"
expect 4 "no '$TMP/missing.idx'" "${RUN[@]}" --out "$TMP/x" --data-paths "$TMP/missing"
expect 2 "no training state" "${RUN[@]}" --out "$TMP/x" --resume
expect 5 "lower --mbs" "${RUN[@]}" --out "$TMP/x" --max-memory 100kB --quiet
[ -e "$TMP/x" ] || [ -e "$TMP/x.state" ] && fail "a refused run wrote '$TMP/x'"

# --dry-run: the plan with every part, nothing written
n_checks=$((n_checks + 1))
if ! "$LMSURGEON" distill "${RUN[@]}" --out "$TMP/dry" --dry-run >"$TMP/out" 2>"$TMP/err"; then
    fail "--dry-run failed"; cat "$TMP/err" >&2
fi
for part in "student weights" "AdamW moments" gradients activations teacher total "dry run"; do
    grep -q "$part" "$TMP/out" || fail "--dry-run does not print '$part'"
done
[ -e "$TMP/dry" ] && fail "--dry-run wrote its output"

# --dry-run on a GPU: the device plan (bf16 working copy, runtime scratch; save and data on the
# host), checked against --max-memory without opening a device; --precision is checked
n_checks=$((n_checks + 1))
if ! "$LMSURGEON" distill "${RUN[@]}" --out "$TMP/dry" --dry-run --device cuda --max-memory 64G \
    >"$TMP/out" 2>"$TMP/err"; then
    fail "--dry-run --device cuda failed"; cat "$TMP/err" >&2
fi
for part in "device memory plan" "x (4 + 2) B" "runtime and GEMM scratch" "host" "fits"; do
    grep -q "$part" "$TMP/out" || fail "--dry-run --device cuda does not print '$part'"
done
expect 5 "lower --mbs" "${RUN[@]}" --out "$TMP/x" --device cuda --max-memory 100kB --quiet
expect 2 "invalid --precision" "${RUN[@]}" --out "$TMP/x" --precision fp8

# the uninterrupted reference run, with --json
n_checks=$((n_checks + 1))
if ! "$LMSURGEON" distill "${RUN[@]}" --out "$TMP/a" --json >"$TMP/a.json" 2>"$TMP/err"; then
    fail "the 4-step run failed"; cat "$TMP/err" >&2
fi
python3 - "$TMP/a.json" "$TMP/logs/a.metrics.jsonl" <<'EOF' || fail "summary or metrics wrong"
import json, sys
s = json.loads(open(sys.argv[1]).read())
assert s["ok"] and s["steps"] == 4 and s["tokens"] == 4 * 4 * 32, s
lines = [json.loads(l) for l in open(sys.argv[2])]
train = [l for l in lines if l["event"] == "train"]
assert [l["step"] for l in train] == [1, 2, 3, 4], lines
assert all(l["loss"] > 0 and l["grad_norm"] > 0 and l["tokens_per_second"] > 0 for l in train)
assert abs(train[0]["lr"] - 5e-4) < 1e-12 and abs(train[1]["lr"] - 1e-3) < 1e-12, train
EOF
[ -f "$TMP/a/model.safetensors" ] && [ -f "$TMP/a.state/trainer_state.json" ] &&
    [ -f "$TMP/a.state/optimizer.safetensors" ] || fail "the run did not write the student and its state"
expect 2 "refusing to overwrite\|training state" "${RUN[@]}" --out "$TMP/a"

# stopped after step 2 (--exit-interval), resumed: the same bytes
n_checks=$((n_checks + 1))
"$LMSURGEON" distill "${RUN[@]}" --out "$TMP/b" --exit-interval 2 --quiet 2>"$TMP/err" ||
    { fail "--exit-interval run failed"; cat "$TMP/err" >&2; }
grep -q '"step": 2' "$TMP/b.state/trainer_state.json" || fail "--exit-interval 2 did not stop at step 2"
expect 2 "another configuration (lr was" "${RUN[@]}" --out "$TMP/b" --resume --lr 2e-3
expect 2 "another configuration (max_steps was" "${RUN[@]}" --out "$TMP/b" --resume --max-steps 5
"$LMSURGEON" distill "${RUN[@]}" --out "$TMP/b" --resume --quiet 2>"$TMP/err" ||
    { fail "--resume failed"; cat "$TMP/err" >&2; }
cmp -s "$TMP/a/model.safetensors" "$TMP/b/model.safetensors" ||
    fail "resumed after step 2: the student differs from the uninterrupted run"
cmp -s "$TMP/a.state/optimizer.safetensors" "$TMP/b.state/optimizer.safetensors" ||
    fail "resumed after step 2: the optimiser state differs from the uninterrupted run"
[ "$(grep -c '"event":"train"' "$TMP/logs/b.metrics.jsonl")" = 4 ] ||
    fail "the resumed run's metrics do not hold each step once"

# the reference workflow's command line, paths changed: the student goes to LOG_DIR/NAME
n_checks=$((n_checks + 1))
(cd "$TMP" && "$LMSURGEON" distill --name ref-run --model_path "$STUDENT" --teacher_path "$TEACHER" \
    --legacy_ckpt --max_steps 2 --warmup_steps 1 --gbs 4 --mbs 2 --lr 1e-4 --min_lr 1e-5 \
    --seq_length 32 --log_dir . --log_interval 1 --val_check_interval 1 --limit_val_batches 1 \
    --data_paths 0.3 "$DATA" 0.7 "$DATA" --split 90,10,0 --devices 8 --tp_size 8 \
    >"$TMP/ref.out" 2>"$TMP/err") || { fail "the reference command failed"; cat "$TMP/err" >&2; }
[ -f "$TMP/ref-run/model.safetensors" ] && [ -f "$TMP/ref-run.metrics.jsonl" ] ||
    fail "the reference command did not write ref-run/ and ref-run.metrics.jsonl"
grep -q "validation at step 2" "$TMP/ref.out" || fail "no validation line"
grep -q '"event":"validation"' "$TMP/ref-run.metrics.jsonl" || fail "no validation metrics"

# SIGINT: the state of the last finished step is saved, exit 130, and resuming ends where an
# uninterrupted run ends (a larger student so that the signal lands mid-run)
"$LMSURGEON" prune "$BIG" "$TMP/student8" --keep-layers 1,2,4,5,6,7,11,12 --quiet ||
    fail "prune for the SIGINT check failed"
IDS=$FIXTURES/corpus/val.ids.u16
SIG=(--student "$TMP/student8" --teacher "$BIG" --data-paths "$IDS" --split 1 --seq-length 64
     --gbs 4 --mbs 2 --max-steps 12 --warmup-steps 2 --lr 5e-4 --min-lr 5e-5 --optim-preset gpt
     --limit-val-batches 0 --threads 1 --log-dir "$TMP/logs" --dtype f32)
n_checks=$((n_checks + 1))
"$LMSURGEON" distill "${SIG[@]}" --out "$TMP/s" >"$TMP/s.out" 2>"$TMP/s.err" &
pid=$!
for _ in $(seq 600); do
    grep -q '"event":"train"' "$TMP/logs/s.metrics.jsonl" 2>/dev/null && break
    sleep 0.05
done
kill -INT "$pid"
wait "$pid"
rc=$?
if [ "$rc" = 130 ]; then
    grep -q "interrupted.*--resume" "$TMP/s.err" || fail "SIGINT message: $(cat "$TMP/s.err")"
    [ -f "$TMP/s.state/trainer_state.json" ] || fail "SIGINT saved no state"
    "$LMSURGEON" distill "${SIG[@]}" --out "$TMP/s" --resume --quiet 2>"$TMP/err" ||
        { fail "resume after SIGINT failed"; cat "$TMP/err" >&2; }
    "$LMSURGEON" distill "${SIG[@]}" --out "$TMP/u" --quiet 2>"$TMP/err" ||
        { fail "uninterrupted 12-step run failed"; cat "$TMP/err" >&2; }
    cmp -s "$TMP/s/model.safetensors" "$TMP/u/model.safetensors" ||
        fail "resumed after SIGINT: the student differs from the uninterrupted run"
elif [ "$rc" = 0 ]; then
    echo "note: the run finished before SIGINT arrived; SIGINT path not exercised" >&2
else
    fail "SIGINT: exit $rc (want 130)"; cat "$TMP/s.err" >&2
fi

# a full disk at a save: a tmpfs that holds one save but not a second one beside it (the new
# state is written before the old one goes). The run fails with exit 4 naming the file, and the
# state and student of the first save are intact. Without permission to mount, a file size limit
# makes the first save fail instead: nothing may be left.
n_checks=$((n_checks + 1))
MNT=$TMP/mnt
mkdir -p "$MNT"
if mount -t tmpfs -o size=4000k tmpfs "$MNT" 2>/dev/null; then
    "$LMSURGEON" distill "${RUN[@]}" --out "$MNT/full" --save-interval 2 --dtype f32 --quiet \
        >/dev/null 2>"$TMP/err"
    rc=$?
    [ "$rc" = 4 ] && grep -q "No space left" "$TMP/err" && [ "$(wc -l <"$TMP/err")" = 1 ] ||
        { fail "full disk: exit $rc (want 4, one line)"; cat "$TMP/err" >&2; }
    grep -q '"step": 2' "$MNT/full.state/trainer_state.json" 2>/dev/null ||
        fail "full disk: the state of step 2 is gone"
    "$LMSURGEON" inspect "$MNT/full" >/dev/null 2>&1 || fail "full disk: the student of step 2 is broken"
    ls -a "$MNT" | grep -q "lms-tmp" && fail "full disk: a temporary directory was left"
    umount "$MNT" && MNT=
elif (ulimit -f 256 && trap '' XFSZ &&
      exec "$LMSURGEON" distill "${RUN[@]}" --out "$TMP/fsz" --dtype f32 --quiet \
          >/dev/null 2>"$TMP/err"); then
    fail "a save beyond the file size limit succeeded"
else
    grep -q "File too large" "$TMP/err" || { fail "file size limit: $(cat "$TMP/err")"; }
    [ -e "$TMP/fsz" ] || [ -e "$TMP/fsz.state" ] && fail "file size limit: output left behind"
    ls -a "$TMP" | grep -q "lms-tmp" && fail "file size limit: a temporary directory was left"
fi

echo "distill CLI: $n_checks checks, $n_fail failures"
[ "$n_fail" = 0 ]
