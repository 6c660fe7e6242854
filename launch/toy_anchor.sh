#!/usr/bin/env bash
# DMD's regression anchor (config.anchor_weight, anchor_distance; ladd_jax/toy/assets/alignment/README.md, "DMD's
# regression anchor"): the student's 1-step image of each synthetic latent's stored noise regressed on that latent,
# beside the cheaper DMD + LADD-heads mix of launch/toy_fast_mix.sh (its fast_e recipe: batch 8, 2 fake-score updates,
# 3x the rate, fake score at 1e-3, EMA 0.99, both rates cosine-decayed over the run) and beside LADD at the demo's
# 150 steps. Asks whether the anchor, DMD's cure for its samples crowding together, buys the mix its FD bounds in the
# minutes where the mix already has its alignment. On the demo's 512 synthetic latents; `ladd-jax evaluate` on the
# demo's prompts and noise, a column grid and the probe curves.
# On 2 CPU cores: about 255 minutes of training, 25 of evaluation.
#
#   bash launch/toy_anchor.sh            # OUT=runs/anchor
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/anchor}
sweep() { python launch/toy_ladd_sweep.py --out "$OUT" "$@"; }
fast=adv_weight=0.1,batch_size=8,d_steps=2,g_lr=3e-4,dmd.fake_score_lr=1e-3,ema_decay=0.99,lr_decay=cosine
fast=$fast,checkpoint_every=300,keep_checkpoints=8
lat=features=ladd_jax/toy/assets/latent_features  # the perceptual distance's network
# 1200 steps (the cosine over 1200): the mix, with the squared-error anchor at 1 and 0.25, with the perceptual one.
sweep --steps 1200 --eval-every 100 --run "fa1@dmd:toy=$fast,anchor_weight=1.0" --run "fe@dmd:toy=$fast" \
  --run "fa25@dmd:toy=$fast,anchor_weight=0.25"
sweep --steps 1200 --eval-every 100 --run "fp1@dmd:toy=$fast,anchor_weight=1.0,anchor_distance=perceptual,$lat" \
  --run "fp025@dmd:toy=$fast,anchor_weight=0.25,anchor_distance=perceptual,$lat"
# LADD's toy config at the demo's 150 steps with the anchor.
sweep --steps 150 --eval-every 10 --run "ladd_a1=anchor_weight=1.0" --run "ladd_a4=anchor_weight=4.0"
# The squared-error anchor at 0.25, 0.1 and 0.05 over 2400 steps (the cosine over 2400), as the cheaper mix's 14-minute
# runs.
sweep --steps 2400 --eval-every 200 --run "fa25_2400@dmd:toy=$fast,anchor_weight=0.25,checkpoint_every=600"
sweep --steps 2400 --eval-every 200 --run "fa10_2400@dmd:toy=$fast,anchor_weight=0.1,checkpoint_every=600"
sweep --steps 2400 --eval-every 200 --run "fa05_2400@dmd:toy=$fast,anchor_weight=0.05,checkpoint_every=600"
# The weight-0.1 run resumed from its step 1200 without the anchor (the same recipe and cosine otherwise): the
# anchor for the first half only.
mkdir -p "$OUT/fa10_off1200/checkpoints"
cp -r "$OUT/fa10_2400/checkpoints/1200" "$OUT/fa10_off1200/checkpoints/"
python - "$OUT/fa10_2400/metrics.jsonl" > "$OUT/fa10_off1200/metrics.jsonl" <<'PY'
import json, sys
sys.stdout.writelines(line for line in open(sys.argv[1]) if json.loads(line)["step"] <= 1200)
PY
sweep --steps 2400 --eval-every 200 --run "fa10_off1200@dmd:toy=$fast,anchor_weight=0.0,checkpoint_every=600"
# The anchor's weight decayed by a half cosine to 0 over the run (anchor_decay), from 0.25 and from 0.1; the constant
# 0.1 over 4800 steps (the rates' cosine over 4800) at seeds 0, 1 and 2, exported at steps 1200, 2400 and 3600 too.
sweep --steps 2400 --eval-every 200 \
  --run "fa25cos_2400@dmd:toy=$fast,anchor_weight=0.25,anchor_decay=cosine,checkpoint_every=600"
sweep --steps 2400 --eval-every 200 \
  --run "fa10cos_2400@dmd:toy=$fast,anchor_weight=0.1,anchor_decay=cosine,checkpoint_every=600"
sweep --steps 4800 --eval-every 400 --run "fa10_4800@dmd:toy=$fast,anchor_weight=0.1,checkpoint_every=1200" \
  --run "fa10_4800_s1@dmd:toy=$fast,anchor_weight=0.1,checkpoint_every=1200,seed=1" \
  --run "fa10_4800_s2@dmd:toy=$fast,anchor_weight=0.1,checkpoint_every=1200,seed=2"
for step in 1200 2400 3600; do
  ladd-jax export --workdir "$OUT/fa10_4800" --out "$OUT/fa10_4800_at$step" --ema --step "$step" --overwrite
done
for s in 1 2; do
  ladd-jax export --workdir "$OUT/fa10_4800_s$s" --out "$OUT/fa10_4800_s${s}_at3600" --ema --step 3600 --overwrite
done
ladd-jax evaluate --out "$OUT/compare" --student "fe=$OUT/fe/student" --student "fa25=$OUT/fa25/student" \
  --student "fa1=$OUT/fa1/student"
ladd-jax evaluate --out "$OUT/compare2" --student "fa25_2400=$OUT/fa25_2400/student" \
  --student "ladd_a1=$OUT/ladd_a1/student" --student "ladd_a4=$OUT/ladd_a4/student"
ladd-jax evaluate --out "$OUT/compare3" --student "fp1=$OUT/fp1/student" --student "fp025=$OUT/fp025/student" \
  --student "fa10_2400=$OUT/fa10_2400/student"
ladd-jax evaluate --out "$OUT/compare4" --student "fa05_2400=$OUT/fa05_2400/student"
ladd-jax evaluate --out "$OUT/compare5" --student "fa10_off1200=$OUT/fa10_off1200/student"
ladd-jax evaluate --out "$OUT/compare6" --student "fa25cos_2400=$OUT/fa25cos_2400/student" \
  --student "fa10cos_2400=$OUT/fa10cos_2400/student"
ladd-jax evaluate --out "$OUT/compare7" --student "fa10_4800at1200=$OUT/fa10_4800_at1200" \
  --student "fa10_4800at2400=$OUT/fa10_4800_at2400" --student "fa10_4800at3600=$OUT/fa10_4800_at3600" \
  --student "fa10_4800=$OUT/fa10_4800/student"
for s in 1 2; do
  ladd-jax evaluate --out "$OUT/compare_s$s" --student "fa10_4800_s${s}at3600=$OUT/fa10_4800_s${s}_at3600" \
    --student "fa10_4800_s$s=$OUT/fa10_4800_s$s/student"
done
# Real render, the teacher's 20 steps, each 1200-step student at 1 step, then at 4 steps.
python launch/toy_grid_columns.py "$OUT/compare" "$OUT/grid.png" --total 15 --columns 0 1 6 9 12 8 11 14
A=ladd_jax/toy/assets/alignment  # the cheaper and the long mix's evaluations, from earlier sessions
python launch/toy_long_mix_figure.py --out "$OUT/targets.png" --xlabel "CPU minutes of training (2 cores)" \
  --series "long mix, steps 600-2400=$A/long_mix_evaluate_metrics.json:mix600@10.7,mix1200@21.3,mix1800@32.0,mix2400@42.6" \
  --series "long mix, 3000-4800=$A/long_mix_4800_evaluate_metrics.json:mix3000@53.3,mix3600@63.9,mix4200@74.6,mix4800@85.2" \
  --series "fast_e, 1200-2400=$A/fast_mix_e_evaluate_metrics.json:fast_e1200@7.1,fast_e1800@10.7,fast_e2400@14.3" \
  --star "fast_e + anchor 0.25=$OUT/compare2/metrics.json:fa25_2400@16.4" \
  --star "fast_e + anchor 0.1=$OUT/compare3/metrics.json:fa10_2400@16.7" \
  --star "fast_e + anchor 0.05=$OUT/compare4/metrics.json:fa05_2400@16.5" \
  --ladd $A/b1_and_dmd_evaluate_metrics.json:toy
python launch/toy_curves.py "$OUT/curves.png" "mix=$OUT/fe" "mse anchor 0.25=$OUT/fa25" "mse anchor 1=$OUT/fa1" \
  "perceptual anchor 0.25=$OUT/fp025" "perceptual anchor 1=$OUT/fp1"
# The anchor 0.1 over 4800 steps (CPU minutes: steps x 0.418 s, the anchored step alone) against the long mix.
python launch/toy_long_mix_figure.py --out "$OUT/long_targets.png" --xlabel "CPU minutes of training (2 cores)" \
  --series "long mix, steps 600-2400=$A/long_mix_evaluate_metrics.json:mix600@10.7,mix1200@21.3,mix1800@32.0,mix2400@42.6" \
  --series "long mix, 3000-4800=$A/long_mix_4800_evaluate_metrics.json:mix3000@53.3,mix3600@63.9,mix4200@74.6,mix4800@85.2" \
  --series "fast_e, 1200-2400=$A/fast_mix_e_evaluate_metrics.json:fast_e1200@7.1,fast_e1800@10.7,fast_e2400@14.3" \
  --series "fast_e + anchor 0.1, 1200-4800=$OUT/compare7/metrics.json:fa10_4800at1200@8.4,fa10_4800at2400@16.7,fa10_4800at3600@25.1,fa10_4800@33.4" \
  --star "anchor 0.1, seed 1, 3600 and 4800=$OUT/compare_s1/metrics.json:fa10_4800_s1at3600@25.1,fa10_4800_s1@33.4" \
  --star "anchor 0.1, seed 2, 3600 and 4800=$OUT/compare_s2/metrics.json:fa10_4800_s2at3600@25.1,fa10_4800_s2@33.4" \
  --star "anchor 0.25 and 0.1, decayed=$OUT/compare6/metrics.json:fa25cos_2400@16.7,fa10cos_2400@16.7" \
  --ladd $A/b1_and_dmd_evaluate_metrics.json:toy
python launch/toy_curves.py "$OUT/long_curves.png" "anchor 0.1, 2400 steps=$OUT/fa10_2400" \
  "anchor 0.1, 4800 steps=$OUT/fa10_4800" "anchor 0.1, 4800 steps, seed 1=$OUT/fa10_4800_s1" \
  "anchor 0.1, 4800 steps, seed 2=$OUT/fa10_4800_s2" "anchor 0.25, decayed, 2400=$OUT/fa25cos_2400" \
  "anchor 0.1, decayed, 2400=$OUT/fa10cos_2400"
# Real render, the teacher's 20 steps, the 4800-step student at one step at steps 1200-4800, then at four steps.
python launch/toy_grid_columns.py "$OUT/compare7" "$OUT/long_grid.png" --total 18 --columns 0 1 6 9 12 15 17
