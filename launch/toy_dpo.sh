#!/usr/bin/env bash
# LADD's DPO recipe in the toy world (README "LoRA and Diffusion-DPO"), every stage measured:
#   1. preference pairs: 4 teacher samples of each of 512 train-split prompts, judged by the toy judge
#      (ladd_jax/toy/judge.py, never the evaluator); the control: the same samples paired at random
#   2. a DPO-LoRA on the teacher (configs/dpo.py:toy), and the same run on the random pairs (the control)
#   3. LADD from the DPO teacher (its synthetic data, the demo's settings), and the DPO-LoRA re-applied to the student
#   4. the three teachers measured alike (launch/toy_teacher_eval.py); `ladd-jax evaluate`: the DPO teacher's students
#
#   bash launch/toy_dpo.sh            # OUT=runs/dpo
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/dpo}
TEACHER=${TEACHER:-ladd_jax/toy/assets/teacher}
python -m ladd_jax.toy.preferences --teacher "$TEACHER" --out "$OUT/prefs" --prompts 512 --samples 4
python -m ladd_jax.toy.preferences --teacher "$TEACHER" --out "$OUT/prefs" --prompts 512 --samples 4 --scorer random
ladd-jax dpo --config configs/dpo.py:toy --workdir "$OUT/dpo" --config.model="$TEACHER" \
  --config.data="$OUT/prefs/pairs"
ladd-jax dpo --config configs/dpo.py:toy --workdir "$OUT/dpo_random" --config.model="$TEACHER" \
  --config.data="$OUT/prefs/pairs_random"
python launch/toy_ladd_sweep.py --out "$OUT/distil" --teacher "$OUT/dpo/pipeline" --steps 300 --run ladd=
ladd-jax lora-merge --model "$OUT/distil/ladd/student" --lora "$OUT/dpo/lora" --out "$OUT/student_lora" --overwrite
ladd-jax evaluate --out "$OUT/eval_dpo" --teacher "$OUT/dpo/pipeline" \
  --student "LADD-from-DPO=$OUT/distil/ladd/student" --student "LADD-from-DPO+LoRA=$OUT/student_lora"
python launch/toy_teacher_eval.py --out "$OUT/teachers" teacher="$TEACHER" DPO="$OUT/dpo/pipeline" \
  DPO-random-pairs="$OUT/dpo_random/pipeline"
