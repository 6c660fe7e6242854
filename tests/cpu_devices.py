"""Environments for test subprocesses on simulated CPU devices, keeping the session's XLA flags (conftest.py)."""

from __future__ import annotations

import os


def cpu_env(devices: int) -> dict[str, str]:
    """os.environ with `devices` simulated CPU devices and JAX on the CPU; the other XLA flags are kept."""
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform")]
    flags = " ".join([*kept, f"--xla_force_host_platform_device_count={devices}"])
    return {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
