"""LADD's GAN losses, accuracy, R1 and distillation loss on hand-made logits and discriminators."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ladd_jax.errors import LaddError
from ladd_jax.models.discriminator import Discriminator, DiscriminatorConfig, init_discriminator
from ladd_jax.train.losses import d_accuracy, d_loss, d_loss_parts, distill_loss, g_loss, r1_penalty

# Two heads of different sizes: the mean is per head first, then over heads.
REAL = (jnp.array([[[2.0, 0.5]]]), jnp.array([[[-1.0], [0.0]], [[3.0], [1.0]]]))  # [1,1,2] and [2,2,1]
FAKE = (jnp.array([[[-2.0, 0.5]]]), jnp.array([[[1.0], [-3.0]], [[0.0], [-0.5]]]))


def _softplus(x):
    return np.log1p(np.exp(x))


def test_hinge_values():
    # head 0: real relu(1-[2, .5]) = [0, .5] -> .25; fake relu(1+[-2, .5]) = [0, 1.5] -> .75
    # head 1: real relu(1-[-1, 0, 3, 1]) = [2, 1, 0, 0] -> .75; fake relu(1+[1, -3, 0, -.5]) = [2, 0, 1, .5] -> .875
    real, fake = d_loss_parts(REAL, FAKE, "hinge")
    np.testing.assert_allclose(real, (0.25 + 0.75) / 2, rtol=1e-6)
    np.testing.assert_allclose(fake, (0.75 + 0.875) / 2, rtol=1e-6)
    np.testing.assert_allclose(d_loss(REAL, FAKE), real + fake, rtol=1e-6)
    # G: -mean(fake): head 0 -(-0.75) = .75, head 1 -(-0.625) = .625
    np.testing.assert_allclose(g_loss(FAKE, "hinge"), (0.75 + 0.625) / 2, rtol=1e-6)


def test_non_saturating_values():
    r0, r1 = np.array([2.0, 0.5]), np.array([-1.0, 0.0, 3.0, 1.0])
    f0, f1 = np.array([-2.0, 0.5]), np.array([1.0, -3.0, 0.0, -0.5])
    want_d = (_softplus(-r0).mean() + _softplus(-r1).mean()) / 2 + (_softplus(f0).mean() + _softplus(f1).mean()) / 2
    want_g = (_softplus(-f0).mean() + _softplus(-f1).mean()) / 2
    np.testing.assert_allclose(d_loss(REAL, FAKE, "non_saturating"), want_d, rtol=1e-6)
    np.testing.assert_allclose(g_loss(FAKE, "non_saturating"), want_g, rtol=1e-6)


def test_hinge_vs_non_saturating_behaviour():
    """Hinge ignores confidently right logits (zero loss and gradient); non-saturating never quite does."""
    confident_real, confident_fake = (jnp.full((2, 3, 3), 5.0),), (jnp.full((2, 3, 3), -5.0),)
    assert float(d_loss(confident_real, confident_fake, "hinge")) == 0.0
    assert float(d_loss(confident_real, confident_fake, "non_saturating")) > 0.0
    grad_hinge = jax.grad(lambda f: d_loss(confident_real, (f,), "hinge"))(confident_fake[0])
    assert float(jnp.abs(grad_hinge).max()) == 0.0
    # At logits 0 both D losses equal their known values, and both G losses push fake logits up.
    zeros = (jnp.zeros((1, 2, 2)),)
    np.testing.assert_allclose(d_loss(zeros, zeros, "hinge"), 2.0)
    np.testing.assert_allclose(d_loss(zeros, zeros, "non_saturating"), 2 * np.log(2.0), rtol=1e-6)
    for kind in ("hinge", "non_saturating"):
        assert float(jax.grad(lambda f, k=kind: g_loss((f,), k))(zeros[0]).max()) < 0


def test_d_accuracy():
    # head 0: real [T, T], fake [T, F] -> (1 + .5) / 2 = .75
    # head 1: real [F, F, T, T] = .5, fake [F, T, F, T] = .5 -> .5
    np.testing.assert_allclose(d_accuracy(REAL, FAKE), (0.75 + 0.5) / 2, rtol=1e-6)


def test_unknown_kind():
    with pytest.raises(LaddError, match="hinge"):
        d_loss(REAL, FAKE, "wasserstein")
    with pytest.raises(LaddError, match="hinge"):
        g_loss(FAKE, "lsgan")


def test_r1_zero_for_constant_d():
    features = (jnp.ones((2, 3, 4, 5)), jnp.ones((2, 2, 2, 5)))
    constant = lambda fs: tuple(jnp.zeros(f.shape[:3]) + 7.0 for f in fs)
    assert float(r1_penalty(constant, features)) == 0.0


def test_r1_matches_hand_gradient_for_linear_d():
    """Head i: logits = <w_i, f> per location. D_i = mean over the N locations, so dD_i/df = w_i / N at every
    location and ||grad||^2 = N |w_i|^2 / N^2 = |w_i|^2 / N for every sample."""
    w = (jnp.array([1.0, -2.0, 0.5]), jnp.array([3.0, 0.0, 1.0]))
    features = (
        jax.random.normal(jax.random.key(0), (2, 3, 4, 3)),
        jax.random.normal(jax.random.key(1), (2, 5, 2, 3)),
    )
    linear = lambda fs: tuple(f @ wi for f, wi in zip(fs, w, strict=True))
    want = (np.sum(np.square(w[0])) / 12 + np.sum(np.square(w[1])) / 10) / 2
    np.testing.assert_allclose(jax.jit(r1_penalty, static_argnums=0)(linear, features), want, rtol=1e-6)


def test_r1_of_discriminator_is_differentiable_in_its_params():
    """R1 is a D-loss term: jit(grad) of it w.r.t. the head params runs and is non-zero."""
    config = DiscriminatorConfig(feature_layers=(0,), hidden=8, num_blocks=0, cond_dim=8, norm_groups=4)
    params = init_discriminator(config, jax.random.key(0), 6, 4)
    params = jax.tree.map(lambda x: np.asarray(x) + 0.1, params)  # move the zero-initialised output layers off zero
    features = (jax.random.normal(jax.random.key(1), (2, 3, 5, 6)),)
    t_hat, pooled = jnp.array([0.3, 0.8]), jnp.ones((2, 4))

    def penalty(p):
        return r1_penalty(lambda fs: Discriminator(config).apply({"params": p}, fs, t_hat, pooled), features)

    value, grads = jax.jit(jax.value_and_grad(penalty))(params)
    assert float(value) > 0
    assert float(jnp.abs(grads["head_0"]["conv_in"]["kernel"]).sum()) > 0


def test_distill_loss():
    x0_hat = jnp.array([[[[1.0, 2.0]]], [[[0.0, 0.0]]]])  # [2,1,1,2]
    target = jnp.array([[[[0.0, 0.0]]], [[[1.0, 3.0]]]])
    # per-sample mean squared errors: (1 + 4) / 2 = 2.5 and (1 + 9) / 2 = 5
    np.testing.assert_allclose(distill_loss(x0_hat, target), (2.5 + 5.0) / 2)
    np.testing.assert_allclose(distill_loss(x0_hat, target, jnp.array([2.0, 0.0])), 2.5)
    grad_target = jax.grad(lambda t: distill_loss(x0_hat, t))(target)
    assert float(jnp.abs(grad_target).max()) == 0.0  # the target is a stop-gradient
