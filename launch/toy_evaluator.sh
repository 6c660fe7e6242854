#!/usr/bin/env bash
# Trains the toy world's evaluator (prompt alignment and FD features) and writes the copy that ships with the
# project, ladd_jax/toy/assets/evaluator/ (evaluator.json there records the accuracy reached). A few minutes
# on 2 CPU cores (about 370 CPU-seconds: rendering 32k training images, then 3000 Adam steps).
#
#   launch/toy_evaluator.sh                 # replaces the shipped evaluator
#   OUT=/tmp/evaluator launch/toy_evaluator.sh --steps 500
#   BUCKET=48x80 launch/toy_evaluator.sh    # the multi-aspect bucket's evaluator, assets/evaluator_48x80 (80x48 alike)
#
# Extra arguments go to `ladd-jax toy-evaluator` (--steps, --batch-size, --pool-size, --seed).
set -euo pipefail

cd "$(dirname "$0")/.."
BUCKET="${BUCKET:-}"
OUT="${OUT:-ladd_jax/toy/assets/evaluator${BUCKET:+_${BUCKET}}}"
mkdir -p "$(dirname "${OUT}")"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"  # the shipped numbers are CPU numbers
exec ladd-jax toy-evaluator --out "${OUT}" --overwrite ${BUCKET:+--bucket "${BUCKET}"} "$@"
