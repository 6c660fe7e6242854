#!/usr/bin/env bash
# Rebuilds the toy world's shipped checkpoints (ladd_jax/toy/assets/): the evaluator, then an SD3-layout folder
# with a trained VAE, tiny random-frozen text encoders and an MMDiT teacher pretrained with the rectified-flow
# objective on VAE-encoded renders of the train split, in two stages:
#   stage 1 (configs/pretrain.py:toy):          3000 steps of batch 32 on 4096 renders, lr 3e-4 constant
#   stage 2 (configs/pretrain.py:toy-continue): 10000 steps of batch 32 on 16384 renders, lr 1e-3, cosine decay
# On 2 CPU cores: evaluator ~6 min, components + renders + encoding ~5 min, stage 1 ~15 min, stage 2 ~50 min
# (3.4 steps/s). The shipped teacher was made exactly so (stage 1 in an earlier session, stage 2 in this one).
#
#   bash launch/make_toy_world.sh            # writes ladd_jax/toy/assets/{evaluator,teacher}
#   WORK=/tmp/toy STAGE2_STEPS=2000 bash launch/make_toy_world.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-runs/toy_world}
ASSETS=ladd_jax/toy/assets
IMAGES=${IMAGES:-4096}            # rendered train-split images of stage 1
IMAGES2=${IMAGES2:-16384}         # rendered train-split images of stage 2
STAGE1_STEPS=${STAGE1_STEPS:-3000}
STAGE2_STEPS=${STAGE2_STEPS:-10000}
mkdir -p "$WORK" "$ASSETS"

render_and_encode() {  # N OUT: N train-split renders of seed 0, VAE-encoded with their captions' embeddings
  python -c "
from ladd_jax.toy.components import read_toy_world
from ladd_jax.toy.world import write_image_folder
write_image_folder(read_toy_world('$WORK/sd3_untrained'), 'train', $1, 0, '$WORK/images_$1', overwrite=True)"
  ladd-jax encode-real --model "$WORK/sd3_untrained" --images "$WORK/images_$1/captions.jsonl" --out "$2" \
    --max-sequence-length 16 --batch-size 64
}

ladd-jax toy-evaluator --out "$ASSETS/evaluator" --overwrite
ladd-jax toy-components --out "$WORK/sd3_untrained" --overwrite
render_and_encode "$IMAGES" "$WORK/real_$IMAGES"
render_and_encode "$IMAGES2" "$WORK/real_$IMAGES2"
ladd-jax pretrain --config configs/pretrain.py:toy --workdir "$WORK/stage1" \
  --config.model="$WORK/sd3_untrained" --config.data="$WORK/real_$IMAGES" --config.out="$WORK/teacher_stage1" \
  --config.total_steps="$STAGE1_STEPS" --config.sample_every=1000 --config.checkpoint_every=500
ladd-jax pretrain --config configs/pretrain.py:toy-continue --workdir "$WORK/stage2" \
  --config.model="$WORK/teacher_stage1" --config.data="$WORK/real_$IMAGES2" --config.out="$ASSETS/teacher" \
  --config.total_steps="$STAGE2_STEPS" --config.sample_every=2000 --config.checkpoint_every=1000
du -sh "$ASSETS"/*
