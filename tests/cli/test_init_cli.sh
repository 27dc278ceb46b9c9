#!/usr/bin/env bash
# lmsurgeon init from the command line: a model of random weights from the tiny fixtures'
# config.json files reads back with inspect, in every output format, with the architecture, the
# parameter count and the tensor bytes of the fixture the config belongs to (models written by
# transformers); every format converts back to the same Hugging Face weights; the weights depend
# on the seed only (not on the thread count), and an f32 model cast by convert equals the model
# generated in bf16; the stand-in tokenizer encodes text to its bytes; a preset gives its size;
# bad requests are refused before anything is written; a distillation dry run on a CUDA device
# plans with --max-memory where no GPU is present.
set -u

source "$(dirname "$0")/lib.sh"
lms_scratch init
passes=0

check() { # check DESCRIPTION COMMAND...: the command must succeed
    local what=$1
    shift
    if "$@" >"$TMP/check.out" 2>&1; then
        passes=$((passes + 1))
    else
        fail "$what: $(head -c 600 "$TMP/check.out")"
    fi
}

# expect CODE SUBSTRING ARGS...: exit code, one stderr line containing SUBSTRING, nothing written
expect() {
    local code=$1 needle=$2
    shift 2
    "$LMSURGEON" init "$@" >"$TMP/stdout" 2>"$TMP/stderr"
    local rc=$?
    if [ "$rc" -ne "$code" ] || [ "$(wc -l <"$TMP/stderr")" -ne 1 ] ||
        ! grep -qF -- "$needle" "$TMP/stderr" || [ -e "$TMP/bad" ] ||
        ls -a "$TMP" | grep -q 'lms-tmp' || grep -qE 'runtime error|Sanitizer' "$TMP/stderr"; then
        fail "init $* -> rc=$rc (want $code), stderr: $(cat "$TMP/stderr")"
    else
        passes=$((passes + 1))
    fi
}

# same_shape FIXTURE OUT: inspect gives OUT the fixture's config, parameter count and tensor
# count, and tensor bytes in dtype DTYPE (default the fixture's)
same_shape() {
    "$LMSURGEON" inspect "$1" --json >"$TMP/want.json" && "$LMSURGEON" inspect "$2" --json >"$TMP/got.json" &&
        python3 - "$TMP/want.json" "$TMP/got.json" "${3:-}" <<'PY'
import json, sys
want, got = (json.load(open(p)) for p in sys.argv[1:3])
dtype = sys.argv[3]
if dtype:
    want["config"]["dtype"] = dtype
    want["tensor_bytes"] = want["tensor_bytes"] // 4 * {"BF16": 2, "F16": 2, "F32": 4}[dtype]
for k in ("config", "n_params", "n_tensors", "tensor_bytes"):
    assert got[k] == want[k], (k, got[k], want[k])
PY
}

# every format, from each tiny fixture's config
for m in qwen3-tiny qwen2-tiny llama-tiny; do
    cfg="$FIXTURES/models/$m/config.json"
    check "$m to hf" "$LMSURGEON" init "$TMP/$m.hf" --config "$cfg" --seed 7 --quiet
    check "$m hf has the fixture's shape" same_shape "$FIXTURES/models/$m" "$TMP/$m.hf"
    for to in nemo megatron nemo1; do
        check "$m to $to" "$LMSURGEON" init "$TMP/$m.$to" --config "$cfg" --seed 7 --to "$to" --quiet
        check "$m $to has the fixture's shape" same_shape "$FIXTURES/models/$m" "$TMP/$m.$to"
        check "$m $to back to hf" "$LMSURGEON" convert "$TMP/$m.$to" "$TMP/$m.$to.hf" --to hf --quiet
        check "$m $to gives the hf weights" cmp "$TMP/$m.$to.hf/model.safetensors" \
            "$TMP/$m.hf/model.safetensors"
        check "$m $to gives the hf config" cmp "$TMP/$m.$to.hf/config.json" "$TMP/$m.hf/config.json"
    done
done

# determinism: the seed decides, the thread count does not
q="$FIXTURES/models/qwen3-tiny/config.json"
check "threads 1" "$LMSURGEON" init "$TMP/t1" --config "$q" --seed 7 --threads 1 --quiet
check "threads 3" "$LMSURGEON" init "$TMP/t3" --config "$q" --seed 7 --threads 3 --quiet
check "same seed, one thread" cmp "$TMP/t1/model.safetensors" "$TMP/qwen3-tiny.hf/model.safetensors"
check "same seed, three threads" cmp "$TMP/t3/model.safetensors" "$TMP/qwen3-tiny.hf/model.safetensors"
check "seed 8" "$LMSURGEON" init "$TMP/s8" --config "$q" --seed 8 --quiet
check "another seed, other weights" bash -c "! cmp -s '$TMP/s8/model.safetensors' '$TMP/t1/model.safetensors'"

# dtypes: generating in bf16 rounds the f32 values as convert's cast does
check "bf16" "$LMSURGEON" init "$TMP/bf16" --config "$q" --seed 7 --dtype bf16 --quiet
check "bf16 shape" same_shape "$FIXTURES/models/qwen3-tiny" "$TMP/bf16" BF16
check "cast by convert" "$LMSURGEON" convert "$TMP/t1" "$TMP/cast" --dtype bf16 --quiet
check "bf16 equals the cast" cmp "$TMP/cast/model.safetensors" "$TMP/bf16/model.safetensors"

# sharding and overrides
check "sharded" "$LMSURGEON" init "$TMP/sh" --config "$q" --seed 7 --max-shard-size 200KB --quiet
check "shards and index" bash -c "[ -f '$TMP/sh/model.safetensors.index.json' ] &&
    [ \$(ls '$TMP/sh' | grep -c 'model-.*-of-.*safetensors') -gt 1 ]"
check "sharded reads back" same_shape "$FIXTURES/models/qwen3-tiny" "$TMP/sh"
check "2 layers, config from a folder" "$LMSURGEON" init "$TMP/l2" --config "$FIXTURES/models/qwen3-tiny" \
    --num-layers 2 --quiet
check "2 layers in the config" python3 -c "
import json; c = json.load(open('$TMP/l2/config.json'))
assert c['num_hidden_layers'] == 2 and c['layer_types'] == ['full_attention'] * 2, c"

# the stand-in tokenizer: a text is its UTF-8 bytes; <|endoftext|> is id 256 and the config's
# end of text
check "stand-in encodes bytes" bash -c "[ \"\$('$LMSURGEON' tokenize --tokenizer '$TMP/t1' \
    --text 'hé<|endoftext|>')\" = '104 195 169 256' ]"
check "config names id 256" python3 -c "
import json; assert json.load(open('$TMP/t1/config.json'))['eos_token_id'] == 256"
# a tokenizer copied from a folder
check "copied tokenizer" "$LMSURGEON" init "$TMP/tok" --config "$q" --vocab-size 4096 \
    --tokenizer "$FIXTURES/teacher" --quiet
check "tokenizer.json copied" cmp "$TMP/tok/tokenizer.json" "$FIXTURES/teacher/tokenizer.json"
check "no tokenizer" "$LMSURGEON" init "$TMP/none" --config "$q" --no-tokenizer --quiet
check "no tokenizer files" bash -c "[ \"\$(ls '$TMP/none')\" = \"config.json
model.safetensors\" ]"

# a preset: qwen3-0.6b with one layer and 1,024 ids has 16,780,544 parameters (per layer
# 2 x 1024 norms + 1024 x (2048 + 2 x 1024 + 2048) attention + 3 x 3072 x 1024 MLP + 2 x 128
# q/k norms; tied 1024 x 1024 embedding; final norm)
check "preset" bash -c "'$LMSURGEON' init '$TMP/p' --preset qwen3-0.6b --num-layers 1 \
    --vocab-size 1024 --json >'$TMP/p.json'"
check "preset json" python3 -c "
import json; d = json.load(open('$TMP/p.json'))
assert d['ok'] and d['n_params'] == 16780544 and d['dtype'] == 'BF16' and d['to'] == 'hf', d
assert d['tokenizer'] == 'byte-level stand-in' and d['architecture'] == 'Qwen3ForCausalLM', d"
check "preset inspect" bash -c "'$LMSURGEON' inspect '$TMP/p' --json | python3 -c '
import json, sys; d = json.load(sys.stdin)
assert d[\"n_params\"] == 16780544 and d[\"config\"][\"tie_embeddings\"], d'"

# refusals, nothing written
check "--help" bash -c "'$LMSURGEON' init --help | grep -q '^usage: lmsurgeon init OUT'"
expect 2 "unknown or incomplete option '--no-such-flag'" "$TMP/bad" --config "$q" --no-such-flag
expect 2 "one of --preset NAME and --config FILE" "$TMP/bad"
expect 2 "one of --preset NAME and --config FILE" "$TMP/bad" --preset qwen3-8b --config "$q"
expect 2 "unknown --preset 'qwen3-9b'" "$TMP/bad" --preset qwen3-9b
expect 2 "exclude each other" "$TMP/bad" --config "$q" --tokenizer "$FIXTURES/teacher" --no-tokenizer
expect 2 "unknown --to 'onnx'" "$TMP/bad" --config "$q" --to onnx
expect 2 "unknown --dtype" "$TMP/bad" --config "$q" --dtype int8
expect 2 "invalid --num-layers '0'" "$TMP/bad" --config "$q" --num-layers 0
expect 2 "expected one OUT" --config "$q"
expect 2 "no room for the byte-level stand-in" "$TMP/bad" --config "$q" --vocab-size 200
expect 2 "has 4096 tokens, more than the model's vocabulary of 512" "$TMP/bad" --config "$q" \
    --tokenizer "$FIXTURES/teacher"
expect 4 "missing.json" "$TMP/bad" --config "$TMP/missing.json"
echo '{"architectures": ["GPT2LMHeadModel"], "vocab_size": 512}' >"$TMP/gpt2.json"
expect 3 "unsupported architecture 'GPT2LMHeadModel'" "$TMP/bad" --config "$TMP/gpt2.json"
echo '{"architectures": ' >"$TMP/broken.json"
expect 3 "broken.json" "$TMP/bad" --config "$TMP/broken.json"
echo '[1, 2]' >"$TMP/list.json"
expect 3 "list.json': not a JSON object" "$TMP/bad" --config "$TMP/list.json"
mkdir -p "$TMP/empty"
expect 4 "empty/config.json" "$TMP/bad" --config "$TMP/empty"
mkdir -p "$TMP/bad" && touch "$TMP/bad/x"
"$LMSURGEON" init "$TMP/bad" --config "$q" --quiet 2>"$TMP/stderr"
rc=$?
if [ "$rc" -ne 2 ] || [ "$(ls "$TMP/bad")" != x ]; then
    fail "non-empty OUT without --force: rc=$rc, $(cat "$TMP/stderr")"
fi
check "--force replaces" "$LMSURGEON" init "$TMP/bad" --config "$q" --force --quiet
check "replaced" test -f "$TMP/bad/model.safetensors" -a ! -e "$TMP/bad/x"
rm -rf "$TMP/bad"

# --dtype fp8 and q8_0 are the writer's block formats: the same bytes as quantising the
# unquantised output with convert; the help names every output format
check "init fp8" "$LMSURGEON" init "$TMP/fp8" --config "$q" --dtype fp8 --quiet
check "init for fp8" "$LMSURGEON" init "$TMP/plain" --config "$q" --quiet
check "convert fp8" "$LMSURGEON" convert "$TMP/plain" "$TMP/fp8.ref" --dtype fp8 --quiet
check "init fp8 = convert --dtype fp8" diff -r "$TMP/fp8" "$TMP/fp8.ref"
check "init q8_0" "$LMSURGEON" init "$TMP/q8.gguf" --config "$q" --to gguf --dtype q8_0 --quiet
mkdir -p "$TMP/ref"  # the file's name is the model's general.name: the same one
check "convert q8_0" "$LMSURGEON" convert "$TMP/plain" "$TMP/ref/q8.gguf" --to gguf --dtype q8_0 --quiet
check "init q8_0 = convert --dtype q8_0" cmp "$TMP/q8.gguf" "$TMP/ref/q8.gguf"
check "init --json names fp8" bash -c "'$LMSURGEON' init '$TMP/fp8j' --config '$q' --dtype fp8 --json |
    grep -q '\"dtype\":\"F8_E4M3\"'"
check "init --help names gguf" bash -c "'$LMSURGEON' init --help | grep -q 'nemo1 or gguf'"
check "prune --help names gguf" bash -c "'$LMSURGEON' prune --help | grep -A1 -- '--to FORMAT' | grep -q gguf"
rm -rf "$TMP/fp8" "$TMP/fp8.ref" "$TMP/plain" "$TMP/q8.gguf" "$TMP/ref" "$TMP/fp8j"

# distill --dry-run --device cuda plans against --max-memory without opening a device, so a
# machine without a GPU prints the plan
check "teacher" "$LMSURGEON" init "$TMP/teacher" --config "$q" --vocab-size 4096 --quiet
check "student" "$LMSURGEON" prune "$TMP/teacher" "$TMP/student" --target-num-layers 2 --quiet
check "dry run on cuda" bash -c "'$LMSURGEON' distill --student '$TMP/student' \
    --teacher '$TMP/teacher' --data-paths '$FIXTURES/corpus/val.ids.u16' --seq-length 256 --mbs 1 \
    --gbs 4 --limit-val-batches 0 --dry-run --device cuda --max-memory 141GB >'$TMP/plan.txt'"
check "the plan is printed" grep -q "of 141.00 GB allowed (--max-memory): fits" "$TMP/plan.txt"

echo "test_init_cli: $passes passed, $n_fail failed"
[ "$n_fail" -eq 0 ]
