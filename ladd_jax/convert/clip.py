"""transformers `CLIPTextModelWithProjection` folders <-> `ladd_jax.models.clip.CLIPTextEncoder` params.

Torch-free: safetensors are read and written with numpy. `load_clip(folder)` reads config.json and
model.safetensors (or its shards); `save_clip(...)` writes a folder that
`transformers.CLIPTextModelWithProjection.from_pretrained` loads without missing or unexpected keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from ladd_jax.convert.hf import read_hf_config, save_hf_folder
from ladd_jax.convert.params import check_params, export_params, load_params
from ladd_jax.convert.safetensors_io import read_folder
from ladd_jax.convert.table import LINEAR, Rule, expand, rule
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
    save_hf_folder(config.to_hf(), export_params(params, rules(config), dtype), folder, dtype, overwrite)
