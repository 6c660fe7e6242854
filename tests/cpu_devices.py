"""Test subprocesses: environments (simulated CPU devices; XLA:CPU's optimisation back on) that keep the session's
other XLA flags (conftest.py), and `ladd-jax` run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys


def _xla_flags_with(flag: str, drop: tuple[str, ...] = ()) -> str:
    """The session's XLA_FLAGS with `flag` (--name=value) in place of any other value of the same name, and without
    the flags named in `drop` (--name)."""
    names = {flag.split("=")[0], *drop}
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if f.split("=")[0] not in names]
    return " ".join([*kept, flag])


def cpu_env(devices: int) -> dict[str, str]:
    """os.environ with `devices` simulated CPU devices and JAX on the CPU; the other XLA flags are kept."""
    flags = _xla_flags_with(f"--xla_force_host_platform_device_count={devices}")
    return {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}


def optimised_env() -> dict[str, str]:
    """os.environ with XLA:CPU's LLVM optimisation back on (conftest.py turns it off), at level 1: for subprocesses
    that train or sample for long enough to repay it. Level 1 compiles the toy LADD step in 47 s instead of level 2's
    55 at the same step time (`ladd-jax demo --quick`: 3.3 instead of 3.7 minutes alone, the same numbers). XLA's
    default emitters too, as a user runs it: with conftest.py's older ones `ladd-jax demo --quick` compiled for 138 s
    instead of 82 and stepped slower (276 s against 216 alone)."""
    flags = _xla_flags_with("--xla_backend_optimization_level=1", drop=("--xla_cpu_use_fusion_emitters",))
    return {**os.environ, "XLA_FLAGS": flags}


def run_optimised_cli(*args: str) -> None:
    """`ladd-jax ARGS` as a user runs it, in a subprocess with `optimised_env`; its stderr's end on failure."""
    run = subprocess.run(
        [sys.executable, "-m", "ladd_jax.cli", *args], env=optimised_env(), capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-4000:]
