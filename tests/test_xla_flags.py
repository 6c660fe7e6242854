"""ladd_jax.xla_flags: the measured XLA:CPU defaults, added only where they exist and never over a user's value."""

import importlib.metadata
import os

from ladd_jax import xla_flags


def test_defaults_are_added_kept_and_version_guarded(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.10.2")
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    added = xla_flags.apply_cpu_defaults(env)
    assert added == [f"{k}={v}" for k, v in xla_flags.CPU_DEFAULTS.items()]
    assert env["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8", *added]
    assert xla_flags.apply_cpu_defaults(env) == [] and env["XLA_FLAGS"].split()[1:] == added  # no duplicates

    user = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT"}
    xla_flags.apply_cpu_defaults(user)
    assert user["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT"

    # XLA stops the process on a flag it does not know: an unmeasured jaxlib keeps XLA's own defaults.
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.11.0")
    other = {}
    assert xla_flags.apply_cpu_defaults(other) == [] and other == {}


def test_the_suite_runs_with_them():
    flags = os.environ["XLA_FLAGS"].split()
    if importlib.metadata.version("jaxlib").startswith(xla_flags.MEASURED_WITH):
        assert all(f"{k}={v}" in flags for k, v in xla_flags.CPU_DEFAULTS.items())
