#!/usr/bin/env bash
# The method comparison in the toy world (README "Baselines"; ladd_jax/toy/assets/methods/): every method trained
# for the same budget (300 steps x batch 16) on the demo's synthetic data, exported, then measured in one table.
# On 2 CPU cores: about 40 minutes of training and 5 of evaluation.
#
#   bash launch/toy_methods.sh            # OUT=runs/methods
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/methods}
python launch/toy_ladd_sweep.py --out "$OUT" --steps 300 \
  --run ladd= \
  --run add@add:toy= --run add_adv_only@add:toy=distill_weight=0.0 --run add_distill_only@add:toy=adv_weight=0.0 \
  --run lcm@lcm:toy= --run lcm_k5@lcm:toy=lcm.skip=5 \
  --run d2g_mse@d2g:toy-mse= --run d2g_lpips@d2g:toy-lpips= --run d2g_gan@d2g:toy-gan=
ladd-jax evaluate --out "$OUT/compare" \
  --student LADD="$OUT/ladd/student" --student ADD="$OUT/add/student" \
  --student ADD-adv-only="$OUT/add_adv_only/student" --student ADD-distill-only="$OUT/add_distill_only/student" \
  --student LCM-k1="$OUT/lcm/student" --student LCM-k5="$OUT/lcm_k5/student" \
  --student D2G-mse="$OUT/d2g_mse/student" --student D2G-lpips="$OUT/d2g_lpips/student" \
  --student D2G-lpips+gan="$OUT/d2g_gan/student"
# one_step.png: the real render, the teacher and every method's 1-step column of the evaluation's grids.
python - "$OUT/compare" <<'PY'
import sys
from pathlib import Path
from PIL import Image
folder = Path(sys.argv[1])
columns = [0, 1] + list(range(6, 33, 3))  # real, teacher 20 steps, then each student's 1-step column
rows = []
for path in sorted(folder.glob("grid_*.png")):
    grid = Image.open(path)
    width = grid.size[0] / 33  # 33 labelled columns: real, 5 teacher rows, 9 students x 3 step counts
    cells = [grid.crop((int(c * width), 0, int((c + 1) * width), grid.size[1])) for c in columns]
    row = Image.new("RGB", (sum(c.size[0] for c in cells), grid.size[1]), "white")
    for i, cell in enumerate(cells):
        row.paste(cell, (sum(c.size[0] for c in cells[:i]), 0))
    rows.append(row)
out = Image.new("RGB", (rows[0].size[0], sum(r.size[1] for r in rows)), "white")
for i, row in enumerate(rows):
    out.paste(row, (0, sum(r.size[1] for r in rows[:i])))
out.save(folder / "one_step.png")
PY
