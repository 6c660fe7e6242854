#!/usr/bin/env bash
# LADD's data ablation in the toy world (the paper: synthetic teacher latents beat real data on prompt alignment,
# and with synthetic data a distillation loss adds nothing; ladd_jax/toy/assets/alignment/README.md, "Real or
# synthetic data"): the toy config's 150 steps on the demo's 512 synthetic latents against the same steps on
# VAE-encoded renders of the same 512 captions (`encode-real`), each with and without ADD's distillation loss
# (weight 2.5, toward the teacher's estimate at the synthetic data's CFG 3), and on the renders with half of their
# captions wrong, two seeds each, then measured in one table. On 2 CPU cores: about 2 minutes of synthesis, 35 of
# training and 12 of evaluation.
#
#   bash launch/toy_real_vs_synthetic.sh            # OUT=runs/real_vs_synthetic
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/real_vs_synthetic}
TEACHER=ladd_jax/toy/assets/teacher
mkdir -p "$OUT"
# The demo's prompts are the first 512 train-split scenes of seed 0; the renders are those very scenes.
python -c "
from ladd_jax.toy.components import read_toy_world
from ladd_jax.toy.world import write_image_folder
write_image_folder(read_toy_world('$TEACHER'), 'train', 512, 0, '$OUT/real_images', overwrite=True)"
# Web captions describe their images loosely, teacher samples follow their prompts: the paper's reason for synthetic
# data. The toy world's captions are exact, so a third arm gives half of the renders a caption that is wrong in one
# detail (one object's shape, colour or size: the world's hard misaligned captions).
python -c "
import json
import numpy as np
from ladd_jax.toy.components import read_toy_world
from ladd_jax.toy.world import write_mismatched_prompts
write_mismatched_prompts(read_toy_world('$TEACHER'), 'train', 512, 0, ('shape', 'color', 'size'),
                         '$OUT/real_images/mismatched.jsonl', overwrite=True)
wrong = np.random.default_rng(0).random(512) < 0.5
with open('$OUT/real_images/captions.jsonl') as f, open('$OUT/real_images/mismatched.jsonl') as g:
    lines = [{**json.loads(a), 'prompt': json.loads(b)['mismatch'] if w else json.loads(b)['prompt']}
             for a, b, w in zip(f, g, wrong, strict=True)]
with open('$OUT/real_images/captions_noisy.jsonl', 'w') as f:
    f.writelines(json.dumps(line) + '\\n' for line in lines)"
ladd-jax encode-real --model "$TEACHER" --images "$OUT/real_images/captions.jsonl" --out "$OUT/real_records" \
  --max-sequence-length 16 --batch-size 64
ladd-jax encode-real --model "$TEACHER" --images "$OUT/real_images/captions_noisy.jsonl" \
  --out "$OUT/real_records_noisy" --max-sequence-length 16 --batch-size 64
REAL=$(realpath "$OUT/real_records")
NOISY=$(realpath "$OUT/real_records_noisy")
DISTILL=distill_weight=2.5,distill_cfg=3.0
python launch/toy_ladd_sweep.py --out "$OUT" --steps 150 --eval-every 25 \
  --run synthetic= --run synthetic_s1=seed=1 --run "real=data=$REAL" --run "real_s1=data=$REAL,seed=1" \
  --run "synthetic_distill=$DISTILL" --run "synthetic_distill_s1=$DISTILL,seed=1" \
  --run "real_distill=data=$REAL,$DISTILL" --run "real_distill_s1=data=$REAL,$DISTILL,seed=1" \
  --run "real_noisy=data=$NOISY" --run "real_noisy_s1=data=$NOISY,seed=1"
students=()
for run in synthetic real synthetic_distill real_distill real_noisy; do
  students+=(--student "$run=$OUT/$run/student" --student "${run}_s1=$OUT/${run}_s1/student")
done
ladd-jax evaluate --out "$OUT/compare" "${students[@]}"
# data.png: the real render, the teacher and each arm's seed-0 student at 1 and 4 steps, from the evaluation's grids
# (36 labelled columns: real, 5 teacher rows, 10 students x 3 step counts).
python launch/toy_grid_columns.py "$OUT/compare" "$OUT/compare/data.png" --total 36 --columns 0 1 6 8 12 14 18 20 24 26 30 32
