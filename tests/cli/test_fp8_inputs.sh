#!/usr/bin/env bash
# FP8 checkpoints (Hugging Face, quantization_config.quant_method "fp8", 128 x 128 blocks):
# a checkpoint lmsurgeon wrote with --dtype fp8 is edited to carry one defect each (a weight
# without its scale, a scale of the wrong shape, a scale without its weight, a NaN, infinite or
# negative scale, another block size); `convert` must exit 3 with one line on stderr naming the
# file and the tensor, and write nothing. Also: --dtype fp8 is refused for a non-HF output (2),
# prune writes it from an FP8 input, distill refuses it (2: it has no FP8 export), and a NaN weight cannot be quantised (3,
# nothing written).
set -u

source "$(dirname "$0")/lib.sh"
lms_scratch fp8

"$LMSURGEON" convert "$FIXTURES/models/qwen3-tiny" "$TMP/good" --dtype fp8 --quiet ||
    { echo "FAIL: converting the fixture to fp8" >&2; exit 1; }

# edit CASE PYTHON-STATEMENTS: copies good/ to CASE/ and runs the statements with t (the
# tensors: name -> [dtype, shape, bytes]) and cfg (config.json) in scope, then rewrites both
edit() {
    local case=$1 code=$2
    cp -r "$TMP/good" "$TMP/$case"
    python3 - "$TMP/$case" "$code" <<'PY' || fail "$1: building the case"
import json, struct, sys
d, code = sys.argv[1], sys.argv[2]
raw = open(d + "/model.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
h = json.loads(raw[8:8 + n])
h.pop("__metadata__", None)
t = {k: [v["dtype"], v["shape"], raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]]
     for k, v in h.items()}
cfg = json.load(open(d + "/config.json"))
f32 = lambda *xs: struct.pack("<%df" % len(xs), *xs)
exec(code)
hdr, data = {"__metadata__": {"format": "pt"}}, b""
for k, (dt, shape, b) in t.items():
    hdr[k] = {"dtype": dt, "shape": shape, "data_offsets": [len(data), len(data) + len(b)]}
    data += b
text = json.dumps(hdr).encode()
text += b" " * (-len(text) % 8)
open(d + "/model.safetensors", "wb").write(struct.pack("<Q", len(text)) + text + data)
json.dump(cfg, open(d + "/config.json", "w"))
PY
}

# expect CASE RC SUBSTRING [ARGS...]: converting CASE exits RC with one stderr line holding
# SUBSTRING, and leaves no output behind
expect() {
    local case=$1 rc=$2 sub=$3
    shift 3
    "$LMSURGEON" convert "$TMP/$case" "$TMP/out-$case" "$@" >"$TMP/$case.out" 2>"$TMP/$case.err"
    local got=$?
    [ "$got" -eq "$rc" ] || fail "$case: exit $got, expected $rc: $(cat "$TMP/$case.err")"
    [ "$(wc -l <"$TMP/$case.err")" -eq 1 ] || fail "$case: stderr is not one line"
    grep -qF -- "$sub" "$TMP/$case.err" || fail "$case: stderr lacks '$sub': $(cat "$TMP/$case.err")"
    [ ! -s "$TMP/$case.out" ] || fail "$case: wrote to stdout"
    [ -z "$(ls -A "$TMP" | grep -F "out-$case")" ] || fail "$case: left output behind"
}

Q=model.layers.0.self_attn.q_proj.weight
MS="$TMP/%s/model.safetensors"
edit missing "del t['${Q}_scale_inv']"
expect missing 3 "$(printf "$MS" missing)': FP8 tensor '$Q' has no '${Q}_scale_inv'"
edit misshapen "t['${Q}_scale_inv'] = ['F32', [2, 1], f32(1.0, 1.0)]"
expect misshapen 3 "$(printf "$MS" misshapen)': scale tensor '${Q}_scale_inv' must be a float [1, 1]"
edit orphan "t['model.norm.weight_scale_inv'] = ['F32', [1, 1], f32(1.0)]"
expect orphan 3 "$(printf "$MS" orphan)': scale tensor 'model.norm.weight_scale_inv' has no F8_E4M3 weight"
edit nan "t['${Q}_scale_inv'][2] = f32(float('nan'))"
expect nan 3 "$(printf "$MS" nan)': scale tensor '${Q}_scale_inv' holds nan at block 0"
edit inf "t['${Q}_scale_inv'][2] = f32(float('inf'))"
expect inf 3 "scale tensor '${Q}_scale_inv' holds inf at block 0"
edit negative "t['${Q}_scale_inv'][2] = f32(-0.5)"
expect negative 3 "scale tensor '${Q}_scale_inv' holds -0.5 at block 0 (scales must be finite and >= 0)"
edit block64 "cfg['quantization_config']['weight_block_size'] = [64, 64]"
expect block64 3 "$TMP/block64/config.json': FP8 'weight_block_size' must be [128, 128]"
edit int_scale "t['${Q}_scale_inv'] = ['I32', [1, 1], struct.pack('<i', 1)]"
expect int_scale 3 "scale tensor '${Q}_scale_inv' must be a float [1, 1]"
# the same scale with the weight stored in bf16: an orphan too
edit bf16_weight "t['$Q'] = ['BF16', t['$Q'][1], bytes(2 * len(t['$Q'][2]))]"
expect bf16_weight 3 "has no F8_E4M3 weight '$Q'"

# writing: fp8 is a Hugging Face layout; a NaN weight has no block scale
cp -r "$TMP/good" "$TMP/to_nemo"
expect to_nemo 2 "the nemo writer cannot write dtype F8_E4M3" --to nemo --dtype fp8
# distill: FP8 is the writer's (it quantises the trained f32 export); a format without FP8 is
# refused before any step, with nothing written
DIST=(distill --student "$FIXTURES/teacher" --teacher "$FIXTURES/teacher"
      --data-paths "$FIXTURES/corpus/val.ids.u16" --split 1 --seq-length 32 --gbs 2 --mbs 2
      --max-steps 1 --limit-val-batches 0 --threads 1 --log-dir "$TMP/logs" --quiet)
"$LMSURGEON" "${DIST[@]}" --out "$TMP/out-dn" --to nemo --dtype fp8 >/dev/null 2>"$TMP/distill.err"
[ $? -eq 2 ] && grep -qF -- "the nemo writer cannot write dtype F8_E4M3" "$TMP/distill.err" &&
    [ ! -e "$TMP/out-dn" ] && [ ! -e "$TMP/logs/out-dn.metrics.jsonl" ] ||
    fail "distill --to nemo --dtype fp8: $(cat "$TMP/distill.err")"
if "$LMSURGEON" "${DIST[@]}" --out "$TMP/out-d" --dtype fp8 2>"$TMP/distill.err"; then
    python3 - "$TMP/out-d" <<'PY' || fail "distill --dtype fp8: the student is not FP8"
import json, struct, sys
d = sys.argv[1]
cfg = json.load(open(d + "/config.json"))
assert cfg["quantization_config"]["quant_method"] == "fp8", cfg
raw = open(d + "/model.safetensors", "rb").read()
h = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
q = "model.layers.0.self_attn.q_proj.weight"
assert h[q]["dtype"] == "F8_E4M3" and h[q + "_scale_inv"]["dtype"] == "F32", h[q]
PY
else
    fail "distill --dtype fp8: $(cat "$TMP/distill.err")"
fi
"$LMSURGEON" convert "$TMP/good" "$TMP/f32" --dtype f32 --quiet || fail "fp8 -> f32"
mkdir "$TMP/nan_weight"
cp "$TMP/f32"/* "$TMP/nan_weight/"
python3 - "$TMP/nan_weight/model.safetensors" "$Q" <<'PY' || fail "nan_weight: building the case"
import json, struct, sys
p, q = sys.argv[1], sys.argv[2]
raw = bytearray(open(p, "rb").read())
n = struct.unpack("<Q", raw[:8])[0]
off = 8 + n + json.loads(raw[8:8 + n])[q]["data_offsets"][0]
raw[off + 4 * 200:off + 4 * 201] = struct.pack("<f", float("nan"))  # row 3, column 8
open(p, "wb").write(raw)
PY
expect nan_weight 3 "reading '$TMP/nan_weight/model.safetensors': tensor '$Q': rows 0..127 hold a NaN or an infinity" --dtype fp8

# prune reads FP8 and writes FP8: FFN 160 -> 150 keeps short edge blocks ([150, 64]: scales [2, 1])
"$LMSURGEON" prune "$TMP/good" "$TMP/pruned" --drop-layers 1 --target-ffn-hidden-size 150 \
    --dtype fp8 --quiet || fail "prune --dtype fp8"
python3 - "$TMP/pruned/model.safetensors" <<'PY' || fail "pruned FP8 model: gate_proj"
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
h = json.loads(raw[8:8 + struct.unpack("<Q", raw[:8])[0]])
g = "model.layers.0.mlp.gate_proj.weight"
assert h[g]["dtype"] == "F8_E4M3" and h[g]["shape"] == [150, 64], h[g]
assert h[g + "_scale_inv"]["dtype"] == "F32" and h[g + "_scale_inv"]["shape"] == [2, 1]
assert "model.layers.3.mlp.gate_proj.weight" not in h
PY

n_cases=14
[ "$n_fail" -eq 0 ] && echo "ok: $n_cases FP8 input cases" && exit 0
exit 1
