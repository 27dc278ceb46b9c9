#!/usr/bin/env bash
# Bad inputs and CLI misuse: every case of tests/bad/ (see tests/bad/README.md) through
# `inspect` and `convert`, text and --json, plus usage errors and output-directory safety.
#
# For a bad input the tool must exit with the documented code (tests/bad/expected.tsv), print
# exactly one line on stderr naming the offending file and the problem, nothing on stdout (one
# JSON object with ok=false under --json), and leave no output or temporary directory behind.
# Any sanitizer report on stderr fails the test.
set -u

source "$(dirname "$0")/lib.sh"
BAD=$ROOT/tests/bad
PY=$(command -v python3)

lms_scratch bad

check() { # check DESCRIPTION COMMAND...: counts a check, fails it when COMMAND fails
    local what=$1
    shift
    n_checks=$((n_checks + 1))
    "$@" || fail "$what"
}

# run OUTBASE ARGS...: runs the tool, leaves OUTBASE.out, OUTBASE.err, OUTBASE.rc
run() {
    local base=$1
    shift
    "$LMSURGEON" "$@" >"$base.out" 2>"$base.err" </dev/null
    echo $? >"$base.rc"
}

no_sanitizer_report() {
    ! grep -q -e "runtime error" -e "AddressSanitizer" -e "LeakSanitizer" "$1"
}

# one_line FILE: exactly one newline-terminated line, no control characters
one_line() {
    [ "$(wc -l <"$1")" -eq 1 ] && [ "$(tail -c 1 "$1" | od -An -c | tr -d ' ')" = '\n' ] &&
        ! LC_ALL=C grep -q "$(printf '[\001-\011\013-\037\177]')" "$1"
}

contains() { # contains FILE TEXT
    grep -qF -- "$2" "$1"
}

json_checks=() # "FILE RC" pairs validated in one python run at the end

# expect_error LABEL EXPECTED_RC NAMED_PATH SUBSTRING ARGS...
expect_error() {
    local label=$1 rc=$2 named=$3 sub=$4
    shift 4
    local base=$TMP/run
    run "$base" "$@"
    local got
    got=$(cat "$base.rc")
    check "$label: sanitizer report: $(head -c 300 "$base.err")" no_sanitizer_report "$base.err"
    check "$label: exit $got, expected $rc ($(head -c 300 "$base.err"))" [ "$got" = "$rc" ]
    check "$label: stderr is not one line: $(head -c 300 "$base.err")" one_line "$base.err"
    if [ -n "$named" ]; then
        check "$label: stderr does not name '$named': $(cat "$base.err")" contains "$base.err" "$named"
    fi
    if [ -n "$sub" ]; then
        check "$label: stderr lacks '$sub': $(cat "$base.err")" contains "$base.err" "$sub"
    fi
    local json=0 a
    for a in "$@"; do [ "$a" = --json ] && json=1; done
    if [ $json = 1 ]; then
        local keep=$TMP/json.$n_checks
        cp "$base.out" "$keep"
        json_checks+=("$keep" "$rc")
    else
        check "$label: stdout not empty: $(head -c 300 "$base.out")" [ ! -s "$base.out" ]
    fi
}

no_output_left() { # no_output_left OUT: neither OUT nor its temporary directories exist
    local out=$1 parent name
    parent=$(dirname "$out")
    name=$(basename "$out")
    [ ! -e "$out" ] && [ -z "$(find "$parent" -maxdepth 1 -name ".$name.lms-*" -print -quit)" ]
}

# ---- the corpus --------------------------------------------------------------------------
n_cases=0
while IFS=$'\t' read -r name code named sub; do
    case $name in '#'* | '') continue ;; esac
    n_cases=$((n_cases + 1))
    path=$BAD/cases/$name
    [ -e "$path" ] || {
        fail "$name: missing from tests/bad/cases (rerun tests/bad/make_corpus.py)"
        continue
    }
    if [ "$named" = . ]; then named_path=$path; else named_path=$path/$named; fi
    expect_error "$name: inspect" "$code" "$named_path" "$sub" inspect "$path"
    expect_error "$name: inspect --json" "$code" "$named_path" "$sub" inspect --json "$path"
    out=$TMP/out_$name
    expect_error "$name: convert" "$code" "$named_path" "$sub" convert "$path" "$out"
    check "$name: convert left output behind" no_output_left "$out"
    expect_error "$name: convert --json --force" "$code" "$named_path" "$sub" \
        convert --json --force --dtype f32 "$path" "$out"
    check "$name: convert --force left output behind" no_output_left "$out"
done <"$BAD/expected.tsv"
check "corpus has at least 100 cases (found $n_cases)" [ "$n_cases" -ge 100 ]
check "convert wrote into the corpus" [ -z "$(find "$BAD/cases" -name '.*lms-*' -print -quit)" ]

# ---- paths that do not exist or cannot be read -------------------------------------------
expect_error "missing path: inspect" 4 "$TMP/nope" "does not exist" inspect "$TMP/nope"
expect_error "missing path: convert" 4 "$TMP/nope" "does not exist" convert "$TMP/nope" "$TMP/o1"
check "missing path: convert left output behind" no_output_left "$TMP/o1"
mkdir "$TMP/empty_dir"
expect_error "empty directory: inspect" 3 "$TMP/empty_dir" "not a checkpoint" inspect "$TMP/empty_dir"

# ---- usage errors (exit 2) -----------------------------------------------------------------
GOOD=$FIXTURES/models/qwen3-tiny
U=$TMP/usage_out
expect_error "inspect unknown flag" 2 "--bogus" "" inspect --bogus "$GOOD"
expect_error "inspect no path" 2 "" "" inspect
expect_error "inspect two paths" 2 "" "" inspect "$GOOD" "$GOOD"
expect_error "convert unknown flag" 2 "--bogus" "" convert --bogus "$GOOD" "$U"
expect_error "convert no args" 2 "" "IN and OUT" convert
expect_error "convert one arg" 2 "" "IN and OUT" convert "$GOOD"
expect_error "convert three args" 2 "" "" convert "$GOOD" "$U" "$U.2"
expect_error "convert bad --dtype" 2 "int4" "--dtype" convert --dtype int4 "$GOOD" "$U"
expect_error "convert --dtype missing value" 2 "" "" convert "$GOOD" "$U" --dtype
expect_error "convert bad --max-shard-size" 2 "12XB" "--max-shard-size" \
    convert --max-shard-size 12XB "$GOOD" "$U"
expect_error "convert zero --max-shard-size" 2 "" "--max-shard-size" \
    convert --max-shard-size 0 "$GOOD" "$U"
expect_error "convert negative --max-shard-size" 2 "" "--max-shard-size" \
    convert --max-shard-size -5GB "$GOOD" "$U"
expect_error "convert unknown --to" 2 "gguf-nonsense" "" convert --to gguf-nonsense "$GOOD" "$U"
check "usage errors left output behind" no_output_left "$U"
expect_error "unknown command" 2 "frobnicate" "" frobnicate

# ---- output directory safety ---------------------------------------------------------------
IN=$TMP/in
cp -r "$GOOD" "$IN"
snapshot() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 md5sum) }
in_before=$(snapshot "$IN")

OUT=$TMP/existing
mkdir "$OUT"
echo "precious" >"$OUT/keep.txt"
out_before=$(snapshot "$OUT")
expect_error "non-empty OUT without --force" 2 "$OUT" "--force" convert "$IN" "$OUT"
check "non-empty OUT was modified" [ "$(snapshot "$OUT")" = "$out_before" ]
check "refusal left a temporary directory" \
    [ -z "$(find "$TMP" -maxdepth 1 -name '.existing.lms-*' -print -quit)" ]
echo "not a dir" >"$TMP/afile"
expect_error "OUT is a file without --force" 2 "$TMP/afile" "" convert "$IN" "$TMP/afile"
check "OUT file was modified" [ "$(cat "$TMP/afile")" = "not a dir" ]

for force in "" --force; do
    expect_error "OUT == IN $force" 2 "$IN" "" convert $force "$IN" "$IN"
    expect_error "OUT inside IN $force" 2 "$IN/sub" "" convert $force "$IN" "$IN/sub"
    expect_error "IN inside OUT $force" 2 "$TMP" "" convert $force "$IN" "$TMP"
    ln -sfn "$IN" "$TMP/link"
    expect_error "OUT is a symlink to IN $force" 2 "$TMP/link" "" convert $force "$IN" "$TMP/link"
    expect_error "OUT == IN with trailing slash $force" 2 "" "" convert $force "$IN" "$IN/"
done
check "input was modified by a refused convert" [ "$(snapshot "$IN")" = "$in_before" ]
check "refused converts created $IN/sub" [ ! -e "$IN/sub" ]

run "$TMP/r" convert --force --quiet "$IN" "$OUT"
check "--force over a non-empty OUT: exit $(cat "$TMP/r.rc"): $(cat "$TMP/r.err")" \
    [ "$(cat "$TMP/r.rc")" = 0 ]
check "--force: sanitizer report" no_sanitizer_report "$TMP/r.err"
check "--force: stderr not empty: $(head -c 300 "$TMP/r.err")" [ ! -s "$TMP/r.err" ]
check "--force: old content survived" [ ! -e "$OUT/keep.txt" ]
check "--force: new checkpoint missing" [ -f "$OUT/config.json" -a -f "$OUT/model.safetensors" ]
check "--force: leftovers beside OUT" \
    [ -z "$(find "$TMP" -maxdepth 1 -name '.existing.lms-*' -print -quit)" ]
run "$TMP/r" inspect --quiet "$OUT"
check "--force: result does not inspect: $(cat "$TMP/r.err")" [ "$(cat "$TMP/r.rc")" = 0 ]

mkdir "$TMP/empty_out"
run "$TMP/r" convert --quiet "$IN" "$TMP/empty_out"
check "empty existing OUT refused: $(cat "$TMP/r.err")" [ "$(cat "$TMP/r.rc")" = 0 ]
check "empty existing OUT not filled" [ -f "$TMP/empty_out/config.json" ]
check "input was modified by convert" [ "$(snapshot "$IN")" = "$in_before" ]

# ---- --json payloads ---------------------------------------------------------------------
if [ ${#json_checks[@]} -gt 0 ]; then
    n_checks=$((n_checks + ${#json_checks[@]} / 2))
    if ! "$PY" - "${json_checks[@]}" <<'EOF'; then
import json, sys
args = sys.argv[1:]
bad = 0
for path, rc in zip(args[0::2], args[1::2]):
    text = open(path, encoding="utf-8").read()
    try:
        if text.count("\n") != 1 or not text.endswith("\n"):
            raise ValueError("not exactly one line")
        o = json.loads(text)
        if not isinstance(o, dict) or o.get("ok") is not False:
            raise ValueError("ok is not false")
        if not isinstance(o.get("error"), str) or not o["error"]:
            raise ValueError("no error message")
        if o.get("exit_code") != int(rc):
            raise ValueError("exit_code %r, expected %s" % (o.get("exit_code"), rc))
    except ValueError as e:
        print("FAIL: --json output %r: %s" % (text[:300], e), file=sys.stderr)
        bad += 1
sys.exit(1 if bad else 0)
EOF
        fail "--json outputs (see above)"
    fi
fi

echo "bad inputs: $n_cases corpus cases, $n_checks checks, $n_fail failed"
[ "$n_fail" -eq 0 ]
