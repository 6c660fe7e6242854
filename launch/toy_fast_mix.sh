#!/usr/bin/env bash
# The DMD + LADD-heads mix made cheaper a step (ladd_jax/toy/assets/alignment/README.md, "A cheaper mix"): the mix of
# launch/toy_long_mix.sh (LADD's heads at weight 0.1 beside DMD) at batch 8 instead of 16, 2 fake-score updates a step
# instead of 5 and three times the student's rate (3e-4), on the demo's 512 synthetic latents; the same run resumed
# to 2400 steps, with the heads at weight 0.3, with a longer EMA (0.99 from step 1200 on), with the fake score at
# 1e-3 and the longer EMA from the start, and with a cosine decay of the rates on top; `ladd-jax evaluate` on the
# demo's prompts and noise, a column grid and a figure against the demo's targets. Asks how many of the CPU minutes
# the long mix spends its student targets need.
# On 2 CPU cores: about 80 minutes of training, 10 of evaluation.
#
#   bash launch/toy_fast_mix.sh            # OUT=runs/fast_mix
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/fast_mix}
sweep() { python launch/toy_ladd_sweep.py --out "$OUT" "$@"; }
fast=adv_weight=0.1,batch_size=8,d_steps=2,g_lr=3e-4,dmd.fake_score_lr=3e-4,checkpoint_every=300,keep_checkpoints=8
sweep --steps 1200 --eval-every 100 --run "fast_a@dmd:toy=$fast" --run "fast_b@dmd:toy=${fast/adv_weight=0.1/adv_weight=0.3}"
# fast_a on to step 2400 (a copy of its workdir, resumed), and again from its step 1200 with the EMA at 0.99.
for run in fast_a2400 fast_a_ema99; do
  if [ ! -d "$OUT/$run" ]; then
    mkdir "$OUT/$run" && cp -r "$OUT/fast_a/checkpoints" "$OUT/fast_a/metrics.jsonl" "$OUT/$run/"
  fi
done
sweep --steps 2400 --eval-every 100 --run "fast_a2400@dmd:toy=$fast" --run "fast_a_ema99@dmd:toy=$fast,ema_decay=0.99"
ladd-jax export --workdir "$OUT/fast_a2400" --out "$OUT/fast_a_at1800" --ema --step 1800 --overwrite
ladd-jax evaluate --out "$OUT/compare" --student "fast_a1200=$OUT/fast_a/student" \
  --student "fast_a1800=$OUT/fast_a_at1800" --student "fast_a2400=$OUT/fast_a2400/student" \
  --student "fast_b1200=$OUT/fast_b/student" --student "fast_a_ema99_2400=$OUT/fast_a_ema99/student"
# The fake score at 1e-3 (it tracks the student with 2 updates a step) and the EMA at 0.99, from the start; then with
# the rates' cosine decay (to a tenth at step 2400).
fast_d=${fast/dmd.fake_score_lr=3e-4/dmd.fake_score_lr=1e-3},ema_decay=0.99,checkpoint_every=600
sweep --steps 2400 --eval-every 100 --run "fast_d@dmd:toy=$fast_d" --run "fast_e@dmd:toy=$fast_d,lr_decay=cosine"
for run in fast_d fast_e; do
  for step in 1200 1800; do
    ladd-jax export --workdir "$OUT/$run" --out "$OUT/${run}_at$step" --ema --step "$step" --overwrite
  done
  ladd-jax evaluate --out "$OUT/compare_$run" --student "${run}1200=$OUT/${run}_at1200" \
    --student "${run}1800=$OUT/${run}_at1800" --student "${run}2400=$OUT/$run/student"
done
# Against CPU minutes: steps times a step's median time measured alone (0.357 s here, 1.065 s the long mix's; curve
# probes left out), beside launch/toy_long_mix.sh's seed-0 run (its OUT: LONG).
LONG=${LONG:-runs/long_mix}
python launch/toy_long_mix_figure.py --out "$OUT/figure.png" --xlabel "CPU minutes of training (2 cores)" \
  --series "long mix, steps 600-2400=$LONG/compare/metrics.json:mix600@10.7,mix1200@21.3,mix1800@32.0,mix2400@42.6" \
  --series "long mix, 3000-4800=$LONG/compare4800/metrics.json:mix3000@53.3,mix3600@63.9,mix4200@74.6,mix4800@85.2" \
  --series "fast_a, 1200-2400=$OUT/compare/metrics.json:fast_a1200@7.1,fast_a1800@10.7,fast_a2400@14.3" \
  --series "fast_d=$OUT/compare_fast_d/metrics.json:fast_d1200@7.1,fast_d1800@10.7,fast_d2400@14.3" \
  --series "fast_e=$OUT/compare_fast_e/metrics.json:fast_e1200@7.1,fast_e1800@10.7,fast_e2400@14.3" \
  --star "fast_a_ema99, 2400=$OUT/compare/metrics.json:fast_a_ema99_2400@14.3" \
  --ladd ladd_jax/toy/assets/alignment/b1_and_dmd_evaluate_metrics.json:toy
# Real render, the teacher's 20 steps, fast_e's students of step 1200 (1 step) and 2400 (1, 2 and 4 steps).
python launch/toy_grid_columns.py "$OUT/compare_fast_e" "$OUT/grid.png" --total 15 --columns 0 1 6 12 13 14
