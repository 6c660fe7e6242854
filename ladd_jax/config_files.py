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


def load_with_option(
    path: str | Path, arg: str | None, options: tuple[str, ...], default: str, what: str
) -> tuple[ml_collections.ConfigDict, str]:
    """For a config file built on another's variants (configs/ladd.py's): `VARIANT-OPTION` -> (the config at
    `path` for VARIANT, OPTION), or (VARIANT's config, `default`) without a suffix. Variant names hold dashes
    themselves ("sd3.5-large-lpips" -> sd3.5-large, lpips; "sd3-medium" -> sd3-medium, default)."""
    variant, option = arg, default
    for name in options:
        if arg and arg.endswith(f"-{name}"):
            variant, option = arg[: -len(name) - 1], name
    try:
        return load_config_file(path, variant), option
    except LaddError as e:
        raise ValueError(f"{e}; optionally followed by -{what}, one of {list(options)}") from None
