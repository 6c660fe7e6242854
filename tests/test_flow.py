"""Tests for ladd_jax.flow: SD3 rectified-flow math, checked against diffusers where it has a reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ladd_jax import flow

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
FlowMatchEulerDiscreteScheduler = diffusers.FlowMatchEulerDiscreteScheduler

SHAPE = (2, 4, 4, 3)  # NHWC


def _scheduler(steps: int, shift: float) -> "FlowMatchEulerDiscreteScheduler":
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    sched.set_timesteps(steps)
    return sched


# ---------------------------------------------------------------- schedule


@pytest.mark.parametrize("steps,shift", [(1, 1.0), (4, 3.0), (28, 3.0), (40, 3.0), (50, 1.0), (8, 6.0)])
def test_flow_match_sigmas_match_diffusers(steps, shift):
    sched = _scheduler(steps, shift)
    sigmas = flow.flow_match_sigmas(steps, shift=shift, num_train_timesteps=1000)
    assert isinstance(sigmas, np.ndarray) and sigmas.dtype == np.float32
    assert sigmas.shape == (steps + 1,) and sigmas[-1] == 0.0
    np.testing.assert_allclose(sigmas, sched.sigmas.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(sigmas[:-1] * 1000, sched.timesteps.numpy(), rtol=0, atol=1e-6 * 1000)
    assert np.all(np.diff(sigmas) < 0)


def test_flow_match_sigmas_double_shift_quirk():
    # The last non-zero sigma is the training sigma_min (1/1000 shifted once) shifted a second time.
    sigmas = flow.flow_match_sigmas(28, shift=3.0)
    assert sigmas[0] == pytest.approx(1.0)
    expected_last = flow.shift_sigma(flow.shift_sigma(1 / 1000, 3.0), 3.0)
    assert sigmas[-2] == pytest.approx(expected_last, rel=1e-5)
    assert sigmas[-2] > flow.shift_sigma(1 / 1000, 3.0)


def test_shift_sigma():
    t = jnp.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(flow.shift_sigma(t, 1.0), t, atol=1e-7)
    s3 = np.asarray(flow.shift_sigma(t, 3.0))
    assert s3[0] == 0.0 and s3[-1] == pytest.approx(1.0)
    assert np.all(s3[1:-1] > np.asarray(t)[1:-1])
    assert flow.shift_sigma(0.5, 3.0) == pytest.approx(0.75)


def test_student_timesteps():
    assert flow.student_timesteps(1) == (1.0,)
    assert flow.student_timesteps(2) == (1.0, 0.5)
    assert flow.student_timesteps(4) == (1.0, 0.75, 0.5, 0.25)
    np.testing.assert_allclose(flow.student_timesteps(3), (1.0, 2 / 3, 1 / 3))
    shifted = flow.student_timesteps(4, shift=3.0)
    np.testing.assert_allclose(shifted, [flow.shift_sigma(t, 3.0) for t in (1.0, 0.75, 0.5, 0.25)])
    np.testing.assert_allclose(shifted, (1.0, 0.9, 0.75, 0.5))
    assert flow.student_timesteps(4, shift=1.0) == (1.0, 0.75, 0.5, 0.25)


# ---------------------------------------------------------------- noising


def test_add_noise_denoise_identity():
    k0, k1, k2 = jax.random.split(jax.random.key(0), 3)
    x0 = jax.random.normal(k0, SHAPE)
    eps = jax.random.normal(k1, SHAPE)
    t = jax.random.uniform(k2, (SHAPE[0],))
    x_t = flow.add_noise(x0, eps, t)
    tb = np.asarray(t)[:, None, None, None]
    np.testing.assert_allclose(x_t, (1 - tb) * np.asarray(x0) + tb * np.asarray(eps), atol=1e-6)
    v = flow.velocity_target(x0, eps)
    np.testing.assert_allclose(v, np.asarray(eps) - np.asarray(x0), atol=0)
    np.testing.assert_allclose(flow.denoise(x_t, v, t), x0, atol=1e-5)
    # Endpoints: t=0 is data, t=1 is noise.
    np.testing.assert_allclose(flow.add_noise(x0, eps, jnp.zeros(SHAPE[0])), x0, atol=0)
    np.testing.assert_allclose(flow.add_noise(x0, eps, jnp.ones(SHAPE[0])), eps, atol=0)


def test_add_noise_keeps_dtype_and_checks_t_shape():
    x0 = jnp.ones(SHAPE, jnp.bfloat16)
    out = flow.add_noise(x0, jnp.zeros(SHAPE, jnp.bfloat16), jnp.full((SHAPE[0],), 0.25))
    assert out.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="shape"):
        flow.add_noise(x0, x0, jnp.zeros(SHAPE[0] + 1))


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (-0.5, 1.2)])
def test_sample_logit_normal_moments(mean, std):
    t = flow.sample_logit_normal(jax.random.key(1), (100_000,), mean, std)
    assert t.shape == (100_000,) and t.dtype == jnp.float32
    t = np.asarray(t, np.float64)
    assert np.all((t > 0) & (t < 1))
    logit = np.log(t / (1 - t))
    assert abs(logit.mean() - mean) < 0.02
    assert abs(logit.std() - std) < 0.02


# ---------------------------------------------------------------- Euler / CFG vs diffusers


def _linear_velocity_np(x, t, cond):
    """A fixed 'model' that depends on x, t and the conditioning rows (cond has x's batch size)."""
    return 0.7 * x - 0.3 * t[:, None, None, None] * x + cond


def _problem(batch=2):
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((batch, 4, 4, 3)).astype(np.float32)
    cond = rng.standard_normal((batch, 4, 4, 3)).astype(np.float32)
    uncond = rng.standard_normal((batch, 4, 4, 3)).astype(np.float32)
    return latents, cond, uncond


def test_euler_step_matches_diffusers():
    sched = _scheduler(4, 3.0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    v = rng.standard_normal(SHAPE).astype(np.float32)
    sigmas = flow.flow_match_sigmas(4, 3.0)
    ref = sched.step(torch.from_numpy(v), sched.timesteps[0], torch.from_numpy(x)).prev_sample.numpy()
    out = flow.euler_step(jnp.asarray(x), jnp.asarray(v), sigmas[0], sigmas[1])
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    # Low-precision x: computed in float32, cast back to x's dtype.
    out16 = flow.euler_step(jnp.asarray(x, jnp.bfloat16), jnp.asarray(v), sigmas[0], sigmas[1])
    assert out16.dtype == jnp.bfloat16


def test_cfg_combine_formula():
    v_c, v_u = jnp.array([1.0, 2.0]), jnp.array([0.5, -1.0])
    np.testing.assert_allclose(flow.cfg_combine(v_c, v_u, 1.0), v_c)
    np.testing.assert_allclose(flow.cfg_combine(v_c, v_u, 0.0), v_u)
    np.testing.assert_allclose(flow.cfg_combine(v_c, v_u, 7.0), v_u + 7.0 * (v_c - v_u), atol=1e-6)


def _diffusers_loop(latents, cond, uncond, steps, shift, guidance_scale):
    """The StableDiffusion3Pipeline denoising loop, in torch, with the linear 'model'."""
    sched = _scheduler(steps, shift)
    x = torch.from_numpy(latents)
    cfg = guidance_scale > 1
    emb = torch.from_numpy(np.concatenate([uncond, cond]) if cfg else cond)
    for t in sched.timesteps:
        inp = torch.cat([x] * 2) if cfg else x
        timestep = t.expand(inp.shape[0])
        sigma = timestep / 1000  # the model's own /1000 of the pipeline's timestep
        pred = 0.7 * inp - 0.3 * sigma[:, None, None, None] * inp + emb
        if cfg:
            pred_uncond, pred_text = pred.chunk(2)
            pred = pred_uncond + guidance_scale * (pred_text - pred_uncond)
        x = sched.step(pred, t, x).prev_sample
    return x.numpy()


@pytest.mark.parametrize("steps,shift,guidance_scale", [(4, 3.0, 1.0), (6, 3.0, 4.5), (5, 1.0, 7.0)])
def test_sample_euler_matches_diffusers_loop(steps, shift, guidance_scale):
    latents, cond, uncond = _problem()
    cfg = guidance_scale > 1
    emb = jnp.asarray(np.concatenate([uncond, cond]) if cfg else cond)
    calls = []

    def velocity_fn(x, t):
        calls.append((x.shape[0], np.asarray(t)))
        return 0.7 * x - 0.3 * t[:, None, None, None] * x + emb

    seen = []
    sigmas = flow.flow_match_sigmas(steps, shift)
    out = flow.sample_euler(
        velocity_fn, jnp.asarray(latents), sigmas, guidance_scale, progress=lambda i, n: seen.append((i, n))
    )
    ref = _diffusers_loop(latents, cond, uncond, steps, shift, guidance_scale)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
    # One call per step, on the doubled batch under CFG, with t = sigma (not x1000) per row.
    assert len(calls) == steps
    for (b, t), sigma in zip(calls, sigmas[:-1], strict=True):
        assert b == latents.shape[0] * (2 if cfg else 1)
        assert t.shape == (b,) and t.dtype == np.float32
        np.testing.assert_array_equal(t, np.full(b, sigma, np.float32))
    assert seen == [(i, steps) for i in range(steps)]


def test_sample_euler_exact_for_straight_flow():
    # A model that knows x0 and eps integrates the straight path exactly, whatever the schedule.
    k0, k1 = jax.random.split(jax.random.key(2))
    x0, eps = jax.random.normal(k0, SHAPE), jax.random.normal(k1, SHAPE)
    out = flow.sample_euler(lambda x, t: eps - x0, eps, flow.flow_match_sigmas(3, 3.0))
    np.testing.assert_allclose(out, x0, atol=1e-5)


# ---------------------------------------------------------------- student sampler


def test_sample_student_returns_fixed_x0_and_renoises_freshly():
    k_x0, k_noise, key = jax.random.split(jax.random.key(3), 3)
    x0 = jax.random.normal(k_x0, SHAPE)
    noise = jax.random.normal(k_noise, SHAPE)
    timesteps = flow.student_timesteps(4)
    inputs = []

    def denoise_fn(x, t):
        inputs.append((np.asarray(x), np.asarray(t)))
        return x0

    out = flow.sample_student(denoise_fn, noise, timesteps, key)
    np.testing.assert_array_equal(out, x0)
    assert len(inputs) == len(timesteps)
    np.testing.assert_array_equal(inputs[0][0], noise)
    for (_, t), expected in zip(inputs, timesteps, strict=True):
        np.testing.assert_array_equal(t, np.full(SHAPE[0], expected, np.float32))

    # Recover the noise of each renoising from x = (1 - t) x0 + t eps: drawn from fold_in(key, i), all distinct.
    eps_used = [np.asarray(noise)]
    for i in range(1, len(timesteps)):
        x, t = inputs[i]
        eps_i = (x - (1 - t[0]) * np.asarray(x0)) / t[0]
        expected = np.asarray(jax.random.normal(jax.random.fold_in(key, i - 1), SHAPE))
        np.testing.assert_allclose(eps_i, expected, atol=1e-4)
        eps_used.append(eps_i)
    for a in range(len(eps_used)):
        for b in range(a + 1, len(eps_used)):
            assert not np.allclose(eps_used[a], eps_used[b], atol=1e-2)


def test_sample_student_single_step():
    noise = jnp.ones(SHAPE)
    out = flow.sample_student(lambda x, t: 2.0 * x, noise, (1.0,), jax.random.key(0))
    np.testing.assert_array_equal(out, 2.0 * noise)


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: flow.flow_match_sigmas(0), "num_inference_steps"),
        (lambda: flow.flow_match_sigmas(-3), "num_inference_steps"),
        (lambda: flow.flow_match_sigmas(2.5), "num_inference_steps"),
        (lambda: flow.flow_match_sigmas(4, shift=0.0), "shift"),
        (lambda: flow.flow_match_sigmas(4, shift=-1.0), "shift"),
        (lambda: flow.flow_match_sigmas(4, num_train_timesteps=0), "num_train_timesteps"),
        (lambda: flow.shift_sigma(0.5, 0.0), "shift"),
        (lambda: flow.student_timesteps(0), "num_steps"),
        (lambda: flow.student_timesteps(4, shift=-2.0), "shift"),
        (lambda: flow.sample_logit_normal(jax.random.key(0), (4,), 0.0, 0.0), "std"),
        (lambda: flow.sample_euler(lambda x, t: x, jnp.ones(SHAPE), [1.0]), "sigmas"),
        (lambda: flow.sample_student(lambda x, t: x, jnp.ones(SHAPE), (), jax.random.key(0)), "timesteps"),
        (lambda: flow.sample_student(lambda x, t: x, jnp.ones(SHAPE), (1.0, 0.0), jax.random.key(0)), "timesteps"),
    ],
)
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
