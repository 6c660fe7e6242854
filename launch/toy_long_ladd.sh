#!/usr/bin/env bash
# LADD alone for as long as the mix (ladd_jax/toy/assets/alignment/README.md, "LADD alone for as long as the mix"):
# the demo's run (configs/ladd.py:toy, the demo's 512 synthetic latents) for 2400 steps instead of 150, at seeds 0 and
# 1 side by side, each in its own folder; their EMA students at steps 150 (the demo's length), 600, 1200 and 2400
# exported; `ladd-jax evaluate` on the demo's prompts and noise, a column grid, a figure against the demo's targets
# beside the long mix's and DMD alone's shipped rows (launch/toy_long_mix.sh, launch/toy_mix_controls.sh), and the
# curves. Then both runs resumed to step 4800 (the trainer's exact resume), their students at 3600 and 4800 measured.
# Asks whether LADD's 1-step alignment gap to the stage-8 teacher closes with the mix's compute.
# On 2 CPU cores: about 60 minutes with the two runs sharing them, 9 of evaluation.
#
#   bash launch/toy_long_ladd.sh            # OUT=runs/long_ladd
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/long_ladd}
ASSETS=ladd_jax/toy/assets/alignment
# The toy config as the demo runs it, checkpoints every 150 steps (its 50 would save 48 over the run).
ladd=checkpoint_every=150,keep_checkpoints=16
sweep() { python launch/toy_ladd_sweep.py --out "$@"; }
sweep "$OUT/s0" --steps 2400 --eval-every 150 --run "ladd2400=$ladd" &
s0=$!
sweep "$OUT/s1" --steps 2400 --eval-every 150 --run "ladd2400_s1=$ladd,seed=1" &
s1=$!
wait "$s0"  # each wait returns its run's status, so a failed run stops the script (set -e)
wait "$s1"
students=()
for run in s0/ladd2400: s1/ladd2400_s1:_s1; do  # FOLDER:SUFFIX
  workdir="$OUT/${run%%:*}" s="${run#*:}"
  for step in 150 600 1200; do
    ladd-jax export --workdir "$workdir" --out "$OUT/ladd_at$step$s" --ema --step "$step" --overwrite
    students+=(--student "ladd$step$s=$OUT/ladd_at$step$s")
  done
  students+=(--student "ladd2400$s=$workdir/student")
done
ladd-jax evaluate --out "$OUT/compare" "${students[@]}"
# Real render, the teacher's 20 steps, seed 0's student at steps 150 and 2400 (1 step), and at 2400 (4 steps).
python launch/toy_grid_columns.py "$OUT/compare" "$OUT/grid.png" --total 30 --columns 0 1 6 15 17
python launch/toy_long_mix_figure.py --out "$OUT/figure.png" \
  --series "LADD alone=$OUT/compare/metrics.json:ladd150@150,ladd600@600,ladd1200@1200,ladd2400@2400" \
  --series "LADD alone, seed 1=$OUT/compare/metrics.json:ladd150_s1@150,ladd600_s1@600,ladd1200_s1@1200,ladd2400_s1@2400" \
  --series "the mix (DMD + heads)=$ASSETS/long_mix_evaluate_metrics.json:mix600@600,mix1200@1200,mix1800@1800,mix2400@2400" \
  --series "DMD alone=$ASSETS/mix_controls_evaluate_metrics.json:dmd1200@1200,dmd2400@2400" \
  --ladd "$ASSETS/b1_and_dmd_evaluate_metrics.json:toy"
# Both seeds' curves in one picture, their folders linked under OUT/curves.
mkdir -p "$OUT/curves"
ln -sfn "$(realpath "$OUT/s0/ladd2400")" "$OUT/curves/seed_0"
ln -sfn "$(realpath "$OUT/s1/ladd2400_s1")" "$OUT/curves/seed_1"
(cd launch && python -c "import sys; from pathlib import Path; from toy_ladd_sweep import draw_curves
o = Path(sys.argv[1]); draw_curves(o, ['seed_0', 'seed_1'], o / 'curves.png', 'test')" "$(realpath "$OUT/curves")")
# Both runs on to step 4800: a copy of each workdir (checkpoints and metrics), which the trainer resumes.
for run in s0/ladd2400:ladd4800 s1/ladd2400_s1:ladd4800_s1; do  # FROM:TO (TO beside FROM)
  from="$OUT/${run%%:*}" to="$OUT/$(dirname "${run%%:*}")/${run#*:}"
  if [ ! -d "$to" ]; then
    mkdir "$to" && cp -r "$from/checkpoints" "$from/metrics.jsonl" "$to/"
  fi
done
sweep "$OUT/s0" --steps 4800 --eval-every 150 --run "ladd4800=$ladd" &
s0=$!
sweep "$OUT/s1" --steps 4800 --eval-every 150 --run "ladd4800_s1=$ladd,seed=1" &
s1=$!
wait "$s0"
wait "$s1"
# Every student of both runs in one evaluation (the 150- to 2400-step rows again, equal to compare's), for one series
# a seed.
students=()
for run in s0/ladd4800: s1/ladd4800_s1:_s1; do  # FOLDER:SUFFIX
  workdir="$OUT/${run%%:*}" s="${run#*:}"
  ladd-jax export --workdir "$workdir" --out "$OUT/ladd_at3600$s" --ema --step 3600 --overwrite
  for step in 150 600 1200; do students+=(--student "ladd$step$s=$OUT/ladd_at$step$s"); done
  students+=(--student "ladd2400$s=$OUT/$(dirname "${run%%:*}")/ladd2400$s/student")
  students+=(--student "ladd3600$s=$OUT/ladd_at3600$s" --student "ladd4800$s=$workdir/student")
done
ladd-jax evaluate --out "$OUT/compare4800" "${students[@]}"
# Real render, the teacher's 20 steps, seed 0's student at steps 150, 2400 and 4800 (1 step), and at 4800 (4 steps).
python launch/toy_grid_columns.py "$OUT/compare4800" "$OUT/grid4800.png" --total 42 --columns 0 1 6 15 21 23
s0_points=ladd150@150,ladd600@600,ladd1200@1200,ladd2400@2400,ladd3600@3600,ladd4800@4800
python launch/toy_long_mix_figure.py --out "$OUT/figure4800.png" \
  --series "LADD alone=$OUT/compare4800/metrics.json:$s0_points" \
  --series "LADD alone, seed 1=$OUT/compare4800/metrics.json:${s0_points//@/_s1@}" \
  --series "the mix (DMD + heads)=$ASSETS/long_mix_evaluate_metrics.json:mix600@600,mix1200@1200,mix1800@1800,mix2400@2400" \
  --series "the mix, resumed=$ASSETS/long_mix_4800_evaluate_metrics.json:mix3000@3000,mix3600@3600,mix4200@4200,mix4800@4800" \
  --ladd "$ASSETS/b1_and_dmd_evaluate_metrics.json:toy"
ln -sfn "$(realpath "$OUT/s0/ladd4800")" "$OUT/curves/seed_0_to_4800"
ln -sfn "$(realpath "$OUT/s1/ladd4800_s1")" "$OUT/curves/seed_1_to_4800"
(cd launch && python -c "import sys; from pathlib import Path; from toy_ladd_sweep import draw_curves
o = Path(sys.argv[1]); draw_curves(o, ['seed_0_to_4800', 'seed_1_to_4800'], o / 'curves4800.png', 'test')" \
  "$(realpath "$OUT/curves")")
