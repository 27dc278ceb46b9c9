#!/usr/bin/env bash
# Fault injection, class "race": concurrent writers of one output.
#   - Two runs write the same fresh OUT at once (convert to hf, megatron and nemo1, score -o).
#     The shim holds each one for a second just before it renames its output into place, so both
#     have passed their checks of OUT before either commits. Exactly one may succeed; the other
#     exits 2 with one error line naming OUT, and OUT is the complete output (the bytes of a run
#     alone).
#   - An output that appears while a run is writing (the test creates it while the shim holds
#     the run before its rename) is not replaced without --force: exit 2, one error line, what
#     appeared untouched, no temporary left (the finished output kept beside it under the
#     .lms-kept- name the message gives); with --force it is replaced by the complete output.
source "$(dirname "$0")/faults_lib.sh"
faults_begin race
need_shim
HOLD=${FAULTS_RACE_HOLD:-1} # seconds each run waits before its rename

make_dataset "$TMP/data"

# set_cmd KIND OUT: CMD, the arguments of the command of KIND writing OUT
set_cmd() {
    case $1 in
    hf | megatron | nemo1) CMD=(convert "$TINY" "$2" --to "$1") ;;
    score) CMD=(score "$TINY" --data "$TMP/data" --num-samples 4 --seq-length 32 --threads 1 -o "$2") ;;
    esac
}
out_name() { [ "$1" = nemo1 ] && echo out.nemo || { [ "$1" = score ] && echo s.json || echo out; }; }

# the reference output of each kind: a run alone, without the shim
reference() { # KIND: prints the path
    local ref=$TMP/ref/$1
    if [ ! -e "$ref/$(out_name "$1")" ]; then
        mkdir -p "$ref"
        set_cmd "$1" "$ref/$(out_name "$1")"
        "$LMSURGEON" "${CMD[@]}" --quiet 2>"$TMP/ref.err" ||
            echo "reference run of $1 failed: $(cat "$TMP/ref.err")"
    fi
    echo "$ref/$(out_name "$1")"
}

# wait_for_rename LOG PID: waits (at most 20 s) until the shim has logged a rename, that is, the
# run is held just before it; false when the run ended first
wait_for_rename() {
    local i
    for i in $(seq 400); do
        grep -q " rename " "$1" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

race() { # KIND
    local kind=$1 d=$TMP/race-$1 ref
    ref=$(reference "$kind")
    mkdir -p "$d"
    local out=$d/$(out_name "$kind")
    case_begin "race-$kind: two runs write one fresh output"
    set_cmd "$kind" "$out"
    faulty LMS_FAULT_DIR="$d" LMS_FAULT_DELAY_BEFORE_RENAME="$HOLD" \
        "$LMSURGEON" "${CMD[@]}" --quiet >/dev/null 2>"$d.err1" &
    local p1=$!
    BG_PIDS+=("$p1")
    faulty LMS_FAULT_DIR="$d" LMS_FAULT_DELAY_BEFORE_RENAME="$HOLD" \
        "$LMSURGEON" "${CMD[@]}" --quiet >/dev/null 2>"$d.err2" &
    local p2=$!
    BG_PIDS+=("$p2")
    wait "$p1"
    local rc1=$?
    wait "$p2"
    local rc2=$?
    local cmd=${CMD[0]}
    if [ "$rc1" = 0 ] && [ "$rc2" = 0 ]; then
        problem "both runs succeeded (one replaced the other's output)"
    elif [ "$rc1" != 0 ] && [ "$rc2" != 0 ]; then
        problem "both runs failed (exit $rc1 and $rc2): $(head -c 200 "$d.err1")"
    else
        local loser=$d.err1 rc=$rc1
        [ "$rc1" = 0 ] && loser=$d.err2 rc=$rc2
        expect_exit "$rc" 2
        expect_one_error "$cmd" "$loser" "$(basename "$out")"
    fi
    expect_same "$out" "$ref"
    expect_no_tmp "$d"
    case_end
}

# expect_unchanged_but_kept DIR BEFORE ERR NAME REF: DIR is as in BEFORE but for the finished
# output the run kept beside the name that appeared (NAME.lms-kept-XXXXXX), which the message
# in ERR names and which holds the bytes of REF
expect_unchanged_but_kept() {
    local d=$1 before=$2 err=$3 name=$4 ref=$5 kept now
    kept=$(grep -o "$name\.lms-kept-[A-Za-z0-9]\{6\}" "$err" | head -1)
    now=$(snapshot "$d")
    if [ -n "$kept" ] && [ -e "$d/$kept" ]; then
        expect_same "$d/$kept" "$ref"
        now=$(printf '%s\n' "$now" | grep -v -F -e " $kept" -e " ./$kept")
    fi
    [ "$now" = "$before" ] ||
        problem "'${d#"$TMP"/}' changed: $(diff <(echo "$before") <(echo "$now") | grep '^[<>]' | grep -v '^[<>] [0-9a-f]\{32\} ' | head -4 | tr '\n' ' ')"
}

appear() { # KIND [--force]
    local kind=$1 force=${2:-} d=$TMP/appear-$1${2:+-force} ref
    ref=$(reference "$kind")
    mkdir -p "$d"
    local out=$d/$(out_name "$kind")
    local what="an output that appears during the run is not replaced"
    [ -n "$force" ] && what="an output that appears during a --force run is replaced"
    case_begin "appear-$kind${force:+-force}: $what"
    set_cmd "$kind" "$out"
    [ -n "$force" ] && CMD+=(--force)
    faulty LMS_FAULT_DIR="$d" LMS_FAULT_DELAY_BEFORE_RENAME=$((HOLD * 2)) LMS_FAULT_LOG="$d.log" \
        "$LMSURGEON" "${CMD[@]}" --quiet >/dev/null 2>"$d.err" &
    local pid=$!
    BG_PIDS+=("$pid")
    local before=
    if wait_for_rename "$d.log" "$pid"; then
        if [ "$kind" = hf ] || [ "$kind" = megatron ]; then
            mkdir "$out" && printf 'precious\n' >"$out/precious.txt"
        else
            printf 'precious\n' >"$out"
        fi
        before=$(snapshot "$d" | grep -v lms-tmp)
    else
        problem "the run did not reach its rename: $(head -c 200 "$d.err")"
    fi
    wait "$pid"
    local rc=$?
    local cmd=${CMD[0]}
    if [ -n "$force" ]; then
        expect_exit "$rc" 0
        expect_same "$out" "$ref"
    elif [ -n "$before" ]; then
        expect_exit "$rc" 2
        expect_one_error "$cmd" "$d.err" "$(basename "$out")"
        expect_unchanged_but_kept "$d" "$before" "$d.err" "$(basename "$out")" "$ref"
    fi
    expect_no_tmp "$d"
    case_end
}

for kind in hf megatron nemo1 score; do
    race "$kind"
done
for kind in hf nemo1 score; do
    appear "$kind"
done
appear hf --force

faults_end
