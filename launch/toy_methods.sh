#!/usr/bin/env bash
# The method comparison in the toy world (README "Baselines"; ladd_jax/toy/assets/methods/): every method trained
# for the same budget (300 steps x batch 16) on the demo's synthetic data, exported, then measured in one table.
# On 2 CPU cores: about 40 minutes of training and 5 of evaluation.
#
#   bash launch/toy_methods.sh            # OUT=runs/methods
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/methods}
python launch/toy_ladd_sweep.py --out "$OUT" --steps 300 \
  --run ladd= \
  --run add@add:toy= --run add_adv_only@add:toy=distill_weight=0.0 --run add_distill_only@add:toy=adv_weight=0.0 \
  --run lcm@lcm:toy= --run lcm_k5@lcm:toy=lcm.skip=5 \
  --run d2g_mse@d2g:toy-mse= --run d2g_lpips@d2g:toy-lpips= --run d2g_gan@d2g:toy-gan=
ladd-jax evaluate --out "$OUT/compare" \
  --student LADD="$OUT/ladd/student" --student ADD="$OUT/add/student" \
  --student ADD-adv-only="$OUT/add_adv_only/student" --student ADD-distill-only="$OUT/add_distill_only/student" \
  --student LCM-k1="$OUT/lcm/student" --student LCM-k5="$OUT/lcm_k5/student" \
  --student D2G-mse="$OUT/d2g_mse/student" --student D2G-lpips="$OUT/d2g_lpips/student" \
  --student D2G-lpips+gan="$OUT/d2g_gan/student"
# one_step.png: the real render, the teacher and every method's 1-step column of the evaluation's grids (33 labelled
# columns: real, 5 teacher rows, 9 students x 3 step counts).
python launch/toy_grid_columns.py "$OUT/compare" "$OUT/compare/one_step.png" --total 33 --columns 0 1 $(seq 6 3 30)
