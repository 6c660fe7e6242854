#!/usr/bin/env bash
# The heads' accuracy measured before the step's D updates (ladd_jax/toy/assets/alignment/README.md, "The heads'
# accuracy, before and after their updates"): the trainer's d_acc and logit gap as the heads meet each step's batch,
# where until session 35 it logged them after 3 of the step's 4 updates on that same batch.
#   1. the heads alone (student frozen) against the teacher's 1-step outputs, as tests/test_ladd_game.py runs them,
#      for 300 steps at the toy config's t_hat ~ logit-normal(1, 1) and 200 at logit-normal(0, 1), every step logged;
#   2. the long LADD run (launch/toy_long_ladd.sh, LONG) resumed from its step 4800 for 50 steps: its heads there;
#   3. the demo's 150 LADD steps with 1, 4 (the toy config) and 8 D updates a step, 1 at 4x the heads' rate, and 4 at
#      0.3x: every accuracy curve measured the new way, each student's held-out probe;
#   4. the long run resumed from step 4800 to 7200 with both rates cosine-decayed and EMA 0.99 ("settled"), beside the
#      toy config's own continuation (LONG's step 7200); the same at seed 1, with its constant-rate continuation;
#   5. `ladd-jax evaluate` of the students of 3 and 4 on the demo's prompts and noise.
# On 2 CPU cores about 85 minutes (4 is most of it), after launch/toy_long_ladd.sh.
#
#   bash launch/toy_heads_accuracy.sh         # OUT=runs/heads_accuracy LONG=runs/long_ladd
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/heads_accuracy}
LONG=${LONG:-runs/long_ladd}
mkdir -p "$OUT"
# A run resumed from LONG's seed-0 checkpoint at step 4800 (the trainer resumes from the latest in its workdir).
from4800() { mkdir -p "$1/checkpoints" && cp -r "$LONG/s0/ladd4800/checkpoints/4800" "$1/checkpoints/"; }

# 1. The heads alone, on the test's data: 64 train-split prompts sampled by the teacher (20 steps, CFG 3).
alone="train_student=False,log_every=1,student.timesteps=(1.0,),student.probs=(1.0,),student.warmup_probs=(1.0,)"
sweep_alone() { python launch/toy_ladd_sweep.py --out "$OUT/alone" --synth-prompts 64 "$@"; }
sweep_alone --steps 300 --eval-every 300 --run "alone_m1=$alone"
sweep_alone --steps 200 --eval-every 200 --run "alone_m0=$alone,t_hat_mean=0.0"

# 2. The long run's heads at step 4800, measured the new way.
from4800 "$OUT/long4800"
ladd-jax train --config configs/ladd.py:toy --config.teacher=ladd_jax/toy/assets/teacher --workdir "$OUT/long4800" \
  --config.data="$LONG/s0/synth" --config.total_steps=4850 \
  --config.checkpoint_every=4850 --config.log_every=5

# 3. D updates a step and the heads' rate, the demo's 150 steps (the demo's data: LONG's seed-0 synthetic latents).
mkdir -p "$OUT/d_steps" && cp -r "$LONG/s0/synth" "$OUT/d_steps/"
python launch/toy_ladd_sweep.py --out "$OUT/d_steps" --steps 150 --eval-every 25 --run toy= --run d1=d_steps=1 \
  --run d1x4=d_steps=1,d_lr=4e-3 --run d8=d_steps=8 --run dlr3e4=d_lr=3e-4

# 4. The long run settled: rates decayed (cosine to 0.1x at 7200: 0.33x at 4800) and EMA 0.99, from step 4800.
mkdir -p "$OUT/settled" && cp -r "$LONG/s0/synth" "$OUT/settled/" && from4800 "$OUT/settled/settled"
cp "$LONG/s0/ladd4800/metrics.jsonl" "$OUT/settled/settled/"
python launch/toy_ladd_sweep.py --out "$OUT/settled" --steps 7200 --eval-every 300 \
  --run "settled=checkpoint_every=1200,keep_checkpoints=8,lr_decay=cosine,ema_decay=0.99"
# Seed 1 (LONG's seed-1 run, which stopped at 4800): settled and at constant rates, side by side.
for run in settled_s1 const_s1; do
  mkdir -p "$OUT/$run/$run/checkpoints" && cp -r "$LONG/s1/synth" "$OUT/$run/"
  cp -r "$LONG/s1/ladd4800_s1/checkpoints/4800" "$OUT/$run/$run/checkpoints/"
  cp "$LONG/s1/ladd4800_s1/metrics.jsonl" "$OUT/$run/$run/"
done
s1=checkpoint_every=1200,keep_checkpoints=8,seed=1
python launch/toy_ladd_sweep.py --out "$OUT/settled_s1" --steps 7200 --eval-every 600 \
  --run "settled_s1=$s1,lr_decay=cosine,ema_decay=0.99" &
settled=$!
python launch/toy_ladd_sweep.py --out "$OUT/const_s1" --steps 7200 --eval-every 600 --run "const_s1=$s1" &
const=$!
wait "$settled"  # each wait returns its run's status, so a failed run stops the script (set -e)
wait "$const"

# 5. Every student above on the demo's prompts and noise.
ladd-jax evaluate --out "$OUT/compare" --student "settled7200=$OUT/settled/settled/student" \
  --student "d1=$OUT/d_steps/d1/student" --student "d8=$OUT/d_steps/d8/student" \
  --student "dlr3e4=$OUT/d_steps/dlr3e4/student"
ladd-jax evaluate --out "$OUT/compare_s1" --student "settled7200_s1=$OUT/settled_s1/settled_s1/student" \
  --student "const7200_s1=$OUT/const_s1/const_s1/student"
