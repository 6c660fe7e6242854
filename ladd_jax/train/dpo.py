"""Diffusion-DPO (Wallace et al. 2023) in the rectified-flow form: preference tuning on pairs (text, chosen latent,
rejected latent) against a frozen reference model (the model before tuning).

    t ~ logit-normal(m, s) and eps, shared by the two latents of a pair
    x_t = (1 - t) x0 + t eps,  u = eps - x0                       (the flow's velocity target)
    err(model, x0) = mean over the latent of || v_model(x_t, t, text) - u ||^2
    inside = -beta / 2 * ([err(theta, chosen) - err(ref, chosen)] - [err(theta, rejected) - err(ref, rejected)])
    loss   = mean over pairs of -log sigmoid(inside)

The velocity error stands where the paper has the noise-prediction error (for a flow, v - u = (eps_hat - eps) -
(x0_hat - x0): the same role). inside > 0 when the model has moved toward the chosen sample more than toward the
rejected one, relative to the reference; its batch mean is the implicit reward margin, and the fraction of pairs
with inside > 0 the implicit accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ladd_jax.flow import add_noise, sample_logit_normal
from ladd_jax.models.mmdit import MMDiT
from ladd_jax.train.sharding import constrain_batch

PAIR_FIELDS = ("chosen", "rejected", "context", "pooled")


def dpo_loss(
    err_chosen: jax.Array, err_rejected: jax.Array, ref_chosen: jax.Array, ref_rejected: jax.Array, beta: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The loss from per-pair velocity errors of the tuned model and the reference, and what to log."""
    inside = -0.5 * beta * ((err_chosen - ref_chosen) - (err_rejected - ref_rejected))
    loss = -jnp.mean(jax.nn.log_sigmoid(inside))
    return loss, dict(
        dpo_loss=loss,
        implicit_acc=jnp.mean((inside > 0).astype(jnp.float32)),
        reward_margin=jnp.mean(inside),
        err_chosen=jnp.mean(err_chosen),
        err_rejected=jnp.mean(err_rejected),
        ref_err_chosen=jnp.mean(ref_chosen),
        ref_err_rejected=jnp.mean(ref_rejected),
    )


def make_dpo_step(
    config: ml_collections.ConfigDict,
    model: MMDiT,
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    full_params: Callable[[Any, dict], Any],
):
    """(state, frozen, batch, key) -> (state, metrics). `frozen["base"]` is the reference's params;
    `full_params(trained, frozen)` the tuned model's (the trained params themselves, or adapters merged into the
    base)."""

    def step(state: Any, frozen: dict, batch: dict, key: jax.Array):
        chosen, rejected, ctx, pooled = (constrain_batch(batch[k], mesh) for k in PAIR_FIELDS)
        b = chosen.shape[0]
        k_t, k_eps = jax.random.split(jax.random.fold_in(key, state.step))
        t = sample_logit_normal(k_t, (b,), config.t_mean, config.t_std)
        eps = jax.random.normal(k_eps, chosen.shape)
        # Both latents of a pair in one batch of 2B: the same t and eps for each.
        x0 = jnp.concatenate([chosen, rejected])
        t2, eps2 = jnp.concatenate([t, t]), jnp.concatenate([eps, eps])
        x_t, target = add_noise(x0, eps2, t2), eps2 - x0
        ctx2, pooled2 = jnp.concatenate([ctx, ctx]), jnp.concatenate([pooled, pooled])

        def errors(params: Any) -> tuple[jax.Array, jax.Array]:
            v = model.apply({"params": params}, x_t, t2, ctx2, pooled2)
            err = jnp.mean(jnp.square(v - target), axis=(1, 2, 3))
            return err[:b], err[b:]

        ref_chosen, ref_rejected = jax.lax.stop_gradient(errors(frozen["base"]))

        def loss_fn(trained: Any) -> tuple[jax.Array, dict]:
            err_chosen, err_rejected = errors(full_params(trained, frozen))
            return dpo_loss(err_chosen, err_rejected, ref_chosen, ref_rejected, config.dpo_beta)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt = tx.update(grads, state.opt, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = jax.tree.map(lambda e, p: config.ema_decay * e + (1 - config.ema_decay) * p, state.ema, params)
        new = state.replace(step=state.step + 1, params=params, ema=ema, opt=opt)
        return new, dict(metrics, grad_norm=optax.tree.norm(grads))

    return step
