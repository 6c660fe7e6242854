#!/usr/bin/env bash
# Heads on CFG-guided teacher features (`disc.feature_cfg`; ladd_jax/toy/assets/alignment/README.md, "Heads on
# guided features"): the toy config's 150 LADD steps on the demo's 512 synthetic latents at feature scales 1 (the
# toy config), 2, 3, 5 and 8, scales 3 and 5 and the toy config again at seed 1, and scale 5 with the pairs of the
# student's t = 1 samples left unguided (`disc.feature_cfg_t1=1`) and scale 5 with the guided distillation loss, each
# at two seeds; `ladd-jax evaluate` on the demo's prompts and noise; what the heads of scale 5 and of the toy config
# judge (launch/toy_heads_probe.py). On 2 CPU cores: about 40 minutes of training, 25 of evaluation.
#
#   bash launch/toy_feature_cfg.sh            # OUT=runs/feature_cfg
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/feature_cfg}
python launch/toy_ladd_sweep.py --out "$OUT" --steps 150 --eval-every 25 --run toy= --run toy_s1=seed=1 \
  --run fc2=disc.feature_cfg=2.0 --run fc3=disc.feature_cfg=3.0 --run fc3_s1=disc.feature_cfg=3.0,seed=1 \
  --run fc5=disc.feature_cfg=5.0 --run fc5_s1=disc.feature_cfg=5.0,seed=1 --run fc8=disc.feature_cfg=8.0 \
  --run fc5t1=disc.feature_cfg=5.0,disc.feature_cfg_t1=1.0 \
  --run fc5t1_s1=disc.feature_cfg=5.0,disc.feature_cfg_t1=1.0,seed=1 \
  --run fc5d05=disc.feature_cfg=5.0,distill_weight=0.5,distill_cfg=3.0 \
  --run fc5d05_s1=disc.feature_cfg=5.0,distill_weight=0.5,distill_cfg=3.0,seed=1 \
  --curves scale=toy,fc2,fc3,fc5,fc8 --curves seeds=toy,toy_s1,fc3,fc3_s1,fc5,fc5_s1,fc5t1,fc5t1_s1
evaluate() { # OUT/compare_NAME: the named runs' students beside the teacher's rows
  local name=$1 students=()
  shift
  for run in "$@"; do students+=(--student "$run=$OUT/$run/student"); done
  ladd-jax evaluate --out "$OUT/compare_$name" "${students[@]}"
}
evaluate grid toy fc3 fc5
evaluate more fc2 fc8 toy_s1 fc3_s1 fc5_s1
evaluate t1 fc5t1 fc5t1_s1
evaluate distill fc5d05 fc5d05_s1
# LADD (the toy config) beside scales 3 and 5, at 1 and 4 steps (columns of the evaluation's grids).
python launch/toy_grid_columns.py "$OUT/compare_grid" "$OUT/grid.png" --total 15 --columns 0 1 6 8 9 11 12 14
for run in toy fc5; do
  python launch/toy_heads_probe.py --workdir "$OUT/$run" --out "$OUT/feature_cfg_heads_probe_$run.json"
done
