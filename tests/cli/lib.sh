# Sourced by every tests/cli/test_*.sh but test_layers.sh (it checks the build's layer libraries
# and needs no binary) and the fault-injection suite: what such a script starts with. The binary
# under test ($LMSURGEON, required), the source tree ($ROOT) and its fixtures ($FIXTURES), the
# counters n_checks and n_fail (a script counts its checks itself and ends by printing them and
# exiting non-zero when n_fail > 0), fail MESSAGE (one "FAIL:" line on stderr, n_fail + 1) and
# lms_scratch NAME, which makes $TMP, a fresh directory removed when the script exits.
# (The fault-injection suite has its own start, tests/cli/faults_lib.sh.)

: "${LMSURGEON:?LMSURGEON must name the lmsurgeon binary}"
ROOT=${LMS_SOURCE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
FIXTURES=${LMS_FIXTURES:-$ROOT/fixtures}
n_checks=0
n_fail=0

fail() {
    echo "FAIL: $*" >&2
    n_fail=$((n_fail + 1))
}

lms_scratch() {
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/lms-$1.XXXXXX")
    trap 'rm -rf "$TMP"' EXIT
}
