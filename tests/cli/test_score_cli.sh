#!/usr/bin/env bash
# score misuse and bad inputs: each exits with its documented code (2 usage, 3 bad input, 5 out
# of memory), prints one "lmsurgeon score: ..." line on stderr naming the culprit, nothing on
# stdout, and writes nothing (no output file, no temporary file beside it). Under --json the one
# stdout line is an error object. Any sanitizer report on stderr fails the test.
set -u

source "$(dirname "$0")/lib.sh"
TEACHER=$FIXTURES/teacher
TINY=$FIXTURES/models/qwen3-tiny
LLAMA=$FIXTURES/models/llama-tiny
IDS=$FIXTURES/corpus/val.ids.u16

lms_scratch score
mkdir -p "$TMP/o"
OUT=$TMP/o/scores.json

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
for m in a:"$TINY":0:2 b:"$TINY":2:4 c:"$LLAMA":0:2; do
    IFS=: read -r name model from to <<<"$m"
    "$LMSURGEON" score "$model" --data "$TMP/ids.u16" --sequential --rows "$from:$to" \
        --seq-length 32 -o "$TMP/$name.json" --quiet || fail "scoring $model for the merge checks"
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
# --merge takes only disjoint rows of one calibration set: the refusal names both files and
# what differs (the same part twice, overlapping rows, another seed, order, data or model)
python3 - "$TMP" <<'PY'
import random, struct, sys
random.seed(6)
with open(sys.argv[1] + "/other.u16", "wb") as f:
    f.write(struct.pack("<%dH" % 512, *[random.randrange(512) for _ in range(512)]))
PY
# patch_weight DIR TENSOR EXPR: a copy of the tiny model whose TENSOR's first weight w becomes
# EXPR (a Python expression of w)
patch_weight() {
    cp -r "$TINY" "$1"
    python3 - "$1/model.safetensors" "$2" "$3" <<'PY'
import json, struct, sys
b = bytearray(open(sys.argv[1], "rb").read())
n = struct.unpack("<Q", b[:8])[0]
at = 8 + n + json.loads(b[8:8 + n])[sys.argv[2]]["data_offsets"][0]
w = struct.unpack("<f", b[at:at + 4])[0]
b[at:at + 4] = struct.pack("<f", eval(sys.argv[3]))
open(sys.argv[1], "wb").write(b)
PY
}
patch_weight "$TMP/tweaked" model.layers.1.mlp.up_proj.weight "w + 0.25"
score_part() { # NAME MODEL DATA ARGS...: a part scored for the merge checks
    local name=$1 model=$2 data=$3
    shift 3
    "$LMSURGEON" score "$model" --data "$data" --seq-length 32 --micro-batch-size 2 \
        -o "$TMP/$name.json" --quiet "$@" || fail "scoring part $name"
}
score_part s0_8 "$TINY" "$TMP/ids.u16" --rows 0:8
score_part s4_12 "$TINY" "$TMP/ids.u16" --rows 4:12
score_part s8_12 "$TINY" "$TMP/ids.u16" --rows 8:12
score_part s0_12 "$TINY" "$TMP/ids.u16" --rows 0:12
score_part seed99 "$TINY" "$TMP/ids.u16" --rows 8:12 --seed 99
score_part seq8_12 "$TINY" "$TMP/ids.u16" --rows 8:12 --sequential
score_part other8_12 "$TINY" "$TMP/other.u16" --rows 8:12
score_part tweaked8_12 "$TMP/tweaked" "$TMP/ids.u16" --rows 8:12
expect 3 "merging '$TMP/a.json' and '$TMP/a.json': the same rows \[0, 2) twice" --merge "$TMP/a.json" "$TMP/a.json" -o "$OUT"
expect 3 "merging '$TMP/s0_8.json' and '$TMP/s4_12.json': rows \[0, 8) and \[4, 12) overlap" --merge "$TMP/s0_8.json" "$TMP/s4_12.json" -o "$OUT"
expect 3 "merging '$TMP/s0_8.json' and '$TMP/seed99.json': different seeds (1234 and 99)" --merge "$TMP/s0_8.json" "$TMP/seed99.json" -o "$OUT"
expect 3 "merging '$TMP/s0_8.json' and '$TMP/seq8_12.json': different row orders (shuffled and sequential)" --merge "$TMP/s0_8.json" "$TMP/seq8_12.json" -o "$OUT"
expect 3 "merging '$TMP/s0_8.json' and '$TMP/other8_12.json': different data: '$TMP/ids.u16' (fingerprint [0-9a-f]*) and '$TMP/other.u16'" --merge "$TMP/s0_8.json" "$TMP/other8_12.json" -o "$OUT"
expect 3 "merging '$TMP/s0_8.json' and '$TMP/tweaked8_12.json': different models" --merge "$TMP/s0_8.json" "$TMP/tweaked8_12.json" -o "$OUT"
# a part that a merged file already holds, and a third file overlapping the first
n_checks=$((n_checks + 1))
"$LMSURGEON" score --merge "$TMP/s0_8.json" "$TMP/s8_12.json" -o "$TMP/m0_12.json" --quiet ||
    fail "merging two disjoint parts"
expect 3 "merging '$TMP/m0_12.json' and '$TMP/s8_12.json': the same rows \[8, 12) twice" --merge "$TMP/m0_12.json" "$TMP/s8_12.json" -o "$OUT"
expect 3 "merging '$TMP/s0_8.json' and '$TMP/s4_12.json'" --merge "$TMP/s0_8.json" "$TMP/s8_12.json" "$TMP/s4_12.json" -o "$OUT"
# the disjoint merge is the whole-range run: the same sums and scores, the parts listed in row
# order
n_checks=$((n_checks + 1))
python3 - "$TMP" <<'PY' || fail "the merge of rows 0:8 and 8:12 differs from the run over 0:12"
import json, sys
t = sys.argv[1]
m = json.load(open(t + "/m0_12.json"))
w = json.load(open(t + "/s0_12.json"))
parts = [json.load(open(t + "/s%s.json" % p))["source"] for p in ("0_8", "8_12")]
assert m["raw"]["rows"] == w["raw"]["rows"] == 12 and m["raw"]["cos_rows"] == w["raw"]["cos_rows"]
def flat(x):
    return [v for r in x for v in flat(r)] if isinstance(x, list) else [x]
def close(a, b, what):
    a, b = flat(a), flat(b)
    assert len(a) == len(b) and all(abs(x - y) <= 1e-12 * abs(y) for x, y in zip(a, b)), what
for key in ("hidden_sq", "ffn_sq", "head_sq", "layer_cos"):
    close(m["raw"][key], w["raw"][key], key)
for key in ("layers", "hidden", "ffn", "heads"):
    close(m[key], w[key], key)
s = m["source"]
assert s["parts"] == parts, s
assert s["rows"] == 12 and s["row_length"] == 32
assert s["data_fingerprint"] == w["source"]["data_fingerprint"] and len(s["data_fingerprint"]) == 16
assert "seed" not in s and "row_begin" not in s, s
PY
# sums that overflow a double are refused, naming the field; files that do not record their
# provenance (older versions, edited) do not merge
python3 - "$TMP" <<'PY'
import json, sys
t = sys.argv[1]
for part in ("s0_8", "s8_12"):
    d = json.load(open(t + "/%s.json" % part))
    d["raw"]["ffn_sq"][1][3] = 1.5e308
    json.dump(d, open(t + "/huge_%s.json" % part, "w"))
d = json.load(open(t + "/s8_12.json"))
del d["source"]["data_fingerprint"]
json.dump(d, open(t + "/nofp.json", "w"))
PY
expect 3 "merging '$TMP/huge_s0_8.json' and '$TMP/huge_s8_12.json': the sums of 'raw.ffn_sq' overflow" --merge "$TMP/huge_s0_8.json" "$TMP/huge_s8_12.json" -o "$OUT"
expect 3 "the second file's 'source' has no valid 'data_fingerprint'" --merge "$TMP/s0_8.json" "$TMP/nofp.json" -o "$OUT"

# non-finite activations (a NaN weight in layer 2's query projection): exit 3 naming the layer,
# nothing written; prune's calibration refuses the same way
patch_weight "$TMP/nan" model.layers.2.self_attn.q_proj.weight "float('nan')"
expect 3 "'$TMP/nan': layer 2 (model.layers.2): non-finite activations (NaN or infinity) at the attention context on calibration row 0" "$TMP/nan" --data "$TMP/ids.u16" --sequential --rows 0:2 --seq-length 32 -o "$OUT"
expect 3 "'$TMP/nan': layer 2 (model.layers.2): non-finite activations .* at the layer output" "$TMP/nan" --data "$TMP/ids.u16" --rows 0:2 --seq-length 32 --axes layers --layer-metric ppl -o "$OUT"
n_checks=$((n_checks + 1))
"$LMSURGEON" prune "$TMP/nan" "$TMP/o/pruned" --data-paths "$TMP/ids.u16" --num-train-samples 2 \
    --seq-length 32 --target-ffn-hidden-size 128 >"$TMP/out" 2>"$TMP/err"
rc=$?
if [ "$rc" != 3 ] || ! grep -q "layer 2 (model.layers.2): non-finite activations" "$TMP/err" ||
    [ -n "$(ls -A "$TMP/o")" ]; then
    fail "prune --data-paths on a model with a NaN weight: exit $rc, $(cat "$TMP/err")"
    rm -rf "$TMP/o"/* "$TMP/o"/.[!.]*
fi

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
