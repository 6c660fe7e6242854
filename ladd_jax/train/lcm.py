"""Latent consistency distillation (LCM, Luo et al. 2023) carried to rectified flow: a pure step, read top to bottom.

f_theta(x, t) = x - t * v_theta(x, t)       the flow's x0 prediction, so f(x, 0) = x: the boundary condition
                                            holds by construction (no c_skip / c_out needed)
sigmas        = the teacher's N-step flow schedule (1 ... 0, SD3's shift), config.lcm.num_steps = N
i ~ U{0, ..., N - k}:  t = sigmas[i],  s = sigmas[i + k]      k = config.lcm.skip (LCM's skipping interval)
x_t   = (1 - t) x0 + t eps
x_s   = teacher ODE step t -> s from x_t with CFG w (Euler, or Heun: the average of the slopes at both ends);
        w ~ U[guidance_min, guidance_max] per sample (equal ends: a fixed w). The guidance is not embedded:
        SD3's transformer has no guidance input, so an embedding would make the student unexportable.
loss  = d(f_theta(x_t, t), sg(f_target(x_s, s)))   d: "l2" (mean square) or "huber" (pseudo-Huber,
        sqrt(diff^2 + c^2) - c per element, LCM's choice); the target network is the EMA (decay
        config.ema_decay, LCM: 0.95), so the exported EMA student is LCM's target network
sampling: multi-step consistency sampling is the LADD student sampler (x0 prediction, re-noise, repeat).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from ladd_jax.errors import LaddError
from ladd_jax.flow import add_noise, denoise, flow_match_sigmas
from ladd_jax.train.sharding import constrain_batch, on_device
from ladd_jax.train.state import Models, TrainState
from ladd_jax.train.steps import BATCH_FIELDS, Batch, Frozen, StepFn, ema_update, guided_velocity

SOLVERS = ("euler", "heun")
DISTANCES = ("l2", "huber")


def check_lcm_config(config: ml_collections.ConfigDict) -> None:
    c = config.lcm
    if c.solver not in SOLVERS or c.distance not in DISTANCES:
        raise LaddError(f"lcm.solver={c.solver!r} / lcm.distance={c.distance!r}; use one of {SOLVERS} / {DISTANCES}")
    if not 1 <= c.skip <= c.num_steps:
        raise LaddError(f"lcm.skip={c.skip} must lie in [1, lcm.num_steps={c.num_steps}]")
    if not 1.0 <= c.guidance_min <= c.guidance_max:
        raise LaddError(f"lcm guidance range [{c.guidance_min}, {c.guidance_max}] must satisfy 1 <= min <= max")


def consistency_distance(a: jax.Array, b: jax.Array, kind: str, huber_c: float) -> jax.Array:
    """Mean over the batch and elements of (a - b)^2 ("l2") or sqrt((a - b)^2 + c^2) - c ("huber")."""
    diff = a.astype(jnp.float32) - b.astype(jnp.float32)
    if kind == "l2":
        return jnp.mean(jnp.square(diff))
    return jnp.mean(jnp.sqrt(jnp.square(diff) + huber_c**2) - huber_c)


def make_lcm_step(config: ml_collections.ConfigDict, models: Models, mesh: Mesh) -> StepFn:
    """The LCM step for `config`; jit it with `steps.jit_train_step`."""
    check_lcm_config(config)
    c = config.lcm
    sigmas = jnp.asarray(flow_match_sigmas(c.num_steps, c.shift), jnp.float32)  # N + 1 values, 1 ... 0

    def train_step(state: TrainState, frozen: Frozen, batch: Batch, key: jax.Array):
        x0, ctx, pooled = (constrain_batch(batch[k], mesh) for k in BATCH_FIELDS)
        b = x0.shape[0]
        k_i, k_eps, k_w = jax.random.split(jax.random.fold_in(key, state.step), 3)
        i = jax.random.randint(k_i, (b,), 0, c.num_steps - c.skip + 1)
        t, s = sigmas[i], sigmas[i + c.skip]
        w = jax.random.uniform(k_w, (b,), minval=c.guidance_min, maxval=c.guidance_max)
        x_t = add_noise(x0, jax.random.normal(k_eps, x0.shape), t)

        # ---------------------------------------------------------------- the teacher's ODE step t -> s, with CFG
        teacher = functools.partial(models.teacher.apply, {"params": frozen["teacher"]})
        guided = lambda x, time: guided_velocity(teacher, frozen, x, time, ctx, pooled, w[:, None, None, None])
        step = lambda x, v: x + (s - t)[:, None, None, None] * v
        v_t = guided(x_t, t)
        x_s = step(x_t, v_t)
        if c.solver == "heun":  # the slope at s from Euler's x_s, averaged with the slope at t
            x_s = step(x_t, (v_t + guided(x_s, s)) / 2)
        x_s = jax.lax.stop_gradient(x_s)

        # ---------------------------------------------------------------- the target network's prediction at s
        f = lambda params, x, time: denoise(x, models.apply_student(params, frozen, x, time, ctx, pooled), time)
        ema = on_device(state.ema)  # config.offload may keep it in host memory; LCM's target network needs it here
        target = jax.lax.stop_gradient(f(ema, x_s, s))

        # ---------------------------------------------------------------- consistency loss, student only
        def objective(params: Any) -> jax.Array:
            return consistency_distance(f(params, x_t, t), target, c.distance, c.huber_c)

        loss, grads = jax.value_and_grad(objective)(state.student)
        updates, g_opt = models.g_tx.update(grads, on_device(state.g_opt), state.student)
        student = optax.apply_updates(state.student, updates)
        new_state = state.replace(
            step=state.step + 1, student=student, ema=ema_update(ema, student, config.ema_decay), g_opt=g_opt
        )
        metrics = dict(
            lcm_loss=loss,
            g_grad_norm=optax.tree.norm(grads),
            student_t=jnp.mean(t),
            guidance=jnp.mean(w),
        )
        return new_state, metrics

    return train_step
