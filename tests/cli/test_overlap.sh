#!/usr/bin/env bash
# A command refuses (exit 2, one line, nothing written) to write a path that is, contains or lies
# inside another path it reads or writes, symbolic links resolved: distill's metrics in --out
# (swapped away at the first save), --out --force over the directory holding the data, --dump-rows
# in --out or over the data, a metrics file or --dump-rows that exists (without --force), score -o
# inside the model, preprocess over its input, and an input in the Hugging Face cache layout whose
# files link into the output directory (snapshots/REV/FILE -> ../../blobs/HASH): replacing blobs/
# would break the input although the two directories are apart.
set -u

source "$(dirname "$0")/lib.sh"
T=$FIXTURES/teacher
IDS=$FIXTURES/corpus/val.ids.u16

lms_scratch overlap

# expect CODE PATTERN CMD...: lmsurgeon CMD exits CODE with one stderr line matching PATTERN
expect() {
    local code=$1 pat=$2
    shift 2
    n_checks=$((n_checks + 1))
    "$LMSURGEON" "$@" >"$TMP/out" 2>"$TMP/err" </dev/null
    local rc=$?
    if [ "$rc" != "$code" ] || ! grep -q -- "$pat" "$TMP/err" || [ "$(wc -l <"$TMP/err")" != 1 ] ||
        grep -qiE 'sanitizer|runtime error' "$TMP/err"; then
        fail "lmsurgeon $*: exit $rc (want $code /$pat/): $(cat "$TMP/err")"
    fi
}

# same_tree DIR SNAPSHOT: DIR holds exactly what SNAPSHOT recorded
snapshot() { (cd "$1" && find . -print0 | sort -z | xargs -0 ls -ld --time-style=+ | awk '{print $1, $5, $NF}' && find . -type f -print0 | sort -z | xargs -0 md5sum); }

DIST=(distill --student "$T" --teacher "$T" --split 1 --seq-length 16 --gbs 1 --mbs 1
      --max-steps 1 --limit-val-batches 0 --threads 1 --quiet)

# distill: --log-dir equal to --out puts the metrics inside the student's directory
expect 2 "metrics file.*overlaps --out" "${DIST[@]}" --data-paths "$IDS" --out "$TMP/run" --log-dir "$TMP/run"
[ -e "$TMP/run" ] && fail "the refused run created '$TMP/run'"

# distill --force where --out holds the data (a raw id file, then an indexed dataset)
mkdir -p "$TMP/d"
cp "$IDS" "$TMP/d/ids.u16"
head -n 40 "$FIXTURES/corpus/val.jsonl" >"$TMP/in.jsonl"
"$LMSURGEON" preprocess --input "$TMP/in.jsonl" --tokenizer "$T" --output-prefix "$TMP/d/p" \
    --append-eod --quiet || fail "preprocess failed"
before=$(snapshot "$TMP/d")
expect 2 "overlaps the data" "${DIST[@]}" --data-paths "$TMP/d/ids.u16" --out "$TMP/d" --force --log-dir "$TMP/logs"
expect 2 "overlaps the data '$TMP/d/p_text_document.bin'" "${DIST[@]}" --data-paths 0.5 "$IDS" 0.5 "$TMP/d/p_text_document" \
    --out "$TMP/d" --force --log-dir "$TMP/logs"
[ "$(snapshot "$TMP/d")" = "$before" ] || fail "a refused distill changed the data's directory"

# --dump-rows inside --out, or over the data
expect 2 "dump-rows.*overlaps --out" "${DIST[@]}" --data-paths "$IDS" --out "$TMP/o" --dump-rows "$TMP/o/rows.i32" --log-dir "$TMP/logs"
expect 2 "dump-rows.*overlaps the data" "${DIST[@]}" --data-paths "$TMP/d/ids.u16" --out "$TMP/o" \
    --dump-rows "$TMP/d/ids.u16" --log-dir "$TMP/logs"
cmp -s "$IDS" "$TMP/d/ids.u16" || fail "--dump-rows over the data changed it"

# a metrics file or --dump-rows that exists is not replaced without --force
mkdir -p "$TMP/logs"
echo keep >"$TMP/logs/o.metrics.jsonl"
expect 2 "refusing to overwrite the metrics file" "${DIST[@]}" --data-paths "$IDS" --out "$TMP/o" --log-dir "$TMP/logs"
[ "$(cat "$TMP/logs/o.metrics.jsonl")" = keep ] || fail "the metrics file was replaced"
echo keep >"$TMP/rows.i32"
expect 2 "refusing to overwrite --dump-rows" "${DIST[@]}" --data-paths "$IDS" --out "$TMP/o2" --dump-rows "$TMP/rows.i32" --log-dir "$TMP/logs"
[ -e "$TMP/o" ] || [ -e "$TMP/o2" ] && fail "a refused distill wrote its student"

# score -o inside the model; preprocess over its own input
expect 2 "overlaps the model" score "$T" --data "$IDS" --num-samples 2 --seq-length 32 -o "$T/x.json"
[ -e "$T/x.json" ] && { rm -f "$T/x.json"; fail "score wrote into the model"; }
cp "$TMP/in.jsonl" "$TMP/q_text_document.bin"
expect 2 "overlaps the input" preprocess --input "$TMP/q_text_document.bin" --tokenizer "$T" --output-prefix "$TMP/q" --force
cmp -s "$TMP/in.jsonl" "$TMP/q_text_document.bin" || fail "preprocess replaced its input"

# the Hugging Face cache layout: every file of the snapshot links into blobs/
hub=$TMP/hub
mkdir -p "$hub/blobs" "$hub/snapshots/rev"
for f in "$T"/*; do
    h=$(md5sum "$f" | cut -d' ' -f1)
    cp "$f" "$hub/blobs/$h"
    ln -s "../../blobs/$h" "$hub/snapshots/rev/$(basename "$f")"
done
before=$(snapshot "$hub")
expect 2 "a link to" prune "$hub/snapshots/rev" "$hub/blobs" --force --target-num-layers 8
expect 2 "a link to" convert "$hub/snapshots/rev" "$hub/blobs" --force
expect 2 "overlaps the input" convert "$hub/snapshots/rev" "$hub" --force
[ "$(snapshot "$hub")" = "$before" ] || fail "a refused run changed the cache"
"$LMSURGEON" inspect "$hub/snapshots/rev" --quiet || fail "the cached input no longer reads"
# apart from it, the same input converts
"$LMSURGEON" convert "$hub/snapshots/rev" "$TMP/converted" --quiet || fail "convert from the cache layout failed"

echo "overlaps: $n_checks checks, $n_fail failures"
[ "$n_fail" = 0 ]
