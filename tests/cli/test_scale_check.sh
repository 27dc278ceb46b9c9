#!/usr/bin/env bash
# scripts/scale-check --dry-run: every stage of the GPU scale check (init, convert, data, score,
# both prunes, both distillations, exports and checks) runs its command on the CPU at fixture
# size and passes; the report holds each stage's time, peak RSS and notes; the distillation's
# per-step model TFLOP/s follow (6 x student + 2 x teacher parameters) x tokens/s with the
# parameter counts computed here from the shapes; inputs no later stage needs are gone and no
# training state was written (--save-state never); a later call with SCALE_CHECK_STAGES adds to
# the same records (the reference prune command as written, calibrating), and a stage past the
# budget is reported as not run and fails the report.
set -u

source "$(dirname "$0")/lib.sh"
lms_scratch scale-check
export LMSURGEON SCALE_CHECK_WORK=$TMP/work SCALE_CHECK_PYTHON=${SCALE_CHECK_PYTHON:-python3}
unset SCALE_CHECK_STAGES SCALE_CHECK_BUDGET SCALE_CHECK_KEEP SCALE_CHECK_PRUNE SCALE_CHECK_STEPS

"$ROOT/scripts/scale-check" --dry-run "$TMP/out" >"$TMP/log" 2>&1 ||
    { fail "scripts/scale-check --dry-run: exit $?"; tail -40 "$TMP/log" >&2; }

python3 - "$TMP/out" <<'EOF' || fail "the report"
import json, math, sys
out = sys.argv[1]
r = json.load(open(out + "/report.json"))
names = [s["stage"] for s in r["stages"]]
want = ["init", "convert", "data", "score", "prune-depth", "prune-width", "distill-depth",
        "export-depth", "check-depth", "distill-width", "export-width", "check-width"]
assert names == want, names
assert r["passed"] and r["dry_run"] and r["prune"] == "importance", r
for s in r["stages"]:
    ok = ("pass", "skip") if s["stage"].startswith("check-") else ("pass",)
    assert s["status"] in ok, s
    assert s["seconds"] > 0 and s["peak_rss_bytes"] > 0 and s["peak_disk_bytes"] > 0, s
    assert any(n.startswith("throughput") or n.startswith("eval") for n in s["notes"]), s
    if s["status"] == "skip":
        assert any("cannot import torch" in n for n in s["notes"]), s

# parameters of a Qwen3 shape (untied embeddings, q/k norms), from the dry run's config:
# fixtures/teacher cut to 4 layers, hidden 128, FFN 192; 8 heads, 2 groups of head size 32
def params(L, H, F, V=4096, nh=8, ng=2, d=32):
    layer = H * nh * d + 2 * H * ng * d + nh * d * H + 2 * d + 2 * H + 3 * H * F
    return 2 * V * H + H + L * layer
teacher = params(4, 128, 192)
students = {"depth": params(3, 128, 192), "width": params(4, 96, 128)}
for kind, ps in students.items():
    d = r["distill"][kind]
    assert d["student_params"] == ps and d["teacher_params"] == teacher, (kind, d)
    assert [s["step"] for s in d["steps"]] == [1, 2], d
    for s in d["steps"]:
        want = (6 * ps + 2 * teacher) * s["tokens_per_second"] / 1e12
        assert s["tokens_per_second"] > 0 and math.isclose(s["model_tflops"], want), s
    assert d["memory_plan"]["total"] > 0, d
text = open(out + "/report.txt").read()
for part in ("distill-depth", "RSS", "step 2:", "(6 x student params + 2 x teacher params)",
             "peak disk use", "plan: --mbs 2"):
    assert part in text, part
EOF

# what is left: the teacher, the data and the scores; no intermediate model and no state
for p in Qwen3-8B Qwen3-8B-nemo-depth-pruned Qwen3-8B-nemo-width-pruned \
    Qwen3-8B-nemo-depth-pruned-distill Qwen3-8B-depth-distilled-hf Qwen3-8B-width-distilled-hf; do
    [ -e "$TMP/work/$p" ] && fail "'$p' was not removed after its last use"
done
for d in "$TMP"/work/*.state; do
    [ -e "$d" ] && fail "a training state was written: '$d'"
done
[ -d "$TMP/work/Qwen3-8B-nemo" ] || fail "the NeMo teacher is gone"

# a later call adds to the records: the reference prune command as written (calibrating)
SCALE_CHECK_STAGES=prune-depth SCALE_CHECK_PRUNE=calibrate \
    "$ROOT/scripts/scale-check" --dry-run "$TMP/out2" >"$TMP/log" 2>&1 ||
    { fail "SCALE_CHECK_STAGES=prune-depth: exit $?"; tail -20 "$TMP/log" >&2; }
python3 - "$TMP/out2" <<'EOF' || fail "the report of the prune-depth call"
import json, sys
r = json.load(open(sys.argv[1] + "/report.json"))
assert len(r["stages"]) == 12 and r["passed"] and r["prune"] == "calibrate", r
s = {s["stage"]: s for s in r["stages"]}["prune-depth"]
assert any("calibration tokens/s" in n for n in s["notes"]), s
EOF
python3 -c 'import json, sys; assert json.load(open(sys.argv[1]))["scores"].startswith(
    "activations on 8 windows x 64 tokens of ")' "$TMP/work/records/prune-depth.json" ||
    fail "prune-depth did not calibrate on the data"

# past the budget: not run, and the report fails
SCALE_CHECK_STAGES=export-width SCALE_CHECK_BUDGET=1 \
    "$ROOT/scripts/scale-check" --dry-run "$TMP/out3" >"$TMP/log" 2>&1 &&
    fail "a run with a stage past its budget passed"
grep -q "export-width *no-time" "$TMP/out3/report.txt" ||
    { fail "the stage past the budget is not reported"; cat "$TMP/out3/report.txt" >&2; }

echo "scale-check dry run: $n_fail failures"
[ "$n_fail" = 0 ]
