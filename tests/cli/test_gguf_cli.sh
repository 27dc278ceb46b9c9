#!/usr/bin/env bash
# GGUF from the command line. Malformed GGUF files (assembled here byte by byte, or a good file
# cut short) make inspect and convert exit 3 with one line on stderr naming the file and the
# problem, nothing on stdout, nothing written. --dtype q8_0 is refused (exit 2) for any output but
# gguf. HF -> GGUF -> HF gives back the files that HF -> HF writes, byte for byte (F32 fixtures and
# the BF16 teacher: the writer keeps F32 and BF16 tensors exact).
set -u

source "$(dirname "$0")/lib.sh"

lms_scratch gguf
mkdir -p "$TMP/o" "$TMP/bad"

# The bad files: a tiny header builder (little-endian, as the GGUF description says).
python3 - "$TMP/bad" <<'EOF'
import struct, sys
out = sys.argv[1]
def s(t): return struct.pack('<Q', len(t)) + t
def header(n_t, n_kv): return b'GGUF' + struct.pack('<IQQ', 3, n_t, n_kv)
def info(name, ne, typ, off):
    return s(name) + struct.pack('<I', len(ne)) + b''.join(struct.pack('<Q', d) for d in ne) + \
        struct.pack('<IQ', typ, off)
def pad(b, a=32): return b + b'\0' * (-len(b) % a)
cases = {
    # a tensor offset of 16 under the default alignment of 32
    'misaligned': pad(header(1, 0) + info(b'token_embd.weight', [4], 0, 16)) + b'\0' * 64,
    # general.alignment 48
    'alignment_not_pow2': header(0, 1) + s(b'general.alignment') + struct.pack('<II', 4, 48),
    'unknown_type': pad(header(1, 0) + info(b'token_embd.weight', [4], 99, 0)) + b'\0' * 16,
    # a string value claiming 1000 bytes in a file of a few dozen
    'lying_string': header(0, 1) + s(b'general.name') + struct.pack('<IQ', 8, 1000) + b'x' * 8,
    # an array of 2^40 u32
    'lying_array': header(0, 1) + s(b'k') + struct.pack('<IIQ', 9, 4, 1 << 40) + b'\0' * 16,
    'absurd_tensor_count': header(1 << 50, 0) + b'\0' * 64,
}
for name, data in cases.items():
    open(f'{out}/{name}.gguf', 'wb').write(data)
EOF

"$LMSURGEON" convert "$FIXTURES/models/qwen3-tiny" "$TMP/good.gguf" --to gguf --quiet ||
    fail "writing good.gguf"
# cut inside the last tensor
head -c $(($(stat -c %s "$TMP/good.gguf") - 100)) "$TMP/good.gguf" >"$TMP/bad/truncated.gguf"

# expect CODE PATTERN CMD ARGS...: exit CODE, one stderr line "lmsurgeon CMD: ..." matching
# PATTERN, stdout empty, nothing written into $TMP/o
expect() {
    local code=$1 pat=$2 cmd=$3
    shift 3
    n_checks=$((n_checks + 1))
    (cd "$TMP/o" && "$LMSURGEON" "$cmd" "$@") >"$TMP/out" 2>"$TMP/err"
    local rc=$?
    if [ "$rc" != "$code" ] || ! grep -q -- "$pat" "$TMP/err" ||
        ! grep -q "^lmsurgeon $cmd" "$TMP/err" || [ "$(wc -l <"$TMP/err")" != 1 ] ||
        [ -s "$TMP/out" ] || [ -n "$(ls -A "$TMP/o")" ]; then
        fail "$cmd $*: exit $rc (want $code), stderr: $(head -c 400 "$TMP/err")," \
            "stdout: $(head -c 200 "$TMP/out"), written: $(ls -A "$TMP/o" | head -3)"
        rm -rf "${TMP:?}/o" && mkdir -p "$TMP/o"
    fi
}

while read -r name pat; do
    f=$TMP/bad/$name.gguf
    expect 3 "$f.*$pat" inspect "$f"
    expect 3 "$f.*$pat" convert "$f" out --to hf
done <<'EOF'
truncated runs.past.the.end.of.the.file
misaligned offset.16.is.not.a.multiple.of.the.alignment
alignment_not_pow2 48.is.not.a.power.of.two
unknown_type unknown.tensor.type.99
lying_string claims.1000.bytes
lying_array array.of.1099511627776.elements.does.not.fit
absurd_tensor_count tensors.do.not.fit.in.the.file
EOF

expect 2 "q8_0 is for --to gguf only" convert "$FIXTURES/models/qwen3-tiny" out --dtype q8_0
expect 2 "unknown --dtype 'q4_0'" convert "$FIXTURES/models/qwen3-tiny" out.gguf --to gguf \
    --dtype q4_0

# HF -> GGUF -> HF equals HF -> HF, file for file
for src in models/llama-tiny models/qwen2-tiny models/qwen3-tiny teacher; do
    n_checks=$((n_checks + 1))
    d=$TMP/rt/$(basename "$src")
    mkdir -p "$d"
    if ! "$LMSURGEON" convert "$FIXTURES/$src" "$d/m.gguf" --to gguf --quiet ||
        ! "$LMSURGEON" convert "$d/m.gguf" "$d/back" --to hf --quiet ||
        ! "$LMSURGEON" convert "$FIXTURES/$src" "$d/direct" --to hf --quiet; then
        fail "$src: a conversion failed"
        continue
    fi
    if ! diff -r "$d/direct" "$d/back" >/dev/null; then
        fail "$src: HF -> GGUF -> HF differs from HF -> HF: $(diff -rq "$d/direct" "$d/back")"
    fi
done

# distill takes --dtype q8_0 as convert does: a Q8_0 GGUF student, and a refusal before the first
# step (nothing written) for any other output
DIST=(distill --student "$FIXTURES/teacher" --teacher "$FIXTURES/teacher"
      --data-paths "$FIXTURES/corpus/val.ids.u16" --split 1 --seq-length 32 --gbs 2 --mbs 2
      --max-steps 1 --limit-val-batches 0 --threads 1 --log-dir "$TMP/logs" --quiet --dtype q8_0)
n_checks=$((n_checks + 1))
"$LMSURGEON" "${DIST[@]}" --out "$TMP/dq8-hf" >/dev/null 2>"$TMP/dq8.err"
[ $? -eq 2 ] && grep -q "options for the gguf format given to the hf writer" "$TMP/dq8.err" &&
    [ ! -e "$TMP/dq8-hf" ] && [ ! -e "$TMP/logs/dq8-hf.metrics.jsonl" ] ||
    fail "distill --dtype q8_0 to hf: $(cat "$TMP/dq8.err")"
n_checks=$((n_checks + 1))
if "$LMSURGEON" "${DIST[@]}" --out "$TMP/dq8.gguf" --to gguf 2>"$TMP/dq8.err"; then
    python3 - "$TMP/dq8.gguf" <<'PY' || fail "distill --to gguf --dtype q8_0: no Q8_0 matrices"
# tensor infos of a GGUF v3 file: name, n_dims, dims, type (8 = Q8_0), offset
import struct, sys
b = open(sys.argv[1], "rb").read()
n_t, n_kv = struct.unpack_from("<QQ", b, 8)
p = 24
def skip_str(p):
    return p + 8 + struct.unpack_from("<Q", b, p)[0]
sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
def skip_val(p, t):
    if t == 8:
        return skip_str(p)
    if t == 9:
        et, n = struct.unpack_from("<IQ", b, p)
        p += 12
        for _ in range(n):
            p = skip_val(p, et)
        return p
    return p + sizes[t]
for _ in range(n_kv):
    p = skip_str(p)
    t = struct.unpack_from("<I", b, p)[0]
    p = skip_val(p + 4, t)
types = {}
for _ in range(n_t):
    ln = struct.unpack_from("<Q", b, p)[0]
    name = b[p + 8:p + 8 + ln].decode()
    p += 8 + ln
    nd = struct.unpack_from("<I", b, p)[0]
    p += 4 + 8 * nd
    types[name] = struct.unpack_from("<I", b, p)[0]
    p += 12
assert types["blk.0.attn_q.weight"] == 8 and types["blk.0.ffn_down.weight"] == 8, types
PY
else
    fail "distill --to gguf --dtype q8_0: $(cat "$TMP/dq8.err")"
fi

echo "$n_checks checks, $n_fail failures"
[ "$n_fail" = 0 ]
