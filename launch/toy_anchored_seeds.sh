#!/usr/bin/env bash
# The anchored demo at a second and a third seed, the second's run without heads, and the first two demos' students
# and controls measured on each seed's evaluation prompts (ladd_jax/toy/assets/alignment/README.md, "DMD's
# regression anchor"). `--seed` changes the synthesis prompts and noise, the runs and the evaluation's prompts and
# renders, so a demo's targets move with the prompt set as well as with the training; evaluating every student on
# both prompt sets tells the two apart. Needs the seed-0 demo of launch/toy_anchored_controls.sh in $OUT/demo (or
# runs it).
# On 2 CPU cores (session 49, each alone): 77 minutes for the seed-1 demo, 28 for the run without heads, 2-3 for
# each evaluation, and as long again as the seed-1 demo for the seed-0 one if it is missing; the seed-2 demo (session
# 50) took 109 minutes sharing the CPU.
#
#   bash launch/toy_anchored_seeds.sh            # OUT=runs/anchored_controls
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/anchored_controls}
[ -f "$OUT/demo/metrics.json" ] || ladd-jax demo --recipe anchored-mix --out "$OUT/demo"
ladd-jax demo --recipe anchored-mix --seed 1 --out "$OUT/demo_seed1"
ladd-jax demo --recipe anchored-mix --seed 2 --out "$OUT/demo_seed2"
# the seed-1 run without heads (DMD and the anchor alone), on the seed-1 demo's latents
ladd-jax train --config configs/dmd.py:toy-anchored --workdir "$OUT/noheads_seed1" \
  --config.teacher=ladd_jax/toy/assets/teacher --config.data="$OUT/demo_seed1/synth" \
  --config.seed=1 --config.adv_weight=0.0 --config.checkpoint_every=4800
ladd-jax export --workdir "$OUT/noheads_seed1" --out "$OUT/noheads_seed1_student" --ema --overwrite
ladd-jax evaluate --out "$OUT/noheads_seed1_eval" --seed 1 \
  --student "s1=$OUT/demo_seed1/student" --student "noheads=$OUT/noheads_seed1_student"
for seed in 0 1; do
  ladd-jax evaluate --out "$OUT/cross_eval_seed$seed" --seed "$seed" \
    --student "s0=$OUT/demo/student" --student "s1=$OUT/demo_seed1/student" \
    --student "c0=$OUT/demo/control" --student "c1=$OUT/demo_seed1/control"
done
