#!/usr/bin/env bash
# One rule for sequences longer than a model's max_position_embeddings, in every command that
# runs a model: eval, score, prune (calibration), distill (student and teacher) and generate
# (prompt + new tokens) run, with one warning line on stderr naming the length, the model and
# its positions; --quiet silences it; a length within the positions gets none.
set -u

source "$(dirname "$0")/lib.sh"
IDS=$FIXTURES/corpus/val.ids.u16

lms_scratch positions

# the teacher with max_position_embeddings 8 (its weights linked, its config edited)
SHORT=$TMP/short
mkdir "$SHORT"
for f in "$FIXTURES"/teacher/*; do
    [ "$(basename "$f")" = config.json ] || ln -s "$f" "$SHORT/"
done
python3 - "$FIXTURES/teacher/config.json" "$SHORT/config.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["max_position_embeddings"] = 8
json.dump(c, open(sys.argv[2], "w"), indent=2)
EOF

# warns WANT CMD ARGS...: exit 0; stderr's warning lines are exactly WANT ("" for none)
warns() {
    local want=$1 cmd=$2
    shift 2
    n_checks=$((n_checks + 1))
    (cd "$TMP" && "$LMSURGEON" "$cmd" "$@") >/dev/null 2>"$TMP/err" </dev/null
    local rc=$?
    local got
    got=$(grep "warning" "$TMP/err")
    if [ "$rc" != 0 ] || [ "$got" != "$want" ]; then
        fail "$cmd $*: exit $rc, warnings '$got' (want '$want'), stderr: $(head -c 400 "$TMP/err")"
    fi
}
W="exceeds the 8 positions '$SHORT' was trained for (max_position_embeddings): rotary"
W="$W embeddings run past them, but results there degrade"

E=(--data "$IDS" --num-samples 2 --threads 1)
warns "lmsurgeon eval: warning: --seq-length 16 $W" eval "$SHORT" "${E[@]}" --seq-length 16
warns "" eval "$SHORT" "${E[@]}" --seq-length 16 --quiet
warns "" eval "$SHORT" "${E[@]}" --seq-length 8

S=(--data "$IDS" --num-samples 2 --micro-batch-size 2 --threads 1)
warns "lmsurgeon score: warning: --seq-length 16 $W" score "$SHORT" "${S[@]}" --seq-length 16 \
    -o "$TMP/s1.json"
warns "" score "$SHORT" "${S[@]}" --seq-length 8 -o "$TMP/s2.json"

P=(--target-num-layers 10 --data-paths "$IDS" --num-train-samples 2 --mbs 2 --threads 1
   --dry-run)
warns "lmsurgeon prune: warning: --seq-length 16 $W" prune "$SHORT" "$TMP/p" "${P[@]}" \
    --seq-length 16
warns "" prune "$SHORT" "$TMP/p" "${P[@]}" --seq-length 8

D=(--teacher "$FIXTURES/teacher" --data-paths "$IDS" --split 1 --gbs 2 --mbs 1 --max-steps 1
   --limit-val-batches 0 --threads 1 --dry-run --out "$TMP/d")
warns "lmsurgeon distill: warning: --seq-length 16 $W" distill --student "$SHORT" "${D[@]}" \
    --seq-length 16
warns "" distill --student "$SHORT" "${D[@]}" --seq-length 8

# generate ran out of positions with exit 2 before; now it runs, as the others do
warns "lmsurgeon generate: warning: the prompt (3 tokens) + --max-new-tokens 6 $W" \
    generate "$SHORT" --prompt "hello" --max-new-tokens 6 --threads 1
warns "" generate "$SHORT" --prompt "hello" --max-new-tokens 6 --threads 1 --quiet
warns "" generate "$SHORT" --prompt "hello" --max-new-tokens 5 --threads 1

echo "$n_checks position checks, $n_fail failures"
[ "$n_fail" = 0 ]
