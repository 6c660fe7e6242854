#!/usr/bin/env bash
# LADD alone for as long as the mix (ladd_jax/toy/assets/alignment/README.md, "LADD alone for as long as the mix"):
# the demo's run (configs/ladd.py:toy, the demo's 512 synthetic latents) for 2400 steps instead of 150, at seeds 0 and
# 1 side by side, each in its own folder; both resumed to step 4800 (the trainer's exact resume), and seed 0 to 9600
# (the long mix's 3600 steps' CPU minutes). Their EMA students at steps 150 (the demo's length), 600, 1200, 2400, 3600,
# 4800, 7200 and 9600 measured with `ladd-jax evaluate` on the demo's prompts and noise; a column grid, a figure
# against the demo's targets beside the long mix's shipped rows (launch/toy_long_mix.sh), and the curves. Asks whether
# LADD's 1-step alignment gap to the stage-8 teacher closes with the mix's compute.
# On 2 CPU cores: about 60 minutes for the two seeds side by side to 4800, 30 for seed 0 alone to 9600, 6 of
# evaluation.
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
for run in s0/ladd2400: s1/ladd2400_s1:_s1; do  # FOLDER:SUFFIX
  for step in 150 600 1200; do
    ladd-jax export --workdir "$OUT/${run%%:*}" --out "$OUT/ladd_at$step${run#*:}" --ema --step "$step" --overwrite
  done
done
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
# Every student of both runs in one evaluation, for one series a seed.
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
mkdir -p "$OUT/curves"
ln -sfn "$(realpath "$OUT/s1/ladd4800_s1")" "$OUT/curves/seed_1_to_4800"
# Seed 0 on to step 9600 (the long mix's 3600 steps took as many CPU minutes), checkpoints every 600 steps.
if [ ! -d "$OUT/s0/ladd9600" ]; then
  mkdir "$OUT/s0/ladd9600" && cp -r "$OUT/s0/ladd4800/checkpoints" "$OUT/s0/ladd4800/metrics.jsonl" "$OUT/s0/ladd9600/"
fi
sweep "$OUT/s0" --steps 9600 --eval-every 300 --run "ladd9600=checkpoint_every=600,keep_checkpoints=16"
ladd-jax export --workdir "$OUT/s0/ladd9600" --out "$OUT/ladd_at7200" --ema --step 7200 --overwrite
ladd-jax evaluate --out "$OUT/compare9600" --student "ladd7200=$OUT/ladd_at7200" \
  --student "ladd9600=$OUT/s0/ladd9600/student"
s0_points=ladd150@150,ladd600@600,ladd1200@1200,ladd2400@2400,ladd3600@3600,ladd4800@4800
python launch/toy_long_mix_figure.py --out "$OUT/figure9600.png" \
  --series "LADD alone=$OUT/compare4800/metrics.json:$s0_points" \
  --series "LADD alone, seed 1=$OUT/compare4800/metrics.json:${s0_points//@/_s1@}" \
  --series "the mix (DMD + heads)=$ASSETS/long_mix_evaluate_metrics.json:mix600@600,mix1200@1200,mix1800@1800,mix2400@2400" \
  --series "the mix, resumed=$ASSETS/long_mix_4800_evaluate_metrics.json:mix3000@3000,mix3600@3600,mix4200@4200,mix4800@4800" \
  --series "LADD alone, resumed to 9600=$OUT/compare9600/metrics.json:ladd7200@7200,ladd9600@9600" \
  --ladd "$ASSETS/b1_and_dmd_evaluate_metrics.json:toy"
ln -sfn "$(realpath "$OUT/s0/ladd9600")" "$OUT/curves/seed_0_to_9600"
(cd launch && python -c "import sys; from pathlib import Path; from toy_ladd_sweep import draw_curves
o = Path(sys.argv[1]); draw_curves(o, ['seed_0_to_9600', 'seed_1_to_4800'], o / 'curves9600.png', 'test')" \
  "$(realpath "$OUT/curves")")
