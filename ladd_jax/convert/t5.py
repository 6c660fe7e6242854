"""transformers `T5EncoderModel` folders <-> `ladd_jax.models.t5.T5Encoder` params.

Torch-free: safetensors are read and written with numpy. transformers ties `encoder.embed_tokens.weight`
to `shared.weight`; a checkpoint may hold either or both (the same tensor). Loading reads `shared.weight`,
or `encoder.embed_tokens.weight` when only that is present; saving writes `shared.weight` alone, as
`save_pretrained` does, which `from_pretrained` loads without missing or unexpected keys.
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
from ladd_jax.models.t5 import T5Config, T5Encoder

ARCHITECTURE = "T5EncoderModel"
MODEL_TYPE = "t5"

_SHARED, _TIED = "shared.weight", "encoder.embed_tokens.weight"
_ATTN, _FF = "encoder.block.{i}.layer.0", "encoder.block.{i}.layer.1"
# Layer tags: "gated" (T5 v1.1: wi_0, wi_1) or "dense" (original T5: wi).
TABLE: list[Rule] = [
    rule(_SHARED, "shared/embedding"),
    rule(f"{_ATTN.format(i=0)}.SelfAttention.relative_attention_bias.weight", "relative_attention_bias/embedding"),
    rule(f"{_ATTN}.layer_norm.weight", "block_{i}/attention_norm/scale"),
    *(rule(f"{_ATTN}.SelfAttention.{p}.weight", f"block_{{i}}/attention/{p}/kernel", LINEAR) for p in "qkvo"),
    rule(f"{_FF}.layer_norm.weight", "block_{i}/ff_norm/scale"),
    rule(f"{_FF}.DenseReluDense.wi_0.weight", "block_{i}/ff/wi_0/kernel", LINEAR, when="gated"),
    rule(f"{_FF}.DenseReluDense.wi_1.weight", "block_{i}/ff/wi_1/kernel", LINEAR, when="gated"),
    rule(f"{_FF}.DenseReluDense.wi.weight", "block_{i}/ff/wi/kernel", LINEAR, when="dense"),
    rule(f"{_FF}.DenseReluDense.wo.weight", "block_{i}/ff/wo/kernel", LINEAR),
    rule("encoder.final_layer_norm.weight", "final_layer_norm/scale"),
]


def rules(config: T5Config) -> list[Rule]:
    """The table expanded over the config's blocks."""
    tags = frozenset({"gated" if config.is_gated_act else "dense"})
    return expand(TABLE, [tags] * config.num_layers)


def abstract_params(config: T5Config) -> dict:
    """The model's param tree as shapes only (`jax.eval_shape`, nothing materialised)."""
    model = T5Encoder(config)
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]


def load_t5(folder: str | Path) -> tuple[T5Config, dict]:
    """A transformers `T5EncoderModel` folder -> (config, fp32 params), validated."""
    config = T5Config.from_hf(read_hf_config(folder, ARCHITECTURE, MODEL_TYPE))
    source = read_folder(folder, "model")
    if _SHARED not in source and _TIED in source:
        source[_SHARED] = source.pop(_TIED)
    params = load_params(source, rules(config), abstract_params(config), f"T5 encoder {folder}", (_TIED,))
    return config, params


def save_t5(config: T5Config, params: Mapping, folder: str | Path, dtype: Any = None, overwrite: bool = False) -> None:
    """Writes config.json + model.safetensors (sharded past 10 GiB; cast to `dtype` if given), atomically."""
    check_params(params, abstract_params(config), "T5 encoder")
    save_hf_folder(config.to_hf(), export_params(params, rules(config), dtype), folder, dtype, overwrite)
