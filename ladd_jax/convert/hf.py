"""Conventions of transformers model folders: config.json checks and writing a folder back."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ladd_jax.atomic import atomic_path
from ladd_jax.convert.safetensors_io import LazyTensor, write_folder
from ladd_jax.errors import LaddError
from ladd_jax.jsonfile import read_json


def read_hf_config(folder: str | Path, architecture: str, model_type: str) -> dict[str, Any]:
    """config.json of a transformers folder, checked to describe `architecture`."""
    path = Path(folder) / "config.json"
    config = read_json(path, f"{folder} holds no config.json; expected a transformers {architecture} folder")
    archs = config.get("architectures") or []
    found = archs or [f"model_type {config.get('model_type')!r}"]
    if (archs and architecture not in archs) or (not archs and config.get("model_type") != model_type):
        raise LaddError(
            f"{path} describes {', '.join(found)}, but a {architecture} (model_type {model_type!r}) is expected "
            "here; point to the right sub-folder (e.g. text_encoder, text_encoder_2, text_encoder_3 of an SD3 "
            "checkpoint)"
        )
    return config


def save_hf_folder(
    hf_config: dict[str, Any], tensors: Mapping[str, LazyTensor], folder: str | Path, dtype: Any, overwrite: bool
) -> None:
    """config.json (with transformers' "dtype" entry) + model.safetensors (sharded past 10 GiB), atomically."""
    hf_config = {**hf_config, "dtype": np.dtype(dtype or np.float32).name}
    with atomic_path(folder, overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")
        write_folder(tmp, "model", tensors)
