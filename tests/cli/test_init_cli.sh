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
lms=${LMSURGEON:?}
fix=${LMS_FIXTURES:?}
work=$(mktemp -d "${TMPDIR:-/tmp}/lms-init.XXXXXX")
trap 'rm -rf "$work"' EXIT
fails=0
passes=0

check() { # check DESCRIPTION COMMAND...: the command must succeed
    local what=$1
    shift
    if "$@" >"$work/check.out" 2>&1; then
        passes=$((passes + 1))
    else
        echo "FAIL: $what: $(head -c 600 "$work/check.out")"
        fails=$((fails + 1))
    fi
}

# expect CODE SUBSTRING ARGS...: exit code, one stderr line containing SUBSTRING, nothing written
expect() {
    local code=$1 needle=$2
    shift 2
    "$lms" init "$@" >"$work/stdout" 2>"$work/stderr"
    local rc=$?
    if [ "$rc" -ne "$code" ] || [ "$(wc -l <"$work/stderr")" -ne 1 ] ||
        ! grep -qF -- "$needle" "$work/stderr" || [ -e "$work/bad" ] ||
        ls -a "$work" | grep -q 'lms-tmp' || grep -qE 'runtime error|Sanitizer' "$work/stderr"; then
        echo "FAIL: init $* -> rc=$rc (want $code), stderr: $(cat "$work/stderr")"
        fails=$((fails + 1))
    else
        passes=$((passes + 1))
    fi
}

# same_shape FIXTURE OUT: inspect gives OUT the fixture's config, parameter count and tensor
# count, and tensor bytes in dtype DTYPE (default the fixture's)
same_shape() {
    "$lms" inspect "$1" --json >"$work/want.json" && "$lms" inspect "$2" --json >"$work/got.json" &&
        python3 - "$work/want.json" "$work/got.json" "${3:-}" <<'PY'
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
    cfg="$fix/models/$m/config.json"
    check "$m to hf" "$lms" init "$work/$m.hf" --config "$cfg" --seed 7 --quiet
    check "$m hf has the fixture's shape" same_shape "$fix/models/$m" "$work/$m.hf"
    for to in nemo megatron nemo1; do
        check "$m to $to" "$lms" init "$work/$m.$to" --config "$cfg" --seed 7 --to "$to" --quiet
        check "$m $to has the fixture's shape" same_shape "$fix/models/$m" "$work/$m.$to"
        check "$m $to back to hf" "$lms" convert "$work/$m.$to" "$work/$m.$to.hf" --to hf --quiet
        check "$m $to gives the hf weights" cmp "$work/$m.$to.hf/model.safetensors" \
            "$work/$m.hf/model.safetensors"
        check "$m $to gives the hf config" cmp "$work/$m.$to.hf/config.json" "$work/$m.hf/config.json"
    done
done

# determinism: the seed decides, the thread count does not
q="$fix/models/qwen3-tiny/config.json"
check "threads 1" "$lms" init "$work/t1" --config "$q" --seed 7 --threads 1 --quiet
check "threads 3" "$lms" init "$work/t3" --config "$q" --seed 7 --threads 3 --quiet
check "same seed, one thread" cmp "$work/t1/model.safetensors" "$work/qwen3-tiny.hf/model.safetensors"
check "same seed, three threads" cmp "$work/t3/model.safetensors" "$work/qwen3-tiny.hf/model.safetensors"
check "seed 8" "$lms" init "$work/s8" --config "$q" --seed 8 --quiet
check "another seed, other weights" bash -c "! cmp -s '$work/s8/model.safetensors' '$work/t1/model.safetensors'"

# dtypes: generating in bf16 rounds the f32 values as convert's cast does
check "bf16" "$lms" init "$work/bf16" --config "$q" --seed 7 --dtype bf16 --quiet
check "bf16 shape" same_shape "$fix/models/qwen3-tiny" "$work/bf16" BF16
check "cast by convert" "$lms" convert "$work/t1" "$work/cast" --dtype bf16 --quiet
check "bf16 equals the cast" cmp "$work/cast/model.safetensors" "$work/bf16/model.safetensors"

# sharding and overrides
check "sharded" "$lms" init "$work/sh" --config "$q" --seed 7 --max-shard-size 200KB --quiet
check "shards and index" bash -c "[ -f '$work/sh/model.safetensors.index.json' ] &&
    [ \$(ls '$work/sh' | grep -c 'model-.*-of-.*safetensors') -gt 1 ]"
check "sharded reads back" same_shape "$fix/models/qwen3-tiny" "$work/sh"
check "2 layers, config from a folder" "$lms" init "$work/l2" --config "$fix/models/qwen3-tiny" \
    --num-layers 2 --quiet
check "2 layers in the config" python3 -c "
import json; c = json.load(open('$work/l2/config.json'))
assert c['num_hidden_layers'] == 2 and c['layer_types'] == ['full_attention'] * 2, c"

# the stand-in tokenizer: a text is its UTF-8 bytes; <|endoftext|> is id 256 and the config's
# end of text
check "stand-in encodes bytes" bash -c "[ \"\$('$lms' tokenize --tokenizer '$work/t1' \
    --text 'hé<|endoftext|>')\" = '104 195 169 256' ]"
check "config names id 256" python3 -c "
import json; assert json.load(open('$work/t1/config.json'))['eos_token_id'] == 256"
# a tokenizer copied from a folder
check "copied tokenizer" "$lms" init "$work/tok" --config "$q" --vocab-size 4096 \
    --tokenizer "$fix/teacher" --quiet
check "tokenizer.json copied" cmp "$work/tok/tokenizer.json" "$fix/teacher/tokenizer.json"
check "no tokenizer" "$lms" init "$work/none" --config "$q" --no-tokenizer --quiet
check "no tokenizer files" bash -c "[ \"\$(ls '$work/none')\" = \"config.json
model.safetensors\" ]"

# a preset: qwen3-0.6b with one layer and 1,024 ids has 16,780,544 parameters (per layer
# 2 x 1024 norms + 1024 x (2048 + 2 x 1024 + 2048) attention + 3 x 3072 x 1024 MLP + 2 x 128
# q/k norms; tied 1024 x 1024 embedding; final norm)
check "preset" bash -c "'$lms' init '$work/p' --preset qwen3-0.6b --num-layers 1 \
    --vocab-size 1024 --json >'$work/p.json'"
check "preset json" python3 -c "
import json; d = json.load(open('$work/p.json'))
assert d['ok'] and d['n_params'] == 16780544 and d['dtype'] == 'BF16' and d['to'] == 'hf', d
assert d['tokenizer'] == 'byte-level stand-in' and d['architecture'] == 'Qwen3ForCausalLM', d"
check "preset inspect" bash -c "'$lms' inspect '$work/p' --json | python3 -c '
import json, sys; d = json.load(sys.stdin)
assert d[\"n_params\"] == 16780544 and d[\"config\"][\"tie_embeddings\"], d'"

# refusals, nothing written
check "--help" bash -c "'$lms' init --help | grep -q '^usage: lmsurgeon init OUT'"
expect 2 "unknown or incomplete option '--no-such-flag'" "$work/bad" --config "$q" --no-such-flag
expect 2 "one of --preset NAME and --config FILE" "$work/bad"
expect 2 "one of --preset NAME and --config FILE" "$work/bad" --preset qwen3-8b --config "$q"
expect 2 "unknown --preset 'qwen3-9b'" "$work/bad" --preset qwen3-9b
expect 2 "exclude each other" "$work/bad" --config "$q" --tokenizer "$fix/teacher" --no-tokenizer
expect 2 "unknown --to 'onnx'" "$work/bad" --config "$q" --to onnx
expect 2 "unknown --dtype" "$work/bad" --config "$q" --dtype int8
expect 2 "invalid --num-layers '0'" "$work/bad" --config "$q" --num-layers 0
expect 2 "expected one OUT" --config "$q"
expect 2 "no room for the byte-level stand-in" "$work/bad" --config "$q" --vocab-size 200
expect 2 "has 4096 tokens, more than the model's vocabulary of 512" "$work/bad" --config "$q" \
    --tokenizer "$fix/teacher"
expect 4 "missing.json" "$work/bad" --config "$work/missing.json"
echo '{"architectures": ["GPT2LMHeadModel"], "vocab_size": 512}' >"$work/gpt2.json"
expect 3 "unsupported architecture 'GPT2LMHeadModel'" "$work/bad" --config "$work/gpt2.json"
echo '{"architectures": ' >"$work/broken.json"
expect 3 "broken.json" "$work/bad" --config "$work/broken.json"
echo '[1, 2]' >"$work/list.json"
expect 3 "list.json': not a JSON object" "$work/bad" --config "$work/list.json"
mkdir -p "$work/empty"
expect 4 "empty/config.json" "$work/bad" --config "$work/empty"
mkdir -p "$work/bad" && touch "$work/bad/x"
"$lms" init "$work/bad" --config "$q" --quiet 2>"$work/stderr"
rc=$?
if [ "$rc" -ne 2 ] || [ "$(ls "$work/bad")" != x ]; then
    echo "FAIL: non-empty OUT without --force: rc=$rc, $(cat "$work/stderr")"
    fails=$((fails + 1))
fi
check "--force replaces" "$lms" init "$work/bad" --config "$q" --force --quiet
check "replaced" test -f "$work/bad/model.safetensors" -a ! -e "$work/bad/x"
rm -rf "$work/bad"

# --dtype fp8 and q8_0 are the writer's block formats: the same bytes as quantising the
# unquantised output with convert; the help names every output format
check "init fp8" "$lms" init "$work/fp8" --config "$q" --dtype fp8 --quiet
check "init for fp8" "$lms" init "$work/plain" --config "$q" --quiet
check "convert fp8" "$lms" convert "$work/plain" "$work/fp8.ref" --dtype fp8 --quiet
check "init fp8 = convert --dtype fp8" diff -r "$work/fp8" "$work/fp8.ref"
check "init q8_0" "$lms" init "$work/q8.gguf" --config "$q" --to gguf --dtype q8_0 --quiet
mkdir -p "$work/ref"  # the file's name is the model's general.name: the same one
check "convert q8_0" "$lms" convert "$work/plain" "$work/ref/q8.gguf" --to gguf --dtype q8_0 --quiet
check "init q8_0 = convert --dtype q8_0" cmp "$work/q8.gguf" "$work/ref/q8.gguf"
check "init --json names fp8" bash -c "'$lms' init '$work/fp8j' --config '$q' --dtype fp8 --json |
    grep -q '\"dtype\":\"F8_E4M3\"'"
check "init --help names gguf" bash -c "'$lms' init --help | grep -q 'nemo1 or gguf'"
check "prune --help names gguf" bash -c "'$lms' prune --help | grep -A1 -- '--to FORMAT' | grep -q gguf"
rm -rf "$work/fp8" "$work/fp8.ref" "$work/plain" "$work/q8.gguf" "$work/ref" "$work/fp8j"

# distill --dry-run --device cuda plans against --max-memory without opening a device, so a
# machine without a GPU prints the plan
check "teacher" "$lms" init "$work/teacher" --config "$q" --vocab-size 4096 --quiet
check "student" "$lms" prune "$work/teacher" "$work/student" --target-num-layers 2 --quiet
check "dry run on cuda" bash -c "'$lms' distill --student '$work/student' \
    --teacher '$work/teacher' --data-paths '$fix/corpus/val.ids.u16' --seq-length 256 --mbs 1 \
    --gbs 4 --limit-val-batches 0 --dry-run --device cuda --max-memory 141GB >'$work/plan.txt'"
check "the plan is printed" grep -q "of 141.00 GB allowed (--max-memory): fits" "$work/plan.txt"

echo "test_init_cli: $passes passed, $fails failed"
[ "$fails" -eq 0 ]
