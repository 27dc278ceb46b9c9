# Sourced by tests/cli/test_faults_*.sh, the fault-injection suite: a scratch directory, the
# tiny inputs the cases run on, the fault-injection shim (tests/tools/faultinject.c, preloaded),
# and the bookkeeping of cases. A case collects every problem it finds and then passes or fails
# once; a script ends with `faults_end`, which prints
#     faults CLASS: P passed, F failed
#     P passed, F failed
# and exits non-zero when a case failed. FAULTS_VERBOSE=1 also names the cases that pass.
set -u

: "${LMSURGEON:?LMSURGEON must name the lmsurgeon binary}"
ROOT=${LMS_SOURCE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
FIXTURES=${LMS_FIXTURES:-$ROOT/fixtures}
TINY=$FIXTURES/models/qwen3-tiny
STUDENT=$FIXTURES/models/qwen3-tiny-distill-reference/student
# the shim meson builds for the tests (the script's argument); the disk and race classes need it
SHIM=${LMS_FAULTINJECT:-${1:-}}
# random choices (signal delays) repeat for the same seed; the seed is printed
FAULTS_SEED=${FAULTS_SEED:-1}

CLASS=
TMP=
BG_PIDS=()
N_PASS=0
N_FAIL=0
FAILED=()
CASE=
PROBLEMS=()

faults_cleanup() {
    local pid
    for pid in "${BG_PIDS[@]}"; do
        kill -9 "$pid" 2>/dev/null
    done
    [ -n "$TMP" ] && rm -rf "$TMP"
}

# faults_begin CLASS: the scratch directory and the counters
faults_begin() {
    CLASS=$1
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/lms-faults-$CLASS.XXXXXX")
    TMP=$(cd "$TMP" && pwd -P) # the shim reports resolved paths
    trap faults_cleanup EXIT
    RANDOM=$FAULTS_SEED
}

need_shim() {
    [ -n "$SHIM" ] && [ -f "$SHIM" ] || { echo "SKIP: no fault-injection shim (argument or LMS_FAULTINJECT)"; exit 77; }
}

# ---- cases ------------------------------------------------------------------------------------

case_begin() {
    CASE=$1
    PROBLEMS=()
}

problem() {
    PROBLEMS+=("$*")
}

case_end() {
    if [ ${#PROBLEMS[@]} -eq 0 ]; then
        N_PASS=$((N_PASS + 1))
        [ "${FAULTS_VERBOSE:-0}" = 1 ] && echo "ok   $CASE"
    else
        N_FAIL=$((N_FAIL + 1))
        FAILED+=("$CASE")
        local joined
        joined=$(printf '%s; ' "${PROBLEMS[@]}")
        echo "FAIL $CASE: ${joined%; }"
    fi
    return 0
}

faults_end() {
    echo "faults $CLASS: $((N_PASS + N_FAIL)) cases tried"
    echo "faults $CLASS: $N_PASS passed, $N_FAIL failed"
    echo "$N_PASS passed, $N_FAIL failed"
    [ "$N_FAIL" -eq 0 ]
}

# ---- checks: each adds a problem to the current case when it does not hold -------------------

# expect_exit RC WANTED...: RC is one of WANTED
expect_exit() {
    local rc=$1 w
    shift
    for w in "$@"; do
        [ "$rc" = "$w" ] && return 0
    done
    problem "exit $rc (want $(echo "$@" | sed 's/ / or /g'))"
    return 1
}

# names_it ERE LINE: LINE matches ERE once the scratch directory's name (random letters) is taken
# out of it
names_it() {
    grep -Eq -- "$1" <<<"${2//"$TMP"/}"
}

# expect_one_error CMD ERRFILE [ERE]: stderr is one line, "lmsurgeon CMD: error: ...", matching
# ERE when given
expect_one_error() {
    local cmd=$1 file=$2 ere=${3:-} lines first
    lines=$(wc -l <"$file")
    first=$(head -n 1 "$file")
    if [ "$lines" != 1 ]; then
        problem "$lines lines on stderr (want 1): $(head -c 300 "$file" | tr '\n' '|')"
    elif [[ $first != "lmsurgeon $cmd: error: "* ]]; then
        problem "stderr is not 'lmsurgeon $cmd: error: ...': ${first:0:300}"
    elif [ -n "$ere" ] && ! names_it "$ere" "$first"; then
        problem "the error does not match /$ere/: ${first:0:300}"
    fi
}

# expect_no_tmp DIR: no temporary (.lms-tmp-*) or set-aside (.lms-old-*) entry anywhere below DIR
expect_no_tmp() {
    local left
    left=$(find "$1" \( -name '*.lms-tmp*' -o -name '*.lms-old*' \) -printf '%P ' 2>/dev/null)
    [ -z "$left" ] || problem "temporaries left: $left"
}

# snapshot DIR: every entry below DIR with its type, size and content hash
snapshot() {
    (cd "$1" && find . -mindepth 1 -printf '%y %s %P\n' | sort && find . -type f -print0 | sort -z | xargs -0r md5sum)
}

# expect_unchanged DIR BEFORE: snapshot DIR is BEFORE
expect_unchanged() {
    local now
    now=$(snapshot "$1")
    [ "$now" = "$2" ] ||
        problem "'${1#"$TMP"/}' changed: $(diff <(echo "$2") <(echo "$now") | grep '^[<>]' | grep -v '^[<>] [0-9a-f]\{32\} ' | head -4 | tr '\n' ' ')"
}

# expect_same PATH REF: PATH (file or directory) has the bytes of REF
expect_same() {
    if [ ! -e "$1" ]; then
        problem "'${1#"$TMP"/}' does not exist"
    elif ! diff -r -q "$1" "$2" >/dev/null 2>&1; then
        problem "'${1#"$TMP"/}' differs from the reference: $(diff -r -q "$1" "$2" 2>&1 | head -2 | tr '\n' ' ')"
    fi
}

expect_absent() {
    local p
    for p in "$@"; do
        [ ! -e "$p" ] || problem "'${p#"$TMP"/}' exists"
    done
}

# ---- running under the shim -------------------------------------------------------------------

# faulty VAR=VALUE... CMD ARGS...: runs the command with the shim preloaded (LMS_FAULT_* set by
# the caller); syncs are counted but not waited for
faulty() {
    env LD_PRELOAD="$SHIM${LD_PRELOAD:+:$LD_PRELOAD}" LMS_FAULT_SKIP_SYNC=1 "$@"
}

# start_bg VAR=VALUE... CMD ARGS...: like faulty, in the background (its pid in BG_PID), with
# SIGINT left to the command (a non-interactive shell's background jobs ignore it otherwise)
start_bg() {
    (
        trap - INT
        exec env LD_PRELOAD="$SHIM${LD_PRELOAD:+:$LD_PRELOAD}" LMS_FAULT_SKIP_SYNC=1 "$@"
    ) &
    BG_PID=$!
    BG_PIDS+=("$BG_PID")
}

# wait_until PID CMD...: polls CMD (every 5 ms, at most 30 s) until it succeeds; false when PID
# ended first
wait_until() {
    local pid=$1 i
    shift
    for i in $(seq 6000); do
        "$@" && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.005
    done
    return 1
}

# pick_points LOG MAX: the fault points (numbers of LOG's lines) worth injecting, at most MAX:
# all of them when they fit; else the last three (the commit), then the points that are not
# plain data writes (creating, syncing, closing, renaming), then data writes, each group spread
# evenly over its range
pick_points() {
    awk -v max="$2" '
        { op[NR] = $2 }
        function spread(list, n, k,    i, j) {
            if (k >= n) { for (i = 1; i <= n; i++) pick[list[i]] = 1; return }
            for (i = 0; i < k; i++) {
                j = (k == 1) ? 1 : 1 + int(i * (n - 1) / (k - 1) + 0.5)
                pick[list[j]] = 1
            }
        }
        END {
            if (NR <= max) { for (i = 1; i <= NR; i++) print i; exit }
            for (i = NR - 2; i <= NR; i++) if (i >= 1) pick[i] = 1
            nw = 0; w = 0
            for (i = 1; i <= NR - 3; i++)
                if (op[i] ~ /write|copy_file_range|sendfile/) wl[++w] = i; else nl[++nw] = i
            budget = max - 3
            k = nw < int(budget * 0.6) ? nw : int(budget * 0.6)
            spread(nl, nw, k)
            spread(wl, w, budget - k)
            for (i = 1; i <= NR; i++) if (i in pick) print i
        }' "$1"
}

# commit_point LOG PATH...: the number of the last rename in LOG onto one of PATH (0: none)
commit_point() {
    local log=$1 p n=0 m
    shift
    for p in "$@"; do
        m=$(awk -v dest="$(realpath -m "$p")" '$2 == "rename" && $NF == dest { n = $1 } END { print n + 0 }' "$log")
        [ "$m" -gt "$n" ] && n=$m
    done
    echo "$n"
}

# point_line LOG N: "OP NAME" of fault point N (NAME: the file's name, temporaries shortened)
point_line() {
    awk -v n="$2" '$1 == n {
        path = $3; sub(/.*\//, "", path); sub(/\.lms-tmp-[A-Za-z0-9]+/, ".lms-tmp", path)
        print $2, path; exit }' "$1"
}

# ---- inputs -----------------------------------------------------------------------------------

# make_dataset PREFIX [SHIFT]: a Megatron indexed dataset of 8 documents of 1000 ids below the
# tiny models' 512-entry vocabulary (held-out text ids folded into range, plus SHIFT so that
# another dataset of the same shape holds other ids), written by the layout's definition:
# magic, version, dtype 4 = int32, counts, lengths, pointers, document index
make_dataset() {
    python3 - "$FIXTURES/corpus/val.ids.u16" "$1" "${2:-0}" <<'EOF'
import array, struct, sys
src, out, shift = sys.argv[1], sys.argv[2], int(sys.argv[3])
ids = array.array("H")
with open(src, "rb") as f:
    ids.frombytes(f.read(2 * 8000))
ids = array.array("i", ((i + shift) % 512 for i in ids))
n, size = 8, 1000
with open(out + ".bin", "wb") as f:
    ids.tofile(f)
with open(out + ".idx", "wb") as f:
    f.write(b"MMIDIDX\0\0" + struct.pack("<QBQQ", 1, 4, n, n + 1))
    f.write(struct.pack(f"<{n}i", *[size] * n))
    f.write(struct.pack(f"<{n}q", *[4 * size * i for i in range(n)]))
    f.write(struct.pack(f"<{n + 1}q", *range(n + 1)))
EOF
}

# perturbed_copy SRC DST: a copy of checkpoint directory SRC whose model.safetensors holds other
# weights of the same shapes (every 4-byte word of the data section after the first 64 has its
# low mantissa byte changed)
perturbed_copy() {
    cp -r "$1" "$2"
    python3 - "$2/model.safetensors" <<'EOF'
import struct, sys
path = sys.argv[1]
b = bytearray(open(path, "rb").read())
start = 8 + struct.unpack("<Q", b[:8])[0]
for i in range(start + 64, len(b), 4):
    b[i] ^= 0x5A
open(path, "wb").write(bytes(b))
EOF
}
