"""GroupNorm over channels-last maps, as torch.nn.GroupNorm computes it (two-pass variance, fp32 statistics).

flax.linen.GroupNorm reshapes [B, ..., C] to [B, ..., G, C/G] and reduces over the spatial and in-group axes at
once; XLA:CPU runs that strided reduction about 8x slower than this form, which sums over the spatial axes first
(a reduction along the contiguous rows of [B, H*W, C]) and only then over the channels of each group: 0.47 s
against 0.06 s for one norm of [272, 64, 64, 16] on a 2-core CPU, where the toy VAE's decoder spent 5 of its 5.5 s
in GroupNorm. The param tree ({"scale", "bias"} of shape [C]) is flax's, so checkpoints and conversion tables stay.
The toy evaluator and the latent perceptual network keep flax's GroupNorm (one-pass variance), with which their
shipped weights were trained and measured; they norm a small share of any run's time.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ladd_jax.errors import LaddError


class GroupNorm(nn.Module):
    """x [B, ..., C] -> normalised per sample over (..., C/groups), then scaled and shifted per channel; the
    statistics and the affine are fp32, the output is in x's dtype."""

    groups: int
    epsilon: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        if x.ndim < 2 or c % self.groups:
            raise LaddError(f"GroupNorm({self.groups} groups) got shape {x.shape}: the last axis must split evenly")
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        per_group = c // self.groups
        rows = x.astype(jnp.float32).reshape(x.shape[0], -1, c)
        count = rows.shape[1] * per_group

        def group_mean(channel_sums: jax.Array) -> jax.Array:  # [B, C] -> each channel's group mean [B, 1, C]
            means = channel_sums.reshape(-1, self.groups, per_group).sum(-1) / count
            return jnp.repeat(means, per_group, axis=-1)[:, None]

        centred = rows - group_mean(rows.sum(1))
        var = group_mean(jnp.square(centred).sum(1))
        y = centred * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.reshape(x.shape).astype(x.dtype)
