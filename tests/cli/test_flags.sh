#!/usr/bin/env bash
# The flags every command shares through the command scaffold, and the value rules of its option
# kinds, checked against the documented contract: --help prints the command's usage and exits 0;
# a wrong flag or value exits 2 with one "lmsurgeon CMD: ..." line on stderr, nothing on stdout,
# and nothing written. A value that is accepted shows by the run stopping at a later check
# (a missing required option, a bad model path) instead of at the value.
set -u

source "$(dirname "$0")/lib.sh"
TINY=$FIXTURES/models/qwen3-tiny
IDS=$FIXTURES/corpus/val.ids.u16

lms_scratch flags
mkdir -p "$TMP/o"

# expect CODE PATTERN CMD ARGS...: exit code CODE, stderr one line that starts with
# "lmsurgeon CMD" and matches PATTERN, stdout empty, nothing written into $TMP/o
expect() {
    local code=$1 pat=$2 cmd=$3
    shift 3
    n_checks=$((n_checks + 1))
    (cd "$TMP/o" && "$LMSURGEON" "$cmd" "$@") >"$TMP/out" 2>"$TMP/err"
    local rc=$?
    if [ "$rc" != "$code" ] || ! grep -q -- "$pat" "$TMP/err" ||
        ! grep -q "^lmsurgeon $cmd" "$TMP/err" || [ "$(wc -l <"$TMP/err")" != 1 ] ||
        [ -s "$TMP/out" ] || grep -q -i "sanitizer" "$TMP/err" ||
        [ -n "$(ls -A "$TMP/o")" ]; then
        fail "$cmd $*: exit $rc (want $code), stderr: $(head -c 400 "$TMP/err")," \
            "stdout: $(head -c 200 "$TMP/out"), written: $(ls -A "$TMP/o" | head -3)"
        rm -rf "${TMP:?}/o" && mkdir -p "$TMP/o"
    fi
}

# --help and an unknown flag, for every command
for cmd in inspect convert tokenize preprocess eval generate prune score distill train; do
    n_checks=$((n_checks + 1))
    if ! "$LMSURGEON" "$cmd" --help >"$TMP/out" 2>"$TMP/err" ||
        ! grep -q "^usage: lmsurgeon $cmd" "$TMP/out" || [ -s "$TMP/err" ]; then
        fail "$cmd --help: $(head -c 300 "$TMP/err")"
    fi
    expect 2 "unknown" "$cmd" --no-such-flag
done

D=(--student "$TINY" --teacher "$TINY")
# counts: 0 where the option allows it, never below its minimum, never junk
expect 2 "--data-paths is required" distill "${D[@]}" --warmup-steps 0 --save-interval 0 \
    --limit-val-batches 0 --val-check-interval 0 --seed 0
expect 2 "invalid --warmup-steps '-1'" distill "${D[@]}" --warmup-steps -1
expect 2 "invalid --log-interval '0'" distill "${D[@]}" --log-interval 0
expect 2 "invalid --mbs '0'" distill "${D[@]}" --mbs 0
expect 2 "invalid --gbs '12x'" distill "${D[@]}" --gbs 12x
expect 2 "invalid --seq-length '1048577'" distill "${D[@]}" --seq-length 1048577
# reals: finite; at least 0, or above 0 where zero means nothing
expect 2 "--data-paths is required" distill "${D[@]}" --lr 3e-4 --min-lr 0 --clip-grad 0 \
    --weight-decay 0 --lm-loss-scale 0 --adam-beta1 0 --adam-beta2 0.95
expect 2 "invalid --lr '0'" distill "${D[@]}" --lr 0
expect 2 "invalid --lr 'nan'" distill "${D[@]}" --lr nan
expect 2 "invalid --lr 'inf'" distill "${D[@]}" --lr inf
expect 2 "invalid --min-lr '-1e-5'" distill "${D[@]}" --min-lr -1e-5
expect 2 "invalid --kd-temperature '0'" distill "${D[@]}" --kd-temperature 0
expect 2 "invalid --adam-eps '1e-8x'" distill "${D[@]}" --adam-eps 1e-8x
expect 2 "invalid --adam-beta2 '1'" distill "${D[@]}" --adam-beta2 1
expect 2 "--min-lr 0.01 is above --lr 0.001" distill "${D[@]}" --data-paths "$IDS" \
    --lr 1e-3 --min-lr 1e-2
# the write group: --dtype is checked before anything is read
expect 2 "unknown --dtype 'i32'" distill "${D[@]}" --data-paths "$IDS" --dtype i32
expect 2 "invalid --max-shard-size '0'" distill "${D[@]}" --data-paths "$IDS" \
    --max-shard-size 0
expect 2 "--resume and --force exclude each other" distill "${D[@]}" --data-paths "$IDS" \
    --resume --force

# the optimiser: the preset, then each setting given overrides it. A one-step run saves its
# configuration; resuming with one setting changed is refused naming exactly that setting, so
# the value given reached the run (and the others did not move).
# ids below the tiny model's 512-entry vocabulary, as a raw .u16 id file
python3 -c 'import array, sys; a = array.array("H", (i * 7919 % 512 for i in range(4096)))
a.tofile(open(sys.argv[1], "wb"))' "$TMP/small.u16"
R=(--student "$TINY" --teacher "$TINY" --data-paths "$TMP/small.u16" --split 1 --seq-length 16 --gbs 2
   --mbs 1 --max-steps 2 --exit-interval 1 --limit-val-batches 0 --threads 1 --log-dir "$TMP/logs"
   --out "$TMP/run" --optim-preset megatron --adam-eps 1e-6 --clip-grad 0 --quiet)
n_checks=$((n_checks + 1))
if ! "$LMSURGEON" distill "${R[@]}" >"$TMP/out" 2>"$TMP/err"; then
    fail "one-step distill run: $(head -c 400 "$TMP/err")"
fi
expect 2 "(adamw.eps was 9.9999999999999995e-7, now 0.001)" distill "${R[@]}" --resume \
    --adam-eps 1e-3
expect 2 "(adamw.clip_grad was 0.0, now 1.0)" distill "${R[@]}" --resume --clip-grad 1
expect 2 "(adamw.beta2 was 0.94999999999999996, now 0.999)" distill "${R[@]}" --resume \
    --optim-preset parity --adam-eps 1e-6 --clip-grad 0 --weight-decay 0.1

# a seed is 0 to 2^63 - 1 in every command that takes one
for cmd in score prune distill; do
    expect 2 "invalid --seed '-1'" "$cmd" --seed -1
    expect 2 "invalid --seed '9223372036854775808'" "$cmd" --seed 9223372036854775808
done
expect 2 "--seed does not apply" score "$TINY" --data "$IDS" -o "$TMP/o/s.json" --seed 0 \
    --sequential
expect 2 "--data-paths is required" distill "${D[@]}" --seed 9223372036854775807

# two names of one option share their abbreviation (--dat: --data and --data-paths)
expect 2 "--seed does not apply" score "$TINY" --dat "$IDS" -o "$TMP/o/s.json" --seed 0 \
    --sequential

echo "$n_checks flag checks, $n_fail failures"
[ "$n_fail" = 0 ]
