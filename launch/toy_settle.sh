#!/usr/bin/env bash
# Resumes a run of launch/toy_ladd_sweep.py from one of its checkpoints, "settled" as the alignment notes settle
# a long run (both rates cosine-decayed to 0.1x at TO_STEP, EMA 0.99), as a new run NAME of the sweep in
# SWEEP_OUT; OVERRIDES (the loss, the pairs on or off, the seed) come after that recipe and may change any of it.
# SETTLE_RECIPE replaces the recipe (e.g. SETTLE_RECIPE=checkpoint_every=1200: the run continued at its own rates).
# The trainer resumes from its workdir's latest checkpoint, so FROM_RUN's checkpoint FROM_STEP is copied there
# first, with its metrics.jsonl (the curves then run from step 0) and, once per SWEEP_OUT, its data (the same
# latents).
#
#   bash launch/toy_settle.sh SWEEP_OUT NAME FROM_RUN FROM_STEP TO_STEP OVERRIDES
#   e.g. bash launch/toy_settle.sh runs/x/settle a_settled runs/x/pairs/a 2400 4800 misaligned_weight=0.0,seed=1
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 6 ]; then
  echo "usage: bash launch/toy_settle.sh SWEEP_OUT NAME FROM_RUN FROM_STEP TO_STEP OVERRIDES" >&2
  exit 2
fi
out=$1 name=$2 from=$3 from_step=$4 to_step=$5 overrides=$6
RECIPE=${SETTLE_RECIPE-checkpoint_every=1200,keep_checkpoints=8,lr_decay=cosine,ema_decay=0.99}
if [ ! -d "$from/checkpoints/$from_step" ] || [ ! -d "$from/../synth" ]; then
  echo "$from/checkpoints/$from_step or $from/../synth is missing: FROM_RUN must be a finished toy_ladd_sweep run" \
    "(OUT/NAME) that kept a checkpoint at step $from_step (its checkpoint_every, keep_checkpoints)" >&2
  exit 2
fi
mkdir -p "$out/$name/checkpoints"
[ -d "$out/synth" ] || cp -r "$from/../synth" "$out/"
cp -r "$from/checkpoints/$from_step" "$out/$name/checkpoints/"
# Its metrics up to FROM_STEP (a run that went on past it logged steps the resumed run will log again).
python - "$from/metrics.jsonl" "$from_step" > "$out/$name/metrics.jsonl" <<'PY'
import json, sys
sys.stdout.writelines(line for line in open(sys.argv[1]) if json.loads(line)["step"] <= int(sys.argv[2]))
PY
exec python launch/toy_ladd_sweep.py --out "$out" --eval-every 300 --mismatch shape,color --steps "$to_step" \
  --run "$name=$RECIPE${overrides:+,$overrides}"
