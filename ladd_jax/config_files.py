"""Loading an ml_collections config file by path (configs/ is data beside the package, not an installed module)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections

from ladd_jax.errors import LaddError


def load_config_file(path: str | Path, variant: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(variant)` of the config file at `path`, as `ladd-jax train --config PATH:VARIANT` reads it."""
    path = Path(path)
    if not path.is_file():
        raise LaddError(f"no file {path}: give PATH:VARIANT of a config file, from the repository root (configs/)")
    module_spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    try:
        return module.get_config(variant or None)
    except ValueError as e:
        raise LaddError(f"{path}:{variant}: {e}") from None
