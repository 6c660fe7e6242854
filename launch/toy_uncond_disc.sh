#!/usr/bin/env bash
# An unconditional discriminator (ladd_jax/toy/assets/alignment/README.md, "An unconditional discriminator"): where
# does the LADD student's prompt alignment come from? The demo's 150 LADD steps with the heads, and the teacher's
# features they read, under each sample's caption (the toy config) and under the empty prompt (disc.text=empty: the
# heads can judge realism, not whether a sample shows its caption), at seeds 0, 1 and 2; then `ladd-jax evaluate` of
# the six students on the demo's prompts and noise. Then both again with every student update at t = 1 (no input
# that carries a latent of the caption), seeds 0 and 1: what the student keeps from its initialisation alone. On 2
# CPU cores (a Zen 5 EPYC) about 14 minutes. PART=3 runs the third part alone instead: the anchored mix
# (configs/dmd.py:toy-anchored, 4800 steps, the route of `ladd-jax demo --recipe anchored-mix`) with its heads reading
# the caption and reading the empty prompt, seed 0, about 50 minutes.
#
#   bash launch/toy_uncond_disc.sh     # OUT=runs/uncond_disc
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/uncond_disc}
if [ "${PART:-}" = 3 ]; then
  python launch/toy_ladd_sweep.py --out "$OUT/sweep" --steps 4800 --eval-every 800 \
    --run "anc@dmd:toy-anchored=" --run "anc_empty@dmd:toy-anchored=disc.text=empty" --curves uncond_anchored=anc,anc_empty
  ladd-jax evaluate --out "$OUT/compare_anchored" --student "anc=$OUT/sweep/anc/student" \
    --student "anc_empty=$OUT/sweep/anc_empty/student"
  exit 0
fi
runs=(--run toy= --run empty=disc.text=empty)
for seed in 1 2; do runs+=(--run "toy_s$seed=seed=$seed" --run "empty_s$seed=disc.text=empty,seed=$seed"); done
python launch/toy_ladd_sweep.py --out "$OUT/sweep" --steps 150 --eval-every 25 "${runs[@]}" \
  --curves uncond=toy,empty,toy_s1,empty_s1,toy_s2,empty_s2
students=()
for name in toy empty toy_s1 empty_s1 toy_s2 empty_s2; do students+=(--student "$name=$OUT/sweep/$name/student"); done
ladd-jax evaluate --out "$OUT/compare" "${students[@]}"

# Every student update at t = 1, the warm-up's too: the caption reaches the student only through its own conditioning.
t1="student.probs=(1.0,0.0,0.0,0.0),student.warmup_probs=(1.0,0.0,0.0,0.0)"
runs=()
for seed in 0 1; do runs+=(--run "t1_s$seed=$t1,seed=$seed" --run "t1_empty_s$seed=$t1,disc.text=empty,seed=$seed"); done
python launch/toy_ladd_sweep.py --out "$OUT/sweep" --steps 150 --eval-every 25 "${runs[@]}" \
  --curves uncond_t1=t1_s0,t1_empty_s0,t1_s1,t1_empty_s1
students=()
for name in t1_s0 t1_empty_s0 t1_s1 t1_empty_s1; do students+=(--student "$name=$OUT/sweep/$name/student"); done
ladd-jax evaluate --out "$OUT/compare_t1" "${students[@]}"
