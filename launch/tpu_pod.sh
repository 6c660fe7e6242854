#!/usr/bin/env bash
# LADD training on a Cloud TPU pod slice: the same command on every worker (`--worker=all`), one JAX process
# per worker; ladd_jax.distributed detects the TPU VM and jax.distributed.initialize() finds the other workers
# through the VM metadata server.
#
#   TPU=ladd-v5p-64 ZONE=us-east5-a WORKDIR=gs://my-bucket/ladd/sd35l \
#   TEACHER=gs://my-bucket/models/stable-diffusion-3.5-large DATA=gs://my-bucket/synth/sd35l \
#   VARIANT=sd3.5-large launch/tpu_pod.sh --config.mesh.fsdp=-1 --config.mesh.data=1
#
# Environment:
#   TPU, ZONE     the TPU VM (created beforehand: gcloud compute tpus tpu-vm create ...) and its zone
#   PROJECT       the GCP project (default: gcloud's configured one)
#   WORKDIR       a gs:// folder (orbax writes checkpoints there from every worker; resumes from it)
#   TEACHER       the diffusers SD3 folder (gs:// or a path present on every worker); copied to local disk
#   DATA          the `ladd-jax synth` output folder (gs:// or local); copied to local disk
#   VARIANT       configs/ladd.py variant (default sd3.5-large)
#   STAGE         where TEACHER and DATA are copied on each worker (default /tmp/ladd); needs their size free
#   DETACH=1      start the run under nohup (log: ~/ladd_train.log on each worker) and return
#   LIBTPU_INIT_ARGS  extra TPU runtime / XLA flags, passed through to every worker
# Extra arguments go to `ladd-jax train`.
set -euo pipefail

TPU="${TPU:?set TPU to the TPU VM name}"
ZONE="${ZONE:?set ZONE to the TPU VM zone}"
WORKDIR="${WORKDIR:?set WORKDIR to a gs:// run folder}"
TEACHER="${TEACHER:?set TEACHER to the teacher pipeline folder (gs:// or a path on every worker)}"
DATA="${DATA:?set DATA to the synthetic-latent folder (gs:// or a path on every worker)}"
VARIANT="${VARIANT:-sd3.5-large}"
STAGE="${STAGE:-/tmp/ladd}"
PROJECT_FLAG=()
[[ -n "${PROJECT:-}" ]] && PROJECT_FLAG=(--project "${PROJECT}")
TPU_FLAGS=(--zone "${ZONE}" "${PROJECT_FLAG[@]}" --worker=all)

# 1. Ship this checkout (committed files only: what `git archive` packs) to every worker.
cd "$(dirname "$0")/.."
ARCHIVE="$(mktemp -d)/ladd_jax.tar.gz"
git archive --format=tar.gz -o "${ARCHIVE}" HEAD
gcloud compute tpus tpu-vm scp "${ARCHIVE}" "${TPU}:~/ladd_jax.tar.gz" "${TPU_FLAGS[@]}"

# 2. Install, stage the teacher and the data on local disk, train. printf %q keeps the extra arguments intact.
stage() {  # a gs:// folder is copied; a local path is used as is
  if [[ "$1" == gs://* ]]; then
    printf 'mkdir -p %q && gcloud storage rsync --recursive %q %q && ' "${STAGE}/$2" "$1" "${STAGE}/$2"
  fi
}
local_path() { if [[ "$1" == gs://* ]]; then echo "${STAGE}/$2"; else echo "$1"; fi; }

TRAIN="ladd-jax train --config configs/ladd.py:${VARIANT} --workdir $(printf %q "${WORKDIR}")"
TRAIN+=" --config.teacher=$(printf %q "$(local_path "${TEACHER}" teacher)")"
TRAIN+=" --config.data=$(printf %q "$(local_path "${DATA}" data)")"
for arg in "$@"; do TRAIN+=" $(printf %q "${arg}")"; done
if [[ "${DETACH:-0}" == 1 ]]; then
  TRAIN="nohup ${TRAIN} > ~/ladd_train.log 2>&1 &"
fi

REMOTE="set -e; rm -rf ~/ladd_jax && mkdir ~/ladd_jax && tar -xzf ~/ladd_jax.tar.gz -C ~/ladd_jax && cd ~/ladd_jax && "
REMOTE+="python3 -m pip install -q -U pip && python3 -m pip install -q -U 'jax[tpu]' -e . && "
REMOTE+="export PATH=\$HOME/.local/bin:\$PATH LIBTPU_INIT_ARGS=$(printf %q "${LIBTPU_INIT_ARGS:-}") && "
REMOTE+="$(stage "${TEACHER}" teacher)$(stage "${DATA}" data)${TRAIN}"

gcloud compute tpus tpu-vm ssh "${TPU}" "${TPU_FLAGS[@]}" --command "${REMOTE}"
