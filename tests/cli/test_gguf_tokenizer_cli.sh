#!/usr/bin/env bash
# The tokenizer of a GGUF written by another tool, rebuilt from tokenizer.ggml.*. The teacher's
# GGUF with its lmsurgeon.file.tokenizer* keys renamed (same length, so the file stays valid) is
# such a file: `tokenize --tokenizer FILE.gguf`, and `tokenize --tokenizer DIR` on what
# `convert --to hf` makes of it, give the golden ids of fixtures/tokenizer/encode_cases.jsonl.
# A pre-tokenizer lmsurgeon does not rebuild converts all the same, with one warning line on
# stderr (none under --quiet) and no tokenizer files; tokenize on it is one error line, exit 3
# (bad input).
set -u

source "$(dirname "$0")/lib.sh"

lms_scratch gguftok

check() { # DESCRIPTION, then a command that must succeed
    local what=$1
    shift
    n_checks=$((n_checks + 1))
    "$@" || fail "$what"
}

# Replaces bytes FROM by TO (same length) everywhere in a file.
swap_bytes() {
    python3 - "$1" "$2" "$3" "$4" <<'EOF'
import sys
src, dst, a, b = sys.argv[1:]
data = open(src, 'rb').read()
assert len(a) == len(b) and a.encode() in data, a
open(dst, 'wb').write(data.replace(a.encode(), b.encode()))
EOF
}

"$LMSURGEON" convert "$FIXTURES/teacher" --to gguf --dtype q8_0 "$TMP/ours.gguf" --quiet ||
    { echo "FAIL: convert teacher --to gguf" >&2; exit 1; }
swap_bytes "$TMP/ours.gguf" "$TMP/foreign.gguf" lmsurgeon.file.tokenizer lmsurgeon.file.tokenizeX

# the golden ids, one line per case, as tokenize --jsonl prints them
python3 - "$FIXTURES/tokenizer/encode_cases.jsonl" > "$TMP/want.txt" <<'EOF'
import json, sys
for line in open(sys.argv[1], encoding='utf-8'):
    print(' '.join(map(str, json.loads(line)['ids'])))
EOF

encode() { # TOKENIZER OUT
    "$LMSURGEON" tokenize --tokenizer "$1" --jsonl < "$FIXTURES/tokenizer/encode_cases.jsonl" > "$2"
}
check "tokenize --tokenizer foreign.gguf" encode "$TMP/foreign.gguf" "$TMP/gguf.txt"
check "tokenize --tokenizer foreign.gguf gives the golden ids" cmp -s "$TMP/gguf.txt" "$TMP/want.txt"

"$LMSURGEON" convert "$TMP/foreign.gguf" --to hf "$TMP/hf" 2> "$TMP/convert.err"
check "convert foreign.gguf --to hf: exit 0" test $? = 0
check "convert foreign.gguf --to hf: no warning" test ! -s "$TMP/convert.err"
check "tokenizer.json rebuilt" test -f "$TMP/hf/tokenizer.json"
check "tokenizer_config.json rebuilt" test -f "$TMP/hf/tokenizer_config.json"
check "tokenize --tokenizer the converted folder" encode "$TMP/hf" "$TMP/hf.txt"
check "the converted folder gives the golden ids" cmp -s "$TMP/hf.txt" "$TMP/want.txt"

# an unknown pre-tokenizer name (qwen2 -> qwenX): converted without tokenizer, one warning
swap_bytes "$TMP/foreign.gguf" "$TMP/unknown.gguf" qwen2 qwenX
"$LMSURGEON" convert "$TMP/unknown.gguf" --to hf "$TMP/unk" > /dev/null 2> "$TMP/unk.err"
check "unknown pre: exit 0" test $? = 0
check "unknown pre: one stderr line" test "$(wc -l < "$TMP/unk.err")" = 1
check "unknown pre: the warning says why" grep -q \
    "^lmsurgeon convert: warning: '$TMP/unknown.gguf': pre-tokenizer 'qwenX' is not rebuilt" \
    "$TMP/unk.err"
check "unknown pre: no tokenizer.json" test ! -e "$TMP/unk/tokenizer.json"
check "unknown pre: weights written" test -f "$TMP/unk/model.safetensors"
"$LMSURGEON" convert "$TMP/unknown.gguf" --to hf "$TMP/unkq" --quiet 2> "$TMP/unkq.err"
check "unknown pre --quiet: exit 0, nothing on stderr" test $? = 0 -a ! -s "$TMP/unkq.err"
# scripts get the warning as data: convert --json, and each line of convert --batch
"$LMSURGEON" convert "$TMP/unknown.gguf" --to hf "$TMP/unkj" --json --quiet > "$TMP/unkj.out"
check "unknown pre --json: the result carries the warning" python3 -c '
import json, sys
w = json.loads(open(sys.argv[1]).read())["warning"]
sys.exit(0 if w and "pre-tokenizer '"'"'qwenX'"'"' is not rebuilt" in w else 1)' "$TMP/unkj.out"
printf '{"in": "%s", "out": "%s", "to": "hf"}\n{"in": "%s", "out": "%s", "to": "hf"}\n' \
    "$TMP/unknown.gguf" "$TMP/unkb" "$TMP/foreign.gguf" "$TMP/forb" > "$TMP/batch.jsonl"
"$LMSURGEON" convert --batch "$TMP/batch.jsonl" --quiet > "$TMP/batch.out"
check "convert --batch: exit 0" test $? = 0
check "convert --batch: the warning on its item's line, null on the other" python3 -c '
import json, sys
a, b = [json.loads(l) for l in open(sys.argv[1])]
ok = a["status"] == "ok" and "qwenX" in (a["warning"] or "") and b["warning"] is None
sys.exit(0 if ok else 1)' "$TMP/batch.out"
"$LMSURGEON" tokenize --tokenizer "$TMP/unknown.gguf" --text hi > "$TMP/tok.out" 2> "$TMP/tok.err"
rc=$?
check "tokenize on an unknown pre: exit 3, got $rc" test "$rc" = 3
check "tokenize on an unknown pre: one error line" test "$(wc -l < "$TMP/tok.err")" = 1 -a ! -s "$TMP/tok.out"

echo "$n_checks checks, $n_fail failures"
[ "$n_fail" = 0 ]
