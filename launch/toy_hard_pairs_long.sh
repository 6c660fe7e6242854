#!/usr/bin/env bash
# Misaligned pairs over a long LADD run (ladd_jax/toy/assets/alignment/README.md, "Misaligned pairs over a long run").
# At 300 steps, real latents under a caption with one object's shape or colour changed, as extra fakes, made the
# heads read shapes and moved the 1-step student's shapes a little; here for 16x the demo's steps:
#   1. the demo's 512 train-split prompts, each with a mismatched caption (`--mismatch shape,color`), 2400 LADD steps
#      with the non-saturating loss (the hinge's kink stops a game with these pairs), with hard pairs at weight 1 and
#      without them (seed 0, the two side by side);
#   2. the pairs run resumed from its step 2400 to 4800 with both rates cosine-decayed and EMA 0.99 ("settled", as
#      launch/toy_heads_accuracy.sh settles LADD alone), beside the pairs run at seed 1 to 2400;
#   3. the control for the pairs' hardness: SANA-Sprint's random pairs (the next sample's caption) at the same weight;
#   4. `ladd-jax evaluate` of the students on the demo's prompts and noise, and the curves of the runs in one figure.
# On 2 CPU cores about 110 minutes (steps 1 and 2 two runs at a time, each about 37 minutes; 3 alone, 21).
#
#   bash launch/toy_hard_pairs_long.sh     # OUT=runs/hard_pairs_long
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/hard_pairs_long}
mkdir -p "$OUT"
PAIRS="loss=non_saturating,misaligned_weight=1.0,misaligned_source=records"
sweep() { python launch/toy_ladd_sweep.py --out "$1" --eval-every 300 --mismatch shape,color "${@:2}"; }

# 1. With and without hard pairs, side by side (the second on the first's data, once it is written).
sweep "$OUT/pairs" --steps 2400 --run "ns_pairs1=$PAIRS,checkpoint_every=1200" > "$OUT/pairs.log" 2>&1 &
pairs=$!
until grep -q "LADD:" "$OUT/pairs.log" 2>/dev/null; do  # its data written; a run that fails first ends the script
  kill -0 "$pairs" 2>/dev/null || { wait "$pairs"; exit 1; }
  sleep 5
done
mkdir -p "$OUT/ns" && cp -r "$OUT/pairs/synth" "$OUT/ns/"
sweep "$OUT/ns" --steps 2400 --run "ns=loss=non_saturating,checkpoint_every=1200"
wait "$pairs"  # returns the run's status, so a failed run stops the script (set -e)

# 2. Settled from step 2400 (launch/toy_settle.sh); seed 1 beside it.
mkdir -p "$OUT/pairs_s1" && cp -r "$OUT/pairs/synth" "$OUT/pairs_s1/"
bash launch/toy_settle.sh "$OUT/settle" pairs_settled "$OUT/pairs/ns_pairs1" 2400 4800 "$PAIRS" &
settled=$!
sweep "$OUT/pairs_s1" --steps 2400 --run "ns_pairs1_s1=$PAIRS,checkpoint_every=1200,seed=1"
wait "$settled"

# 3. Random pairs (misaligned_source=batch), the same weight and data.
mkdir -p "$OUT/random" && cp -r "$OUT/pairs/synth" "$OUT/random/"
sweep "$OUT/random" --steps 2400 --run "ns_random1=${PAIRS/records/batch},checkpoint_every=1200"

# 4. The students on the demo's prompts and noise; the curves (the settled run's folder holds steps 0-4800).
ladd-jax evaluate --out "$OUT/compare" --student "ns_pairs1=$OUT/pairs/ns_pairs1/student" \
  --student "ns=$OUT/ns/ns/student"
ladd-jax evaluate --out "$OUT/compare2" --student "pairs_settled4800=$OUT/settle/pairs_settled/student" \
  --student "ns_pairs1_s1=$OUT/pairs_s1/ns_pairs1_s1/student"
ladd-jax evaluate --out "$OUT/compare3" --student "ns_random1=$OUT/random/ns_random1/student"
python launch/toy_curves.py "$OUT/curves.png" "no pairs=$OUT/ns/ns" \
  "hard pairs (settled from 2400)=$OUT/settle/pairs_settled" "hard pairs, seed 1=$OUT/pairs_s1/ns_pairs1_s1" \
  "random pairs=$OUT/random/ns_random1"
