#!/usr/bin/env bash
# LADD's DPO recipe in the toy world (README "LoRA and Diffusion-DPO"), every stage measured:
#   1. preference pairs: 4 teacher samples of each of 1536 train-split prompt draws (650 distinct captions),
#      judged by the toy judge (ladd_jax/toy/judge.py, never the evaluator); the control: the same samples paired
#      at random
#   2. a DPO-LoRA on the teacher (configs/dpo.py:toy), and the same run on the random pairs (the control)
#   3. LADD from the DPO teacher (its synthetic data, the Baselines' 300 steps), and the DPO-LoRA re-applied to the student
#   4. the three teachers measured alike (launch/toy_teacher_eval.py); `ladd-jax evaluate`: the DPO teacher's students
#
# On 2 CPU cores 30-45 minutes (the samples 7-10, each DPO run 3, the distillation 5-10, the evaluations 8-20).
#
#   bash launch/toy_dpo.sh            # OUT=runs/dpo
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/dpo}
TEACHER=${TEACHER:-ladd_jax/toy/assets/teacher}
python -m ladd_jax.toy.preferences --teacher "$TEACHER" --out "$OUT/prefs" --prompts 1536 --samples 4
python -m ladd_jax.toy.preferences --teacher "$TEACHER" --out "$OUT/prefs" --prompts 1536 --samples 4 --scorer random
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
# curves.png: what DPO did to its training pairs (judge vs random preferences) and to the teachers' alignment.
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
out = Path(sys.argv[1])
runs = {"judge pairs": out / "dpo", "random pairs (control)": out / "dpo_random"}
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
for name, run in runs.items():
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    axes[0].plot(steps, [r["implicit_acc"] for r in rows], marker="o", label=name)
    for side, style in (("chosen", "-"), ("rejected", "--")):
        ratio = [r[f"err_{side}"] / r[f"ref_err_{side}"] for r in rows]
        axes[1].plot(steps, ratio, style, marker="o", label=f"{name}: {side}")
axes[0].set_title("implicit accuracy on the training pairs", fontsize=9)
axes[1].set_title("tuned / reference velocity error (1 = no drift)", fontsize=9)
teachers = json.loads((out / "teachers.json").read_text())
labels = list(teachers)
for k, split in enumerate(("train", "test")):
    values = [teachers[name][split]["full"]["alignment"] for name in labels]
    axes[2].bar([i + 0.4 * k for i in range(len(labels))], values, width=0.4, label=f"{split} prompts")
axes[2].set_xticks([i + 0.2 for i in range(len(labels))], labels, fontsize=8)
axes[2].set_title("teacher alignment (20 steps, CFG 3; the evaluator)", fontsize=9)
for ax in axes:
    ax.legend(fontsize=7)
for ax in axes[:2]:
    ax.set_xlabel("DPO step", fontsize=8)
fig.tight_layout()
fig.savefig(out / "curves.png", dpi=100)
PY
