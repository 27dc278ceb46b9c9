#!/usr/bin/env bash
# Fault injection, class "mismatch": inputs and options that disagree with what a run was made
# with, or with the other ranks.
#   - distill --resume of a state (saved after step 1 of 3) with another teacher of the same
#     shape but other weights, other data under the same file name in another directory, another
#     student of the same shape, or a changed --lr, --seed or --gbs: refused with exit 2 and one
#     error line naming what differs; the state, the student and the metrics file unchanged.
#     The unchanged command then resumes and ends with the bytes of an uninterrupted run.
#   - ranks started by mpirun (MPMD: `mpirun -np 1 lmsurgeon distill ... : -np 1 lmsurgeon
#     distill ...`) with one option different (--max-steps, --lr, --seed, --seq-length,
#     --save-interval, --limit-val-batches): every rank ends with one error line naming the
#     option, the launcher exits non-zero, before any step, with nothing written. The same for
#     score (--seq-length, --num-samples, --seed, --layer-metric, other data of the same name).
#     Skipped without MPI.
source "$(dirname "$0")/faults_lib.sh"
faults_begin mismatch

mkdir -p "$TMP/a" "$TMP/b" "$TMP/r" "$TMP/u"
make_dataset "$TMP/a/data"
make_dataset "$TMP/b/data" 7 # other ids, the same name
perturbed_copy "$TINY" "$TMP/teacher2"
perturbed_copy "$STUDENT" "$TMP/student2"

# distill_args: ARGS, the distill command of the variables below (a case overrides one of them
# for its call, VAR=VALUE distill_args)
D_STUDENT=$STUDENT D_TEACHER=$TINY D_DATA=$TMP/a/data D_LR=1e-3 D_SEED=1234 D_GBS=2 D_SEQ=16
D_STEPS=3 D_SAVE=0 D_VAL=0 D_SPLIT=1 D_DIR=$TMP/r
distill_args() {
    ARGS=(distill --student "$D_STUDENT" --teacher "$D_TEACHER" --data-paths "$D_DATA"
          --split "$D_SPLIT" --seq-length "$D_SEQ" --gbs "$D_GBS" --mbs 1 --max-steps "$D_STEPS"
          --warmup-steps 1 --lr "$D_LR" --min-lr 1e-4 --seed "$D_SEED" --save-interval "$D_SAVE"
          --limit-val-batches "$D_VAL" --threads 1 --log-dir "$D_DIR/logs" --out "$D_DIR/st"
          --quiet)
}

# ---- --resume with something else ----
resume_checks() {
    distill_args
    "$LMSURGEON" "${ARGS[@]}" --exit-interval 1 >/dev/null 2>"$TMP/err" || {
        case_begin "resume: the first step"
        problem "the run to step 1 failed: $(head -c 300 "$TMP/err")"
        case_end
        return
    }
    D_DIR=$TMP/u distill_args
    "$LMSURGEON" "${ARGS[@]}" >/dev/null 2>"$TMP/err" ||
        echo "the uninterrupted run failed: $(head -c 300 "$TMP/err")"
    # every case starts from this state
    cp -a "$TMP/r" "$TMP/r.saved"
    local before
    before=$(snapshot "$TMP/r")
    restore() { rm -rf "$TMP/r" && cp -a "$TMP/r.saved" "$TMP/r"; }
    resume_case() { # WHAT ERE VAR=VALUE: --resume with VAR changed is refused naming WHAT
        case_begin "resume with another $1"
        restore
        local "$3"
        distill_args
        "$LMSURGEON" "${ARGS[@]}" --resume >"$TMP/out" 2>"$TMP/err"
        expect_exit $? 2
        expect_one_error distill "$TMP/err" "$2"
        expect_unchanged "$TMP/r" "$before"
        case_end
    }
    resume_case "teacher (same shape, other weights)" "teacher" D_TEACHER="$TMP/teacher2"
    resume_case "data file of the same name" "data" D_DATA="$TMP/b/data"
    resume_case "student (same shape, other weights)" "student" D_STUDENT="$TMP/student2"
    resume_case "--lr" "(^|[^A-Za-z_])lr([^A-Za-z_]|$)|learning.rate" D_LR=2e-3
    resume_case "--seed" "seed" D_SEED=7
    resume_case "--gbs" "gbs|global.batch" D_GBS=4
    case_begin "resume with the same options"
    restore
    distill_args
    if "$LMSURGEON" "${ARGS[@]}" --resume >/dev/null 2>"$TMP/err"; then
        expect_same "$TMP/r/st/model.safetensors" "$TMP/u/st/model.safetensors"
        expect_same "$TMP/r/st.state/optimizer.safetensors" "$TMP/u/st.state/optimizer.safetensors"
    else
        problem "exit $?: $(head -c 300 "$TMP/err")"
    fi
    case_end
}
resume_checks

# ---- ranks that disagree ----
MPIRUN=${MPIRUN:-}
if [ -z "$MPIRUN" ] || [ ! -x "$MPIRUN" ]; then
    echo "note: no mpirun (MPIRUN unset): the cases across ranks are skipped"
    faults_end
    exit
fi
# as in test_distill_dp.sh: root in containers, no binding, TCP and shared memory only
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPI=("$MPIRUN" --oversubscribe --bind-to none --mca btl self,vader,tcp --mca btl_base_warn_component_unused 0)
# a rank left waiting gives up after 5 s instead of 600
export LMS_COMM_TIMEOUT=5

# ranks_case NAME CMD ERE DIR ARGS0 -- ARGS1: two ranks with these argument lists (the same
# output below DIR); the run fails with one error line in all (rank 0 reports the mismatch, the
# other ranks stop quietly) naming the option (ERE), and nothing is written below DIR
ranks_case() {
    local name=$1 cmd=$2 ere=$3 dir=$4
    shift 4
    local a0=() a1=()
    while [ "$1" != -- ]; do a0+=("$1"); shift; done
    shift
    a1=("$@")
    case_begin "ranks: $name"
    mkdir -p "$dir"
    timeout 120 "${MPI[@]}" -np 1 "$LMSURGEON" "${a0[@]}" : -np 1 "$LMSURGEON" "${a1[@]}" \
        >"$dir.out" 2>"$dir.err"
    local rc=$?
    [ "$rc" = 124 ] && problem "mpirun still ran after 120 s"
    [ "$rc" != 0 ] || problem "mpirun exited 0"
    local errors line
    errors=$(grep -c "^lmsurgeon $cmd: error: " "$dir.err")
    if [ "$errors" != 1 ]; then
        problem "$errors error lines from the 2 ranks (want 1): $(grep -v '^[-*]' "$dir.err" | head -4 | cut -c1-200 | tr '\n' '|')"
    else
        while read -r line; do
            names_it "$ere" "$line" || problem "an error does not name the option (/$ere/): ${line:0:200}"
        done < <(grep "^lmsurgeon $cmd: error: " "$dir.err")
    fi
    grep -q "Segmentation fault\|signal 11\|AddressSanitizer" "$dir.err" && problem "a rank crashed"
    local left
    left=$(find "$dir" -mindepth 1 -not -type d -printf '%P ' 2>/dev/null)
    [ -z "$left" ] || problem "written: $left"
    case_end
}

# distill_ranks OPTION VAR VALUE0 VALUE1 [ERE]: the two ranks differ in --OPTION (the variable
# VAR of distill_args) only; 10 steps, a validation split
distill_ranks() {
    local opt=$1 var=$2 v0=$3 v1=$4 ere=${5:-${1//-/.}}
    local D_DIR=$TMP/ranks-$1 D_SPLIT=90,10,0 D_STEPS=10 a0 a1
    local "$var=$v0"
    distill_args
    a0=("${ARGS[@]}")
    local "$var=$v1"
    distill_args
    a1=("${ARGS[@]}")
    ranks_case "distill --$opt $v0 vs $v1" distill "$ere" "$D_DIR" "${a0[@]}" -- "${a1[@]}"
}
distill_ranks max-steps D_STEPS 10 12
distill_ranks lr D_LR 1e-3 2e-3 "(^|[^A-Za-z_])lr([^A-Za-z_]|$)|learning.rate"
distill_ranks seed D_SEED 1234 7
distill_ranks seq-length D_SEQ 16 32
distill_ranks save-interval D_SAVE 1 2
distill_ranks limit-val-batches D_VAL 0 1

# score_ranks OPTION VALUE0 VALUE1 [ERE]
score_ranks() {
    local opt=$1 v0=$2 v1=$3 ere=${4:-${1//-/.}} dir=$TMP/ranks-score-$1
    local common=(score "$TINY" --num-samples 8 --seq-length 16 --micro-batch-size 2 --threads 1
                  --quiet -o "$dir/s.json")
    local d0=() d1=()
    [ "$opt" = data ] || d0=(--data "$TMP/a/data") d1=(--data "$TMP/a/data")
    ranks_case "score --$opt $v0 vs $v1" score "$ere" "$dir" \
        "${common[@]}" "${d0[@]}" "--$opt" "$v0" -- "${common[@]}" "${d1[@]}" "--$opt" "$v1"
}
score_ranks seq-length 16 32
score_ranks num-samples 8 12 "num.samples|rows"
score_ranks seed 1234 7
score_ranks layer-metric bi ppl
score_ranks data "$TMP/a/data" "$TMP/b/data"

faults_end
