#!/usr/bin/env bash
# prune from the command line: invalid targets are refused with their message before anything is
# written, --dry-run writes nothing, and a failed run leaves no output.
set -u
lms=${LMSURGEON:?}
fix=${LMS_FIXTURES:?}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fails=0; passes=0

# expect CODE SUBSTRING ARGS...: exit code, one stderr line containing SUBSTRING, no output dir
expect() {
    local code=$1 needle=$2
    shift 2
    "$lms" prune "$@" >"$work/stdout" 2>"$work/stderr"
    local rc=$? lines
    lines=$(wc -l <"$work/stderr")
    if [ "$rc" -ne "$code" ] || [ "$lines" -ne 1 ] || ! grep -qF -- "$needle" "$work/stderr" \
        || [ -e "$work/out" ] || ls -a "$work" | grep -q 'lms-tmp' \
        || grep -qE 'runtime error|AddressSanitizer' "$work/stderr"; then
        echo "FAIL: prune $* -> rc=$rc (want $code), stderr: $(cat "$work/stderr")"
        fails=$((fails + 1))
    else
        passes=$((passes + 1))
    fi
}

t="$fix/teacher"
expect 2 "larger than the current" "$t" "$work/out" --target-ffn-hidden-size 1000
expect 2 "larger than the current" "$t" "$work/out" --target-num-layers 13
expect 2 "positive integer" "$t" "$work/out" --target-hidden-size 0
expect 2 "positive integer" "$t" "$work/out" --target-num-layers -3
expect 2 "not a multiple" "$t" "$work/out" --target-num-attention-heads 3
expect 2 "more than the 4 heads per group" "$t" "$work/out" --target-num-query-groups 1 --target-num-attention-heads 6
expect 2 "outside 1..12" "$t" "$work/out" --drop-layers 13
expect 2 "outside 1..12" "$t" "$work/out" --drop-layers 0
expect 2 "drops every layer" "$t" "$work/out" --drop-layers 1-12
expect 2 "only one of" "$t" "$work/out" --drop-layers 2 --target-num-layers 8
expect 2 "unknown --layer-selection" "$t" "$work/out" --target-num-layers 8 --layer-selection best
expect 2 "needs an --importance" "$t" "$work/out" --target-num-layers 8 --layer-selection importance
expect 2 "expected IN and OUT" "$t"
expect 3 "format" "$t" "$work/out" --target-ffn-hidden-size 512 --importance "$fix/teacher/config.json"
expect 4 "does not exist" "$work/missing" "$work/out" --target-num-layers 2

# calibration and the parameter budget: refused before any work, nothing written
d="$fix/corpus/val.ids.u16"
head -c 2048 "$d" >"$work/small.u16" # 1024 ids: 2 windows of 512
cat >"$work/blocks.json" <<'EOF'
{"format": "lmsurgeon-importance", "version": 2, "method": "activation",
 "model": {"num_layers": 12, "hidden_size": 256, "ffn_hidden_size": 768,
           "num_attention_heads": 8, "num_query_groups": 2},
 "layer_metric": "block-bi", "block_size": 4,
 "layers": [0.7, 0.1, 0.06, 0.13, 0.1, 0.07, 0.07, 0.06, 0.06, 0.06, 0.07, 0.09],
 "blocks": [0.9, 0.5, 0.3, 0.2, 0.25, 0.2, 0.22, 0.4, 0.6]}
EOF
expect 2 "needs calibration data" "$t" "$work/out" --target-num-layers 8 --layer-selection ppl
expect 2 "exclude each other" "$t" "$work/out" --data-paths "$d" --importance "$work/x.json" --target-num-layers 8
expect 2 "positive integer" "$t" "$work/out" --data_paths "$d" --num_train_samples 0 --target_num_layers 8
expect 2 "invalid --seq-length" "$t" "$work/out" --data_paths "$d" --seq_length 1 --target_num_layers 8
expect 2 "rows of 512 tokens" "$t" "$work/out" --data_paths "$work/small.u16" --num_train_samples 4 --seq_length 512 --target_num_layers 8
expect 4 "no '$work/missing.idx'" "$t" "$work/out" --data_paths "$work/missing" --target_num_layers 8
expect 2 "blocks of" "$t" "$work/out" --importance "$work/blocks.json" --target-num-layers 9 --layer-selection block-bi
expect 2 "invalid --target-params" "$t" "$work/out" --target-params 6Q
expect 2 "no shape" "$t" "$work/out" --target-params 1M
expect 2 "give no other target" "$t" "$work/out" --target-params 9M --target-ffn-hidden-size 512
expect 2 "need --target-params" "$t" "$work/out" --candidate 2
expect 2 "beyond --num-candidates" "$t" "$work/out" --target-params 9M --num-candidates 3 --candidate 5
expect 2 "the table has 1 row" "$t" "$work/out" --target-params 10M --search-num-layers 12 --search-ffn-hidden-size 576:576 --search-hidden-size 256:256 --search-num-attention-heads 8:8 --candidate 2
expect 2 "invalid search range" "$t" "$work/out" --target-params 9M --search-num-layers 8:4
expect 2 "more than 100000" "$t" "$work/out" --target-params 9M --search-num-layers 1:12:1 --search-ffn-hidden-size 1:768:1
expect 2 "held out" "$t" "$work/out" --target-params 9M --data-paths "$work/small.u16" --num-train-samples 2 --seq-length 512

# --target-params --dry-run lists the candidates (largest first without data) and writes nothing
"$lms" prune "$t" "$work/out" --dry-run --target-params 9M --num-candidates 4 >"$work/stdout" 2>"$work/stderr"
if [ $? -ne 0 ] || [ -e "$work/out" ] || [ "$(grep -c '^ *[0-9] ' "$work/stdout")" -ne 4 ] \
    || ! grep -q "8985600 .*<- pruned to" "$work/stdout"; then
    echo "FAIL: --target-params --dry-run: $(cat "$work/stdout" "$work/stderr")"; fails=$((fails + 1))
else
    passes=$((passes + 1))
fi
# --candidate K prunes to the K-th row: 12 layers, FFN 672, hidden 224, 8 heads (8980704)
"$lms" prune "$t" "$work/out" --target-params 9M --candidate 2 --quiet
if [ $? -ne 0 ] || ! grep -q '"intermediate_size": 672' "$work/out/config.json" \
    || ! grep -q '"hidden_size": 224' "$work/out/config.json"; then
    echo "FAIL: --candidate 2"; fails=$((fails + 1))
else
    passes=$((passes + 1))
fi
rm -rf "$work/out"

# --target-params with calibration data chooses what tests/golden/prune_search_teacher.json says
# (the command's --json before the search moved into the library; tests/unit/test_calibrate.c
# holds the library calls to the same file): the table, its order, the plan of the best
"$lms" prune "$t" "$work/out" --dry-run --json --target-params 9M --search-num-layers 10:11:1 \
    --num-candidates 3 --eval-samples 2 --data-paths "$fix/corpus/val.ids.u16" \
    --num-train-samples 2 --seq-length 64 --mbs 2 --layer-selection block-bi --threads 1 \
    >"$work/stdout" 2>"$work/stderr"
if [ $? -ne 0 ] || ! python3 - "$work/stdout" "${LMS_SOURCE_ROOT:?}/tests/golden/prune_search_teacher.json" <<'PY'
import json, math, sys
got, want = (json.load(open(p)) for p in sys.argv[1:3])
def close(a, b):
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9)
gs, ws = got["search"], want["search"]
keys = ("num_layers", "ffn_hidden_size", "hidden_size", "num_attention_heads",
        "num_query_groups", "n_params", "chosen")
ok = (gs["n_fitting"] == ws["n_fitting"] and gs["ranked_by_loss"] == ws["ranked_by_loss"]
      and len(gs["candidates"]) == len(ws["candidates"])
      and all(all(g[k] == w[k] for k in keys) and close(g["loss"], w["loss"])
              for g, w in zip(gs["candidates"], ws["candidates"]))
      and got["plan"]["layers"]["kept"] == want["plan"]["layers"]["kept"]
      and got["n_params_after"] == want["n_params_after"] and got["shape"] == want["shape"]
      and got["scores"].split(" of ")[0] == want["scores"].split(" of ")[0])
sys.exit(0 if ok else 1)
PY
then
    echo "FAIL: --target-params with data differs from the golden: $(cat "$work/stdout" "$work/stderr")"
    fails=$((fails + 1))
else
    passes=$((passes + 1))
fi

# --multiple-of: explicit widths that are not multiples are refused with the nearest valid values
expect 2 "invalid --multiple-of '0'" "$t" "$work/out" --target-ffn-hidden-size 512 --multiple-of 0
expect 2 "--target-ffn-hidden-size 700: the width is not a multiple of --multiple-of 128 (nearest valid 640 or 768)" \
    "$t" "$work/out" --target-ffn-hidden-size 700 --multiple-of 128
expect 2 "--target-hidden-size 200: the width is not a multiple of --multiple-of 64 (nearest valid 192 or 256)" \
    "$t" "$work/out" --target-hidden-size 200 --multiple-of 64
expect 2 "--target-num-attention-heads 6: the query rows 6 x 32 = 192 are not a multiple of --multiple-of 128 (nearest valid 4 or 8)" \
    "$t" "$work/out" --target-num-attention-heads 6 --multiple-of 128
expect 2 "--target-num-query-groups 1: the key/value rows 1 x 32 = 32 are not a multiple of --multiple-of 64" \
    "$t" "$work/out" --target-num-query-groups 1 --multiple-of 64
expect 2 "--multiple-of 512" "$t" "$work/out" --target-params 9M --multiple-of 512
expect 2 "--multiple-of" "$t" "$work/out" --target-params 2M --multiple-of 32
"$lms" prune "$t" "$work/out" --dry-run --multiple-of 64 --target-ffn-hidden-size 640 \
    --target-hidden-size 192 --target-num-attention-heads 6 >"$work/stdout" 2>"$work/stderr"
if [ $? -ne 0 ] || ! grep -q "768 -> 640" "$work/stdout"; then
    echo "FAIL: --multiple-of 64 with valid targets: $(cat "$work/stderr")"; fails=$((fails + 1))
else
    passes=$((passes + 1))
fi
# --target-params 8M --multiple-of 32 writes the largest shape of the documented grid whose
# widths are multiples of 32 (worked out below; without the flag it would be hidden 240)
"$lms" prune "$t" "$work/out" --target-params 8M --multiple-of 32 --quiet
if [ $? -ne 0 ] || ! python3 - "$work/out/config.json" <<'PY'
import json, math, sys
c = json.load(open(sys.argv[1]))
V, d, g = 4096, 32, 2
def params(L, F, H, nh):  # the teacher's family (Qwen3, untied, q/k norms)
    return 2 * V * H + H + L * (2 * H + H * d * (nh + 2 * g) + nh * d * H + 3 * H * F + 2 * d)
def grid(lo, hi, step, unit=1):
    return [x for x in range(lo, hi) if x % step == 0 and x % unit == 0] + [hi]
shapes = [(params(L, F, H, nh), L, F, H, nh)
          for L in grid(10, 12, 2) for F in grid(461, 768, 32) for H in grid(154, 256, 16)
          for nh in grid(5, 8, 2, 2)
          if F % 32 == 0 and H % 32 == 0 and nh * d % 32 == 0]
best = max(s for s in shapes if s[0] <= 8_000_000)
got = (c["num_hidden_layers"], c["intermediate_size"], c["hidden_size"], c["num_attention_heads"])
ok = (got == best[1:] and all(w % 32 == 0 for w in (c["intermediate_size"], c["hidden_size"],
      c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"])))
sys.exit(0 if ok else 1)
PY
then
    echo "FAIL: --target-params --multiple-of 32: $(cat "$work/out/config.json")"; fails=$((fails + 1))
else
    passes=$((passes + 1))
fi
rm -rf "$work/out"

# --dry-run writes nothing, also with an output path given
"$lms" prune "$t" "$work/out" --dry-run --target_num_layers 8 --target_ffn_hidden_size 512 \
    >"$work/stdout" 2>"$work/stderr"
if [ $? -ne 0 ] || [ -e "$work/out" ] || ! grep -q "12 -> 8" "$work/stdout"; then
    echo "FAIL: --dry-run"; fails=$((fails + 1))
else
    passes=$((passes + 1))
fi

# the reference workflow's spelling works end to end
"$lms" prune --restore_path "$t" --save_path "$work/out" --target_num_layers 8 --quiet
if [ $? -ne 0 ] || [ ! -f "$work/out/config.json" ] || ! grep -q '"num_hidden_layers": 8' "$work/out/config.json"; then
    echo "FAIL: underscore flags"; fails=$((fails + 1))
else
    passes=$((passes + 1))
fi

echo "$passes passed, $fails failed"
[ "$fails" -eq 0 ]
