"""jax's persistent compilation cache for the `ladd-jax` commands: a second run of the same program loads the
compiled executables instead of compiling them again (`ladd-jax demo --quick` on 2 CPU cores: 231 s, then 173 s;
MaxText keeps such a cache by default too).

The folder: $JAX_COMPILATION_CACHE_DIR when set (jax reads it itself), else $XDG_CACHE_HOME/ladd_jax/jax (default
~/.cache/ladd_jax/jax). LADD_JAX_NO_COMPILATION_CACHE=1 turns it off. jax keys each entry by the program, the
compile options, the backend and jax's version, so a changed program never loads a stale executable.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

OFF_VARIABLE = "LADD_JAX_NO_COMPILATION_CACHE"
JAX_VARIABLE = "JAX_COMPILATION_CACHE_DIR"


def default_cache_dir(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ladd_jax" / "jax"


def enable_compilation_cache(env: Mapping[str, str] = os.environ) -> Path | None:
    """Points jax's persistent compilation cache at its folder (module docstring) and returns it; None when turned
    off. A folder that cannot be made costs a warning, not the run: the cache only saves time."""
    if env.get(OFF_VARIABLE, "") not in ("", "0"):
        return None
    if env.get(JAX_VARIABLE):
        return Path(env[JAX_VARIABLE])
    path = default_cache_dir(env)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        warnings.warn(
            f"no compilation cache: cannot create {path} ({e.strerror}); set {JAX_VARIABLE}=DIR", stacklevel=2
        )
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(path))
    return path
