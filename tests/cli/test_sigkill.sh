#!/usr/bin/env bash
# SIGKILL during `convert`: the destination must be exactly as before the run.
#
# Generates a ~300 MB bf16 checkpoint (tests/tools/make_checkpoint.py), starts
# `convert IN OUT --force --dtype f32` in the background, waits until its temporary directory
# (.OUT.lms-tmp-*) beside OUT holds data (a third of the output in one run, a few bytes in the
# other), kills it with SIGKILL, then checks that
#   1. an existing OUT is byte-identical to before (same files, same bytes), and
#   2. when OUT did not exist, it still does not exist,
# and that a later convert still succeeds next to the stale temporary directory. When the
# conversion finishes before the kill lands, the run is retried once with a model twice as large.
set -u

source "$(dirname "$0")/lib.sh"
PY=$(command -v python3)

lms_scratch kill
PID=
cleanup() { # the scratch directory, and the background convert if it still runs
    [ -n "$PID" ] && kill -9 "$PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

snapshot() { (cd "$1" && find . -print0 | sort -z | xargs -0 ls -ld --time-style=+ | awk '{print $1, $5, $NF}' && find . -type f -print0 | sort -z | xargs -0 md5sum) }

make_model() { # make_model DIR LAYERS
    "$PY" "$ROOT/tests/tools/make_checkpoint.py" --arch qwen3 --layers "$2" --hidden 1024 \
        --ffn 3072 --heads 16 --kv-heads 8 --head-dim 64 --vocab 32768 --dtype bf16 \
        --max-shard-size 100MB "$1" || {
        echo "FAIL: make_checkpoint.py failed" >&2
        exit 1
    }
}

# tmp_has_data OUT: the temporary directory beside OUT exists and holds a non-empty file
tmp_has_data() {
    local d f
    for d in "$(dirname "$1")/.$(basename "$1").lms-tmp-"*; do
        for f in "$d"/*; do
            [ -s "$f" ] && return 0
        done
    done
    return 1
}

tmp_bytes() { # tmp_bytes OUT: bytes in the temporary directories beside OUT
    du -sb "$(dirname "$1")/.$(basename "$1").lms-tmp-"* 2>/dev/null | awk '{s += $1} END {print s + 0}'
}

ended() { # ended: true (and $ENDED set) when the background convert has exited
    kill -0 "$PID" 2>/dev/null && return 1
    wait "$PID"
    ENDED=$?
    PID=
    return 0
}

# kill_during_convert IN OUT MIN_BYTES: 0 when killed once the temporary directory holds data
# (and at least MIN_BYTES), 1 when the run ended first (exit status in $ENDED)
kill_during_convert() {
    "$LMSURGEON" convert "$1" "$2" --force --dtype f32 --quiet >"$TMP/conv.out" 2>"$TMP/conv.err" &
    PID=$!
    local spins=0
    while ! tmp_has_data "$2"; do
        ended && return 1
        spins=$((spins + 1))
        [ $((spins % 200)) -eq 0 ] && sleep 0.001
    done
    while [ "$(tmp_bytes "$2")" -lt "$3" ]; do
        ended && return 1
        sleep 0.003
    done
    kill -KILL "$PID"
    wait "$PID" 2>/dev/null
    local rc=$?
    KILLED_AT=$(tmp_bytes "$2")
    PID=
    if [ "$rc" -ne 137 ]; then
        ENDED=$rc
        return 1
    fi
    return 0
}

# one_variant NAME KIND MIN_BYTES: KIND is "existing" (OUT holds known content) or "absent";
# the kill lands once the temporary directory holds MIN_BYTES
one_variant() {
    local name=$1 kind=$2 min_bytes=$3 layers
    local out=$TMP/$name/out
    for layers in 6 12; do
        rm -rf "$TMP/$name"
        mkdir -p "$TMP/$name"
        if [ "$kind" = existing ]; then
            mkdir "$out"
            printf 'old config\n' >"$out/config.json"
            head -c 100000 /dev/urandom >"$out/model.safetensors"
            mkdir "$out/sub"
            printf 'nested\n' >"$out/sub/file.txt"
        fi
        local before=
        [ "$kind" = existing ] && before=$(snapshot "$out")
        if kill_during_convert "$IN" "$out" "$min_bytes"; then
            if [ "$kind" = existing ]; then
                [ "$(snapshot "$out")" = "$before" ] ||
                    fail "$name: OUT changed after SIGKILL: $(diff <(echo "$before") <(snapshot "$out") | head -5)"
            else
                [ ! -e "$out" ] || fail "$name: OUT exists after SIGKILL: $(ls -la "$out" | head -5)"
            fi
            [ -n "$(find "$TMP/$name" -maxdepth 1 -name '.out.lms-tmp-*' -print -quit)" ] ||
                fail "$name: the killed run left no temporary directory (was it really mid-write?)"
            # a stale temporary directory must not stop the next run
            "$LMSURGEON" convert "$IN" "$out" --force --quiet 2>"$TMP/rerun.err" ||
                fail "$name: convert after the kill failed: $(cat "$TMP/rerun.err")"
            "$LMSURGEON" inspect --quiet "$out" 2>"$TMP/rerun.err" ||
                fail "$name: result of the rerun does not inspect: $(cat "$TMP/rerun.err")"
            grep -q -e "runtime error" -e "AddressSanitizer" -e "LeakSanitizer" "$TMP/rerun.err" "$TMP/conv.err" &&
                fail "$name: sanitizer report: $(cat "$TMP/conv.err" "$TMP/rerun.err" | head -5)"
            echo "$name: killed mid-write with $layers layers ($KILLED_AT bytes written); OUT intact"
            return
        fi
        if [ "$ENDED" -ne 0 ]; then
            fail "$name: convert failed with exit $ENDED: $(head -c 500 "$TMP/conv.err")"
            return
        fi
        if [ "$layers" = 6 ]; then
            echo "$name: conversion finished before the kill; retrying with a bigger model"
            rm -rf "$IN"
            make_model "$IN" 12
        fi
    done
    fail "$name: conversion finished before SIGKILL even with 12 layers"
}

IN=$TMP/in
make_model "$IN" 6
# (f32 output of the 6-layer model: ~570 MB) kill a third of the way in, then right at the start
one_variant existing_out existing 200000000
one_variant absent_out absent 1

[ "$n_fail" -eq 0 ] && echo "sigkill: all checks passed"
[ "$n_fail" -eq 0 ]
