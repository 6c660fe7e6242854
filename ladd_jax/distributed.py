"""Multi-process JAX: one `initialize(config)` call, before any other JAX call, for every launcher.

- Explicit: `coordinator_address` ("host:port" of process 0), `num_processes` and `process_id` (all three),
  e.g. two processes on localhost in the tests or a hand-rolled launcher; num_processes = 1 is a no-op.
- Detected: under a multi-process launcher that JAX knows, `jax.distributed.initialize()` reads the rest
  from the launcher's environment: SLURM (srun with more than one task), Open MPI (mpirun with more than one
  rank), Cloud TPU VMs (the metadata server lists the slice's workers; a single-host TPU VM is 1 process).
- Otherwise: one process, nothing to do.

On CPU, cross-process collectives use gloo, JAX 0.10's default for `jax_cpu_collectives_implementation`
(set JAX_CPU_COLLECTIVES_IMPLEMENTATION=mpi to change it); GPUs use NCCL and TPUs their interconnect.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import jax

from ladd_jax.errors import LaddError

# The variables JAX's own SLURM detection needs (jax/_src/clusters/slurm_cluster.py): set inside `srun`.
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
OMPI_URI = "OMPI_MCA_orte_hnp_uri"  # what JAX's Open MPI detection reads (set by mpirun)
DEFAULT_TIMEOUT_S = 300  # how long processes wait for each other to join


def _get(config: Any, name: str) -> Any:
    """A field of a ConfigDict, dataclass, argparse Namespace or dict; None when absent."""
    if config is None:
        return None
    if isinstance(config, Mapping):
        return config.get(name)
    return getattr(config, name, None)


def detect_launcher() -> str | None:
    """ "slurm", "openmpi" or "tpu" when this process runs under a multi-process launcher JAX can read."""
    env = os.environ
    if all(k in env for k in SLURM_VARS) and int(env["SLURM_NTASKS"]) > 1:
        return "slurm"
    if OMPI_URI in env and int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "openmpi"
    # `jax[tpu]` brings libtpu, which only TPU VMs install; JAX then asks the VM's metadata server for the rest.
    if importlib.util.find_spec("libtpu") is not None:
        return "tpu"
    return None


def initialize(config_or_args: Any = None) -> None:
    """Joins this process to the others (see the module docstring); call it first thing in a program.

    `config_or_args`: anything with the optional fields coordinator_address, num_processes, process_id,
    local_device_ids (the devices this process uses; default all it sees) and initialization_timeout
    (seconds) - a ConfigDict, an argparse Namespace, a dict - or None to rely on detection alone."""
    if jax.distributed.is_initialized():
        return
    address, count, pid = (_get(config_or_args, k) for k in ("coordinator_address", "num_processes", "process_id"))
    local_device_ids = _get(config_or_args, "local_device_ids")
    timeout = int(_get(config_or_args, "initialization_timeout") or DEFAULT_TIMEOUT_S)
    given = {"coordinator_address": address, "num_processes": count, "process_id": pid}

    if any(v is not None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise LaddError(
                f"distributed setup names {[k for k in given if k not in missing]} but not {missing}; give all "
                "three of coordinator_address, num_processes and process_id, or none to auto-detect the launcher"
            )
        count, pid = int(count), int(pid)
        if not 0 <= pid < count:
            raise LaddError(f"process_id={pid} is outside 0..{count - 1} (num_processes={count}); number them densely")
        if count == 1:
            return
        kwargs = dict(coordinator_address=str(address), num_processes=count, process_id=pid)
        what = f"process {pid} of {count} with coordinator {address}"
    else:
        launcher = detect_launcher()
        if launcher is None:
            return
        kwargs, what = {}, f"the {launcher} launcher's environment"

    if local_device_ids is not None:
        kwargs["local_device_ids"] = [int(i) for i in local_device_ids]
    try:
        jax.distributed.initialize(initialization_timeout=timeout, **kwargs)
    except (RuntimeError, ValueError) as e:
        raise LaddError(
            f"jax.distributed.initialize failed for {what}: {e}. Call it before any other JAX call; give every "
            "process the same coordinator_address and num_processes, each its own process_id, and start process 0"
        ) from e
