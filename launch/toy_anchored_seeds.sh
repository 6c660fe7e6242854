#!/usr/bin/env bash
# The anchored demo at a second seed, and both demos' students and controls measured on each seed's evaluation
# prompts (ladd_jax/toy/assets/alignment/README.md, "DMD's regression anchor"). `--seed` changes the synthesis
# prompts and noise, the runs and the evaluation's prompts and renders, so a demo's targets move with the prompt set
# as well as with the training; evaluating every student on both prompt sets tells the two apart.
# Needs the seed-0 demo of launch/toy_anchored_controls.sh in $OUT/demo (or runs it).
# On 2 CPU cores: 77 minutes for the seed-1 demo alone (session 49), 3 for each evaluation, and as
# long again for the seed-0 demo if it is missing.
#
#   bash launch/toy_anchored_seeds.sh            # OUT=runs/anchored_controls
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/anchored_controls}
[ -f "$OUT/demo/metrics.json" ] || ladd-jax demo --recipe anchored-mix --out "$OUT/demo"
ladd-jax demo --recipe anchored-mix --seed 1 --out "$OUT/demo_seed1"
for seed in 0 1; do
  ladd-jax evaluate --out "$OUT/cross_eval_seed$seed" --seed "$seed" \
    --student "s0=$OUT/demo/student" --student "s1=$OUT/demo_seed1/student" \
    --student "c0=$OUT/demo/control" --student "c1=$OUT/demo_seed1/control"
done
