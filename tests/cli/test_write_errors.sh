#!/usr/bin/env bash
# Every write is checked: a command whose standard output, metrics file or --dump-rows file
# cannot be written (here /dev/full, which refuses every write with ENOSPC, as a full disk does)
# exits 4 with one error line naming what failed, instead of exiting 0 with the output lost or
# cut short. A command that failed for another reason keeps its own code and its one line.
set -u

source "$(dirname "$0")/lib.sh"
TINY=$FIXTURES/models/qwen3-tiny
STUDENT=$FIXTURES/models/qwen3-tiny-distill-reference/student
BIG=$FIXTURES/teacher
TOK=$FIXTURES/tokenizer
IDS=$FIXTURES/corpus/val.ids.u16

if [ ! -w /dev/full ]; then
    echo "SKIP: no writable /dev/full"
    exit 77
fi
lms_scratch write-errors

# full CODE PATTERN CMD ARGS...: with stdout on /dev/full (stdin empty), exit CODE and stderr
# exactly one line, "lmsurgeon CMD: error: ..." matching PATTERN
full() {
    local code=$1 pat=$2 cmd=$3
    shift 3
    n_checks=$((n_checks + 1))
    "$LMSURGEON" "$cmd" "$@" >/dev/full 2>"$TMP/err" </dev/null
    local rc=$?
    if [ "$rc" != "$code" ] || [ "$(wc -l <"$TMP/err")" != 1 ] ||
        ! grep -q -- "^lmsurgeon $cmd: .*$pat" "$TMP/err" || grep -q -i sanitizer "$TMP/err"; then
        fail "$cmd $* >/dev/full: exit $rc (want $code /$pat/), stderr: $(head -c 400 "$TMP/err")"
    fi
}
STDOUT="error: writing standard output: No space left on device"

# every command that prints, in each of its printing modes
full 4 "$STDOUT" inspect "$TINY"
full 4 "$STDOUT" inspect "$TINY" --json
full 4 "$STDOUT" inspect "$TINY" --tensors
full 4 "$STDOUT" convert "$TINY" "$TMP/conv" --json
full 4 "$STDOUT" convert "$TINY" "$TMP/conv2"
full 4 "$STDOUT" tokenize --tokenizer "$TOK" --text "hello world"
full 4 "$STDOUT" tokenize --tokenizer "$TOK" --text "hello world" --json
full 4 "$STDOUT" tokenize --tokenizer "$TOK" --decode --text "282 78 313"
printf '{"text": "hello"}\n{"text": "world"}\n' >"$TMP/in.jsonl"
full 4 "$STDOUT" preprocess --input "$TMP/in.jsonl" --tokenizer "$TOK" \
    --output-prefix "$TMP/pre" --json
full 4 "$STDOUT" eval "$BIG" --data "$IDS" --seq-length 32 --num-samples 2 --threads 1
full 4 "$STDOUT" eval "$BIG" --data "$IDS" --seq-length 32 --num-samples 2 --threads 1 --json
full 4 "$STDOUT" generate "$BIG" --prompt "hi" --max-new-tokens 2 --threads 1 --quiet
full 4 "$STDOUT" generate "$BIG" --prompt "hi" --max-new-tokens 2 --threads 1 --json
full 4 "$STDOUT" score "$BIG" --data "$IDS" --num-samples 2 --seq-length 32 \
    --micro-batch-size 2 --threads 1 -o "$TMP/s.json"
full 4 "$STDOUT" score "$BIG" --data "$IDS" --num-samples 2 --seq-length 32 \
    --micro-batch-size 2 --threads 1 -o "$TMP/s2.json" --json
full 4 "$STDOUT" prune "$TINY" "$TMP/p" --target-num-layers 2 --dry-run
full 4 "$STDOUT" prune "$TINY" "$TMP/p" --target-num-layers 2 --dry-run --json
for cmd in inspect convert tokenize preprocess eval generate score prune distill; do
    full 4 "$STDOUT" "$cmd" --help
done
n_checks=$((n_checks + 1))
for top in --help --version; do
    "$LMSURGEON" $top >/dev/full 2>"$TMP/err"
    rc=$?
    [ "$rc" = 4 ] && [ "$(cat "$TMP/err")" = "lmsurgeon: $STDOUT" ] ||
        fail "lmsurgeon $top >/dev/full: exit $rc, stderr: $(cat "$TMP/err")"
done
# a command that failed keeps its code and its own line
full 2 "unknown or incomplete option '--no-such-flag'" inspect --no-such-flag
full 3 "unsupported\|not a\|no config" inspect "$TMP/in.jsonl" --json
# a command that writes nothing to stdout is unaffected
n_checks=$((n_checks + 1))
"$LMSURGEON" inspect "$TINY" --quiet --json >/dev/null 2>"$TMP/err" ||
    fail "inspect >/dev/null: $(cat "$TMP/err")"

# distill: ids below the tiny models' 512-entry vocabulary, as a raw .u16 id file
python3 -c 'import array, sys; a = array.array("H", (i * 7919 % 512 for i in range(4096)))
a.tofile(open(sys.argv[1], "wb"))' "$TMP/small.u16"
R=(--student "$STUDENT" --teacher "$TINY" --data-paths "$TMP/small.u16" --split 1
   --seq-length 16 --gbs 2 --mbs 1 --max-steps 2 --limit-val-batches 0 --threads 1
   --log-dir "$TMP/logs")
full 4 "$STDOUT" distill "${R[@]}" --out "$TMP/d1"
full 4 "$STDOUT" distill "${R[@]}" --out "$TMP/d2" --json --quiet
full 4 "$STDOUT" distill "${R[@]}" --out "$TMP/d3" --dry-run

# --dump-rows on a full disk: the rows (far less than a stdio buffer) only meet the disk when
# the file is closed (--force: /dev/full exists, and a run overwrites nothing without it)
n_checks=$((n_checks + 1))
"$LMSURGEON" distill "${R[@]}" --out "$TMP/d4" --quiet --force --dump-rows /dev/full \
    >"$TMP/out" 2>"$TMP/err"
rc=$?
[ "$rc" = 4 ] && [ "$(wc -l <"$TMP/err")" = 1 ] &&
    grep -q "^lmsurgeon distill: error: writing --dump-rows '/dev/full': No space left" \
        "$TMP/err" || fail "--dump-rows /dev/full: exit $rc, stderr: $(cat "$TMP/err")"

# the metrics file on a full disk (NAME.metrics.jsonl is opened by name): the first record
# fails, and the run stops there (--force: the name exists, and a new run overwrites no metrics
# file without it)
mkdir -p "$TMP/full-logs"
ln -s /dev/full "$TMP/full-logs/d5.metrics.jsonl"
n_checks=$((n_checks + 1))
"$LMSURGEON" distill "${R[@]}" --out "$TMP/d5" --quiet --force --log-dir "$TMP/full-logs" \
    >"$TMP/out" 2>"$TMP/err"
rc=$?
[ "$rc" = 4 ] && [ "$(wc -l <"$TMP/err")" = 1 ] &&
    grep -q "^lmsurgeon distill: error: writing '$TMP/full-logs/d5.metrics.jsonl': No space" \
        "$TMP/err" || fail "metrics on /dev/full: exit $rc, stderr: $(cat "$TMP/err")"
[ -e "$TMP/d5" ] && fail "a run whose metrics failed went on to write its student"

echo "$n_checks write checks, $n_fail failures"
[ "$n_fail" = 0 ]
