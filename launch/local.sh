#!/usr/bin/env bash
# LADD training on one host: a CPU, or every GPU / TPU chip of one machine (one process sees them all).
#
#   WORKDIR=runs/tiny launch/local.sh --config.teacher=tiny_sd3 --config.data=synth_out
#   VARIANT=sd3-medium WORKDIR=/scratch/ladd launch/local.sh --config.teacher=/models/sd3-medium --config.data=/data/synth
#
# Environment:
#   VARIANT            configs/ladd.py variant: tiny (default), sd3-medium, sd3.5-medium, sd3.5-large
#   WORKDIR            checkpoints, logs and sample grids; a rerun with the same WORKDIR resumes (required)
#   SIMULATE_DEVICES   CPU only: pretend the CPU is N devices (exercises the data x fsdp mesh without accelerators)
# Extra arguments go to `ladd-jax train` (e.g. --config.total_steps=100 --config.mesh.fsdp=8).
set -euo pipefail

VARIANT="${VARIANT:-tiny}"
WORKDIR="${WORKDIR:?set WORKDIR to the run folder (a rerun with the same folder resumes)}"

# GPUs: let XLA take most of the memory up front (the default is 75%), leaving room for cuDNN / NCCL workspaces.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
if [[ -n "${SIMULATE_DEVICES:-}" ]]; then
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="--xla_force_host_platform_device_count=${SIMULATE_DEVICES} ${XLA_FLAGS:-}"
fi

cd "$(dirname "$0")/.."
exec ladd-jax train --config "configs/ladd.py:${VARIANT}" --workdir "${WORKDIR}" "$@"
