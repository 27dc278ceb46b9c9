#!/usr/bin/env bash
# convert --batch MANIFEST.jsonl: a manifest of fixture conversions (HF -> NeMo, HF -> GGUF,
# HF -> GGUF Q8_0, HF -> HF FP8) writes, byte for byte, what the same single convert commands
# write, with --jobs 1 and --jobs 2; a malformed line, a line with an unknown key and a missing
# input fail alone (their line number and exit code in their result line) and the batch exits 8;
# a rerun skips every item and touches nothing; a changed input or changed options convert again
# (with --force; without, the usual refusal, exit 2), as does an output edited since; an item
# that cannot fit --max-memory fails with exit 5 and writes nothing; a missing manifest is exit
# 4, a bad --jobs exit 2; convert --skip-unchanged alone reports the skip.
set -u

source "$(dirname "$0")/lib.sh"

lms_scratch batch
cd "$TMP" || exit 1
passes=0

ok() { passes=$((passes + 1)); }
check() { # check DESCRIPTION COMMAND...: the command must succeed
    local what=$1
    shift
    if "$@" >"$TMP/check.out" 2>&1; then ok; else fail "$what: $(head -c 600 "$TMP/check.out")"; fi
}

# field FILE LINE KEY: KEY of the result line of manifest line LINE (FILE is read once, into
# FILE.flat: one "LINE KEY=VALUE" per field)
field() {
    [ "$1.flat" -nt "$1" ] || python3 - "$1" >"$1.flat" <<'PY'
import json, sys
for text in open(sys.argv[1]):
    o = json.loads(text)
    for k, v in o.items():
        print("%s %s=%s" % (o.get("line"), k, v))
PY
    local hit
    hit=$(grep -m1 "^$2 $3=" "$1.flat") && echo "${hit#* "$3"=}" || echo "<no line $2>"
}

expect_field() { # expect_field FILE LINE KEY VALUE
    local got
    got=$(field "$1" "$2" "$3")
    if [ "$got" = "$4" ]; then ok; else fail "$1 line $2: $3 is '$got', want '$4'"; fi
}

T=$FIXTURES/teacher
Q=$FIXTURES/models/qwen3-tiny

# the reference: the single commands (outputs named as in the batch: a GGUF names its model
# after its file)
mkdir -p single
check "single nemo" "$LMSURGEON" convert "$T" single/nemo --to nemo --quiet
"$LMSURGEON" convert "$Q" single/t.gguf --to gguf --json >single.json || fail "single gguf"
gguf_bytes=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes"])' single.json)
check "single q8_0" "$LMSURGEON" convert "$Q" single/q.gguf --to gguf --dtype q8_0 --quiet
check "single fp8" "$LMSURGEON" convert "$T" single/fp8 --dtype fp8 --max-shard-size 5MB --quiet

manifest() { # manifest DIR: the batch writing into DIR
    cat <<EOF
{"in": "$T", "out": "$1/nemo", "to": "nemo"}
{"in": "$Q", "out": "$1/t.gguf", "to": "gguf"}

{"in": "$Q", "out": "$1/q.gguf", "to": "gguf", "dtype": "q8_0"}
{"in": "$T", "out": "$1/fp8", "dtype": "fp8", "max_shard_size": "5MB"}
{"in": "$T", "out": "$1/broken"
{"in": "$FIXTURES/no-such-model", "out": "$1/missing"}
{"in": "$T", "out": "$1/colour", "colour": "red"}
EOF
}

same_as_single() { # same_as_single DIR
    check "$1: nemo" diff -r single/nemo "$1/nemo"
    check "$1: gguf" cmp single/t.gguf "$1/t.gguf"
    check "$1: q8_0" cmp single/q.gguf "$1/q.gguf"
    check "$1: fp8" diff -r single/fp8 "$1/fp8"
}

for jobs in 1 2; do
    d=jobs$jobs
    mkdir -p "$d"
    manifest "$d" >"$d.jsonl"
    "$LMSURGEON" convert --batch "$d.jsonl" --jobs "$jobs" >"$d.out" 2>"$d.err"
    rc=$?
    [ "$rc" -eq 8 ] && ok || fail "--jobs $jobs: exit $rc, want 8 (an item failed): $(cat "$d.err")"
    [ "$(wc -l <"$d.out")" -eq 7 ] && ok || fail "--jobs $jobs: $(wc -l <"$d.out") result lines, want 7"
    for line in 1 2 4 5; do
        expect_field "$d.out" $line status ok
        expect_field "$d.out" $line error None
    done
    expect_field "$d.out" 6 status failed
    expect_field "$d.out" 6 exit_code 2
    check "line 6 named" grep -q "\"error\":\"'$d.jsonl' line 6: invalid JSON" "$d.out"
    expect_field "$d.out" 7 status failed
    expect_field "$d.out" 7 exit_code 4
    expect_field "$d.out" 7 error "'$FIXTURES/no-such-model' does not exist"
    expect_field "$d.out" 8 exit_code 2
    expect_field "$d.out" 8 error "'$d.jsonl' line 8: unknown key 'colour' (in, out, to, dtype, max-shard-size, force)"
    expect_field "$d.out" 2 bytes "$gguf_bytes"
    same_as_single "$d"
    check "record beside the output" test -f "$d/nemo.lmsurgeon.json"
    [ ! -e "$d/missing" ] && [ ! -e "$d/broken" ] && [ ! -e "$d/colour" ] && ok ||
        fail "--jobs $jobs: a failed item wrote something"
done

# a rerun skips every converted item and writes nothing
before=$(find jobs1 -type f -printf '%p %s %T@\n' | sort)
sleep 0.01
"$LMSURGEON" convert --batch jobs1.jsonl >rerun.out 2>rerun.err
rc=$?
[ "$rc" -eq 8 ] && ok || fail "rerun: exit $rc, want 8"
for line in 1 2 4 5; do
    expect_field rerun.out $line status skipped
    expect_field rerun.out $line bytes 0
done
after=$(find jobs1 -type f -printf '%p %s %T@\n' | sort)
[ "$before" = "$after" ] && ok || fail "a rerun touched the outputs"

# exit 0 when every item is ok or skipped; the summary line with --json
head -5 jobs1.jsonl >good.jsonl
"$LMSURGEON" convert --batch good.jsonl --json >good.out 2>good.err
rc=$?
[ "$rc" -eq 0 ] && ok || fail "all skipped: exit $rc, want 0: $(cat good.err)"
check "summary line" bash -c "tail -1 good.out | grep -q '\"ok\":true,\"items\":4,\"converted\":0,\"skipped\":4,\"failed\":0'"
"$LMSURGEON" convert --batch good.jsonl --quiet >quiet.out 2>quiet.err
[ ! -s quiet.err ] && [ "$(wc -l <quiet.out)" -eq 4 ] && ok || fail "--quiet: $(cat quiet.err)"

# a changed input: refused without --force (the output is not its conversion), converted with
cp -r "$Q" qin
echo '{"in": "qin", "out": "qout", "to": "gguf"}' >changed.jsonl
check "first" "$LMSURGEON" convert --batch changed.jsonl --quiet
check "unchanged skips" bash -c "'$LMSURGEON' convert --batch changed.jsonl --quiet | grep -q skipped"
python3 - <<'PY'
import json
c = json.load(open("qin/config.json"))
c["rms_norm_eps"] = 1e-5
json.dump(c, open("qin/config.json", "w"), indent=2)
PY
"$LMSURGEON" convert --batch changed.jsonl --quiet >changed.out
rc=$?
[ "$rc" -eq 8 ] && ok || fail "changed input without --force: exit $rc, want 8"
expect_field changed.out 1 exit_code 2
check "the refusal names OUT" grep -q "qout" changed.out
"$LMSURGEON" convert --batch changed.jsonl --quiet --force >forced.out
expect_field forced.out 1 status ok
mkdir -p ref ref2
check "single of the changed input" "$LMSURGEON" convert qin ref/qout --to gguf --quiet
check "reconverted = single" cmp qout ref/qout
check "then skipped" bash -c "'$LMSURGEON' convert --batch changed.jsonl --quiet | grep -q skipped"

# changed options convert again ("force" in the line)
echo '{"in": "qin", "out": "qout", "to": "gguf", "dtype": "q8_0", "force": true}' >opts.jsonl
"$LMSURGEON" convert --batch opts.jsonl --quiet >opts.out
expect_field opts.out 1 status ok
check "single q8_0 of the changed input" "$LMSURGEON" convert qin ref2/qout --to gguf --dtype q8_0 --quiet
check "options reconverted = single" cmp qout ref2/qout
check "same options skip" bash -c "'$LMSURGEON' convert --batch opts.jsonl --quiet | grep -q skipped"

# an output edited since its conversion is no longer skipped
mkdir -p ed
echo "{\"in\": \"$Q\", \"out\": \"ed/hf\"}" >edited.jsonl
check "edited: first" "$LMSURGEON" convert --batch edited.jsonl --quiet
echo '{}' >ed/hf/generation_config.json
"$LMSURGEON" convert --batch edited.jsonl --quiet >edited.out
expect_field edited.out 1 exit_code 2

# an item that cannot fit --max-memory fails alone, nothing written
echo "{\"in\": \"$T\", \"out\": \"small/x\"}" >small.jsonl
"$LMSURGEON" convert --batch small.jsonl --max-memory 1MB --quiet >small.out
rc=$?
[ "$rc" -eq 8 ] && ok || fail "--max-memory 1MB: exit $rc, want 8"
expect_field small.out 1 exit_code 5
[ ! -e small ] && ok || fail "--max-memory 1MB wrote something"

# a budget for one item at a time (each needs an estimated 64 MiB) still converts them all
mkdir -p one
manifest one | head -5 >one.jsonl
"$LMSURGEON" convert --batch one.jsonl --jobs 2 --max-memory 100MB --quiet >one.out
rc=$?
[ "$rc" -eq 0 ] && ok || fail "--max-memory 100MB --jobs 2: exit $rc, want 0"
same_as_single one

# the batch's own errors
"$LMSURGEON" convert --batch no-such.jsonl 2>err >/dev/null
rc=$?
[ "$rc" -eq 4 ] && grep -q "no-such.jsonl" err && ok || fail "missing manifest: exit $rc, $(cat err)"
"$LMSURGEON" convert --batch good.jsonl --jobs 0 2>err >/dev/null
rc=$?
[ "$rc" -eq 2 ] && ok || fail "--jobs 0: exit $rc, want 2"

# convert --skip-unchanged alone
check "single skip" bash -c "'$LMSURGEON' convert '$Q' solo --skip-unchanged --json | grep -q '\"skipped\":false'"
check "single skip again" bash -c "'$LMSURGEON' convert '$Q' solo --skip-unchanged --json | grep -q '\"skipped\":true'"

echo "test_convert_batch: $passes passed, $n_fail failed"
[ "$n_fail" -eq 0 ]
