#!/usr/bin/env bash
# The controls of the anchored mix (ladd_jax/toy/assets/alignment/README.md, "DMD's regression anchor"; the toy
# world's best-measured route, configs/dmd.py:toy-anchored: 8-9 of the 10 student targets at three seeds). What do
# LADD's heads add to it, now that DMD's regression anchor is there to hold off the crowded samples the heads held
# off in the long mix ("The mix's controls")?
#   1. `ladd-jax demo --recipe anchored-mix`: the route with the demo's synthesis, curves, evaluation and report,
#      and its frozen-heads control (the same run with the heads frozen at a random initialisation);
#   2. the same run with the heads removed (adv_weight 0: DMD and the anchor alone), on the demo's 512 synthetic
#      latents (the same data: the same prompts, seed and sampling), then `ladd-jax evaluate` on the demo's prompts
#      and noise at steps 2400 and 4800, and the probe curves of the three runs.
# On 2 CPU cores: 77 minutes for the demo alone (session 49, its seed 1: 4800 steps of the route and of its
# control, 36 and 38 minutes, 3 of synthesis and evaluation); in session 48 the demo and the no-heads run shared
# the cores (108 and 62 minutes).
#
#   bash launch/toy_anchored_controls.sh            # OUT=runs/anchored_controls
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/anchored_controls}
ladd-jax demo --recipe anchored-mix --out "$OUT/demo"
mkdir -p "$OUT/noheads"
ln -sfn "$(realpath "$OUT/demo/synth")" "$OUT/noheads/synth"  # the demo's synthetic latents, not made again
python launch/toy_ladd_sweep.py --out "$OUT/noheads" --steps 4800 --eval-every 400 \
  --run "noheads@dmd:toy-anchored=adv_weight=0.0,checkpoint_every=1200"
ladd-jax export --workdir "$OUT/noheads/noheads" --out "$OUT/noheads_at2400" --ema --step 2400 --overwrite
ladd-jax evaluate --out "$OUT/compare" --student "noheads2400=$OUT/noheads_at2400" \
  --student "noheads=$OUT/noheads/noheads/student"
python launch/toy_curves.py "$OUT/curves.png" "anchored mix=$OUT/demo/train" \
  "heads frozen at random=$OUT/demo/control_train" "no heads=$OUT/noheads/noheads"
