"""diffusers `AutoencoderKL` folders <-> `ladd_jax.models.vae` params, both ways, through one declarative table.

A diffusers vae folder is `config.json` plus `diffusion_pytorch_model.safetensors` (or its shards and
index). Loading streams tensor by tensor and validates every name and shape before materialising;
saving writes a folder that `diffusers.AutoencoderKL.from_pretrained` loads, atomically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ladd_jax.atomic import atomic_path, check_writable_destination
from ladd_jax.convert.params import abstract_shapes, check_params, export_params, load_params
from ladd_jax.convert.safetensors_io import LazyTensor, read_folder, write_folder
from ladd_jax.convert.table import CONV2D, IDENTITY, Hook, Rule, rule
from ladd_jax.errors import LaddError
from ladd_jax.jsonfile import read_json
from ladd_jax.models.vae import VAEConfig, abstract_vae_params

STEM = "diffusion_pytorch_model"


class AttnLinear(Hook):
    """torch Linear [out, in] <-> flax Dense [in, out]; on load also the legacy 1x1-conv form [out, in, 1, 1]."""

    def forward(self, xs):
        x = xs[0]
        return [x.reshape(x.shape[:2]).T]

    def backward(self, ys):
        return [ys[0].T]

    def forward_shapes(self, shapes):
        (s,) = shapes
        return [(s[1], s[0]) if len(s) == 2 or tuple(s[2:]) == (1, 1) else s]  # anything else: the shape check names it

    def backward_shapes(self, shapes):
        return [(shapes[0][1], shapes[0][0])]


ATTN_LINEAR = AttnLinear()

# Per layer kind: (torch param, flax param, hook).
KINDS: dict[str, tuple[tuple[str, str, Hook], ...]] = {
    "conv": (("weight", "kernel", CONV2D), ("bias", "bias", IDENTITY)),
    "norm": (("weight", "scale", IDENTITY), ("bias", "bias", IDENTITY)),
    "linear": (("weight", "kernel", ATTN_LINEAR), ("bias", "bias", IDENTITY)),
}

# Layers of one resnet / mid-block attention: (torch module, flax module, kind), relative to the block.
RESNET = (
    ("norm1", "norm1", "norm"),
    ("conv1", "conv1", "conv"),
    ("norm2", "norm2", "norm"),
    ("conv2", "conv2", "conv"),
)
SHORTCUT = (("conv_shortcut", "conv_shortcut", "conv"),)
ATTENTION = (
    ("group_norm", "group_norm", "norm"),
    ("to_q", "to_q", "linear"),
    ("to_k", "to_k", "linear"),
    ("to_v", "to_v", "linear"),
    ("to_out.0", "to_out_0", "linear"),
)
# Module templates, {p} the encoder/decoder, {i} the block, {j} the resnet: (torch, flax[, kind]).
CONV_IN = ("{p}.conv_in", "{p}/conv_in", "conv")
DOWN_RESNET = ("{p}.down_blocks.{i}.resnets.{j}", "{p}/down_blocks_{i}/resnets_{j}")
DOWNSAMPLER = ("{p}.down_blocks.{i}.downsamplers.0.conv", "{p}/down_blocks_{i}/downsamplers_0/conv", "conv")
UP_RESNET = ("{p}.up_blocks.{i}.resnets.{j}", "{p}/up_blocks_{i}/resnets_{j}")
UPSAMPLER = ("{p}.up_blocks.{i}.upsamplers.0.conv", "{p}/up_blocks_{i}/upsamplers_0/conv", "conv")
MID_ATTENTION = ("{p}.mid_block.attentions.0", "{p}/mid_block/attentions_0")
MID_RESNET = ("{p}.mid_block.resnets.{j}", "{p}/mid_block/resnets_{j}")
NORM_OUT = ("{p}.conv_norm_out", "{p}/conv_norm_out", "norm")
CONV_OUT = ("{p}.conv_out", "{p}/conv_out", "conv")
QUANT_CONV = ("quant_conv", "quant_conv", "conv")
POST_QUANT_CONV = ("post_quant_conv", "post_quant_conv", "conv")

# Names of pre-0.14 diffusers checkpoints, which diffusers itself still renames on load.
LEGACY_ATTENTION = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def _layers(config: VAEConfig) -> list[tuple[str, str, str]]:
    """(torch module, flax module, kind) of every layer `config` has, in diffusers' state_dict order."""
    out: list[tuple[str, str, str]] = []

    def add(template: tuple[str, ...], layers: tuple[tuple[str, str, str], ...] = (), **names: object) -> None:
        t, f = template[0].format(**names), template[1].format(**names)
        out.extend([(t, f, template[2])] if not layers else [(f"{t}.{a}", f"{f}/{b}", k) for a, b, k in layers])

    def resnet(template: tuple[str, str], c_in: int, c_out: int, **names: object) -> None:
        add(template, RESNET + (SHORTCUT if c_in != c_out else ()), **names)

    boc, lpb = config.block_out_channels, config.layers_per_block
    coders = (("encoder", boc, lpb, DOWN_RESNET, DOWNSAMPLER), ("decoder", boc[::-1], lpb + 1, UP_RESNET, UPSAMPLER))
    for p, channels, n_resnets, resnet_template, sampler in coders:
        add(CONV_IN, p=p)
        for i, c in enumerate(channels):
            for j in range(n_resnets):
                resnet(resnet_template, channels[max(i - 1, 0)] if j == 0 else c, c, p=p, i=i, j=j)
            if i < len(channels) - 1:
                add(sampler, p=p, i=i)
        if config.mid_block_add_attention:
            add(MID_ATTENTION, ATTENTION, p=p)
        for j in range(2):
            resnet(MID_RESNET, boc[-1], boc[-1], p=p, j=j)
        add(NORM_OUT, p=p)
        add(CONV_OUT, p=p)
    if config.use_quant_conv:
        add(QUANT_CONV)
    if config.use_post_quant_conv:
        add(POST_QUANT_CONV)
    return out


def vae_table(config: VAEConfig) -> list[Rule]:
    """The conversion table for `config`: one rule per tensor, diffusers name <-> flax param path."""
    return [
        rule(f"{torch_module}.{a}", f"{flax_module}/{b}", hook)
        for torch_module, flax_module, kind in _layers(config)
        for a, b, hook in KINDS[kind]
    ]


def _rename_legacy(source: Mapping[str, LazyTensor]) -> dict[str, LazyTensor]:
    out = {}
    for name, t in source.items():
        if ".mid_block.attentions." in name:
            for old, new in LEGACY_ATTENTION.items():
                name = name.replace(old, new)
        out[name] = t
    return out


def read_vae_config(folder: str | Path) -> VAEConfig:
    """The `VAEConfig` of a diffusers vae folder's config.json."""
    path = Path(folder) / "config.json"
    raw = read_json(path, f"{folder} has no config.json; point to a diffusers AutoencoderKL folder (e.g. <model>/vae)")
    try:
        return VAEConfig.from_diffusers(raw)
    except LaddError as e:
        raise LaddError(f"{path}: {e}") from None


def load_vae(folder: str | Path) -> tuple[VAEConfig, dict]:
    """A diffusers `AutoencoderKL` folder -> (config, fp32 numpy param tree for `models.vae.AutoencoderKL`)."""
    config = read_vae_config(folder)
    source = _rename_legacy(read_folder(folder, STEM))
    params = load_params(source, vae_table(config), abstract_vae_params(config), f"VAE checkpoint {folder}")
    return config, params


def save_vae(
    config: VAEConfig, params: Mapping, folder: str | Path, dtype: np.dtype | str | None = None, overwrite: bool = False
) -> Path:
    """Writes a diffusers `AutoencoderKL` folder (config.json + safetensors), atomically; returns it.

    `dtype` (e.g. "float16", "bfloat16") casts the weights on the way out; None keeps the params' dtype.
    """
    folder = Path(folder)
    check_writable_destination(folder, overwrite)
    check_params(params, abstract_vae_params(config), "VAE")
    tensors = export_params(params, vae_table(config), dtype)
    with atomic_path(folder, overwrite=overwrite) as tmp:
        (tmp / "config.json").write_text(json.dumps(config.to_diffusers(), indent=2) + "\n")
        write_folder(tmp, STEM, tensors)
    return folder


def param_count(config: VAEConfig) -> int:
    """Number of parameters of the VAE `config` describes."""
    return sum(math.prod(s) for s in abstract_shapes(abstract_vae_params(config)).values())
