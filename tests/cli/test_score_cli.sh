#!/usr/bin/env bash
# score misuse and bad inputs: each exits with its documented code (2 usage, 3 bad input, 5 out
# of memory), prints one "lmsurgeon score: ..." line on stderr naming the culprit, nothing on
# stdout, and writes nothing (no output file, no temporary file beside it). Under --json the one
# stdout line is an error object. Any sanitizer report on stderr fails the test.
set -u

: "${LMSURGEON:?LMSURGEON must name the lmsurgeon binary}"
ROOT=${LMS_SOURCE_ROOT:-$(cd "$(dirname "$0")/../.." && pwd)}
FIXTURES=${LMS_FIXTURES:-$ROOT/fixtures}
TEACHER=$FIXTURES/teacher
TINY=$FIXTURES/models/qwen3-tiny
LLAMA=$FIXTURES/models/llama-tiny
IDS=$FIXTURES/corpus/val.ids.u16

TMP=$(mktemp -d "${TMPDIR:-/tmp}/lms-score.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/o"
OUT=$TMP/o/scores.json
n_checks=0
n_fail=0

fail() {
    echo "FAIL: $*" >&2
    n_fail=$((n_fail + 1))
}

# expect CODE PATTERN ARGS...: exit code CODE, stderr one line matching PATTERN, stdout empty,
# nothing written into $TMP/o
expect() {
    local code=$1 pat=$2
    shift 2
    n_checks=$((n_checks + 1))
    "$LMSURGEON" score "$@" >"$TMP/out" 2>"$TMP/err" </dev/null
    local rc=$?
    if [ "$rc" != "$code" ] || ! grep -q -- "$pat" "$TMP/err" || [ "$(wc -l <"$TMP/err")" != 1 ] ||
        [ -s "$TMP/out" ] || grep -q -i "sanitizer" "$TMP/err"; then
        fail "lmsurgeon score $*: exit $rc (want $code), stderr:"
        cat "$TMP/err" >&2
    fi
    if [ -n "$(ls -A "$TMP/o")" ]; then
        fail "lmsurgeon score $*: left files behind: $(ls -A "$TMP/o")"
        rm -rf "$TMP/o"/* "$TMP/o"/.[!.]*
    fi
}

# usage
expect 2 "required" "$TEACHER" --data "$IDS"
expect 2 "--data PREFIX is required" "$TEACHER" -o "$OUT"
expect 2 "invalid --num-samples '0'" "$TEACHER" --data "$IDS" --num-samples 0 -o "$OUT"
expect 2 "invalid --rows '5:5'" "$TEACHER" --data "$IDS" --rows 5:5 -o "$OUT"
expect 2 "exclude" "$TEACHER" --data "$IDS" --rows 0:4 --num-samples 4 -o "$OUT"
expect 2 "unknown layer metric 'shortgpt'" "$TEACHER" --data "$IDS" --layer-metric shortgpt -o "$OUT"
expect 2 "needs --target-num-layers" "$TEACHER" --data "$IDS" --layer-metric contiguous -o "$OUT"
expect 2 "the model has 12 layers" "$TEACHER" --data "$IDS" --layer-metric block-bi --target-num-layers 12 -o "$OUT"
expect 2 "invalid --axes" "$TEACHER" --data "$IDS" --axes ffn,depth -o "$OUT"
expect 2 "invalid --seq-length" "$TEACHER" --data "$IDS" --seq-length 1 -o "$OUT"
expect 2 "at least two" --merge "$TMP/a.json" -o "$OUT"
# too few rows in the data
expect 2 "1830 rows of 512 tokens, rows \[0, 5000) requested" "$TEACHER" --data "$IDS" --num-samples 5000 --seq-length 512 -o "$OUT"
expect 2 "rows \[1829, 1831) requested" "$TEACHER" --data "$IDS" --rows 1829:1831 --seq-length 512 -o "$OUT"
# ids outside the vocabulary (the tiny model has 512 entries; the corpus uses 4096)
expect 3 "row 0: token id .* outside the model's vocabulary \[0, 512)" "$TINY" --data "$IDS" --num-samples 2 --seq-length 64 -o "$OUT"
# a memory plan that cannot fit is refused before anything is allocated
expect 5 "needs .* GB" "$TEACHER" --data "$IDS" --seq-length 16000000 --micro-batch-size 1 -o "$OUT"
expect 2 "out of range" "$TEACHER" --data "$IDS" --seq-length 16000000 --micro-batch-size 4096 -o "$OUT"
# missing data
expect 4 "no '$TMP/nothing.idx'" "$TEACHER" --data "$TMP/nothing" -o "$OUT"

# importance files for --merge: two good ones of different models, malformed ones
python3 - "$TMP" <<'PY'
import random, struct, sys
random.seed(5)
with open(sys.argv[1] + "/ids.u16", "wb") as f:
    f.write(struct.pack("<%dH" % 512, *[random.randrange(512) for _ in range(512)]))
PY
for m in a:"$TINY" b:"$TINY" c:"$LLAMA"; do
    name=${m%%:*}
    model=${m#*:}
    "$LMSURGEON" score "$model" --data "$TMP/ids.u16" --sequential --rows 0:2 --seq-length 32 \
        -o "$TMP/$name.json" --quiet || fail "scoring $model for the merge checks"
done
n_checks=$((n_checks + 1))
"$LMSURGEON" score --merge "$TMP/a.json" "$TMP/b.json" -o "$TMP/ab.json" --quiet ||
    fail "merging two files of the same model"
expect 3 "scores of different models" --merge "$TMP/a.json" "$TMP/c.json" -o "$OUT"
printf '{"format": "lmsurgeon-importance", "version": 2, ' >"$TMP/trunc.json"
expect 3 "trunc.json" --merge "$TMP/a.json" "$TMP/trunc.json" -o "$OUT"
sed 's/"version":2/"version":7/' "$TMP/a.json" >"$TMP/v7.json"
expect 3 "unsupported 'version'" --merge "$TMP/a.json" "$TMP/v7.json" -o "$OUT"
sed 's/"ffn_sq":\[\[/"ffn_sq":[[-1,/' "$TMP/a.json" >"$TMP/neg.json"
expect 3 "ffn_sq" --merge "$TMP/a.json" "$TMP/neg.json" -o "$OUT"
python3 - "$TMP" <<'PY'
import json, sys
d = json.load(open(sys.argv[1] + "/a.json"))
d["version"] = 1
d.pop("raw")
json.dump(d, open(sys.argv[1] + "/v1.json", "w"))
d = json.load(open(sys.argv[1] + "/a.json"))
d["raw"]["row_length"] = 64
json.dump(d, open(sys.argv[1] + "/len64.json", "w"))
PY
expect 3 "raw calibration sums" --merge "$TMP/a.json" "$TMP/v1.json" -o "$OUT"
expect 3 "rows of 32 and 64 tokens" --merge "$TMP/a.json" "$TMP/len64.json" -o "$OUT"
# a file that already exists is kept unless --force
cp "$TMP/a.json" "$OUT"
n_checks=$((n_checks + 1))
"$LMSURGEON" score --merge "$TMP/a.json" "$TMP/b.json" -o "$OUT" >/dev/null 2>"$TMP/err"
rc=$?
[ "$rc" = 2 ] && grep -q "use --force" "$TMP/err" && cmp -s "$OUT" "$TMP/a.json" ||
    fail "an existing output was not refused (exit $rc)"
rm -f "$OUT"

# --json: one error object on stdout
n_checks=$((n_checks + 1))
out=$("$LMSURGEON" score "$TEACHER" --data "$IDS" --num-samples 5000 --seq-length 512 -o "$OUT" --json 2>/dev/null)
echo "$out" | python3 -c 'import json,sys; o=json.load(sys.stdin); assert o["ok"] is False and o["exit_code"] == 2' ||
    fail "--json error object: $out"
# --help
n_checks=$((n_checks + 1))
"$LMSURGEON" score --help | grep -q "layer-metric" || fail "score --help"

echo "$n_checks checks, $n_fail failures"
[ "$n_fail" = 0 ]
