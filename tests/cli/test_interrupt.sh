#!/usr/bin/env bash
# SIGINT and SIGTERM remove every temporary a command has in progress: it exits 130 (SIGINT) or
# 143 (SIGTERM) with one line, no .lms-tmp- is left and the destination is as before. The
# interposed library (tests/tools/interpose.c, LMS_INTERPOSE) holds the command inside a chosen
# write or fsync of a temporary (and drops a mark file), so that the signal lands there every
# time: in the middle of writing a checkpoint directory, at the sync before the rename (with
# --force over an existing output), in a .nemo file, an importance file, a dataset, and in the
# scratch directory a compressed .nemo is extracted to. distill takes SIGTERM like SIGINT: it
# finishes the save in progress, says where the state is and exits 143. A full disk during
# score -o leaves no temporary either.
set -u

source "$(dirname "$0")/lib.sh"
: "${LMS_INTERPOSE:?LMS_INTERPOSE must name the interposed test library}"
T=$FIXTURES/teacher
TINY=$FIXTURES/models/qwen3-tiny
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0

lms_scratch interrupt
PID=
cleanup() { # the scratch directory, and a command still held in the background
    [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
# ids below the tiny model's 512-entry vocabulary, as a raw id file
IDS=$TMP/ids.u16
python3 -c 'import array, sys; open(sys.argv[1], "wb").write(array.array("H", [(i * 7919) % 512 for i in range(20000)]).tobytes())' "$IDS"

snapshot() { (cd "$1" && find . -print0 | sort -z | xargs -0 ls -ld --time-style=+ | awk '{print $1, $5, $NF}' && find . -type f -print0 | sort -z | xargs -0 md5sum); }

# interrupt SIG POINT SUBSTRING CMD...: runs lmsurgeon CMD in the background, held at its first
# POINT (write or fsync) to a file whose path contains SUBSTRING, sends SIG there; exit status in
# $RC (empty when the command never got there), stdout in $TMP/out, stderr in $TMP/err
CARRY_ON=
TO_THREAD=
interrupt() {
    local sig=$1 point=$2 sub=$3
    shift 3
    rm -f "$TMP/mark" "$TMP/resume"
    LD_PRELOAD=$LMS_INTERPOSE LMS_SHIM_PAUSE=$point LMS_SHIM_PAUSE_PATH=$sub LMS_SHIM_MARK=$TMP/mark \
        LMS_SHIM_RESUME=$TMP/resume "$LMSURGEON" "$@" >"$TMP/out" 2>"$TMP/err" </dev/null &
    PID=$!
    RC=
    local i
    for i in $(seq 600); do
        [ -e "$TMP/mark" ] && break
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.05
    done
    if [ ! -e "$TMP/mark" ]; then
        wait "$PID"
        fail "lmsurgeon $*: never wrote to '*$sub*' (exit $?): $(head -c 300 "$TMP/err")"
        PID=
        return
    fi
    if [ -n "$TO_THREAD" ]; then # to a thread other than the main one, when there is one
        local tid
        tid=$(ls "/proc/$PID/task" | grep -vx "$PID" | head -n 1)
        [ -n "$tid" ] || { echo "note: no second thread to signal" >&2; tid=$PID; }
        python3 -c 'import ctypes, signal, sys; sys.exit(ctypes.CDLL(None).tgkill(int(sys.argv[1]), int(sys.argv[2]), getattr(signal, "SIG" + sys.argv[3])))' \
            "$PID" "$tid" "$sig" || fail "tgkill failed"
    else
        kill "-$sig" "$PID"
    fi
    # a command that carries on after the signal (distill) finishes the held call: its handler may
    # have run on another thread than the one held
    [ -n "$CARRY_ON" ] && touch "$TMP/resume"
    for i in $(seq 400); do
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$PID" 2>/dev/null; then
        kill -9 "$PID"
        fail "lmsurgeon $*: still running 20 s after SIG$sig"
    fi
    wait "$PID"
    RC=$?
    PID=
}

# stopped NAME CODE DIR: the command exited CODE with one line naming the signal, and DIR holds
# no temporary
stopped() {
    local name=$1 code=$2 dir=$3 sig=INT
    [ "$code" = 143 ] && sig=TERM
    n_checks=$((n_checks + 1))
    [ -n "$RC" ] || return
    [ "$RC" = "$code" ] && [ "$(wc -l <"$TMP/err")" = 1 ] && grep -q "interrupted by SIG$sig" "$TMP/err" ||
        fail "$name: exit $RC (want $code and one line naming SIG$sig): $(cat "$TMP/err")"
    ls -a "$dir" | grep -q 'lms-tmp' && fail "$name: left $(ls -a "$dir" | grep 'lms-tmp')"
    grep -qiE 'sanitizer|runtime error' "$TMP/err" && fail "$name: sanitizer report"
}

# convert to a new directory, SIGINT in the middle of a shard
interrupt INT write ".O.lms-tmp-" convert "$T" "$TMP/O" --to nemo --dtype f32 --quiet
stopped "convert, SIGINT mid-write" 130 "$TMP"
[ -e "$TMP/O" ] && fail "convert, SIGINT mid-write: '$TMP/O' exists"

# the signal delivered to another thread than the one writing (a worker of the BLAS pool): the
# handler passes it on to the writer's thread
TO_THREAD=1 interrupt TERM write ".O.lms-tmp-" convert "$T" "$TMP/O" --to nemo --quiet
stopped "convert, SIGTERM to another thread" 143 "$TMP"
[ -e "$TMP/O" ] && fail "convert, SIGTERM to another thread: '$TMP/O' exists"

# convert --force over an existing output, SIGTERM at the sync before the rename
mkdir -p "$TMP/E/sub"
echo old >"$TMP/E/config.json"
echo nested >"$TMP/E/sub/file.txt"
before=$(snapshot "$TMP/E")
interrupt TERM fsync ".E.lms-tmp-" convert "$T" "$TMP/E" --force --quiet
stopped "convert --force, SIGTERM at the sync" 143 "$TMP"
[ "$(snapshot "$TMP/E")" = "$before" ] || fail "convert --force, SIGTERM: the old output changed"

# a .nemo file, with --json: the error object on stdout too
interrupt INT write ".o.nemo.lms-tmp-" convert "$T" "$TMP/o.nemo" --to nemo1 --json
stopped "convert --to nemo1, SIGINT" 130 "$TMP"
[ -e "$TMP/o.nemo" ] && fail "convert --to nemo1, SIGINT: '$TMP/o.nemo' exists"
[ -z "$RC" ] || python3 -c 'import json,sys; o=json.loads(open(sys.argv[1]).read()); assert o["ok"] is False and o["exit_code"] == 130 and o["status"] == "EINTERRUPTED", o' "$TMP/out" ||
    fail "convert --json, SIGINT: stdout is not the JSON error: $(cat "$TMP/out")"

# score -o and preprocess
interrupt TERM write "x.json.lms-tmp" score "$TINY" --data "$IDS" --num-samples 2 --seq-length 32 -o "$TMP/x.json" --quiet
stopped "score -o, SIGTERM" 143 "$TMP"
[ -e "$TMP/x.json" ] && fail "score -o, SIGTERM: '$TMP/x.json' exists"
head -n 20 "$FIXTURES/corpus/val.jsonl" >"$TMP/in.jsonl"
interrupt INT write "p_text_document.bin.lms-tmp" preprocess --input "$TMP/in.jsonl" --tokenizer "$T" \
    --output-prefix "$TMP/p" --workers 1 --quiet
stopped "preprocess, SIGINT" 130 "$TMP"
ls "$TMP" | grep -q "p_text_document" && fail "preprocess, SIGINT: left $(ls "$TMP" | grep p_text_document)"

# reading a compressed .nemo extracts it to a scratch directory under $TMPDIR
"$LMSURGEON" convert "$TINY" "$TMP/t.nemo" --to nemo1 --quiet && gzip -1 -c "$TMP/t.nemo" >"$TMP/tgz.nemo" &&
    rm "$TMP/t.nemo" || fail "making a compressed .nemo failed"
mkdir "$TMP/scratch"
TMPDIR=$TMP/scratch interrupt TERM write "lms-nemo1-" convert "$TMP/tgz.nemo" "$TMP/from-gz" --quiet
stopped "reading a compressed .nemo, SIGTERM" 143 "$TMP"
[ -z "$(ls -A "$TMP/scratch")" ] || fail "reading a compressed .nemo, SIGTERM: left $(ls -A "$TMP/scratch")"

# score -o on a full disk: the error path removes its temporary
n_checks=$((n_checks + 1))
LD_PRELOAD=$LMS_INTERPOSE LMS_SHIM_FAIL_WRITE=x.json.lms-tmp "$LMSURGEON" score "$TINY" --data "$IDS" \
    --num-samples 2 --seq-length 32 -o "$TMP/x.json" --quiet >/dev/null 2>"$TMP/err"
rc=$?
[ "$rc" = 4 ] && grep -q "No space left" "$TMP/err" || fail "score -o, full disk: exit $rc (want 4): $(cat "$TMP/err")"
ls -a "$TMP" | grep -q "x.json" && fail "score -o, full disk: left $(ls -a "$TMP" | grep x.json)"

# distill: SIGTERM during the first save; the save completes, the state resumes
DIST=(distill --student "$TINY" --teacher "$TINY" --data-paths "$IDS" --split 1 --seq-length 16 --gbs 1
      --mbs 1 --max-steps 2 --save-interval 1 --limit-val-batches 0 --threads 1 --log-dir "$TMP/logs"
      --out "$TMP/s" --quiet)
CARRY_ON=1 interrupt TERM fsync ".s.state.lms-tmp-" "${DIST[@]}"
n_checks=$((n_checks + 1))
if [ -n "$RC" ]; then
    [ "$RC" = 143 ] && [ "$(wc -l <"$TMP/err")" = 1 ] &&
        grep -q "interrupted by SIGTERM: the state after step 1 is in '$TMP/s.state' (continue with --resume)" "$TMP/err" ||
        fail "distill, SIGTERM: exit $RC (want 143 and where the state is): $(cat "$TMP/err")"
    ls -a "$TMP" | grep -q 'lms-tmp' && fail "distill, SIGTERM: left $(ls -a "$TMP" | grep 'lms-tmp')"
    "$LMSURGEON" inspect "$TMP/s" --quiet || fail "distill, SIGTERM: the student of step 1 does not inspect"
    "$LMSURGEON" "${DIST[@]}" --resume 2>"$TMP/err" || fail "distill, SIGTERM: --resume failed: $(cat "$TMP/err")"
fi

echo "interrupts: $n_checks checks, $n_fail failures"
[ "$n_fail" = 0 ]
