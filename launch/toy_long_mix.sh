#!/usr/bin/env bash
# How far the DMD + LADD-heads mix goes with more steps (ladd_jax/toy/assets/alignment/README.md, "The mix at four and
# eight times the steps"): the mix of "Distribution matching (DMD)" (`dmd_ladd_a01`: DMD2's 5 fake-score updates a
# step, LADD's heads at weight 0.1) for 2400 steps instead of 600, on the demo's 512 synthetic latents, its students
# at steps 600, 1200, 1800 and 2400 exported; the toy config's 150 LADD steps from the last; the mix resumed from its
# step-2400 checkpoint to 4800 (the trainer's exact resume); the mix again at seed 1, also to 4800; `ladd-jax
# evaluate` on the demo's prompts and noise after each, and a figure against the demo's targets. Asks whether the
# student targets are a matter of compute in this world.
# On 2 CPU cores: about 175 minutes of training, 15 of evaluation.
#
#   bash launch/toy_long_mix.sh            # OUT=runs/long_mix
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/long_mix}
sweep() { python launch/toy_ladd_sweep.py --out "$OUT" "$@"; }
# Checkpoints every 600 steps (the toy config's 50 would save the fake score's three teacher-sized trees 48 times).
mix=adv_weight=0.1,checkpoint_every=600,keep_checkpoints=4
sweep --steps 2400 --eval-every 200 --run "mix2400@dmd:toy=$mix"
for step in 600 1200 1800; do
  ladd-jax export --workdir "$OUT/mix2400" --out "$OUT/mix2400_at$step" --ema --step "$step" --overwrite
done
sweep --steps 150 --eval-every 25 --run "ladd_from_mix2400=student.init=$OUT/mix2400/student"
ladd-jax evaluate --out "$OUT/compare" --student "mix600=$OUT/mix2400_at600" --student "mix1200=$OUT/mix2400_at1200" \
  --student "mix1800=$OUT/mix2400_at1800" --student "mix2400=$OUT/mix2400/student" \
  --student "ladd_from_mix2400=$OUT/ladd_from_mix2400/student"
# A 2400-step run (suffix $1: "" or "_s1", overrides $2) on to step 4800: a copy of its workdir (checkpoints and
# metrics), which the trainer resumes; its EMA students of steps 3000, 3600, 4200 and 4800 measured.
resume_to_4800() {
  local s=$1 from="$OUT/mix2400$1" to="$OUT/mix4800$1"
  if [ ! -d "$to" ]; then
    mkdir "$to" && cp -r "$from/checkpoints" "$from/metrics.jsonl" "$to/"
  fi
  sweep --steps 4800 --eval-every 200 --run "mix4800$s@dmd:toy=$2"
  for step in 3000 3600 4200; do
    ladd-jax export --workdir "$to" --out "${to}_at$step" --ema --step "$step" --overwrite
  done
  ladd-jax evaluate --out "$OUT/compare4800$s" --student "mix3000$s=${to}_at3000" \
    --student "mix3600$s=${to}_at3600" --student "mix4200$s=${to}_at4200" --student "mix4800$s=$to/student"
}
resume_to_4800 "" "$mix"
# Real render, the teacher's 20 steps and 1 step, the students of steps 3600 (1, 4 steps) and 4800 (1, 2, 4 steps).
python launch/toy_grid_columns.py "$OUT/compare4800" "$OUT/grid.png" --total 18 --columns 0 1 5 9 11 15 16 17
# The 2400-step mix again at seed 1 (the heads', fake score's and student's draws, the data's order).
sweep --steps 2400 --eval-every 200 --run "mix2400_s1@dmd:toy=$mix,seed=1" --curves "long=mix4800,mix2400_s1"
ladd-jax evaluate --out "$OUT/compare_s1" --student "mix2400_s1=$OUT/mix2400_s1/student"
# Seed 1 on to step 4800 as seed 0: are the 3600- and 4800-step rows one seed's luck?
resume_to_4800 _s1 "$mix,seed=1"
python launch/toy_long_mix_figure.py --out "$OUT/figure.png" \
  --series "mix, steps 600-2400=$OUT/compare/metrics.json:mix600@600,mix1200@1200,mix1800@1800,mix2400@2400" \
  --series "mix, resumed to 4800=$OUT/compare4800/metrics.json:mix3000@3000,mix3600@3600,mix4200@4200,mix4800@4800" \
  --series "seed 1, resumed to 4800=$OUT/compare4800_s1/metrics.json:mix3000_s1@3000,mix3600_s1@3600,mix4200_s1@4200,mix4800_s1@4800" \
  --star "mix, then 150 LADD steps=$OUT/compare/metrics.json:ladd_from_mix2400@2550" \
  --star "mix at seed 1=$OUT/compare_s1/metrics.json:mix2400_s1@2400" \
  --ladd ladd_jax/toy/assets/alignment/b1_and_dmd_evaluate_metrics.json:toy
