"""LADD's losses as pure functions over the discriminator's tuple of per-head logit maps.

Every adversarial quantity is a mean over all of a head's logits (batch and locations: each location is
one patch-level real/fake decision) and then a mean over heads, so neither the resolution nor the number
of heads changes the loss scale.

  hinge (ADD, LADD's likely choice):  D: relu(1 - D(real)) + relu(1 + D(fake))   G: -D(fake)
  non_saturating (GAN):               D: softplus(-D(real)) + softplus(D(fake))  G: softplus(-D(fake))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from ladd_jax.errors import LaddError

Logits = Sequence[jax.Array]  # one [B, h, w] map per head
LOSS_KINDS = ("hinge", "non_saturating")


def _check_kind(kind: str) -> None:
    if kind not in LOSS_KINDS:
        raise LaddError(f"unknown GAN loss kind {kind!r}; use one of {LOSS_KINDS}")


def _mean_over_heads(per_head: Sequence[jax.Array]) -> jax.Array:
    return jnp.mean(jnp.stack([jnp.mean(x.astype(jnp.float32)) for x in per_head]))


def d_loss_parts(real_logits: Logits, fake_logits: Logits, kind: str = "hinge") -> tuple[jax.Array, jax.Array]:
    """The discriminator's loss on real and on fake logits, separately (their sum is `d_loss`)."""
    _check_kind(kind)
    if kind == "hinge":
        real = _mean_over_heads([jax.nn.relu(1.0 - x) for x in real_logits])
        fake = _mean_over_heads([jax.nn.relu(1.0 + x) for x in fake_logits])
    else:
        real = _mean_over_heads([jax.nn.softplus(-x) for x in real_logits])
        fake = _mean_over_heads([jax.nn.softplus(x) for x in fake_logits])
    return real, fake


def d_loss(real_logits: Logits, fake_logits: Logits, kind: str = "hinge") -> jax.Array:
    """The discriminator's loss: real toward positive logits, fake toward negative."""
    real, fake = d_loss_parts(real_logits, fake_logits, kind)
    return real + fake


def g_loss(fake_logits: Logits, kind: str = "hinge") -> jax.Array:
    """The generator's (student's) loss: push the logits of its samples up."""
    _check_kind(kind)
    if kind == "hinge":
        return -_mean_over_heads(fake_logits)
    return _mean_over_heads([jax.nn.softplus(-x) for x in fake_logits])


def d_accuracy(real_logits: Logits, fake_logits: Logits) -> jax.Array:
    """The fraction of locations classified right (real > 0, fake < 0), mean of real and fake, over heads."""
    real = _mean_over_heads([x > 0 for x in real_logits])
    fake = _mean_over_heads([x < 0 for x in fake_logits])
    return (real + fake) / 2


def r1_penalty(fn: Callable[[tuple[jax.Array, ...]], Logits], features: Sequence[jax.Array]) -> jax.Array:
    """R1 on the heads' inputs: mean over heads of E_batch ||d D_i / d features_i||^2 (gamma is the caller's).

    `fn` maps the features tuple to the heads' logits (a closure over the head params, so the penalty is
    differentiable w.r.t. them); D_i(sample) is head i's mean logit over locations, the score the losses
    use. One VJP gives every head's gradient: heads are independent and GroupNorm is per sample, so the
    gradient of the batch sum w.r.t. features_i is each sample's own gradient of D_i.
    """
    features = tuple(features)
    logits, vjp = jax.vjp(fn, features)
    cotangents = jax.tree.map(lambda x: jnp.full(x.shape, x.shape[0] / x.size, x.dtype), logits)
    (grads,) = vjp(cotangents)
    return _mean_over_heads([jnp.sum(jnp.square(g.astype(jnp.float32)).reshape(g.shape[0], -1), -1) for g in grads])


def distill_loss(x0_hat: jax.Array, target: jax.Array, weight: jax.Array | float = 1.0) -> jax.Array:
    """ADD's distillation loss: mean_b weight_b * mean ||x0_hat_b - sg(target_b)||^2.

    `target` is the teacher's denoised estimate of the re-noised student sample; no gradient flows into
    it. `weight` is a scalar or the per-sample c(t_hat) [B].
    """
    err = jnp.square(x0_hat.astype(jnp.float32) - jax.lax.stop_gradient(target).astype(jnp.float32))
    per_sample = jnp.mean(err.reshape(err.shape[0], -1), axis=-1)
    return jnp.mean(jnp.asarray(weight, jnp.float32) * per_sample)
