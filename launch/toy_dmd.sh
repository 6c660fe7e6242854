#!/usr/bin/env bash
# Distribution Matching Distillation in the toy world (configs/dmd.py; ladd_jax/toy/assets/alignment/README.md,
# "Distribution matching (DMD)"): DMD students on the demo's 512 synthetic latents, with the controls and variants
# measured there, then `ladd-jax evaluate` on the demo's prompts and noise. On 2 CPU cores: about 100 minutes of
# training (a 600-step DMD run with 5 fake-score updates a step: 13-18 minutes) and about 10 of evaluation.
#
#   bash launch/toy_dmd.sh            # OUT=runs/dmd
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/dmd}
sweep() { python launch/toy_ladd_sweep.py --out "$OUT" "$@"; }
sweep --steps 150 --eval-every 25 --run dmd@dmd:toy=
sweep --steps 600 --eval-every 100 --run dmd600@dmd:toy= \
  --run 'dmd_ladd600@dmd:toy=adv_weight=1.0' --run 'dmd_ladd_a01@dmd:toy=adv_weight=0.1' \
  --run 'dmd_ladd_a002@dmd:toy=adv_weight=0.02' \
  --run 'dmd_d1_600@dmd:toy=d_steps=1' --run 'dmd_cfg2_600@dmd:toy=distill_cfg=2.0'
sweep --steps 300 --eval-every 50 --run 'dmd_lr3e4@dmd:toy=g_lr=3e-4,dmd.fake_score_lr=3e-4' \
  --run 'dmd_frozen_fake300@dmd:toy=dmd.fake_score_lr=0.0'
# LADD's toy config (the demo's 150 steps) started from the 600-step DMD student.
sweep --steps 150 --eval-every 25 --run "ladd_from_dmd600=student.init=$OUT/dmd600/student"
students=()
for run in dmd dmd600 dmd_lr3e4 dmd_frozen_fake300 dmd_ladd600 dmd_ladd_a01 dmd_ladd_a002 dmd_d1_600 ladd_from_dmd600 dmd_cfg2_600; do
  students+=(--student "$run=$OUT/$run/student")
done
ladd-jax evaluate --out "$OUT/compare" "${students[@]}"
