#!/usr/bin/env bash
# Misaligned pairs, then settled without them (ladd_jax/toy/assets/alignment/README.md, "Pairs first, then settled
# without them"). The pairs lift LADD's alignment and cost FD, and settling with them kept the cost; here each 2400-step
# run of launch/toy_hard_pairs_long.sh (PAIRS) is resumed from its step 2400 to 4800 with the pairs off
# (misaligned_weight=0), both rates cosine-decayed and EMA 0.99, as that script settles its pairs run:
#   1. the hard pairs at seed 0 and the random pairs (seed 0), side by side;
#   2. the hard pairs at seed 1, beside the run that never had pairs settled the same way (the control: is it the
#      pairs or the settling?);
#   3. the random pairs at seed 1: 2400 steps with them (as PAIRS' seed-0 run), then settled without them;
#   4. `ladd-jax evaluate` of the five settled students on the demo's prompts and noise, their 1-step columns side by
#      side, and their curves in one figure.
# On 2 CPU cores about 130 minutes (1 and 2 two runs at a time, each about 37 minutes; 3 alone, about 50), after
# launch/toy_hard_pairs_long.sh.
#
#   bash launch/toy_pairs_then_settle.sh     # OUT=runs/pairs_then_settle PAIRS=runs/hard_pairs_long
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/pairs_then_settle}
PAIRS=${PAIRS:-runs/hard_pairs_long}
SETTLE="loss=non_saturating,misaligned_weight=0.0"  # toy_settle.sh adds the settled rates and EMA

# NAME from PAIRS' run SRC at its step 2400, to 4800 (its data, checkpoint and curves copied by toy_settle.sh).
settle() {
  bash launch/toy_settle.sh "$OUT/$1" "$1" "$PAIRS/$2" 2400 4800 "$3" > "$OUT/$1.log" 2>&1
}
mkdir -p "$OUT"

# 1. and 2., two at a time (`wait PID` passes a failed background run's status on to `set -e`).
settle hard "pairs/ns_pairs1" "$SETTLE" &
first=$!
settle random "random/ns_random1" "$SETTLE"
wait "$first"
settle hard_s1 "pairs_s1/ns_pairs1_s1" "$SETTLE,seed=1" &
first=$!
settle nopairs "ns/ns" "$SETTLE"
wait "$first"

# 3. The random pairs at seed 1, then settled (its pairs run in OUT, where settle() looks for PAIRS' runs).
mkdir -p "$OUT/pairs" && cp -r "$PAIRS/pairs/synth" "$OUT/pairs/"
python launch/toy_ladd_sweep.py --out "$OUT/pairs" --eval-every 300 --mismatch shape,color --steps 2400 \
  --run "random_s1_pairs=loss=non_saturating,misaligned_weight=1.0,misaligned_source=batch,checkpoint_every=1200,seed=1"
PAIRS=$OUT settle random_s1 "pairs/random_s1_pairs" "$SETTLE,seed=1"

# 4. The students on the demo's prompts and noise; their 1-step columns (after the real render and the 20-step
# teacher; each student's rows are 1, 2, 4 steps); the curves.
students=()
for run in nopairs hard hard_s1 random random_s1; do students+=(--student "$run=$OUT/$run/$run/student"); done
ladd-jax evaluate --out "$OUT/compare" "${students[@]}"
python launch/toy_grid_columns.py "$OUT/compare" "$OUT/grid_1step.png" --total 21 --columns 0 1 6 9 12 15 18
python launch/toy_curves.py "$OUT/curves.png" "no pairs, settled=$OUT/nopairs/nopairs" \
  "hard pairs, settled without them=$OUT/hard/hard" "hard pairs seed 1, settled without them=$OUT/hard_s1/hard_s1" \
  "random pairs, settled without them=$OUT/random/random" \
  "random pairs seed 1, settled without them=$OUT/random_s1/random_s1"
