#!/usr/bin/env bash
# Two hosts without two machines: the 2-rank distillation of test_distill_dp.sh run across two
# network namespaces of this test's own, joined by a veth pair, so that the ranks talk over TCP
# as on two machines (no shared memory transport, one rank per "host"). OpenMPI's launcher runs
# in the first namespace and starts the second host's daemon through an `ip netns exec` agent
# (what ssh does on a real cluster). Checked against the 1-process run with twice the
# accumulation, as on one host. Skipped (77) when namespaces cannot be made here (no root, or a
# container without CAP_SYS_ADMIN) or when no MPI launcher is given.
set -u

source "$(dirname "$0")/lib.sh"
MPIRUN=${MPIRUN:-}
[ -n "$MPIRUN" ] && [ -x "$MPIRUN" ] || { echo "SKIP: no mpirun (MPIRUN unset)"; exit 77; }
command -v ip >/dev/null || { echo "SKIP: no 'ip' command (iproute2)"; exit 77; }
TEACHER=$FIXTURES/models/qwen3-tiny
STUDENT=$FIXTURES/models/qwen3-tiny-distill-reference/student
COMPARE=$ROOT/tests/tools/compare_states.py
LMSURGEON=$(cd "$(dirname "$LMSURGEON")" && pwd)/$(basename "$LMSURGEON")
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# sanitizer builds: OpenMPI's own allocations live until exit (its plugins stay loaded, so that
# LeakSanitizer can name them and the suppressions apply)
export LSAN_OPTIONS="${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$ROOT/tests/cli/lsan-mpi.supp"
export OMPI_MCA_mca_base_component_disable_dlclose=1
[ -n "${ASAN_OPTIONS:-}" ] && export ASAN_OPTIONS="$ASAN_OPTIONS:fast_unwind_on_malloc=0"

NS_A=lms-a-$$
NS_B=lms-b-$$
lms_scratch 2h
cleanup() { # the scratch directory, and the two namespaces
    ip netns del "$NS_A" 2>/dev/null
    ip netns del "$NS_B" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
if ! ip netns add "$NS_A" 2>"$TMP/ns.err"; then
    echo "SKIP: network namespaces are not permitted here ($(head -c 200 "$TMP/ns.err"))"
    exit 77
fi
ip netns add "$NS_B" &&
    ip link add "veth$$a" netns "$NS_A" type veth peer name "veth$$b" netns "$NS_B" &&
    ip -n "$NS_A" addr add 10.77.0.1/24 dev "veth$$a" &&
    ip -n "$NS_B" addr add 10.77.0.2/24 dev "veth$$b" &&
    ip -n "$NS_A" link set lo up && ip -n "$NS_B" link set lo up &&
    ip -n "$NS_A" link set "veth$$a" up && ip -n "$NS_B" link set "veth$$b" up ||
    { echo "SKIP: could not wire two namespaces with a veth pair"; exit 77; }

# the launch agent: mpirun calls it as `agent [ssh options] HOST COMMAND...`
cat >"$TMP/agent" <<AGENT
#!/usr/bin/env bash
while [ "\${1#-}" != "\$1" ]; do shift; done
host=\$1
shift
case "\$host" in
    10.77.0.1) ns=$NS_A ;;
    10.77.0.2) ns=$NS_B ;;
    *) echo "agent: unknown host \$host" >&2; exit 1 ;;
esac
exec ip netns exec "\$ns" /bin/sh -c "\$*"
AGENT
chmod +x "$TMP/agent"

python3 - "$FIXTURES/corpus/val.ids.u16" "$TMP" <<'PY'
import array, struct, sys
src, out = sys.argv[1], sys.argv[2]
ids = array.array("H")
with open(src, "rb") as f:
    ids.frombytes(f.read(2 * 40000))
ids = array.array("i", (i % 512 for i in ids))
n, size = 20, 2000
with open(out + "/data.bin", "wb") as f:
    ids.tofile(f)
with open(out + "/data.idx", "wb") as f:
    f.write(b"MMIDIDX\0\0" + struct.pack("<QBQQ", 1, 4, n, n + 1))
    f.write(struct.pack(f"<{n}i", *[size] * n))
    f.write(struct.pack(f"<{n}q", *[4 * size * i for i in range(n)]))
    f.write(struct.pack(f"<{n + 1}q", *range(n + 1)))
PY
RUN=(--student "$STUDENT" --teacher "$TEACHER" --data-paths "$TMP/data" --split 1
     --seq-length 32 --gbs 4 --mbs 1 --max-steps 3 --warmup-steps 1 --lr 1e-3 --min-lr 1e-4
     --optim-preset gpt --limit-val-batches 0 --threads 1 --dtype f32 --log-dir "$TMP/logs"
     --quiet --json)
"$LMSURGEON" distill "${RUN[@]}" --out "$TMP/one" >"$TMP/one.json" 2>"$TMP/err" ||
    { echo "FAIL: the 1-process run failed"; cat "$TMP/err"; exit 1; }
# one rank per host, TCP over the veth pair only (no shared memory between the "hosts")
timeout 120 ip netns exec "$NS_A" "$MPIRUN" --host 10.77.0.1:1,10.77.0.2:1 -np 2 \
    --mca plm_rsh_agent "$TMP/agent" --mca btl tcp,self --mca btl_tcp_if_include 10.77.0.0/24 \
    --mca oob_tcp_if_include 10.77.0.0/24 --mca btl_base_warn_component_unused 0 \
    --bind-to none -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM \
    "$LMSURGEON" distill "${RUN[@]}" --out "$TMP/two" --devices 1 --num-nodes 2 \
    >"$TMP/two.json" 2>"$TMP/err" ||
    { echo "FAIL: the 2-host run failed"; cat "$TMP/err"; exit 1; }
python3 - "$TMP/one.json" "$TMP/two.json" <<'PY' || n_fail=$((n_fail + 1))
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
for x, y in zip(a["history"], b["history"]):
    if abs(x["loss"] - y["loss"]) > 1e-6 * abs(x["loss"]):
        print("FAIL: 2 hosts: step %d loss %r vs %r" % (x["step"], y["loss"], x["loss"]))
        sys.exit(1)
PY
python3 "$COMPARE" "$TMP/one.state/optimizer.safetensors" "$TMP/two.state/optimizer.safetensors" \
    --rtol 1e-5 || fail "2 hosts: the state differs from 1 process"
echo "two hosts over TCP: $n_fail failures"
[ "$n_fail" = 0 ]
