"""XLA:CPU settings that ladd-jax applies before jax starts its backend, each measured, with its reason.

XLA reads XLA_FLAGS once, when the first backend starts, and stops the process on a flag it does not know, so the
flags are added only under the jaxlib versions they were measured with, and a flag the user set keeps the user's
value. `ladd-jax` (cli.main) and the tests apply them; a Python user calls `apply_cpu_defaults()` before the first
jax computation (importing jax is fine). They touch only the CPU backend: GPU and TPU runs are unchanged.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import MutableMapping

CPU_DEFAULTS = {
    # jaxlib 0.10 hands dots to YNNPACK fusions by default. XLA's own dot emitters are faster for our steps: the LADD
    # bench's gradients 2396 / 2625 ms against 2907 / 2838 ms with the fusions (the PyTorch eager reference, timed in
    # the same rounds: 2689 / 2999 and 2904 / 2771 ms; README "Benchmarks").
    "--xla_cpu_experimental_ynn_fusion_type": "",
}
MEASURED_WITH = ("0.10.",)  # jaxlib version prefixes the flags exist in and were measured with


def apply_cpu_defaults(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Adds CPU_DEFAULTS to environ["XLA_FLAGS"] (those the user did not set) under a measured jaxlib; returns the
    flags added."""
    try:
        jaxlib = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return []
    if not jaxlib.startswith(MEASURED_WITH):
        return []
    present = {f.split("=")[0] for f in environ.get("XLA_FLAGS", "").split()}
    added = [f"{name}={value}" for name, value in CPU_DEFAULTS.items() if name not in present]
    if added:
        environ["XLA_FLAGS"] = " ".join([environ.get("XLA_FLAGS", ""), *added]).strip()
    return added
