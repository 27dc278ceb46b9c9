#!/usr/bin/env bash
# Weight reconstruction from the command line (prune --reconstruct lsq, score --reconstruct):
# - the statistics of a sidecar (score --reconstruct, also merged from two parts) and of
#   prune's own calibration over the same rows give the same checkpoint, byte for byte, and
#   it differs from the plain prune only in the refitted projections;
# - --reconstruct without statistics, with an importance file that has none, with statistics of
#   another model, or with nothing to refit is one error line, the documented exit code and
#   nothing written.
set -u

source "$(dirname "$0")/lib.sh"
lms_scratch recon
passes=0
tiny="$FIXTURES/models/qwen3-tiny"

pass() { passes=$((passes + 1)); }

# expect CODE SUBSTRING CMD ARGS...: exit code, one stderr line with SUBSTRING, no $TMP/out
expect() {
    local code=$1 needle=$2
    shift 2
    "$LMSURGEON" "$@" >"$TMP/stdout" 2>"$TMP/stderr"
    local rc=$? lines
    lines=$(wc -l <"$TMP/stderr")
    if [ "$rc" -ne "$code" ] || [ "$lines" -ne 1 ] || ! grep -qF -- "$needle" "$TMP/stderr" \
        || [ -e "$TMP/out" ] || [ -e "$TMP/out.json" ] || [ -e "$TMP/out.gram.safetensors" ] \
        || ls -a "$TMP" | grep -q 'lms-tmp' \
        || grep -qE 'runtime error|AddressSanitizer' "$TMP/stderr"; then
        fail "$* -> rc=$rc (want $code), stderr: $(cat "$TMP/stderr")"
    else
        pass
    fi
}

ok() { # ok ARGS...: the command succeeds
    if ! "$LMSURGEON" "$@" --quiet >"$TMP/stdout" 2>"$TMP/stderr"; then
        fail "$* -> $(cat "$TMP/stderr")"
        return 1
    fi
    pass
}

python3 - "$TMP" <<'PY'
import random, struct, sys
r = random.Random(7)
ids = [r.randrange(512) for _ in range(4096)]
open(sys.argv[1] + "/ids.u16", "wb").write(struct.pack("<%dH" % len(ids), *ids))
PY
cal=(--seq-length 32 --mbs 4 --threads 1) # one thread: sums equal whatever the run
cut=(--target-ffn-hidden-size 128 --target-num-attention-heads 2)

ok score "$tiny" --data "$TMP/ids.u16" --num-samples 8 "${cal[@]}" --reconstruct -o "$TMP/s.json"
[ -f "$TMP/s.gram.safetensors" ] && grep -q '"reconstruction": *{"statistics": *"s.gram.safetensors"}' "$TMP/s.json" \
    && pass || fail "score --reconstruct: no sidecar named by s.json"
ok score "$tiny" --data "$TMP/ids.u16" --rows 0:4 "${cal[@]}" --reconstruct -o "$TMP/a.json"
ok score "$tiny" --data "$TMP/ids.u16" --rows 4:8 "${cal[@]}" --reconstruct -o "$TMP/b.json"
ok score --merge "$TMP/a.json" "$TMP/b.json" -o "$TMP/m.json"
ok prune "$tiny" "$TMP/from-file" --importance "$TMP/s.json" "${cut[@]}" --reconstruct lsq
ok prune "$tiny" "$TMP/from-merged" --importance "$TMP/m.json" "${cut[@]}" --reconstruct lsq
ok prune "$tiny" "$TMP/from-pass" --data-paths "$TMP/ids.u16" --num-train-samples 8 "${cal[@]}" \
    "${cut[@]}" --reconstruct lsq
ok prune "$tiny" "$TMP/plain" --importance "$TMP/s.json" "${cut[@]}"
for p in from-merged from-pass; do
    cmp -s "$TMP/from-file/model.safetensors" "$TMP/$p/model.safetensors" && pass \
        || fail "prune --reconstruct lsq: $p differs from the sidecar's refit"
done
# changed TENSOR_SUFFIX... between two checkpoints: exactly these tensors of every layer differ
changed() {
    python3 - "$@" <<'PY'
import json, struct, sys
def tensors(p):
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    h.pop("__metadata__", None)
    return {k: b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in h.items()}
a, b = tensors(sys.argv[1] + "/model.safetensors"), tensors(sys.argv[2] + "/model.safetensors")
layers, suffixes = int(sys.argv[3]), sys.argv[4:]
assert a.keys() == b.keys()
got = sorted(k for k in a if a[k] != b[k])
want = sorted(f"model.layers.{l}.{t}" for l in range(layers) for t in suffixes)
assert got == want, got
PY
}
changed "$TMP/plain" "$TMP/from-file" 4 mlp.down_proj.weight self_attn.o_proj.weight && pass \
    || fail "the refit changed other tensors than down_proj and o_proj"

# o_proj's bias (Llama with attention_bias) absorbs the removed heads' mean: it changes too
python3 - "$FIXTURES/models/llama-tiny/config.json" "$TMP/llama-bias.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["attention_bias"] = True
json.dump(c, open(sys.argv[2], "w"))
PY
ok init "$TMP/llama-bias" --config "$TMP/llama-bias.json" --no-tokenizer
ok score "$TMP/llama-bias" --data "$TMP/ids.u16" --num-samples 8 "${cal[@]}" --reconstruct \
    -o "$TMP/lb.json"
ok prune "$TMP/llama-bias" "$TMP/lb-plain" --importance "$TMP/lb.json" \
    --target-num-attention-heads 4
ok prune "$TMP/llama-bias" "$TMP/lb-lsq" --importance "$TMP/lb.json" \
    --target-num-attention-heads 4 --reconstruct lsq
changed "$TMP/lb-plain" "$TMP/lb-lsq" 3 self_attn.o_proj.weight self_attn.o_proj.bias && pass \
    || fail "the refit with a bias changed other tensors than o_proj's weight and bias"

# two ranks add their sums (rows 0:4 and 4:8): the same refit as one process
MPIRUN=${MPIRUN:-}
if [ -n "$MPIRUN" ] && [ -x "$MPIRUN" ]; then
    # as in test_ranks_agree.sh: root in containers, OpenMPI's allocations under LeakSanitizer
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    export LSAN_OPTIONS="${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$ROOT/tests/cli/lsan-mpi.supp"
    export OMPI_MCA_mca_base_component_disable_dlclose=1
    export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}fast_unwind_on_malloc=0"
    if timeout 120 "$MPIRUN" --oversubscribe --bind-to none --mca btl self,vader,tcp \
        --mca btl_base_warn_component_unused 0 -np 2 "$LMSURGEON" score "$tiny" --data "$TMP/ids.u16" \
        --num-samples 8 "${cal[@]}" --reconstruct -o "$TMP/ranks.json" --quiet \
        >"$TMP/stdout" 2>"$TMP/stderr"; then
        ok prune "$tiny" "$TMP/from-ranks" --importance "$TMP/ranks.json" "${cut[@]}" \
            --reconstruct lsq
        cmp -s "$TMP/from-file/model.safetensors" "$TMP/from-ranks/model.safetensors" && pass \
            || fail "score --reconstruct over 2 ranks: another refit than one process's"
    else
        fail "mpirun -np 2 score --reconstruct: $(cat "$TMP/stderr")"
    fi
fi

# refusals: nothing written
ok score "$tiny" --data "$TMP/ids.u16" --num-samples 8 "${cal[@]}" -o "$TMP/nostats.json"
ok score "$FIXTURES/models/qwen3-tiny-bf16-sharded" --data "$TMP/ids.u16" --num-samples 8 "${cal[@]}" \
    --reconstruct -o "$TMP/other.json"
expect 2 "needs its statistics" prune "$tiny" "$TMP/out" "${cut[@]}" --reconstruct lsq
expect 2 "unknown --reconstruct 'ols'" prune "$tiny" "$TMP/out" "${cut[@]}" --reconstruct ols \
    --importance "$TMP/s.json"
expect 2 "refits after FFN or head pruning" prune "$tiny" "$TMP/out" --target-num-layers 3 \
    --importance "$TMP/s.json" --reconstruct lsq
expect 3 "has no reconstruction statistics" prune "$tiny" "$TMP/out" "${cut[@]}" \
    --importance "$TMP/nostats.json" --reconstruct lsq
expect 3 "gathered on another model" prune "$tiny" "$TMP/out" "${cut[@]}" \
    --importance "$TMP/other.json" --reconstruct lsq
ok score "$tiny" --data "$TMP/ids.u16" --rows 4:8 "${cal[@]}" -o "$TMP/b-nostats.json"
expect 3 "some files have reconstruction statistics" score --merge "$TMP/a.json" \
    "$TMP/b-nostats.json" -o "$TMP/out.json"
mkdir "$TMP/cut"
cp "$TMP/s.json" "$TMP/s.gram.safetensors" "$TMP/cut/"
truncate -s 5000 "$TMP/cut/s.gram.safetensors"
expect 3 "cut/s.gram.safetensors" prune "$tiny" "$TMP/out" "${cut[@]}" \
    --importance "$TMP/cut/s.json" --reconstruct lsq

echo "$passes passed, $n_fail failed"
[ "$n_fail" -eq 0 ]
