#!/usr/bin/env bash
# The controls of the long mix (ladd_jax/toy/assets/alignment/README.md, "The mix's controls"): what LADD's heads add
# to launch/toy_long_mix.sh's mix (DMD2's 5 fake-score updates a step, LADD's heads at weight 0.1; 9 of the demo's 10
# student targets after 3600 steps). The same run, data and seed with the heads removed (DMD alone, to step 3600), and
# with the heads frozen at a random initialisation (the demo's control: no head updates, random output layers; the
# fake score still learns), to step 2400; the two run side by side, each in its own folder. Then `ladd-jax evaluate`
# on the demo's prompts and noise, a figure against the demo's targets beside the mix's shipped rows, and the three
# runs' curves (the mix's from launch/toy_long_mix.sh's OUT: LONG).
# On 2 CPU cores: about 90 minutes with the two runs sharing them, 3 of evaluation.
#
#   bash launch/toy_mix_controls.sh            # OUT=runs/mix_controls, LONG=runs/long_mix
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/mix_controls}
ASSETS=ladd_jax/toy/assets/alignment
# The long mix's settings (launch/toy_long_mix.sh), checkpoints every 600 steps.
mix=adv_weight=0.1,checkpoint_every=600,keep_checkpoints=6
sweep() { python launch/toy_ladd_sweep.py --out "$@"; }
sweep "$OUT/dmd" --steps 3600 --eval-every 200 --run "dmd3600@dmd:toy=${mix/adv_weight=0.1/adv_weight=0.0}" &
dmd=$!
sweep "$OUT/frozen" --steps 2400 --eval-every 200 \
  --run "frozen_heads2400@dmd:toy=$mix,disc.train=False,disc.output_init=normal" &
frozen=$!
wait "$dmd"  # each wait returns its run's status, so a failed run stops the script (set -e)
wait "$frozen"
for step in 1200 2400; do
  ladd-jax export --workdir "$OUT/dmd/dmd3600" --out "$OUT/dmd_at$step" --ema --step "$step" --overwrite
done
ladd-jax export --workdir "$OUT/frozen/frozen_heads2400" --out "$OUT/frozen_at1200" --ema --step 1200 --overwrite
ladd-jax evaluate --out "$OUT/compare" --student "dmd1200=$OUT/dmd_at1200" --student "dmd2400=$OUT/dmd_at2400" \
  --student "dmd3600=$OUT/dmd/dmd3600/student" --student "frozen1200=$OUT/frozen_at1200" \
  --student "frozen2400=$OUT/frozen/frozen_heads2400/student"
# Real render, the teacher's 20 steps, DMD alone at steps 2400 and 3600 and the frozen heads' run at 2400 (1 step).
python launch/toy_grid_columns.py "$OUT/compare" "$OUT/grid.png" --total 21 --columns 0 1 9 12 18
python launch/toy_long_mix_figure.py --out "$OUT/figure.png" \
  --series "mix (the long mix)=$ASSETS/long_mix_evaluate_metrics.json:mix600@600,mix1200@1200,mix1800@1800,mix2400@2400" \
  --series "mix, resumed=$ASSETS/long_mix_4800_evaluate_metrics.json:mix3000@3000,mix3600@3600" \
  --series "DMD alone=$OUT/compare/metrics.json:dmd1200@1200,dmd2400@2400,dmd3600@3600" \
  --series "mix, heads frozen at random=$OUT/compare/metrics.json:frozen1200@1200,frozen2400@2400" \
  --ladd "$ASSETS/b1_and_dmd_evaluate_metrics.json:toy"
# The curves of the mix and its two controls in one picture, their folders linked under OUT/curves.
LONG=${LONG:-runs/long_mix}
mkdir -p "$OUT/curves"
ln -sfn "$(realpath "$LONG/mix4800")" "$OUT/curves/mix"
ln -sfn "$(realpath "$OUT/dmd/dmd3600")" "$OUT/curves/dmd_alone"
ln -sfn "$(realpath "$OUT/frozen/frozen_heads2400")" "$OUT/curves/heads_frozen_at_random"
(cd launch && python -c "import sys; from pathlib import Path; from toy_ladd_sweep import draw_curves
o = Path(sys.argv[1]); draw_curves(o, ['mix', 'dmd_alone', 'heads_frozen_at_random'], o / 'curves.png', 'test')" \
  "$(realpath "$OUT/curves")")
