#!/usr/bin/env bash
# Fault injection, class "signals": SIGINT and SIGTERM at random moments of convert, prune, score
# and distill. For each command and signal, one signal lands early (a random moment in the first
# 50 ms: loading, computing) and FAULTS_SIGNAL_POINTS (2) land at random points of the writing:
# just after the K-th write-family call below the output directory (K drawn over the calls of an
# uninterrupted run; the shim slows each call a little, LMS_FAULT_DELAY_EACH, so that the signal
# arrives before the next one), or for distill just after step K (and for distill-save, a run
# saving every 5 steps, after the K-th call, mostly inside a save). FAULTS_SEED draws them.
# Afterwards:
#   - the exit status is 130 after SIGINT, 143 after SIGTERM (or 0 when the run had already
#     finished, which is then said),
#   - stderr is empty or one line "lmsurgeon CMD: error: ...",
#   - no temporary (.lms-tmp-*) is left, and the output either does not exist or is complete
#     (the bytes of an uninterrupted run);
#   - distill has saved the state of its last finished step (when one finished), and resuming
#     it (or starting again when nothing was saved) ends with the bytes of an uninterrupted run.
source "$(dirname "$0")/faults_lib.sh"
faults_begin signals
need_shim
POINTS=${FAULTS_SIGNAL_POINTS:-2}
echo "seed $FAULTS_SEED"

make_dataset "$TMP/data"

DISTILL=(distill --student "$STUDENT" --teacher "$TINY" --data-paths "$TMP/data" --split 1
         --seq-length 16 --gbs 2 --mbs 1 --max-steps 60 --warmup-steps 1 --lr 1e-3 --min-lr 1e-4
         --limit-val-batches 0 --threads 1 --log-interval 1 --quiet)

# set_cmd NAME D: CMD, the command NAME writing into D; OUT, its output; SLOW, the seconds each
# of its write-family calls is held
set_cmd() {
    SLOW=0.01
    case $1 in
    convert) OUT=$2/out CMD=(convert "$TINY" "$OUT" --to hf) ;;
    prune) OUT=$2/out CMD=(prune "$TINY" "$OUT" --target-num-layers 2) ;;
    score) OUT=$2/s.json SLOW=0.05 CMD=(score "$TINY" --data "$TMP/data" --num-samples 64
                                        --seq-length 64 --threads 1 -o "$OUT") ;;
    distill) OUT=$2/st SLOW=0 CMD=("${DISTILL[@]}" --log-dir "$2/logs" --out "$OUT") ;;
    # 20 steps, a save every 5, its writes slowed: signals that land while a save is written
    distill-save) OUT=$2/st SLOW=0.002 CMD=("${DISTILL[@]}" --log-dir "$2/logs" --out "$OUT"
                                            --max-steps 20 --save-interval 5) ;;
    esac
}

# reference NAME: the output of an uninterrupted run in $TMP/NAME/ref; TOTAL, its number of
# write-family calls (distill: of steps)
reference() {
    local d=$TMP/$1/ref
    mkdir -p "$d"
    set_cmd "$1" "$d"
    faulty LMS_FAULT_DIR="$d" LMS_FAULT_LOG="$TMP/$1/ref.log" "$LMSURGEON" "${CMD[@]}" \
        >/dev/null 2>"$TMP/$1/ref.err" ||
        echo "the uninterrupted $1 run failed: $(head -c 300 "$TMP/$1/ref.err")"
    if [ "$1" = distill ]; then
        TOTAL=$(grep -c '"event":"train"' "$d/logs/st.metrics.jsonl")
    else
        TOTAL=$(wc -l <"$TMP/$1/ref.log")
    fi
    echo "$1: an uninterrupted run makes $TOTAL $([ "$1" = distill ] && echo steps || echo write-family calls)"
}

log_has() { [ -f "$1" ] && [ "$(wc -l <"$1")" -ge "$2" ]; }
steps_done() { [ -f "$1" ] && [ "$(grep -c '"event":"train"' "$1")" -ge "$2" ]; }

# finish_distill NAME D REF: what an interrupted distill left in D resumes (or, nothing saved,
# runs again) to the bytes of the uninterrupted run in REF
finish_distill() {
    local name=$1 d=$2 ref=$3 again=(--force) # from scratch: replaces the metrics file
    if [ -e "$d/st.state" ]; then
        again=(--resume)
    elif grep -q '"event":"train"' "$d/logs/st.metrics.jsonl" 2>/dev/null; then
        problem "a step finished but no state was saved"
    fi
    [ -e "$d/st.state" ] || rm -rf "$d/st"
    set_cmd "$name" "$d"
    if "$LMSURGEON" "${CMD[@]}" "${again[@]}" >/dev/null 2>"$d.err2"; then
        expect_same "$d/st/model.safetensors" "$ref/st/model.safetensors"
        expect_same "$d/st.state/optimizer.safetensors" "$ref/st.state/optimizer.safetensors"
    else
        problem "finishing the run ${again[*]/--force/from scratch} failed: $(head -c 200 "$d.err2")"
    fi
}

# signal_case NAME SIGNAL WHEN K: WHEN is "early" (a random moment of the first 50 ms) or a
# number K (after the K-th write-family call; distill: after step K)
signal_case() {
    local name=$1 sig=$2 when=$3 d=$TMP/$1/$2-$4 ref=$TMP/$1/ref want=130 label
    [ "$sig" = TERM ] && want=143
    mkdir -p "$d"
    set_cmd "$name" "$d"
    if [ "$when" = early ]; then
        label="$(awk -v r=$((RANDOM % 50)) 'BEGIN { printf "%.3f", r / 1000 }')"
    elif [ "$name" = distill ]; then
        label="step $when"
    else
        label="write-family call $when/$TOTAL"
    fi
    case_begin "$name SIG$sig after $label$([ "$when" = early ] && echo s)"
    start_bg LMS_FAULT_DIR="$d" LMS_FAULT_DELAY_EACH="$SLOW" LMS_FAULT_LOG="$d.log" \
        "$LMSURGEON" "${CMD[@]}" >/dev/null 2>"$d.err"
    local pid=$BG_PID
    if [ "$when" = early ]; then
        sleep "$label"
    elif [ "$name" = distill ]; then
        wait_until "$pid" steps_done "$d/logs/st.metrics.jsonl" "$when"
    else
        wait_until "$pid" log_has "$d.log" "$when"
    fi
    kill -s "$sig" "$pid" 2>/dev/null
    wait "$pid"
    local rc=$?
    if [ "$rc" = 0 ]; then
        echo "note: $CASE: the run had finished"
    else
        expect_exit "$rc" "$want"
    fi
    local lines
    lines=$(wc -l <"$d.err")
    if [ "$lines" -gt 1 ] || { [ "$lines" = 1 ] && ! grep -q "^lmsurgeon ${CMD[0]}: error: " "$d.err"; }; then
        problem "stderr is not one error line: $(head -c 300 "$d.err" | tr '\n' '|')"
    fi
    expect_no_tmp "$d"
    if [ "$name" != "${name#distill}" ]; then
        finish_distill "$name" "$d" "$ref"
    elif [ -e "$OUT" ] || [ "$rc" = 0 ]; then
        expect_same "$OUT" "$ref/$(basename "$OUT")"
    fi
    case_end
}

for name in convert prune score distill distill-save; do
    reference "$name"
    for sig in INT TERM; do
        signal_case "$name" "$sig" early 0
        # one point in each of POINTS equal slices of the run (distill: of its steps but the
        # last few, so that the signal lands mid-run)
        span=$TOTAL
        [ "$name" = distill ] && span=$((TOTAL - 10))
        slice=$(((span + POINTS - 1) / POINTS))
        for k in $(seq "$POINTS"); do
            point=$(((k - 1) * slice + 1 + RANDOM % slice))
            signal_case "$name" "$sig" $((point < span ? point : span)) "$k"
        done
    done
done

faults_end
