"""transformers `CLIPTextModelWithProjection` folders <-> `ladd_jax.models.clip.CLIPTextEncoder` params.

Torch-free: safetensors are read and written with numpy. `load_clip(folder)` reads config.json and
model.safetensors (or its shards); `save_clip(...)` writes a folder that
`transformers.CLIPTextModelWithProjection.from_pretrained` loads without missing or unexpected keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ladd_jax.atomic import atomic_path
from ladd_jax.convert.params import abstract_shapes, export_params, flatten, load_params
from ladd_jax.convert.safetensors_io import read_folder, write_folder
from ladd_jax.convert.table import LINEAR, Rule, expand, rule
from ladd_jax.errors import LaddError
from ladd_jax.models.clip import CLIPTextConfig, CLIPTextEncoder

ARCHITECTURE = "CLIPTextModelWithProjection"
MODEL_TYPE = "clip_text_model"

_LAYER = "text_model.encoder.layers.{i}"
TABLE: list[Rule] = [
    rule("text_model.embeddings.token_embedding.weight", "token_embedding/embedding"),
    rule("text_model.embeddings.position_embedding.weight", "position_embedding/embedding"),
    *(
        r
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj")
        for r in (
            rule(f"{_LAYER}.self_attn.{proj}.weight", f"layers_{{i}}/self_attn/{proj}/kernel", LINEAR),
            rule(f"{_LAYER}.self_attn.{proj}.bias", f"layers_{{i}}/self_attn/{proj}/bias"),
        )
    ),
    *(
        r
        for fc in ("fc1", "fc2")
        for r in (
            rule(f"{_LAYER}.mlp.{fc}.weight", f"layers_{{i}}/mlp/{fc}/kernel", LINEAR),
            rule(f"{_LAYER}.mlp.{fc}.bias", f"layers_{{i}}/mlp/{fc}/bias"),
        )
    ),
    *(
        r
        for ln in ("layer_norm1", "layer_norm2")
        for r in (
            rule(f"{_LAYER}.{ln}.weight", f"layers_{{i}}/{ln}/scale"),
            rule(f"{_LAYER}.{ln}.bias", f"layers_{{i}}/{ln}/bias"),
        )
    ),
    rule("text_model.final_layer_norm.weight", "final_layer_norm/scale"),
    rule("text_model.final_layer_norm.bias", "final_layer_norm/bias"),
    rule("text_projection.weight", "text_projection/kernel", LINEAR),
]

# A non-persistent buffer that old transformers versions saved; recomputed, never a weight.
_IGNORED = ("text_model.embeddings.position_ids",)


def rules(config: CLIPTextConfig) -> list[Rule]:
    """The table expanded over the config's layers."""
    return expand(TABLE, [frozenset()] * config.num_hidden_layers)


def abstract_params(config: CLIPTextConfig) -> dict:
    """The model's param tree as shapes only (`jax.eval_shape`, nothing materialised)."""
    model = CLIPTextEncoder(config)
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]


def read_hf_config(folder: str | Path, architecture: str, model_type: str) -> dict[str, Any]:
    """config.json of a transformers folder, checked to describe `architecture`."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise LaddError(f"{folder} holds no config.json; expected a transformers {architecture} folder")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LaddError(f"{path} is not valid JSON ({e}); re-download or re-export it") from e
    archs = config.get("architectures") or []
    found = archs or [f"model_type {config.get('model_type')!r}"]
    if (archs and architecture not in archs) or (not archs and config.get("model_type") != model_type):
        raise LaddError(
            f"{path} describes {', '.join(found)}, but a {architecture} (model_type {model_type!r}) is expected "
            "here; point to the right sub-folder (e.g. text_encoder, text_encoder_2, text_encoder_3 of an SD3 "
            "checkpoint)"
        )
    return config


def check_params(params: Mapping, abstract: Mapping, what: str) -> None:
    """Fails listing every param whose name or shape is not the model's."""
    have = {k: tuple(np.shape(v)) for k, v in flatten(params).items()}
    want = abstract_shapes(abstract)
    bad = [f"missing {k}" for k in want if k not in have]
    bad += [f"unexpected {k}" for k in have if k not in want]
    bad += [f"{k}: {have[k]}, expected {want[k]}" for k in want if k in have and have[k] != want[k]]
    if bad:
        raise LaddError(f"params do not match the {what} their config describes:\n  " + "\n  ".join(bad))


def hf_dtype_name(dtype: Any) -> str:
    """The name transformers writes as config.json's "dtype" ("float32", "bfloat16", ...)."""
    return np.dtype(dtype).name


def load_clip(folder: str | Path) -> tuple[CLIPTextConfig, dict]:
    """A transformers `CLIPTextModelWithProjection` folder -> (config, fp32 params), validated."""
    config = CLIPTextConfig.from_hf(read_hf_config(folder, ARCHITECTURE, MODEL_TYPE))
    params = load_params(
        read_folder(folder, "model"), rules(config), abstract_params(config), f"CLIP text encoder {folder}", _IGNORED
    )
    return config, params


def save_clip(
    config: CLIPTextConfig, params: Mapping, folder: str | Path, dtype: Any = None, overwrite: bool = False
) -> None:
    """Writes config.json + model.safetensors (cast to `dtype` if given), atomically, for transformers."""
    check_params(params, abstract_params(config), "CLIP text encoder")
    tensors = export_params(params, rules(config), dtype)
    hf = config.to_hf()
    hf["dtype"] = hf_dtype_name(dtype or np.float32)
    with atomic_path(folder, overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
        write_folder(tmp, "model", tensors)
