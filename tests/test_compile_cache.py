"""The `ladd-jax` commands' persistent compilation cache: where it goes, how it is turned off, and that a second
process loads what the first compiled."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import pytest

from ladd_jax.compile_cache import JAX_VARIABLE, OFF_VARIABLE, default_cache_dir, enable_compilation_cache


@pytest.fixture
def restore_cache_dir():
    before = jax.config.jax_compilation_cache_dir
    yield
    jax.config.update("jax_compilation_cache_dir", before)


def test_folder_is_the_users_cache_unless_jax_is_told_or_it_is_turned_off(tmp_path, restore_cache_dir):
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    assert default_cache_dir(env) == tmp_path / "xdg" / "ladd_jax" / "jax"
    assert enable_compilation_cache(env) == tmp_path / "xdg" / "ladd_jax" / "jax"
    assert (tmp_path / "xdg" / "ladd_jax" / "jax").is_dir()
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xdg" / "ladd_jax" / "jax")

    jax.config.update("jax_compilation_cache_dir", None)
    assert enable_compilation_cache({**env, JAX_VARIABLE: str(tmp_path / "mine")}) == tmp_path / "mine"
    for off in ("1", "yes"):
        assert enable_compilation_cache({**env, OFF_VARIABLE: off}) is None
    assert jax.config.jax_compilation_cache_dir is None  # neither changed jax's setting
    assert enable_compilation_cache({**env, OFF_VARIABLE: "0"}) is not None


def test_a_folder_that_cannot_be_made_warns_and_the_run_goes_on(tmp_path, restore_cache_dir):
    (tmp_path / "file").write_text("")
    with pytest.warns(UserWarning, match=f"cannot create .*set {JAX_VARIABLE}=DIR"):
        assert enable_compilation_cache({"XDG_CACHE_HOME": str(tmp_path / "file")}) is None


def test_a_second_process_loads_the_executable_the_first_compiled(tmp_path):
    """Two processes compile the same program through the CLI's setting; the second finds it in the cache."""
    program = textwrap.dedent(
        """
        import jax, jax.numpy as jnp
        from ladd_jax.compile_cache import enable_compilation_cache
        hits = []
        jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name))
        enable_compilation_cache()
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        x = jnp.arange(8.0)
        print(float(jax.jit(lambda a: jnp.sin(a) @ jnp.cos(a) + 3.0)(x)))
        print("hits", hits.count("/jax/compilation_cache/cache_hits"))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in (JAX_VARIABLE, OFF_VARIABLE)}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    runs = [subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True) for _ in "ab"]
    for run in runs:
        assert run.returncode == 0, run.stderr
    (value_a, hits_a), (value_b, hits_b) = (run.stdout.split("\n")[:2] for run in runs)
    assert value_a == value_b
    assert hits_a == "hits 0" and int(hits_b.split()[1]) >= 1  # the jitted program (and jnp.arange's) loaded
    assert any(Path(tmp_path, "ladd_jax", "jax").iterdir())
