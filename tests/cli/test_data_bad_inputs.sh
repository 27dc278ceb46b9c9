#!/usr/bin/env bash
# Bad datasets, tokenizers and importance files: exit 3 with a message naming the defect, never a
# crash; bad JSONL lines reported with their line number; --skip-bad-lines continues. Files:
# tests/bad/*/README.md.
set -u

source "$(dirname "$0")/lib.sh"
bad=$ROOT/tests/bad
lms_scratch data-bad

expect() { # expect CODE FRAGMENT CMD...
    local code=$1 frag=$2
    shift 2
    local err
    err=$("$@" 2>&1 >/dev/null)
    local rc=$?
    if [ "$rc" != "$code" ] || ! grep -qF -- "$frag" <<<"$err"; then
        fail "$* -> exit $rc (want $code), stderr: $err (want '$frag')"
    fi
}
expect 0 "" "$LMSURGEON" tokenize --dataset "$bad/dataset/good"
expect 3 "truncated" "$LMSURGEON" tokenize --dataset "$bad/dataset/truncated"
expect 3 "bad magic" "$LMSURGEON" tokenize --dataset "$bad/dataset/bad-magic"
expect 3 "past the end of .bin" "$LMSURGEON" tokenize --dataset "$bad/dataset/pointer-past-end"
expect 3 "unsupported version 3" "$LMSURGEON" tokenize --dataset "$bad/dataset/bad-version"
expect 3 "dtype code 7" "$LMSURGEON" tokenize --dataset "$bad/dataset/float-dtype"
expect 3 "document index entry 1" "$LMSURGEON" tokenize --dataset "$bad/dataset/doc-index-past-end"
expect 4 "no-such" "$LMSURGEON" tokenize --dataset "$bad/dataset/no-such"
expect 3 "model.type" "$LMSURGEON" tokenize --tokenizer "$bad/tokenizer/unknown-model" --text a
expect 3 "pre_tokenizer.type" "$LMSURGEON" tokenize --tokenizer "$bad/tokenizer/unknown-pre-tokenizer" --text a
expect 3 "model.merges[1]" "$LMSURGEON" tokenize --tokenizer "$bad/tokenizer/bad-merges" --text a
expect 3 "ids this sparse" "$LMSURGEON" tokenize --tokenizer "$bad/tokenizer/sparse-ids" --text a
expect 3 "pre_tokenizer.pretokenizers[0].pattern.Regex" "$LMSURGEON" tokenize --tokenizer "$bad/tokenizer/unsupported-regex" --text a
expect 2 "--tokenizer is required" "$LMSURGEON" tokenize --text a

tok=$FIXTURES/tokenizer
printf '{"text": "hello"}\n\n{"text": "a\\ud800"}\n{"text": 5}\n{"text": "world"}\n' >"$TMP/in.jsonl"
expect 3 "line 3" "$LMSURGEON" preprocess --input "$TMP/in.jsonl" --tokenizer "$tok" --output-prefix "$TMP/o" --append-eod
[ -e "$TMP/o_text_document.idx" ] && fail "output left behind after an error"
expect 0 "line 4" "$LMSURGEON" preprocess --input "$TMP/in.jsonl" --tokenizer "$tok" --output-prefix "$TMP/o" --append-eod --skip-bad-lines
out=$("$LMSURGEON" tokenize --dataset "$TMP/o_text_document")
want=$(printf '%s 0\n%s 0' "$("$LMSURGEON" tokenize --tokenizer "$tok" --text hello)" \
    "$("$LMSURGEON" tokenize --tokenizer "$tok" --text world)")
[ "$out" = "$want" ] || fail "skipped-lines dataset: '$out' != '$want'"
expect 2 "already exists" "$LMSURGEON" preprocess --input "$TMP/in.jsonl" --tokenizer "$tok" --output-prefix "$TMP/o" --skip-bad-lines
# importance files (prune --importance): the error names the file and the defect, nothing written
model=$FIXTURES/models/qwen3-tiny
n_imp=0
while IFS=$'\t' read -r name code frag; do
    case $name in '#'* | '') continue ;; esac
    n_imp=$((n_imp + 1))
    for want in "$frag" "$name.json'"; do
        expect "$code" "$want" "$LMSURGEON" prune "$model" "$TMP/imp_out" \
            --importance "$bad/importance/$name.json" --target-ffn-hidden-size 16
    done
    [ ! -e "$TMP/imp_out" ] || fail "$name: prune wrote output"
done <"$bad/importance/expected.tsv"
[ "$n_imp" -ge 10 ] || fail "only $n_imp importance cases"
[ "$n_fail" -eq 0 ]
