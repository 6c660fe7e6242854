#!/usr/bin/env bash
# The toy world's demos on one accelerator, timed: `ladd-jax demo --recipe anchored-mix` (the route that holds 15-17
# of the 18 targets of issue 10 at three seeds, in 77 minutes on 2 CPU cores) and the default LADD demo (11 of 18
# in 6-8 CPU minutes), each under its own time limit, the report's figures copied into $OUT. Whether the anchored
# recipe fits the demo's 10 minutes on a GPU is what the first run measures (its report's "Measured in" line and
# metrics.json's `phase_seconds`); the README's "The targets of issue 10, measured" says why it cannot on this CPU.
#
#   launch/gpu_toy_demo.sh                                  # from anywhere; runs in the repository root
#   RECIPES=anchored-mix SEED=1 launch/gpu_toy_demo.sh
#   ALLOW_CPU=1 DEMO_ARGS=--quick RECIPES=ladd launch/gpu_toy_demo.sh   # a smoke test of the script, on a CPU
#
# Needs: `pip install "jax[cuda13]" -e .` (or a JAX with a GPU or TPU backend already there: see below).
# Environment: RECIPES (in order, default "anchored-mix ladd"), SEED (default 0), LIMIT_S (seconds per demo,
# default 540), TOTAL_S (seconds for the whole script, default 570: inside the device tool's 600-s command, so that
# a later recipe gets only what is left and the figures of the earlier ones still come back), ALLOW_CPU=1 (run where
# jax sees no accelerator), DEMO_ARGS (more `ladd-jax demo` flags), LADD (the command, default `ladd-jax`), WORK
# (where the demos write their data and runs, default a fresh temporary folder), OUT (default runs/gpu_toy_demo).
# $OUT gets, per recipe, report.md, metrics.json, curves.png and grid_0.png (8 files for the two recipes); WORK keeps
# everything else (students, controls, the synthetic latents).
#
# On the device tool's machine (its image has JAX with CUDA, flax, optax, orbax, transformers; not grain,
# array-record, ml_collections, clu, portpicker), once here in the repository root:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
#     grain==0.2.18 array-record==0.8.6 ml_collections==1.1.0 clu==0.0.12 portpicker==1.6.0
# (4.6 MB; /.whl/ is in .gitignore), then `run` with carry [".whl"] and the command
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl &&
#   PYTHONPATH=/tmp/site:$PWD LADD="python3 -m ladd_jax.cli" WORK=/tmp/demo bash launch/gpu_toy_demo.sh
# with timeout_s 600; the figures come back from $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a LADD_CMD <<<"${LADD:-ladd-jax}"
read -r -a EXTRA <<<"${DEMO_ARGS:-}"
OUT=${OUT:-runs/gpu_toy_demo}
WORK=${WORK:-$(mktemp -d -t ladd_toy_demo.XXXX)}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$WORK"

python3 -c "import jax, sys; d = jax.devices()[0]; print('jax', jax.__version__, d.platform, d.device_kind); \
sys.exit(d.platform == 'cpu' and '${ALLOW_CPU:-0}' == '0' and 'no accelerator: jax sees only the CPU (ALLOW_CPU=1)')"

TOTAL_S=${TOTAL_S:-570} LIMIT_S=${LIMIT_S:-540}
script_start=$(date +%s)
for recipe in ${RECIPES:-anchored-mix ladd}; do
  start=$(date +%s)
  left=$((TOTAL_S - (start - script_start)))
  limit=$((left < LIMIT_S ? left : LIMIT_S))
  if [ "$limit" -lt 30 ]; then
    echo "$recipe: skipped, ${limit} s left of TOTAL_S=$TOTAL_S"
    continue
  fi
  if timeout "$limit" "${LADD_CMD[@]}" demo --recipe "$recipe" --seed "${SEED:-0}" --out "$WORK/$recipe" \
    "${EXTRA[@]}"; then
    echo "$recipe: done in $(($(date +%s) - start)) s"
  else
    echo "$recipe: exit $? after $(($(date +%s) - start)) s (124: stopped at its limit, $limit s)"
  fi
  mkdir -p "$OUT/$recipe"
  for f in report.md metrics.json curves.png grid_0.png; do
    if [ -f "$WORK/$recipe/$f" ]; then cp "$WORK/$recipe/$f" "$OUT/$recipe/"; fi
  done
done
