"""Rectified-flow math of Stable Diffusion 3: noising, targets, schedules and samplers.

Conventions: latents are NHWC ``[B, H, W, C]``; flow time ``t`` (a.k.a. sigma) lives in ``[0, 1]`` with
``t = 0`` the data and ``t = 1`` pure noise, ``x_t = (1 - t) * x0 + t * eps``; the model predicts the
velocity ``v = eps - x0``. Diffusers' "timesteps" are ``t * num_train_timesteps``; every function here
takes ``t`` in ``[0, 1]`` and leaves the x1000 scaling to the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ladd_jax.errors import LaddError

__all__ = [
    "add_noise",
    "velocity_target",
    "denoise",
    "sample_logit_normal",
    "shift_sigma",
    "flow_match_sigmas",
    "euler_step",
    "cfg_combine",
    "sample_euler",
    "sample_student",
    "student_timesteps",
]

VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]
DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]


def _bcast_t(t: ArrayLike, x: jax.Array) -> jax.Array:
    """Reshape a per-example time ``t`` of shape [B] (or a scalar) to broadcast over ``x`` [B, ...]."""
    t = jnp.asarray(t, dtype=jnp.float32)
    if t.ndim == 0:
        return t
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise LaddError(f"t must be a scalar or have shape [B]={x.shape[:1]}, got shape {t.shape}")
    return t.reshape((-1,) + (1,) * (x.ndim - 1))


def add_noise(x0: jax.Array, eps: jax.Array, t: ArrayLike) -> jax.Array:
    """Flow interpolation ``x_t = (1 - t) * x0 + t * eps``; ``t`` is [B] (or a scalar)."""
    x0, eps = jnp.asarray(x0), jnp.asarray(eps)
    tb = _bcast_t(t, x0)
    # t is float32; cast back so bf16 latents stay bf16 instead of silently promoting to float32.
    return ((1.0 - tb) * x0 + tb * eps).astype(jnp.result_type(x0, eps))


def velocity_target(x0: jax.Array, eps: jax.Array) -> jax.Array:
    """Rectified-flow regression target ``v = eps - x0`` (= d x_t / d t)."""
    return jnp.asarray(eps) - jnp.asarray(x0)


def denoise(x_t: jax.Array, v: jax.Array, t: ArrayLike) -> jax.Array:
    """x0 estimate from a velocity prediction: ``x0_hat = x_t - t * v``; ``t`` is [B] (or a scalar)."""
    x_t, v = jnp.asarray(x_t), jnp.asarray(v)
    tb = _bcast_t(t, x_t)
    return (x_t - tb * v).astype(jnp.result_type(x_t, v))


def sample_logit_normal(
    key: jax.Array,
    shape: Sequence[int],
    mean: float = 0.0,
    std: float = 1.0,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """Logit-normal times ``t = sigmoid(mean + std * N(0, 1))`` in (0, 1) (SD3 training distribution)."""
    if isinstance(std, (int, float)) and not std > 0:
        raise LaddError(f"std must be > 0, got {std}")
    z = jax.random.normal(key, tuple(shape), dtype=jnp.float32)
    return jax.nn.sigmoid(mean + std * z).astype(dtype)


def shift_sigma(t: ArrayLike, shift: float) -> ArrayLike:
    """SD3 resolution/time shift ``shift * t / (1 + (shift - 1) * t)``; maps 0->0, 1->1, shift>1 -> noisier.

    Works on Python floats (returns a float) and on arrays alike.
    """
    if isinstance(shift, (int, float)) and not shift > 0:
        raise LaddError(f"shift must be > 0, got {shift}")
    return shift * t / (1 + (shift - 1) * t)


def flow_match_sigmas(num_inference_steps: int, shift: float = 3.0, num_train_timesteps: int = 1000) -> np.ndarray:
    """Inference sigmas of ``diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps, shift)``.

    Returns float32 ``[num_inference_steps + 1]`` with a trailing 0, equal to the scheduler's ``.sigmas``
    after ``.set_timesteps(num_inference_steps)``; its ``.timesteps`` are ``sigmas[:-1] * num_train_timesteps``.
    Only SD3's defaults are modelled (static shift, no karras/exponential/beta sigmas, no inversion).
    """
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
        raise LaddError(f"num_inference_steps must be an int, got {num_inference_steps!r}")
    if num_inference_steps < 1:
        raise LaddError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    if not (math.isfinite(shift) and shift > 0):
        raise LaddError(f"shift must be a finite number > 0, got {shift}")
    if int(num_train_timesteps) != num_train_timesteps or num_train_timesteps < 1:
        raise LaddError(f"num_train_timesteps must be an int >= 1, got {num_train_timesteps}")
    n_train = int(num_train_timesteps)

    # Scheduler __init__ (torch float32): training sigmas, already shifted once.
    train_t = np.linspace(1, n_train, n_train, dtype=np.float32)[::-1]
    train_sig = train_t / np.float32(n_train)
    train_sig = np.float32(shift) * train_sig / (np.float32(1) + np.float32(shift - 1) * train_sig)
    sigma_max, sigma_min = float(train_sig[0]), float(train_sig[-1])

    # set_timesteps (numpy float64): linspace between the *shifted* extremes, then shift again. This
    # double shift is diffusers' behaviour (it is what SD3 was sampled with), so it is reproduced as is.
    timesteps = np.linspace(sigma_max * n_train, sigma_min * n_train, num_inference_steps)
    sigmas = timesteps / n_train
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return np.concatenate([sigmas.astype(np.float32), np.zeros(1, np.float32)])


def euler_step(x: jax.Array, v: jax.Array, sigma: ArrayLike, sigma_next: ArrayLike) -> jax.Array:
    """One flow Euler step ``x + (sigma_next - sigma) * v``, computed in float32, returned in x's dtype.

    Matches ``FlowMatchEulerDiscreteScheduler.step`` for float32 inputs. (For a bf16 ``v`` diffusers rounds
    ``dt * v`` to bf16 first and casts to ``v``'s dtype; here everything is upcast, which is more precise.)
    """
    x = jnp.asarray(x)
    # Round sigmas to float32 *before* subtracting, like diffusers' float32 sigma tensor.
    dt = jnp.asarray(sigma_next, jnp.float32) - jnp.asarray(sigma, jnp.float32)
    out = x.astype(jnp.float32) + dt * jnp.asarray(v).astype(jnp.float32)
    return out.astype(x.dtype)


def cfg_combine(v_cond: jax.Array, v_uncond: jax.Array, guidance_scale: ArrayLike) -> jax.Array:
    """Classifier-free guidance ``v_uncond + s * (v_cond - v_uncond)`` (as in StableDiffusion3Pipeline)."""
    return v_uncond + guidance_scale * (v_cond - v_uncond)


def sample_euler(
    velocity_fn: VelocityFn,
    latents: jax.Array,
    sigmas: ArrayLike,
    guidance_scale: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> jax.Array:
    """Teacher sampler: Euler integration of the flow ODE over ``sigmas`` (e.g. ``flow_match_sigmas(28)``).

    Contract of ``velocity_fn(x, t) -> v``: ``t`` is a float32 vector of flow times in [0, 1] with one entry
    per row of ``x`` (the model applies the x1000 itself). With ``guidance_scale > 1`` it is called once per
    step on the doubled batch ``concat([x, x])`` with ``t`` doubled, and its output is split as
    ``v_uncond, v_cond = v[:B], v[B:]`` (diffusers' order), so the caller must close over conditioning laid
    out as ``[uncond; cond]``. With ``guidance_scale <= 1`` it is called on the plain batch with the
    conditional embeddings only. ``progress(i, n)``, if given, is called after step ``i`` of ``n``.
    Jitting ``velocity_fn`` is the caller's business; the step loop runs in Python.
    """
    sig = np.asarray(sigmas, dtype=np.float32)
    if sig.ndim != 1 or sig.shape[0] < 2:
        raise LaddError(f"sigmas must be 1-D with at least 2 entries (start and end), got shape {sig.shape}")
    x = jnp.asarray(latents)
    batch = x.shape[0]
    use_cfg = guidance_scale > 1.0
    n = sig.shape[0] - 1
    for i in range(n):
        if use_cfg:
            t = jnp.full((2 * batch,), sig[i], dtype=jnp.float32)
            v_both = velocity_fn(jnp.concatenate([x, x], axis=0), t)
            v = cfg_combine(v_both[batch:], v_both[:batch], guidance_scale)
        else:
            v = velocity_fn(x, jnp.full((batch,), sig[i], dtype=jnp.float32))
        x = euler_step(x, v, sig[i], sig[i + 1])
        if progress is not None:
            progress(i, n)
    return x


def sample_student(denoise_fn: DenoiseFn, noise: jax.Array, timesteps: Sequence[float], key: jax.Array) -> jax.Array:
    """Few-step LADD/ADD student sampler; returns the last x0 estimate.

    Starts from ``x = noise`` at ``timesteps[0]``; at step ``i`` it computes ``x0_hat = denoise_fn(x, t)``
    (``t`` a float32 [B] vector; ``denoise_fn`` returns the x0 estimate, not a velocity) and, if a next time
    exists, renoises ``x = add_noise(x0_hat, eps_i, timesteps[i + 1])`` with fresh
    ``eps_i ~ N(0, 1)`` drawn from ``jax.random.fold_in(key, i)``.
    """
    ts = [float(t) for t in timesteps]
    if not ts:
        raise LaddError("timesteps must contain at least one time")
    if any(not 0.0 < t <= 1.0 for t in ts):
        raise LaddError(f"timesteps must lie in (0, 1], got {ts}")
    x = jnp.asarray(noise)
    batch = x.shape[0]
    x0_hat = x
    for i, t in enumerate(ts):
        x0_hat = denoise_fn(x, jnp.full((batch,), t, dtype=jnp.float32))
        if i + 1 < len(ts):
            eps = jax.random.normal(jax.random.fold_in(key, i), x.shape, dtype=x.dtype)
            x = add_noise(x0_hat, eps, jnp.full((batch,), ts[i + 1], dtype=jnp.float32))
    return x0_hat


def student_timesteps(num_steps: int, shift: float | None = None) -> tuple[float, ...]:
    """LADD student schedule ``(1, 1 - 1/n, ..., 1/n)``, optionally warped by ``shift_sigma(., shift)``.

    1 -> (1.0,), 2 -> (1.0, 0.5), 4 -> (1.0, 0.75, 0.5, 0.25).
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise LaddError(f"num_steps must be an int >= 1, got {num_steps!r}")
    ts = tuple(1.0 - i / num_steps for i in range(num_steps))
    if shift is not None:
        if not (math.isfinite(shift) and shift > 0):
            raise LaddError(f"shift must be a finite number > 0, got {shift}")
        ts = tuple(float(shift_sigma(t, float(shift))) for t in ts)
    return ts
