#!/usr/bin/env bash
# Rebuilds the toy world's shipped checkpoints (ladd_jax/toy/assets/): the evaluators (64x64, 48x80, 80x48), then
# an SD3-layout folder with a trained VAE, tiny random-frozen text encoders and an MMDiT teacher pretrained with the
# rectified-flow objective on VAE-encoded renders of the train split, in eight stages (configs/pretrain.py says why):
#   toy           3000 steps of batch 32 on 4096 renders, lr 3e-4 constant, t ~ logit-normal(0, 1)
#   toy-continue  3000 steps on 16384 renders, lr 1e-3 on a 10000-step cosine, t ~ logit-normal(0, 1)
#   toy-shift     8000 steps on the same renders from toy-continue's raw params, lr 1e-3 cosine,
#                 t ~ logit-normal(1.1, 1) (SD3's shift 3); the scheduler samples with shift 3
#   toy-refine    12000 steps on the same renders from toy-shift's raw params, lr 5e-4 cosine, the same t
#   toy-polish    12000 steps on 32768 fresh renders (seed 1) from toy-refine's raw params, lr 3e-4 cosine
#   toy-polish-2  the same on 32768 fresh renders (seed 2) from toy-polish's raw params
#   toy-polish-3  the same on 32768 fresh renders (seed 4) from toy-polish-2's output folder (its EMA)
#   toy-polish-4  the same on 32768 fresh renders (seed 5) from toy-polish-3's output folder
# and the VAE's decoder fine-tuned alone (toy-vae-decoder: 4000 steps; the encoder, so every latent above, is
# untouched, which is why it can run at any point: the shipped one was fine-tuned after toy-refine).
# On 2 CPU cores: evaluators ~6 + 2 x 4 min, components + renders + encoding ~7 min, the decoder ~7 min, then 3.4
# pretraining steps/s: about 15 + 15 + 40 + 60 + 60 + 60 + 60 + 60 minutes (on a slower day 1.8 steps/s: stage 7
# took 108; stage 8 90 at 2.2). The shipped teacher was made so (stage 1 in an earlier session; stage 7 from the
# shipped stage-6 folder, stage 8 from the shipped stage-7 one).
#
#   bash launch/make_toy_world.sh            # writes ladd_jax/toy/assets/{evaluator*,teacher,...}
#   WORK=/tmp/toy bash launch/make_toy_world.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-runs/toy_world}
ASSETS=ladd_jax/toy/assets
mkdir -p "$WORK" "$ASSETS"

render_and_encode() {  # N SEED OUT: N train-split renders, VAE-encoded with their captions' embeddings
  python -c "
from ladd_jax.toy.components import read_toy_world
from ladd_jax.toy.world import write_image_folder
write_image_folder(read_toy_world('$WORK/sd3_untrained'), 'train', $1, $2, '$WORK/images_$1_$2', overwrite=True)"
  ladd-jax encode-real --model "$WORK/sd3_untrained" --images "$WORK/images_$1_$2/captions.jsonl" --out "$3" \
    --max-sequence-length 16 --batch-size 64
}

pretrain() {  # VARIANT MODEL DATA OUT
  ladd-jax pretrain --config "configs/pretrain.py:$1" --workdir "$WORK/$1" --config.model="$2" \
    --config.data="$3" --config.out="$4" --config.sample_every=1000 --config.checkpoint_every=1000
}

ladd-jax toy-evaluator --out "$ASSETS/evaluator" --overwrite
for bucket in 48x80 80x48; do  # the multi-aspect demo's other buckets: an evaluator reads one image size
  ladd-jax toy-evaluator --out "$ASSETS/evaluator_$bucket" --bucket "$bucket" --overwrite
done
ladd-jax toy-components --out "$WORK/sd3_untrained" --overwrite
ladd-jax toy-vae-decoder --model "$WORK/sd3_untrained" --out "$WORK/vae_decoder" --overwrite
rm -rf "$WORK/sd3_untrained/vae" && cp -r "$WORK/vae_decoder" "$WORK/sd3_untrained/vae"
render_and_encode 4096 0 "$WORK/real_4096"
render_and_encode 16384 0 "$WORK/real_16384"
render_and_encode 32768 1 "$WORK/real_32768"
render_and_encode 32768 2 "$WORK/real_32768_2"
render_and_encode 32768 4 "$WORK/real_32768_4"  # seed 3 made the decoder's renders
render_and_encode 32768 5 "$WORK/real_32768_5"
pretrain toy "$WORK/sd3_untrained" "$WORK/real_4096" "$WORK/teacher_toy"
pretrain toy-continue "$WORK/teacher_toy" "$WORK/real_16384" "$WORK/teacher_toy-continue"
export_params() {  # WORKDIR STEP OUT: a stage's raw params (not its EMA) as a folder the next stage starts from
  python -c "
import json
from pathlib import Path
from ladd_jax.convert.mmdit import load_mmdit
from ladd_jax.export import export_student
from ladd_jax.models.mmdit import abstract_params
from ladd_jax.train.checkpoint import restore_params
arch, _ = load_mmdit('$WORK/teacher_toy')
params = restore_params('$1', $2, 'params', abstract_params(arch))
out = export_student('$WORK/teacher_toy', arch, params, '$3', overwrite=True)
path = Path(out) / 'scheduler' / 'scheduler_config.json'
path.write_text(json.dumps({**json.loads(path.read_text()), 'shift': 3.0}, indent=2))"
}

# toy-shift starts from toy-continue's raw params (its EMA still averaged stage 1's weights), sampled with shift 3;
# toy-refine from toy-shift's raw params, toy-polish from toy-refine's, toy-polish-2 from toy-polish's.
export_params "$WORK/toy-continue" 3000 "$WORK/toy-continue_params"
pretrain toy-shift "$WORK/toy-continue_params" "$WORK/real_16384" "$WORK/teacher_toy-shift"
export_params "$WORK/toy-shift" 8000 "$WORK/toy-shift_params"
pretrain toy-refine "$WORK/toy-shift_params" "$WORK/real_16384" "$WORK/teacher_toy-refine"
export_params "$WORK/toy-refine" 12000 "$WORK/toy-refine_params"
pretrain toy-polish "$WORK/toy-refine_params" "$WORK/real_32768" "$WORK/teacher_toy-polish"
export_params "$WORK/toy-polish" 12000 "$WORK/toy-polish_params"
pretrain toy-polish-2 "$WORK/toy-polish_params" "$WORK/real_32768_2" "$WORK/teacher_toy-polish-2"
pretrain toy-polish-3 "$WORK/teacher_toy-polish-2" "$WORK/real_32768_4" "$WORK/teacher_toy-polish-3"
pretrain toy-polish-4 "$WORK/teacher_toy-polish-3" "$WORK/real_32768_5" "$ASSETS/teacher"
# The baselines' frozen feature networks (never the evaluator): Diffusion2GAN's latent perceptual network and
# ADD's pixel network (a tiny Dinov2), each trained on train-split renders of the teacher's world.
python -m ladd_jax.toy.latent_features --teacher "$ASSETS/teacher" --out "$ASSETS/latent_features" --overwrite
python -m ladd_jax.toy.pixel_features --teacher "$ASSETS/teacher" --out "$ASSETS/pixel_features" --overwrite
du -sh "$ASSETS"/*
