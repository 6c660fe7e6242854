"""LADD's discriminator: independent trainable heads on the frozen teacher's token features.

Each chosen teacher block's image tokens, reshaped to their [B, h, w, D] layout (`MMDiT.apply(...,
feature_layers=...)` returns them so), feed one head of 2D convolutions, so any aspect ratio works. A head:

    LayerNorm (no affine) -> 1x1 conv to `hidden` -> `num_blocks` x residual (GroupNorm, SiLU, k x k conv)
    -> GroupNorm, SiLU = h;  logits = conv_out(h) + <h, proj(cond)> / sqrt(hidden)   at every location,

with cond = MLP([sinusoid(t_hat), pooled]): projection conditioning as in StyleGAN-T and the projection
discriminator (Miyato & Koyama 2018). conv_out and proj start at zero, so initial logits are exactly 0 and the
first D updates set the scale (`output_init="zeros"`). `output_init="normal"` draws them at random instead: what
the frozen-heads control needs, since zero output layers would give the student no gradient at all.
GroupNorm rather than BatchNorm: its statistics are per sample, so real and fake batches, and the shards of a
batch over devices, never mix (and R1 stays a per-sample gradient).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ladd_jax.errors import LaddError
from ladd_jax.models.group_norm import GroupNorm
from ladd_jax.models.mmdit import layer_norm, timestep_embedding

TIME_EMBED_DIM = 256  # sinusoid width of t_hat, as the MMDiT's own timestep embedding
TIME_SCALE = 1000.0  # t_hat in [0, 1] -> SD3's timestep range, so the sinusoid's frequencies resolve it
NORM_EPS = 1e-6
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
OUTPUT_INITS = {"zeros": nn.initializers.zeros, "normal": nn.initializers.lecun_normal()}


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
    """The heads' architecture; one head per entry of `feature_layers` (teacher block indices)."""

    feature_layers: tuple[int, ...]
    hidden: int = 256  # conv channels of each head
    num_blocks: int = 2  # residual conv blocks per head
    kernel_size: int = 3  # odd, so "SAME" padding is symmetric
    cond_dim: int = 256  # width of the (t_hat, pooled) conditioning embedding
    norm_groups: int = 32
    dtype: str = "float32"  # compute dtype; params stay fp32, logits come out fp32
    output_init: str = "zeros"  # conv_out and proj: "zeros" (logits start at 0) or "normal" (random, fan-in scaled)

    def __post_init__(self):
        object.__setattr__(self, "feature_layers", tuple(int(i) for i in self.feature_layers))
        layers = self.feature_layers
        if not layers:
            raise LaddError("DiscriminatorConfig.feature_layers is empty; give at least one teacher block index")
        if len(set(layers)) != len(layers) or min(layers) < 0:
            raise LaddError(f"feature_layers {layers} must be distinct non-negative teacher block indices")
        if self.hidden % self.norm_groups:
            raise LaddError(f"hidden={self.hidden} is not divisible by norm_groups={self.norm_groups}; change either")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise LaddError(f"kernel_size={self.kernel_size} must be odd and positive (symmetric padding)")
        if self.num_blocks < 0 or self.cond_dim < 1:
            raise LaddError(f"num_blocks={self.num_blocks} must be >= 0 and cond_dim={self.cond_dim} >= 1")
        if self.output_init not in OUTPUT_INITS:
            raise LaddError(f"output_init={self.output_init!r} is not supported; use one of {sorted(OUTPUT_INITS)}")
        if self.dtype not in COMPUTE_DTYPES:
            raise LaddError(f"dtype={self.dtype!r} is not supported; use one of {COMPUTE_DTYPES}")


def default_feature_layers(num_layers: int, stride: int = 1) -> tuple[int, ...]:
    """Every `stride`-th teacher block, counted back from the last one (which is always included)."""
    if num_layers < 1 or stride < 1:
        raise LaddError(f"num_layers={num_layers} and stride={stride} must both be >= 1")
    return tuple(range(num_layers - 1, -1, -stride))[::-1]


class ResBlock(nn.Module):
    """x + conv(SiLU(GroupNorm(x))), scaled by 1/sqrt(2) to keep the variance of the sum."""

    config: DiscriminatorConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        k = cfg.kernel_size
        y = nn.silu(GroupNorm(cfg.norm_groups, NORM_EPS, name="norm")(x))
        y = nn.Conv(cfg.hidden, (k, k), padding="SAME", dtype=cfg.dtype, param_dtype=jnp.float32, name="conv")(y)
        return (x + y) * (1 / math.sqrt(2))


class Head(nn.Module):
    """One head: features [B, h, w, D], t_hat [B], pooled [B, P] -> logits [B, h, w] (fp32)."""

    config: DiscriminatorConfig

    @nn.compact
    def __call__(self, features: jax.Array, t_hat: jax.Array, pooled: jax.Array) -> jax.Array:
        cfg = self.config
        dense = lambda n, name, **kw: nn.Dense(n, dtype=cfg.dtype, param_dtype=jnp.float32, name=name, **kw)

        # The teacher's residual stream grows with depth; a per-token norm makes heads at any depth comparable.
        h = layer_norm(features.astype(cfg.dtype), NORM_EPS)
        h = nn.Conv(cfg.hidden, (1, 1), dtype=cfg.dtype, param_dtype=jnp.float32, name="conv_in")(h)
        for i in range(cfg.num_blocks):
            h = ResBlock(cfg, name=f"block_{i}")(h)
        h = nn.silu(GroupNorm(cfg.norm_groups, NORM_EPS, name="norm_out")(h))

        cond = jnp.concatenate([timestep_embedding(t_hat * TIME_SCALE, TIME_EMBED_DIM), pooled], axis=-1)
        cond = dense(cfg.cond_dim, "cond_2")(nn.silu(dense(cfg.cond_dim, "cond_1")(cond.astype(cfg.dtype))))
        out_init = OUTPUT_INITS[cfg.output_init]
        proj = dense(cfg.hidden, "proj", kernel_init=out_init)(nn.silu(cond))

        conv_out = nn.Conv(1, (1, 1), dtype=cfg.dtype, param_dtype=jnp.float32, kernel_init=out_init, name="conv_out")
        out = conv_out(h)[..., 0].astype(jnp.float32)
        inner = jnp.einsum("bhwc,bc->bhw", h, proj, preferred_element_type=jnp.float32)
        return out + inner / math.sqrt(cfg.hidden)


class Discriminator(nn.Module):
    """One independent `Head` per feature layer, named `head_{layer}` in the param tree."""

    config: DiscriminatorConfig

    @nn.compact
    def __call__(self, features: Sequence[jax.Array], t_hat: jax.Array, pooled: jax.Array) -> tuple[jax.Array, ...]:
        layers = self.config.feature_layers
        if len(features) != len(layers):
            raise LaddError(
                f"the discriminator has {len(layers)} heads (feature_layers={layers}) but got {len(features)} "
                "feature maps; pass the teacher the same feature_layers"
            )
        return tuple(
            Head(self.config, name=f"head_{layer}")(f, t_hat, pooled) for layer, f in zip(layers, features, strict=True)
        )


def init_discriminator(
    config: DiscriminatorConfig,
    rng: jax.Array,
    feature_dim: int,
    pooled_dim: int,
    feature_hw: tuple[int, int] = (1, 1),  # the params are convolutional: any size gives the same tree
) -> dict[str, Any]:
    """Randomly initialised head params (fp32) for teacher features of width `feature_dim`."""
    n = len(config.feature_layers)
    features = tuple(jnp.zeros((1, *feature_hw, feature_dim), jnp.float32) for _ in range(n))
    t_hat = jnp.zeros((1,), jnp.float32)
    pooled = jnp.zeros((1, pooled_dim), jnp.float32)
    # One compiled init instead of hundreds of op-by-op dispatches (seconds saved per call).
    return jax.jit(Discriminator(config).init)(rng, features, t_hat, pooled)["params"]
