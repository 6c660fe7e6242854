#!/usr/bin/env bash
# The D phase's draws and start (ladd_jax/toy/assets/alignment/README.md, "Fresh noise for each D update, and heads
# trained before the student"). Measured before their updates the demo's heads separate a fresh batch 0.51-0.57 of
# the time: is that because the toy config's 4 D updates a step all fit one re-noising of the step's batch, or
# because the heads start untrained while the student escapes the teacher's 1-step blur within 25 steps?
#   1. the demo's 150 LADD steps, seeds 0 and 1: the toy config, and d_renoise=True (each D update after the first
#      reads the step's real latents and student samples re-noised afresh: new t_hat and noise);
#   2. the heads trained alone for 50 steps against the student's initialisation (train_student=False), then the
#      demo's 150 LADD steps from that checkpoint (seeds 0 and 1); the curves run over both phases;
#   3. the curves of all six runs (OUT/sweep/curves_d_phase.png) and `ladd-jax evaluate` of their students.
# On 2 CPU cores about 20 minutes.
#
#   bash launch/toy_d_phase.sh         # OUT=runs/d_phase
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/d_phase}
sweep() { python launch/toy_ladd_sweep.py --out "$1" --eval-every 25 "${@:2}"; }

# 1. One re-noising a step for the 4 D updates (the toy config) against a fresh one for each.
sweep "$OUT/sweep" --steps 150 --run toy= --run rn=d_renoise=True
sweep "$OUT/sweep" --steps 150 --run toy_s1=seed=1 --run rn_s1=d_renoise=True,seed=1

# 2. The heads first: 50 steps alone (in OUT/heads), then LADD resumed from their checkpoint (in OUT/sweep: the
#    trainer resumes from the latest checkpoint of its workdir, and appends to the metrics copied there).
mkdir -p "$OUT/heads" && cp -rn "$OUT/sweep/synth" "$OUT/heads/"
heads_then_ladd() {  # NAME SEED [more sweep arguments]
  sweep "$OUT/heads" --steps 50 --eval-every 50 --run "$1=train_student=False,checkpoint_every=50,seed=$2"
  mkdir -p "$OUT/sweep/$1/checkpoints" && cp -r "$OUT/heads/$1/checkpoints/50" "$OUT/sweep/$1/checkpoints/"
  cp "$OUT/heads/$1/metrics.jsonl" "$OUT/sweep/$1/"
  sweep "$OUT/sweep" --steps 200 --run "$1=seed=$2" "${@:3}"
}
heads_then_ladd w50 0
heads_then_ladd w50_s1 1 --curves d_phase=toy,rn,w50,toy_s1,rn_s1,w50_s1

# 3. The students on the demo's prompts and noise.
students=()
for name in toy rn toy_s1 rn_s1; do students+=(--student "$name=$OUT/sweep/$name/student"); done
ladd-jax evaluate --out "$OUT/compare" "${students[@]}"
ladd-jax evaluate --out "$OUT/compare_warm" --student "w50=$OUT/sweep/w50/student" \
  --student "w50_s1=$OUT/sweep/w50_s1/student"
