#!/usr/bin/env bash
# The pairs for longer before settling (ladd_jax/toy/assets/alignment/README.md, "The pairs for longer"). Random
# misaligned pairs for 2400 steps, then settled without them, left the student above a control never paired on
# held-out prompts (launch/toy_pairs_then_settle.sh, launch/toy_pairs_weight.sh); does that gain grow with the
# pairs' steps? Here, on launch/toy_hard_pairs_long.sh's runs (PAIRS), at step FROM (2400), LENGTH (2400) more:
#   1. its random-pairs run (seed SEED; PAIRS_RUN) continued from step FROM to MID = FROM + LENGTH as it was (pairs at
#      weight 1, the toy config's constant rates and EMA 0.95), beside its no-pairs run (CONTROL_RUN) continued the
#      same way (the control);
#   2. both resumed from step MID to MID + LENGTH without pairs, both rates cosine-decayed and EMA 0.99
#      (toy_settle.sh), side by side;
#   3. `ladd-jax evaluate` of both at step MID and settled, on the demo's prompts and noise, their 1-step columns,
#      and the curves.
# On 2 CPU cores about 75 minutes (1 and 2 two runs at a time, 33-38 minutes each), after toy_hard_pairs_long.sh.
# FROM=4800 on this script's own step-4800 runs: the pairs to 7200, then settled to 9600; FROM=7200 on those: to 9600,
# settled to 12000 (the last two examples).
#
#   bash launch/toy_pairs_longer.sh     # OUT=runs/pairs_longer PAIRS=runs/hard_pairs_long
#   OUT=runs/pairs_longer_s1 SEED=1 PAIRS_RUN=runs/pairs_then_settle/pairs/random_s1_pairs \
#     CONTROL_RUN=runs/pairs_weight/control/nopairs_s1 bash launch/toy_pairs_longer.sh   # the seed-1 runs
#   OUT=runs/pairs_longer2 FROM=4800 PAIRS_RUN=runs/pairs_longer/random_4800/random_4800 \
#     CONTROL_RUN=runs/pairs_longer/nopairs_4800/nopairs_4800 bash launch/toy_pairs_longer.sh   # to 7200, settled
#   OUT=runs/pairs_longer3 FROM=7200 PAIRS_RUN=runs/pairs_longer2/random_7200/random_7200 \
#     CONTROL_RUN=runs/pairs_longer2/nopairs_7200/nopairs_7200 bash launch/toy_pairs_longer.sh   # to 9600, settled
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/pairs_longer}
PAIRS=${PAIRS:-runs/hard_pairs_long}
PAIRS_RUN=${PAIRS_RUN:-$PAIRS/random/ns_random1}
CONTROL_RUN=${CONTROL_RUN:-$PAIRS/ns/ns}
SEED=${SEED:-0}  # the seed both runs were made with
FROM=${FROM:-2400}  # the step of PAIRS_RUN's and CONTROL_RUN's checkpoints to continue from
LENGTH=${LENGTH:-2400}
MID=$((FROM + LENGTH)) TO=$((FROM + 2 * LENGTH))
NS=loss=non_saturating,seed=$SEED
ON="$NS,misaligned_weight=1.0,misaligned_source=batch"
SETTLE="$NS,misaligned_weight=0.0"  # toy_settle.sh adds the settled rates and EMA

# NAME (in its own sweep folder OUT/NAME) from run FROM at FROM_STEP to TO_STEP, settled (toy_settle.sh).
resume() {
  bash launch/toy_settle.sh "$OUT/$1" "$1" "$2" "$3" "$4" "$5" > "$OUT/$1.log" 2>&1
}
# The same, continued at the toy config's own constant rates and EMA: the run as it was.
continue_run() { SETTLE_RECIPE=checkpoint_every=1200,keep_checkpoints=8 resume "$@"; }
mkdir -p "$OUT"

# 1. (`wait PID` passes a failed background run's status on to `set -e`.)
continue_run "random_$MID" "$PAIRS_RUN" "$FROM" "$MID" "$ON" &
first=$!
continue_run "nopairs_$MID" "$CONTROL_RUN" "$FROM" "$MID" "$NS"
wait "$first"

# 2.
resume random_settled "$OUT/random_$MID/random_$MID" "$MID" "$TO" "$SETTLE" &
first=$!
resume nopairs_settled "$OUT/nopairs_$MID/nopairs_$MID" "$MID" "$TO" "$SETTLE"
wait "$first"

# 3.
students=()
for run in "nopairs_$MID" nopairs_settled "random_$MID" random_settled; do
  students+=(--student "$run=$OUT/$run/$run/student")
done
ladd-jax evaluate --out "$OUT/compare" "${students[@]}"
python launch/toy_grid_columns.py "$OUT/compare" "$OUT/grid_1step.png" --total 18 --columns 0 1 6 9 12 15
python launch/toy_curves.py "$OUT/curves.png" "no pairs (to $MID), settled=$OUT/nopairs_settled/nopairs_settled" \
  "random pairs (to $MID), settled without them=$OUT/random_settled/random_settled"
