"""An MMDiT made `factor` times wider by copying channels (Net2WiderNet, Chen et al. 2016), computing the same
function: a wider student that starts as its teacher.

Every width axis (the residual streams, the attention heads, the MLP's hidden units, the adaLN modulation chunks)
holds `factor` copies of the original's channels. A layer writing such an axis has its output weights copied; a
layer reading one has its input weights divided among the copies, W_i = W / factor + e_i with sum(e_i) = 0, so the
copies' contributions sum to the original's. LayerNorm over copied channels sees the original's mean and variance,
a head of copied channels is a copied head (the head width stays), and the sincos position table is tiled
(`MMDiTConfig.pos_embed_tiles`). The random e_i (relative size `noise`) leave the function unchanged; they break
the copies' symmetry, without which equal copies would receive equal gradients and stay equal.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp

from ladd_jax.convert.params import flatten, unflatten
from ladd_jax.errors import LaddError
from ladd_jax.models.mmdit import MMDiTConfig

COPY, SPLIT, CHUNKS = "copy", "split", "chunks"  # an output axis copied, an input axis divided, per-chunk copies
# (path pattern, roles of the kernel's last axes): the declarative table of what each weight reads and writes.
# A bias takes its kernel's output role. Norm scales (per head channel) and anything not width-sized stay as they are.
RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"patch_embed/kernel", (None, COPY)),  # [p, p, in, D]: pixels in, stream out
    (r"(time|text)_embed/linear_1/kernel", (None, COPY)),
    (r"(time|text)_embed/linear_2/kernel", (SPLIT, COPY)),
    (r"context_embedder/kernel", (None, COPY)),
    (r"(norm1|norm1_context|norm_out)/linear/kernel", (SPLIT, CHUNKS)),  # adaLN: shift, scale, gate chunks
    (r"attn2?/(to_[qkv]|add_[qkv]_proj|to_out|to_add_out)/kernel", (SPLIT, COPY)),  # heads [h1, h2, h1, h2]
    (r"ff(_context)?/proj_(in|out)/kernel", (SPLIT, COPY)),
    (r"^proj_out/kernel", (SPLIT, None)),  # stream in, patch pixels out
    (r"attn2?/norm_(added_)?[qk]/scale", ()),
)


def wider_config(config: MMDiTConfig, factor: int) -> MMDiTConfig:
    """The architecture `factor` times wider: `factor` times the heads, the same head width."""
    if factor < 1:
        raise LaddError(f"a widening factor must be a positive integer, got {factor}")
    return dataclasses.replace(
        config,
        num_attention_heads=config.num_attention_heads * factor,
        caption_projection_dim=config.caption_projection_dim * factor,
        pos_embed_tiles=config.pos_embed_tiles * factor,
    )


def _rule(name: str) -> tuple[str | None, ...]:
    path = name.removesuffix("/bias") + "/kernel" if name.endswith("/bias") else name
    roles = [r for pattern, r in RULES if re.search(pattern, path)]
    if len(roles) != 1:
        raise LaddError(f"net2wider.RULES has {len(roles)} rules for the MMDiT param {name!r}; it needs exactly one")
    return roles[0][-1:] if name.endswith("/bias") and roles[0] else roles[0]


def wider(config: MMDiTConfig, params: dict, factor: int, rng: jax.Array, noise: float) -> tuple[MMDiTConfig, dict]:
    """(wider config, its params): the same function as (config, params), with `factor` copies of every channel."""
    wide = wider_config(config, factor)
    if factor == 1:
        return wide, params
    width = config.hidden_size
    out = {}
    for i, (name, leaf) in enumerate(sorted(flatten(params).items())):
        x = jnp.asarray(leaf)
        roles = _rule(name)
        for offset, role in enumerate(roles):
            axis = x.ndim - len(roles) + offset
            if role == COPY:
                x = jnp.concatenate([x] * factor, axis)
            elif role == CHUNKS:  # the output axis, last: [..., k * D] -> [..., k, factor * D] -> [..., k * factor * D]
                chunks = x.reshape(*x.shape[:-1], -1, width)
                x = jnp.concatenate([chunks] * factor, -1).reshape(*x.shape[:-1], -1)
        split = [offset for offset, role in enumerate(roles) if role == SPLIT]
        if split:
            axis = x.ndim - len(roles) + split[0]
            z = jax.random.normal(jax.random.fold_in(rng, i), (factor, *x.shape), x.dtype)
            copies = x / factor * (1 + noise * (z - z.mean(0)))  # each term's noise sums to zero over copies
            x = jnp.concatenate(list(copies), axis)
        out[name] = x
    return wide, unflatten(out)
