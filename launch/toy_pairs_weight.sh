#!/usr/bin/env bash
# Lighter pairs, and the control at more seeds (ladd_jax/toy/assets/alignment/README.md, "Lighter pairs, and the
# control at a second seed"). launch/toy_pairs_then_settle.sh found that random misaligned pairs at weight 1 for 2400
# steps, then settled without them, lift the held-out 1-step alignment over a control that never had pairs, at one
# control seed; here:
#   1. on launch/toy_hard_pairs_long.sh's data (PAIRS), random pairs at weight 0.3 (seed PAIRS_SEED, 0) and the
#      control (no pairs) at seed CONTROL_SEED (1; toy_pairs_then_settle.sh ran seed 0), 2400 LADD steps each with the
#      non-saturating loss, side by side;
#   2. both resumed from step 2400 to 4800 without pairs, both rates cosine-decayed and EMA 0.99, as
#      launch/toy_pairs_then_settle.sh settles its runs, side by side;
#   3. `ladd-jax evaluate` of both runs' students at step 2400 and settled, on the demo's prompts and noise, their
#      1-step columns, and the curves beside the seed-0 control and random pairs at weight 1, settled the same way
#      (SETTLED).
# On 2 CPU cores about 75 minutes (1 and 2 two runs at a time, 31-36 minutes each), after those two scripts.
#
#   bash launch/toy_pairs_weight.sh  # OUT=runs/pairs_weight PAIRS=runs/hard_pairs_long SETTLED=runs/pairs_then_settle
#   OUT=runs/pairs_weight2 PAIRS_SEED=1 CONTROL_SEED=2 bash launch/toy_pairs_weight.sh  # two more seeds
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/pairs_weight}
PAIRS=${PAIRS:-runs/hard_pairs_long}
SETTLED=${SETTLED:-runs/pairs_then_settle}
PAIRS_SEED=${PAIRS_SEED:-0}
CONTROL_SEED=${CONTROL_SEED:-1}
# Run names: random03 at seed 0, random03_s1 at seed 1, ...; nopairs_s1, ...
P=random03$([ "$PAIRS_SEED" = 0 ] || echo "_s$PAIRS_SEED")
C=nopairs_s$CONTROL_SEED
NS="loss=non_saturating,checkpoint_every=1200"
SETTLE="loss=non_saturating,misaligned_weight=0.0"  # toy_settle.sh adds the settled rates and EMA
sweep() { python launch/toy_ladd_sweep.py --out "$1" --eval-every 300 --mismatch shape,color "${@:2}"; }
mkdir -p "$OUT/pairs" "$OUT/control"
cp -r "$PAIRS/pairs/synth" "$OUT/pairs/" && cp -r "$PAIRS/pairs/synth" "$OUT/control/"

# 1. (`wait PID` passes a failed background run's status on to `set -e`.)
sweep "$OUT/pairs" --steps 2400 --run "$P=$NS,misaligned_weight=0.3,misaligned_source=batch,seed=$PAIRS_SEED" \
  > "$OUT/pairs.log" 2>&1 &
first=$!
sweep "$OUT/control" --steps 2400 --run "$C=$NS,seed=$CONTROL_SEED" > "$OUT/control.log" 2>&1
wait "$first"

# 2.
bash launch/toy_settle.sh "$OUT/pairs_settled" "$P" "$OUT/pairs/$P" 2400 4800 "$SETTLE,seed=$PAIRS_SEED" \
  > "$OUT/pairs_settled.log" 2>&1 &
first=$!
bash launch/toy_settle.sh "$OUT/control_settled" "$C" "$OUT/control/$C" 2400 4800 "$SETTLE,seed=$CONTROL_SEED" \
  > "$OUT/control_settled.log" 2>&1
wait "$first"

# 3. Each run at step 2400 (before settling) and settled.
ladd-jax evaluate --out "$OUT/compare" --student "${C}_2400=$OUT/control/$C/student" \
  --student "$C=$OUT/control_settled/$C/student" \
  --student "${P}_2400=$OUT/pairs/$P/student" --student "$P=$OUT/pairs_settled/$P/student"
python launch/toy_grid_columns.py "$OUT/compare" "$OUT/grid_1step.png" --total 18 --columns 0 1 6 9 12 15
python launch/toy_curves.py "$OUT/curves.png" "no pairs, settled=$SETTLED/nopairs/nopairs" \
  "no pairs seed $CONTROL_SEED, settled=$OUT/control_settled/$C" "random pairs, settled=$SETTLED/random/random" \
  "random pairs at 0.3 seed $PAIRS_SEED, settled=$OUT/pairs_settled/$P"
