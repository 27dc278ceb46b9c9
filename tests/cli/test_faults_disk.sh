#!/usr/bin/env bash
# Fault injection, class "disk": a full disk or an I/O error at each write of a command.
#
# Every command runs once under the fault-injection shim (tests/tools/faultinject.c) in counting
# mode, which lists the calls that change something below its output directory D (creating,
# writing, syncing, closing, renaming); its outputs are the reference. Then it runs once per
# fault point N (at most FAULTS_MAX_POINTS, 40, spread over the range) with the N-th such call
# failing, with ENOSPC or EIO in turn. Each such run must
#   - exit 4 (I/O failure) with exactly one line on stderr, "lmsurgeon CMD: error: ...", naming
#     the error (No space left on device / Input/output error),
#   - leave no temporary (.lms-tmp-*) below D,
#   - leave D exactly as it was (no output, or the old output of a --force run untouched), or,
#     when the failing call comes after the output was renamed into place (syncing its parent),
#     that or the complete output.
# distill (2 steps, a save after each, metrics and --dump-rows in D) must moreover leave either
# nothing or the whole state of a finished step: resuming from what it left (or starting again
# when it left nothing) ends with the bytes of the uninterrupted run; the metrics file holds
# whole JSON lines, and --dump-rows is not left half written.
# Commands: convert to hf, nemo, megatron, nemo1 (and hf over an existing output with --force),
# prune (data-free), score -o, preprocess, distill.
source "$(dirname "$0")/faults_lib.sh"
faults_begin disk
need_shim
MAX_POINTS=${FAULTS_MAX_POINTS:-40}

# ---- the shim itself, on programs whose behaviour is known ----
shim_checks() {
    local d=$TMP/shim/d e=$TMP/shim/elsewhere
    mkdir -p "$d" "$e"
    printf 'abc\n' >"$TMP/shim/src"
    printf 'abc\n' >"$d/f"
    case_begin "shim: stdio writes below the directory are fault points (sed -i)"
    faulty LMS_FAULT_DIR="$d" LMS_FAULT_LOG="$TMP/shim/count" sed -i s/a/b/ "$d/f" ||
        problem "sed failed under the counting shim"
    local n
    n=$(awk '$2 == "write" { print $1; exit }' "$TMP/shim/count")
    if [ -z "$n" ]; then
        problem "no write counted: $(tr '\n' '|' <"$TMP/shim/count")"
    else
        faulty LMS_FAULT_DIR="$d" LMS_FAULT_AT="$n" sed -i s/b/c/ "$d/f" 2>"$TMP/shim/err" &&
            problem "sed succeeded with its write failing"
        grep -q "No space left on device" "$TMP/shim/err" || problem "sed's error: $(cat "$TMP/shim/err")"
        [ "$(cat "$d/f")" = bbc ] || problem "the file changed: $(cat "$d/f")"
    fi
    case_end
    case_begin "shim: the error asked for (cp, EIO at the first call)"
    faulty LMS_FAULT_DIR="$d" LMS_FAULT_AT=1 LMS_FAULT_ERRNO=EIO cp "$TMP/shim/src" "$d/x" \
        2>"$TMP/shim/err" && problem "cp succeeded"
    grep -q "Input/output error" "$TMP/shim/err" || problem "cp's error: $(cat "$TMP/shim/err")"
    case_end
    case_begin "shim: calls outside the directory never fail"
    faulty LMS_FAULT_DIR="$d" LMS_FAULT_AT=1 LMS_FAULT_STICKY=1 LMS_FAULT_LOG="$TMP/shim/outside" \
        cp "$d/f" "$e/x" 2>"$TMP/shim/err" || problem "cp failed: $(cat "$TMP/shim/err")"
    cmp -s "$d/f" "$e/x" || problem "the copy differs"
    [ ! -s "$TMP/shim/outside" ] || problem "calls counted: $(tr '\n' '|' <"$TMP/shim/outside")"
    case_end
}
shim_checks

make_dataset "$TMP/data"
head -n 5 "$FIXTURES/corpus/train-sample.jsonl" >"$TMP/docs.jsonl"

# strerror text of the errno a run injects (the error line must name it)
errno_text() { [ "$1" = EIO ] && echo "Input/output error" || echo "No space left on device"; }

# setup_existing D: an output a --force run replaces (it must survive a failed replacement)
setup_existing() {
    mkdir -p "$1/out/sub"
    printf 'old config\n' >"$1/out/config.json"
    printf 'old weights' >"$1/out/model.safetensors"
    printf 'nested\n' >"$1/out/sub/file.txt"
}

# inject NAME CMD SETUP DESTS -- ARGS...: the counting run, then one run per chosen fault point.
# D (set before the call, and used in ARGS and DESTS) is the output directory; SETUP a function
# that fills a fresh D (or "none"); DESTS the space-separated outputs of the command.
inject() {
    local name=$1 cmd=$2 setup=$3 dests=$4
    shift 5
    local work=$TMP/$name ref=$TMP/$name/ref logs=$TMP/$name/logs
    mkdir -p "$ref" "$logs"
    fresh() { rm -rf "$D" && mkdir -p "$D" && { [ "$setup" = none ] || "$setup" "$D"; }; }
    fresh
    local before p
    before=$(snapshot "$D")
    case_begin "$name: counting run"
    faulty LMS_FAULT_DIR="$D" LMS_FAULT_LOG="$logs/count" "$LMSURGEON" "$cmd" "$@" --quiet \
        >"$work/out" 2>"$work/err"
    local rc=$?
    expect_exit "$rc" 0
    [ "$rc" = 0 ] || problem "$(head -c 300 "$work/err")"
    for p in $dests; do
        [ -e "$p" ] || problem "no output '${p#"$TMP"/}'"
        cp -a "$p" "$ref/" 2>/dev/null
    done
    # a checkpoint written under the counting shim reads back
    if [ "$cmd" != score ] && [ "$cmd" != preprocess ] && [ "$rc" = 0 ]; then
        "$LMSURGEON" inspect --quiet "$dests" 2>"$work/err" ||
            problem "the output does not inspect: $(head -c 200 "$work/err")"
    fi
    case_end
    [ "$rc" = 0 ] || return
    local total commit n i=0 e op
    total=$(wc -l <"$logs/count")
    commit=$(commit_point "$logs/count" $dests)
    echo "$name: $total fault points, commit at $commit"
    for n in $(pick_points "$logs/count" "$MAX_POINTS"); do
        i=$((i + 1))
        e=ENOSPC
        [ $((i % 2)) = 0 ] && e=EIO
        op=$(point_line "$logs/count" "$n")
        case_begin "$name #$n/$total $op $e"
        fresh
        faulty LMS_FAULT_DIR="$D" LMS_FAULT_AT="$n" LMS_FAULT_ERRNO="$e" LMS_FAULT_LOG="$logs/$n" \
            "$LMSURGEON" "$cmd" "$@" --quiet >"$work/out" 2>"$work/err"
        rc=$?
        grep -q " FAIL$" "$logs/$n" 2>/dev/null || problem "fault point $n was not reached"
        expect_exit "$rc" 4
        expect_one_error "$cmd" "$work/err" "$(errno_text "$e")"
        expect_no_tmp "$D"
        if [ "$commit" -gt 0 ] && [ "$n" -gt "$commit" ] && [ "$(snapshot "$D")" != "$before" ]; then
            # failing after the commit (syncing the parent): the output stays, complete
            for p in $dests; do
                expect_same "$p" "$ref/$(basename "$p")"
            done
        else
            expect_unchanged "$D" "$before"
        fi
        case_end
    done
}

D=$TMP/convert-hf/d
inject convert-hf convert none "$D/out" -- "$TINY" "$D/out" --to hf
# HF to HF rewrites the fixture's bytes: the reference the cases compare with is the input
case_begin "convert-hf: the output of the counting run is the input's bytes"
for f in config.json generation_config.json model.safetensors; do
    expect_same "$TMP/convert-hf/ref/out/$f" "$TINY/$f"
done
case_end
D=$TMP/convert-hf-force/d
inject convert-hf-force convert setup_existing "$D/out" -- "$TINY" "$D/out" --to hf --force
D=$TMP/convert-nemo/d
inject convert-nemo convert none "$D/out" -- "$TINY" "$D/out" --to nemo
D=$TMP/convert-megatron/d
inject convert-megatron convert none "$D/out" -- "$TINY" "$D/out" --to megatron
D=$TMP/convert-nemo1/d
inject convert-nemo1 convert none "$D/out.nemo" -- "$TINY" "$D/out.nemo" --to nemo1
D=$TMP/prune/d
inject prune prune none "$D/out" -- "$TINY" "$D/out" --target-num-layers 2
D=$TMP/score/d
inject score score none "$D/scores.json" -- "$TINY" --data "$TMP/data" --num-samples 4 \
    --seq-length 32 --threads 1 -o "$D/scores.json"
D=$TMP/preprocess/d
inject preprocess preprocess none "$D/p_text_document.bin $D/p_text_document.idx" -- \
    --input "$TMP/docs.jsonl" --tokenizer "$FIXTURES/tokenizer" --output-prefix "$D/p" --workers 1

# ---- distill: two steps, a save after each ----
DISTILL=(distill --student "$STUDENT" --teacher "$TINY" --data-paths "$TMP/data" --split 1
         --seq-length 16 --gbs 2 --mbs 1 --max-steps 2 --warmup-steps 1 --lr 1e-3 --min-lr 1e-4
         --limit-val-batches 0 --threads 1 --save-interval 1 --quiet)

# distill_counting NAME D EXTRA...: the counting run of NAME (its outputs in $TMP/NAME/ref)
distill_counting() {
    local name=$1 D=$2 work=$TMP/$1
    shift 2
    mkdir -p "$work/ref" "$work/logs"
    rm -rf "$D" && mkdir -p "$D"
    case_begin "$name: counting run"
    faulty LMS_FAULT_DIR="$D" LMS_FAULT_LOG="$work/logs/count" "$LMSURGEON" "${DISTILL[@]}" \
        --log-dir "$D/logs" --out "$D/st" "$@" >"$work/out" 2>"$work/err"
    local rc=$?
    expect_exit "$rc" 0
    [ "$rc" = 0 ] || problem "$(head -c 300 "$work/err")"
    cp -a "$D/st" "$D/st.state" "$work/ref/" 2>/dev/null || problem "no student or state"
    case_end
    [ "$rc" = 0 ] && echo "$name: $(wc -l <"$work/logs/count") fault points"
}

# distill_injected NAME D N ERRNO EXTRA...: the run of NAME with fault point N failing; checks
# the exit, the one line and that no temporary is left
distill_injected() {
    local name=$1 D=$2 n=$3 e=$4 work=$TMP/$1
    shift 4
    rm -rf "$D" && mkdir -p "$D"
    faulty LMS_FAULT_DIR="$D" LMS_FAULT_AT="$n" LMS_FAULT_ERRNO="$e" LMS_FAULT_LOG="$work/logs/$n" \
        "$LMSURGEON" "${DISTILL[@]}" --log-dir "$D/logs" --out "$D/st" "$@" \
        >"$work/out" 2>"$work/err"
    local rc=$?
    grep -q " FAIL$" "$work/logs/$n" 2>/dev/null || problem "fault point $n was not reached"
    expect_exit "$rc" 4
    expect_one_error distill "$work/err" "$(errno_text "$e")"
    expect_no_tmp "$D"
}

# the state dir, the student and the metrics: what a failed run leaves is nothing or a whole
# save, and finishing from it (--resume, or a new run when nothing is left) ends with the bytes
# of the uninterrupted run; the metrics file holds whole JSON lines
distill_faults() {
    local name=distill D=$TMP/distill/d work=$TMP/distill
    distill_counting "$name" "$D" || return
    local total n i=0 e op again
    total=$(wc -l <"$work/logs/count")
    for n in $(pick_points "$work/logs/count" "$MAX_POINTS"); do
        i=$((i + 1))
        e=ENOSPC
        [ $((i % 2)) = 0 ] && e=EIO
        op=$(point_line "$work/logs/count" "$n")
        case_begin "$name #$n/$total $op $e"
        distill_injected "$name" "$D" "$n" "$e"
        if [ -f "$D/logs/st.metrics.jsonl" ]; then
            python3 -c '
import json, sys
for line in open(sys.argv[1]):
    json.loads(line)' "$D/logs/st.metrics.jsonl" 2>/dev/null || problem "the metrics file holds a torn line"
        fi
        again=(--force) # from scratch: a new run does not overwrite the metrics without it
        if [ -e "$D/st.state" ]; then
            again=(--resume)
        else
            expect_absent "$D/st"
            rm -rf "$D/st"
        fi
        if "$LMSURGEON" "${DISTILL[@]}" --log-dir "$D/logs" --out "$D/st" "${again[@]}" \
            >"$work/out" 2>"$work/err2"; then
            expect_same "$D/st/model.safetensors" "$work/ref/st/model.safetensors"
            expect_same "$D/st.state/optimizer.safetensors" "$work/ref/st.state/optimizer.safetensors"
        else
            problem "finishing the run ${again[*]/--force/from scratch} failed: $(head -c 200 "$work/err2")"
        fi
        case_end
    done
}

# --dump-rows: a failure while the rows file is created, written or closed (and at the first
# save) must not leave a half-written rows file
distill_dump_rows_faults() {
    local name=distill-dump-rows D=$TMP/distill-dump-rows/d work=$TMP/distill-dump-rows
    distill_counting "$name" "$D" --dump-rows "$D/rows.bin" || return
    [ -s "$D/rows.bin" ] || echo "$name: the counting run wrote no rows file"
    local total n i=0 e op
    total=$(wc -l <"$work/logs/count")
    for n in $(awk '$3 ~ /rows\.bin$/ { print $1 } $2 == "mkdtemp" && !m++ { print $1 }' \
        "$work/logs/count" | sort -n); do
        i=$((i + 1))
        e=ENOSPC
        [ $((i % 2)) = 0 ] && e=EIO
        op=$(point_line "$work/logs/count" "$n")
        case_begin "$name #$n/$total $op $e"
        distill_injected "$name" "$D" "$n" "$e" --dump-rows "$D/rows.bin"
        expect_absent "$D/rows.bin"
        case_end
    done
}

distill_faults
distill_dump_rows_faults

faults_end
