#!/usr/bin/env bash
# The toy world's inpainting or editing teacher and its LADD student, measured (issue 14, part 4):
#   1. 8192 train-split items (toy/inpainting.py: renders with box holes; toy/editing.py: source, instruction,
#      edited render), VAE-encoded with their conditioning latents (`ladd-jax encode-real`: the records' cond)
#   2. the shipped teacher widened to take the conditioning (`ladd-jax widen`: zero weights) and fine-tuned
#      (`ladd-jax pretrain`, configs/pretrain.py:toy-KIND, batch 32)
#   3. 1024 other train-split items' conditioning -> the teacher's samples (`ladd-jax synth` on the records folder)
#   4. LADD (configs/ladd.py:toy with config.conditioned) and its control (heads frozen at a random init)
#   5. held-out items of both splits: teacher, teacher 1 step, student and control (toy/conditioned_eval.py)
# On 2 CPU cores: fine-tuning about 13-26 minutes (inpaint, 3000 steps) or 26-39 (edit, 6000), then synth, LADD, the
# control and the evaluation about 12 minutes.
#
#   bash launch/toy_conditioned.sh inpaint     # or edit; WORK=DIR to choose the working folder
set -euo pipefail
cd "$(dirname "$0")/.."
KIND=${1:?usage: launch/toy_conditioned.sh inpaint|edit}
WORK=${WORK:-runs/toy_$KIND}
TEACHER=ladd_jax/toy/assets/teacher
OUT=ladd_jax/toy/assets/$KIND
mkdir -p "$WORK"
items() {  # SPLIT NUM SEED OUT
  python -m ladd_jax.toy.items --kind "$KIND" --world "$TEACHER" --split "$1" --num "$2" --seed "$3" --out "$4" \
    --overwrite
}
encode() {  # ITEMS OUT
  ladd-jax encode-real --model "$TEACHER" --images "$1/captions.jsonl" --out "$2" --max-sequence-length 16 \
    --batch-size 64
}

if [ ! -f "$WORK/teacher/model_index.json" ]; then
  items train 8192 0 "$WORK/items_train"
  encode "$WORK/items_train" "$WORK/real_train"
  ladd-jax widen --model "$TEACHER" --cond "$KIND" --out "$WORK/widened" --overwrite
  ladd-jax pretrain --config "configs/pretrain.py:toy-$KIND" --workdir "$WORK/pretrain" --config.model="$WORK/widened" \
    --config.data="$WORK/real_train" --config.out="$WORK/teacher" --config.checkpoint_every=500
fi

python launch/toy_conditioned.py --kind "$KIND" --work "$WORK" --out "$OUT"
