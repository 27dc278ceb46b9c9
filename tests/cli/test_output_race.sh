#!/usr/bin/env bash
# An output that appears while a command runs is never replaced without --force. The interposed
# library (tests/tools/interpose.c, LMS_INTERPOSE) creates the destination at the command's first
# fsync, after the up-front "exists?" check and before the rename into place, as another process
# might. Without --force the command exits 2 with one line naming the finished output, which it
# keeps beside the destination; the destination keeps what the other process wrote; no
# temporary is left. With --force the finished output replaces it (README: last writer wins).
# Covered: convert to a directory and to a .nemo file, score -o, preprocess, distill's first save.
set -u

source "$(dirname "$0")/lib.sh"
: "${LMS_INTERPOSE:?LMS_INTERPOSE must name the interposed test library}"
T=$FIXTURES/teacher
TINY=$FIXTURES/models/qwen3-tiny
# an AddressSanitizer build wants its runtime first; the interposed library comes first here
export ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0

lms_scratch race
# ids below the tiny model's 512-entry vocabulary, as a raw id file
IDS=$TMP/ids.u16
python3 -c 'import array, sys; open(sys.argv[1], "wb").write(array.array("H", [(i * 7919) % 512 for i in range(20000)]).tobytes())' "$IDS"

# appear KIND DEST CMD...: runs lmsurgeon CMD with DEST made to appear (a directory or a file)
# during the run ($AT=rename: just before it is renamed into place); exit status in $RC, stderr
# in $TMP/err
AT=
appear() {
    local kind=$1 dest=$2
    shift 2
    LD_PRELOAD=$LMS_INTERPOSE LMS_SHIM_APPEAR=$dest LMS_SHIM_APPEAR_KIND=$kind LMS_SHIM_APPEAR_AT=$AT \
        "$LMSURGEON" "$@" --quiet >"$TMP/out" 2>"$TMP/err" </dev/null
    RC=$?
}

# refused NAME KIND DEST: the run was refused and left DEST as the other process wrote it; $KEPT
# is the kept output the message names (status 1 when there is none)
refused() {
    local name=$1 kind=$2 dest=$3 got
    KEPT=
    n_checks=$((n_checks + 1))
    if [ "$RC" != 2 ] || [ "$(wc -l <"$TMP/err")" != 1 ] || ! grep -q "appeared" "$TMP/err"; then
        fail "$name: exit $RC (want 2 and one line saying the output appeared): $(cat "$TMP/err")"
        return 1
    fi
    if [ "$kind" = dir ]; then got=$(cat "$dest/notes.txt" 2>/dev/null); else got=$(cat "$dest" 2>/dev/null); fi
    [ "$got" = x ] || fail "$name: what appeared at '$dest' was replaced"
    [ "$kind" = dir ] && [ "$(ls "$dest")" != notes.txt ] && fail "$name: files were added to '$dest'"
    ls -a "$(dirname "$dest")" | grep -q 'lms-tmp' && fail "$name: a temporary was left"
    grep -qiE 'sanitizer|runtime error' "$TMP/err" && fail "$name: sanitizer report"
    KEPT=$(sed -n "s/.*the finished output is in '\(.*\)'$/\1/p" "$TMP/err")
    [ -n "$KEPT" ] && [ -e "$KEPT" ] || { fail "$name: the message names no kept output: $(cat "$TMP/err")"; return 1; }
}

# convert to a NeMo 2 directory: the directory that appears keeps its file
appear dir "$TMP/O" convert "$T" "$TMP/O" --to nemo --dtype f32
refused "convert --to nemo" dir "$TMP/O" &&
    { "$LMSURGEON" inspect "$KEPT" --quiet 2>/dev/null || fail "convert --to nemo: the kept output '$KEPT' does not inspect"; }

# the same with --force: the finished output wins
rm -rf "$TMP/O" "$TMP"/O.lms-kept-*
n_checks=$((n_checks + 1))
appear dir "$TMP/O" convert "$T" "$TMP/O" --to nemo --dtype f32 --force
[ "$RC" = 0 ] && [ ! -e "$TMP/O/notes.txt" ] && "$LMSURGEON" inspect "$TMP/O" --quiet ||
    fail "convert --force: exit $RC, or what appeared is still there: $(cat "$TMP/err")"
ls -a "$TMP" | grep -q 'lms-' && fail "convert --force: left $(ls -a "$TMP" | grep 'lms-')"

# two converts to one new OUT: the first is held at its sync while the second runs to the end;
# the first then finds OUT taken and keeps its output beside it
n_checks=$((n_checks + 1))
rm -rf "$TMP/O" "$TMP"/O.lms-kept-*
LD_PRELOAD=$LMS_INTERPOSE LMS_SHIM_PAUSE=fsync LMS_SHIM_PAUSE_PATH=.O.lms-tmp- LMS_SHIM_MARK=$TMP/mark \
    LMS_SHIM_RESUME=$TMP/resume "$LMSURGEON" convert "$T" "$TMP/O" --to nemo --quiet 2>"$TMP/err1" &
first=$!
for _ in $(seq 600); do
    [ -e "$TMP/mark" ] || ! kill -0 "$first" 2>/dev/null && break
    sleep 0.05
done
"$LMSURGEON" convert "$T" "$TMP/O" --to hf --quiet 2>"$TMP/err" || fail "the second convert failed: $(cat "$TMP/err")"
touch "$TMP/resume"
wait "$first"
rc=$?
[ "$rc" = 2 ] && grep -q "appeared" "$TMP/err1" || fail "the first of two converts: exit $rc (want 2): $(cat "$TMP/err1")"
[ -f "$TMP/O/config.json" ] && [ ! -e "$TMP/O/context" ] || fail "the second convert's output was replaced"
ls -a "$TMP" | grep -q 'lms-tmp' && fail "two converts: a temporary was left"

# convert to a NeMo 1 file
appear file "$TMP/o.nemo" convert "$T" "$TMP/o.nemo" --to nemo1
refused "convert --to nemo1" file "$TMP/o.nemo" &&
    { "$LMSURGEON" inspect "$KEPT" --quiet 2>/dev/null || fail "convert --to nemo1: the kept file does not inspect"; }

# score -o
appear file "$TMP/x.json" score "$TINY" --data "$IDS" --num-samples 2 --seq-length 32 -o "$TMP/x.json"
refused "score -o" file "$TMP/x.json" &&
    { grep -q '"lmsurgeon-importance"' "$KEPT" || fail "score -o: the kept file is no importance file"; }

# preprocess: the .bin appears; the .idx is not written either
head -n 20 "$FIXTURES/corpus/val.jsonl" >"$TMP/in.jsonl"
appear file "$TMP/p_text_document.bin" preprocess --input "$TMP/in.jsonl" --tokenizer "$T" \
    --output-prefix "$TMP/p" --workers 1
refused "preprocess" file "$TMP/p_text_document.bin"
[ -e "$TMP/p_text_document.idx" ] && fail "preprocess: an .idx was written beside the refused .bin"

# distill: the student's directory appears just before the first save renames it into place (the
# state, saved first, stays)
DIST=(distill --student "$TINY" --teacher "$TINY" --data-paths "$IDS" --split 1 --seq-length 16 --gbs 1
      --mbs 1 --max-steps 1 --limit-val-batches 0 --threads 1 --log-dir "$TMP/logs")
AT=rename appear dir "$TMP/s" "${DIST[@]}" --out "$TMP/s"
refused "distill" dir "$TMP/s" &&
    { "$LMSURGEON" inspect "$KEPT" --quiet 2>/dev/null || fail "distill: the kept student does not inspect"; }

echo "output races: $n_checks checks, $n_fail failures"
[ "$n_fail" = 0 ]
