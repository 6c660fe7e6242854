#!/usr/bin/env bash
# Rebuilds the toy world's shipped checkpoints (ladd_jax/toy/assets/): the evaluator, then an SD3-layout folder
# with a trained VAE, tiny random-frozen text encoders and an MMDiT teacher pretrained with the rectified-flow
# objective on VAE-encoded renders of the train split. On 2 CPU cores: about 45 minutes in all (measured while sharing the CPU).
#
#   bash launch/make_toy_world.sh            # writes ladd_jax/toy/assets/{evaluator,teacher}
#   WORK=/tmp/toy PRETRAIN_STEPS=3000 bash launch/make_toy_world.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-runs/toy_world}
ASSETS=ladd_jax/toy/assets
IMAGES=${IMAGES:-4096}            # rendered train-split images the teacher is pretrained on
PRETRAIN_STEPS=${PRETRAIN_STEPS:-3000}
mkdir -p "$WORK" "$ASSETS"

ladd-jax toy-evaluator --out "$ASSETS/evaluator" --overwrite
ladd-jax toy-components --out "$WORK/sd3_untrained" --overwrite
python -c "
from ladd_jax.toy.components import read_toy_world
from ladd_jax.toy.world import write_image_folder
write_image_folder(read_toy_world('$WORK/sd3_untrained'), 'train', $IMAGES, 0, '$WORK/images', overwrite=True)"
ladd-jax encode-real --model "$WORK/sd3_untrained" --images "$WORK/images/captions.jsonl" --out "$WORK/real" \
  --max-sequence-length 16 --batch-size 64
ladd-jax pretrain --config configs/pretrain.py:toy --workdir "$WORK/pretrain" \
  --config.model="$WORK/sd3_untrained" --config.data="$WORK/real" --config.out="$ASSETS/teacher" \
  --config.total_steps="$PRETRAIN_STEPS" --config.sample_every=1000 --config.checkpoint_every=500
du -sh "$ASSETS"/*
