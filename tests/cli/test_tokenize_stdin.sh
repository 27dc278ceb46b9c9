#!/usr/bin/env bash
# `tokenize --decode` reads ids from standard input, which need not end in a newline. Every golden
# case of fixtures/tokenizer/encode_cases.jsonl (ids and the text Hugging Face tokenizers decodes
# them to) is piped with no trailing byte and must decode to exactly the golden text. Then one long
# unterminated input runs under valgrind's memcheck, which (unlike ASan) reports a parse that reads
# past the bytes that were read into an allocation. The memcheck step is skipped, with a message,
# when valgrind is not installed or the binary is built with AddressSanitizer.
set -u

source "$(dirname "$0")/lib.sh"
tok=$FIXTURES/tokenizer
lms_scratch tokenize-stdin

python3 - "$tok/encode_cases.jsonl" "$TMP" <<'PY'
import json, sys
src, out = sys.argv[1], sys.argv[2]
with open(src, encoding="utf-8") as f:
    for n, line in enumerate(f):
        case = json.loads(line)
        with open(f"{out}/{n}.ids", "w") as g:
            g.write(" ".join(str(i) for i in case["ids"]))  # no trailing newline
        with open(f"{out}/{n}.want", "wb") as g:
            g.write(case["decoded"].encode("utf-8"))
PY
n_cases=0
for ids in "$TMP"/*.ids; do
    want=${ids%.ids}.want
    if ! "$LMSURGEON" tokenize --tokenizer "$tok" --decode <"$ids" >"$TMP/got" 2>"$TMP/err"; then
        fail "decode of $(basename "$ids") exited non-zero: $(cat "$TMP/err")"
    elif ! cmp -s "$TMP/got" "$want"; then
        fail "decode of $(basename "$ids") ($(head -c 60 "$ids")) differs from the golden text"
    fi
    n_cases=$((n_cases + 1))
done

# A malformed id is named, bounded to the bytes that were read.
printf '12 34x' >"$TMP/bad"
err=$("$LMSURGEON" tokenize --tokenizer "$tok" --decode <"$TMP/bad" 2>&1 >/dev/null)
rc=$?
if [ "$rc" != 3 ] || ! grep -qF "'34x' is not a token id" <<<"$err"; then
    fail "malformed id -> exit $rc, stderr: $err"
fi
# An id the tokenizer does not have is bad input too (exit 3, as a malformed one), from stdin
# or --text alike.
printf '12 999999999' >"$TMP/unknown"
err=$("$LMSURGEON" tokenize --tokenizer "$tok" --decode <"$TMP/unknown" 2>&1 >/dev/null)
rc=$?
if [ "$rc" != 3 ] || ! grep -qF "unknown id 999999999 at position 1" <<<"$err"; then
    fail "unknown id on stdin -> exit $rc, stderr: $err"
fi
err=$("$LMSURGEON" tokenize --tokenizer "$tok" --decode --text '999999999' 2>&1 >/dev/null)
rc=$?
if [ "$rc" != 3 ] || ! grep -qF "unknown id 999999999 at position 0" <<<"$err"; then
    fail "unknown id in --text -> exit $rc, stderr: $err"
fi

if ldd "$LMSURGEON" 2>/dev/null | grep -q libasan; then
    echo "AddressSanitizer build: memcheck step skipped (valgrind cannot run ASan binaries)"
elif command -v valgrind >/dev/null 2>&1; then
    # About 64 KiB of ids ending in a digit: the last id sits at the end of the read buffer.
    python3 -c "import sys; sys.stdout.write(' '.join(str(7 + i % 3000) for i in range(12000)))" \
        >"$TMP/long"
    if ! valgrind -q --error-exitcode=99 --exit-on-first-error=yes \
        "$LMSURGEON" tokenize --tokenizer "$tok" --decode <"$TMP/long" >/dev/null 2>"$TMP/vg"; then
        fail "valgrind memcheck on an unterminated --decode input:"
        head -20 "$TMP/vg" >&2
    fi
else
    echo "valgrind not installed: memcheck step skipped"
fi

[ "$n_fail" -eq 0 ] && echo "tokenize stdin: $n_cases golden decodes, bounded parse: ok"
[ "$n_fail" -eq 0 ]
