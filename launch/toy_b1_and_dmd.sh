#!/usr/bin/env bash
# Two levers at the demo's 150 LADD steps (ladd_jax/toy/assets/alignment/README.md, "Adam's b1, and DMD within the
# demo's minutes"): Adam's first moment for the student and the heads (b1, d_b1), and DMD with LADD's heads beside
# it made cheap enough for the demo (2 fake-score updates a step), on the demo's 512 synthetic latents; then
# `ladd-jax evaluate` on the demo's prompts and noise; then LADD from two of the mixes, one of those routes again
# at seed 1, and a shorter route at two seeds. On 2 CPU cores: about 55 minutes of training, 20 of evaluation.
#
#   bash launch/toy_b1_and_dmd.sh            # OUT=runs/b1_and_dmd
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/b1_and_dmd}
sweep() { python launch/toy_ladd_sweep.py --out "$OUT" "$@"; }
sweep --steps 150 --eval-every 25 --run toy= --run b1_09=b1=0.9 --run b1_05=b1=0.5 \
  --run 'dmdh_d2@dmd:toy=adv_weight=0.1,d_steps=2' --run g09=b1=0.9,d_b1=0.0 --run g05=b1=0.5,d_b1=0.0 \
  --run 'dmdh_a03_d2@dmd:toy=adv_weight=0.3,d_steps=2'
sweep --steps 300 --eval-every 50 --run 'dmdh_d2_300@dmd:toy=adv_weight=0.1,d_steps=2'
students=()
for run in toy b1_09 b1_05 g09 g05 dmdh_d2 dmdh_a03_d2 dmdh_d2_300; do
  students+=(--student "$run=$OUT/$run/student")
done
ladd-jax evaluate --out "$OUT/compare" "${students[@]}"
# LADD (the toy config) beside the three mixes, at 1 and 4 steps (columns of the evaluation's grids).
python launch/toy_grid_columns.py "$OUT/compare" "$OUT/grid.png" --total 30 --columns 0 1 6 8 21 23 24 26 27 29
# The toy config's 150 LADD steps from two of the mixes (a DMD start before LADD), measured on their own.
sweep --steps 150 --eval-every 25 --run "ladd_from_dmdh_d2=student.init=$OUT/dmdh_d2/student" \
  --run "ladd_from_dmdh_d2_300=student.init=$OUT/dmdh_d2_300/student"
ladd-jax evaluate --out "$OUT/compare_start" --student "ladd_from_dmdh_d2=$OUT/ladd_from_dmdh_d2/student" \
  --student "ladd_from_dmdh_d2_300=$OUT/ladd_from_dmdh_d2_300/student"
# The same route at seed 1 (the heads' and fake score's draws, the data's order), beside the toy config at seed 1.
sweep --steps 300 --eval-every 50 --run 'dmdh_d2_300_s1@dmd:toy=adv_weight=0.1,d_steps=2,seed=1'
dmd_runs=toy,toy_s1,dmdh_d2,dmdh_a03_d2,dmdh_d2_300,dmdh_d2_300_s1
dmd_runs+=,ladd_from_dmdh_d2,ladd_from_dmdh_d2_300,ladd_from_dmdh_d2_300_s1
sweep --steps 150 --eval-every 25 --run "ladd_from_dmdh_d2_300_s1=student.init=$OUT/dmdh_d2_300_s1/student,seed=1" \
  --run toy_s1=seed=1 --curves b1=toy,b1_05,g05,b1_09,g09 --curves "dmd=$dmd_runs"
ladd-jax evaluate --out "$OUT/compare_s1" --student "dmdh_d2_300_s1=$OUT/dmdh_d2_300_s1/student" \
  --student "ladd_from_dmdh_d2_300_s1=$OUT/ladd_from_dmdh_d2_300_s1/student" --student "toy_s1=$OUT/toy_s1/student"
# A route sized for the demo's minutes: 200 mix steps, then 100 LADD steps, at seeds 0 and 1.
sweep --steps 200 --eval-every 50 --run 'dmdh_d2_200@dmd:toy=adv_weight=0.1,d_steps=2' \
  --run 'dmdh_d2_200_s1@dmd:toy=adv_weight=0.1,d_steps=2,seed=1'
sweep --steps 100 --eval-every 25 --run "ladd100_from_dmdh_d2_200=student.init=$OUT/dmdh_d2_200/student" \
  --run "ladd100_from_dmdh_d2_200_s1=student.init=$OUT/dmdh_d2_200_s1/student,seed=1"
ladd-jax evaluate --out "$OUT/compare_short" \
  --student "ladd100_from_dmdh_d2_200=$OUT/ladd100_from_dmdh_d2_200/student" \
  --student "ladd100_from_dmdh_d2_200_s1=$OUT/ladd100_from_dmdh_d2_200_s1/student"
