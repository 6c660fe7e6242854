#!/usr/bin/env bash
# SANA-Sprint's random misaligned pairs beside the anchored mix (ladd_jax/toy/assets/alignment/README.md, "DMD's
# regression anchor"): do they lift its held-out 1-step alignment, the target the anchored demo misses at seeds 1
# and 2, as they lifted LADD's ("Misaligned pairs over a long run")?
#   1. 2400 steps on the seed-0 demo's latents: the pairs under the recipe's hinge loss (its heads stall), then under
#      the non-saturating loss, beside the non-saturating recipe without them (the loss-matched comparison);
#   2. the demo's 4800 steps on the seed-2 demo's latents, non-saturating: pairs to step 2400, then settled without
#      them (the rates' cosine over all 4800 steps either way), beside the run never paired;
#   3. that never-paired non-saturating run on the seed-1 demo's latents;
#   4. (session 52) the demo's control under that loss (heads frozen at random, as `ladd-jax demo` sets them) on the
#      seed-2 and seed-1 demos' latents, and the never-paired run on the seed-0 demo's latents for the full 4800 steps.
# Each evaluation is `ladd-jax evaluate` on its demo's prompts and noise (`--seed`), which reproduces the demo's own
# rows: compare with $OUT/demo*/metrics.json. Needs the demos of launch/toy_anchored_seeds.sh in $OUT (or runs them).
# On 2 CPU cores (sessions 51-52, each alone): 18-20 minutes for each 2400-step run, 30-35 for each 4800-step one,
# 2 for each evaluation.
#
#   bash launch/toy_anchored_pairs.sh            # OUT=runs/anchored_controls
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/anchored_controls}
[ -f "$OUT/demo/metrics.json" ] || ladd-jax demo --recipe anchored-mix --out "$OUT/demo"
for seed in 1 2; do
  demo=$OUT/demo_seed$seed
  [ -f "$demo/metrics.json" ] || ladd-jax demo --recipe anchored-mix --seed "$seed" --out "$demo"
done
train() {  # train SEED DATA WORKDIR OVERRIDES...
  local seed=$1 data=$2 workdir=$3
  shift 3
  ladd-jax train --config configs/dmd.py:toy-anchored --workdir "$workdir" --config.seed="$seed" \
    --config.teacher=ladd_jax/toy/assets/teacher --config.data="$data" "$@"
}
synth() {  # synth SEED: that seed's demo's synthetic latents
  if [ "$1" = 0 ]; then echo "$OUT/demo/synth"; else echo "$OUT/demo_seed$1/synth"; fi
}
evaluated() {  # evaluated SEED WORKDIR NAME: the run's EMA student exported and evaluated on that seed's demo prompts
  ladd-jax export --workdir "$2" --out "$2_student" --ema --overwrite
  ladd-jax evaluate --out "$2_eval" --seed "$1" --student "$3=$2_student"
}
ab=(--config.total_steps=2400 --config.checkpoint_every=2400)
train 0 "$OUT/demo/synth" "$OUT/pairs_hinge" "${ab[@]}" --config.misaligned_weight=1.0
train 0 "$OUT/demo/synth" "$OUT/pairs_ns" "${ab[@]}" --config.misaligned_weight=1.0 --config.loss=non_saturating
train 0 "$OUT/demo/synth" "$OUT/ns" "${ab[@]}" --config.loss=non_saturating
for run in pairs_hinge pairs_ns ns; do
  ladd-jax export --workdir "$OUT/$run" --out "$OUT/${run}_student" --ema --overwrite
done
ladd-jax evaluate --out "$OUT/pairs_eval" --seed 0 --student "pairs_hinge=$OUT/pairs_hinge_student" \
  --student "pairs_ns=$OUT/pairs_ns_student" --student "ns=$OUT/ns_student"

s2=(--config.loss=non_saturating --config.checkpoint_every=2400 --config.lr_decay_steps=4800)
train 2 "$OUT/demo_seed2/synth" "$OUT/pairs_ns_s2" "${s2[@]}" --config.total_steps=2400 --config.misaligned_weight=1.0
ladd-jax export --workdir "$OUT/pairs_ns_s2" --out "$OUT/pairs_ns_s2_2400_student" --ema --overwrite
# resumed from its step-2400 checkpoint, the pairs off
train 2 "$OUT/demo_seed2/synth" "$OUT/pairs_ns_s2" "${s2[@]}" --config.total_steps=4800
ladd-jax export --workdir "$OUT/pairs_ns_s2" --out "$OUT/pairs_ns_s2_student" --ema --overwrite
ladd-jax evaluate --out "$OUT/pairs_s2_eval" --seed 2 --student "pairs_2400=$OUT/pairs_ns_s2_2400_student" \
  --student "pairs_settled=$OUT/pairs_ns_s2_student"
for seed in 2 1 0; do  # never paired (seed 0: session 52)
  train "$seed" "$(synth "$seed")" "$OUT/ns_s$seed" "${s2[@]}" --config.total_steps=4800
  evaluated "$seed" "$OUT/ns_s$seed" ns
done
control=(--config.disc.train=False --config.disc.output_init=normal --config.sample_every=0)  # the demo's control
for seed in 2 1; do
  train "$seed" "$(synth "$seed")" "$OUT/ns_control_s$seed" "${s2[@]}" --config.total_steps=4800 "${control[@]}"
  evaluated "$seed" "$OUT/ns_control_s$seed" nsc
done
