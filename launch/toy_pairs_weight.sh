#!/usr/bin/env bash
# Lighter pairs, and the control at a second seed (ladd_jax/toy/assets/alignment/README.md, "Lighter pairs, and the
# control at a second seed"). launch/toy_pairs_then_settle.sh found that random misaligned pairs at weight 1 for 2400
# steps, then settled without them, lift the held-out 1-step alignment over a control that never had pairs, at one
# control seed; here:
#   1. on launch/toy_hard_pairs_long.sh's data (PAIRS), random pairs at weight 0.3 (seed 0) and the control (no pairs)
#      at seed 1, 2400 LADD steps each with the non-saturating loss, side by side;
#   2. both resumed from step 2400 to 4800 without pairs, both rates cosine-decayed and EMA 0.99, as
#      launch/toy_pairs_then_settle.sh settles its runs, side by side;
#   3. `ladd-jax evaluate` of the two settled students on the demo's prompts and noise, their 1-step columns, and the
#      curves beside the seed-0 control and random pairs at weight 1 settled the same way (SETTLED).
# On 2 CPU cores about 80 minutes (1 and 2 two runs at a time, each about 37 minutes), after those two scripts.
#
#   bash launch/toy_pairs_weight.sh     # OUT=runs/pairs_weight PAIRS=runs/hard_pairs_long SETTLED=runs/pairs_then_settle
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/pairs_weight}
PAIRS=${PAIRS:-runs/hard_pairs_long}
SETTLED=${SETTLED:-runs/pairs_then_settle}
NS="loss=non_saturating,checkpoint_every=1200"
SETTLE="loss=non_saturating,misaligned_weight=0.0,checkpoint_every=1200,keep_checkpoints=8,lr_decay=cosine"
SETTLE="$SETTLE,ema_decay=0.99"
sweep() { python launch/toy_ladd_sweep.py --out "$1" --eval-every 300 --mismatch shape,color "${@:2}"; }
mkdir -p "$OUT/pairs" "$OUT/control"
cp -r "$PAIRS/pairs/synth" "$OUT/pairs/" && cp -r "$PAIRS/pairs/synth" "$OUT/control/"

# 1. (`wait PID` passes a failed background run's status on to `set -e`.)
sweep "$OUT/pairs" --steps 2400 --run "random03=$NS,misaligned_weight=0.3,misaligned_source=batch" \
  > "$OUT/pairs.log" 2>&1 &
first=$!
sweep "$OUT/control" --steps 2400 --run "nopairs_s1=$NS,seed=1" > "$OUT/control.log" 2>&1
wait "$first"

# 2.
bash launch/toy_settle.sh "$OUT/pairs_settled" random03 "$OUT/pairs/random03" 2400 4800 "$SETTLE" \
  > "$OUT/pairs_settled.log" 2>&1 &
first=$!
bash launch/toy_settle.sh "$OUT/control_settled" nopairs_s1 "$OUT/control/nopairs_s1" 2400 4800 "$SETTLE,seed=1" \
  > "$OUT/control_settled.log" 2>&1
wait "$first"

# 3.
ladd-jax evaluate --out "$OUT/compare" --student "random03=$OUT/pairs_settled/random03/student" \
  --student "nopairs_s1=$OUT/control_settled/nopairs_s1/student"
python launch/toy_grid_columns.py "$OUT/compare" "$OUT/grid_1step.png" --total 12 --columns 0 1 6 9
python launch/toy_curves.py "$OUT/curves.png" "no pairs, settled=$SETTLED/nopairs/nopairs" \
  "no pairs seed 1, settled=$OUT/control_settled/nopairs_s1" "random pairs, settled=$SETTLED/random/random" \
  "random pairs at 0.3, settled=$OUT/pairs_settled/random03"
