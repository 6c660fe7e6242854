"""transformers `Dinov2Model` folders <-> `ladd_jax.models.dinov2.Dinov2` params.

Torch-free: safetensors are read and written with numpy. Tensor names are those on disk, which differ from
transformers 5's module names: the hub's DINOv2 checkpoints, and `save_pretrained` (which maps the module names
back), keep the original layout (`attention.attention.query`, `attention.output.dense`, and for the SwiGLU FFN
one fused `mlp.weights_in` = [gate; up] and `mlp.weights_out`), which `from_pretrained` renames on load.
`load_dinov2(folder)` reads config.json and model.safetensors (or its shards); `save_dinov2(...)` writes a folder
that `transformers.Dinov2Model.from_pretrained` loads without missing or unexpected keys. The mask token is kept
as a param (`use_mask_token`), so an exported folder holds every tensor the original did.
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
from ladd_jax.convert.table import CONV2D, LINEAR, Rule, expand, rule
from ladd_jax.models.dinov2 import Dinov2, Dinov2Config

ARCHITECTURE = "Dinov2Model"
MODEL_TYPE = "dinov2"

_LAYER = "encoder.layer.{i}"


def _linear(src: str, dst: str, when: tuple[str, ...] = (), bias_when: tuple[str, ...] = ()) -> list[Rule]:
    """A torch Linear of layer {i} (weight [out, in], bias) <-> a Flax Dense (kernel [in, out], bias); the bias
    rule also needs the tags `bias_when`."""
    weight = rule(f"{_LAYER}.{src}.weight", f"layer_{{i}}/{dst}/kernel", LINEAR, when)
    return [weight, rule(f"{_LAYER}.{src}.bias", f"layer_{{i}}/{dst}/bias", when=(*when, *bias_when))]


# Layer tags: "mlp" (fc1, fc2) or "swiglu" (weights_in, weights_out); "qkv_bias" when q, k, v have biases.
TABLE: list[Rule] = [
    rule("embeddings.cls_token", "embeddings/cls_token"),
    rule("embeddings.position_embeddings", "embeddings/position_embeddings"),
    rule("embeddings.patch_embeddings.projection.weight", "embeddings/patch_embeddings/kernel", CONV2D),
    rule("embeddings.patch_embeddings.projection.bias", "embeddings/patch_embeddings/bias"),
    *(
        r
        for norm in ("norm1", "norm2")
        for r in (
            rule(f"{_LAYER}.{norm}.weight", f"layer_{{i}}/{norm}/scale"),
            rule(f"{_LAYER}.{norm}.bias", f"layer_{{i}}/{norm}/bias"),
        )
    ),
    *_linear("attention.attention.query", "attention/q_proj", bias_when=("qkv_bias",)),
    *_linear("attention.attention.key", "attention/k_proj", bias_when=("qkv_bias",)),
    *_linear("attention.attention.value", "attention/v_proj", bias_when=("qkv_bias",)),
    *_linear("attention.output.dense", "attention/o_proj"),
    rule(f"{_LAYER}.layer_scale1.lambda1", "layer_{i}/layer_scale1"),
    rule(f"{_LAYER}.layer_scale2.lambda1", "layer_{i}/layer_scale2"),
    *_linear("mlp.fc1", "mlp/fc1", when=("mlp",)),
    *_linear("mlp.fc2", "mlp/fc2", when=("mlp",)),
    *_linear("mlp.weights_in", "mlp/weights_in", when=("swiglu",)),
    *_linear("mlp.weights_out", "mlp/weights_out", when=("swiglu",)),
    rule("layernorm.weight", "layernorm/scale"),
    rule("layernorm.bias", "layernorm/bias"),
]
# Only in checkpoints of configs with use_mask_token (transformers' default); outside TABLE, which `expand`
# copies whole apart from the per-layer rules.
MASK_TOKEN = rule("embeddings.mask_token", "embeddings/mask_token")


def rules(config: Dinov2Config) -> list[Rule]:
    """The table expanded over the config's layers, with the mask token when the config has one."""
    tags = frozenset({"swiglu" if config.use_swiglu_ffn else "mlp"} | ({"qkv_bias"} if config.qkv_bias else set()))
    table = [*TABLE, MASK_TOKEN] if config.use_mask_token else TABLE
    return expand(table, [tags] * config.num_hidden_layers)


def abstract_params(config: Dinov2Config) -> dict:
    """The model's param tree as shapes only (`jax.eval_shape`, nothing materialised; one patch of input)."""
    pixels = jnp.zeros((1, config.patch_size, config.patch_size, config.num_channels), jnp.float32)
    return jax.eval_shape(Dinov2(config).init, jax.random.key(0), pixels)["params"]


def load_dinov2(folder: str | Path) -> tuple[Dinov2Config, dict]:
    """A transformers `Dinov2Model` folder -> (config, fp32 params), validated."""
    config = Dinov2Config.from_hf(read_hf_config(folder, ARCHITECTURE, MODEL_TYPE))
    params = load_params(read_folder(folder, "model"), rules(config), abstract_params(config), f"DINOv2 {folder}")
    return config, params


def save_dinov2(
    config: Dinov2Config, params: Mapping, folder: str | Path, dtype: Any = None, overwrite: bool = False
) -> None:
    """Writes config.json + model.safetensors (sharded past 10 GiB; cast to `dtype` if given), atomically."""
    check_params(params, abstract_params(config), "DINOv2")
    save_hf_folder(config.to_hf(), export_params(params, rules(config), dtype), folder, dtype, overwrite)
