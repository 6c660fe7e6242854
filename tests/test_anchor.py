"""DMD's regression anchor (config.anchor_weight, train/steps.py `Game.anchored`): the student's 1-step image of each
latent's stored noise regressed on that latent, added to the G step's loss and gradient and nothing else."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from test_conditioning import SHAPES
from test_methods import one_step
from test_step_metrics import setup
from test_train import tiny_config

from ladd_jax.errors import LaddError
from ladd_jax.train import methods, sharding, steps
from ladd_jax.train.steps import AUGMENT_KEY, make_step_gradients, step_draws

WEIGHT = 0.5


def test_anchor_adds_the_regression_of_the_stored_pairs_to_the_g_step(tmp_path):
    c, models, teacher, heads, batch = setup(tmp_path, anchor_weight=WEIGHT)
    batch["noise"] = np.random.default_rng(1).standard_normal(SHAPES["latent"], dtype=np.float32)
    plain = c.copy_and_resolve_references()
    plain.anchor_weight = 0.0
    draws = step_draws(c, jnp.zeros((), jnp.int32), jax.random.key(0), SHAPES["latent"])
    mesh = sharding.make_mesh()
    args = (teacher, heads, teacher, batch, draws)
    losses, d_grads, g_grads = jax.jit(make_step_gradients(c, models, mesh))(*args)
    base, base_d_grads, base_g_grads = jax.jit(make_step_gradients(plain, models, mesh))(*args)

    x0, ctx, pooled, z = (batch[k] for k in ("latent", "context", "pooled", "noise"))
    ones = jnp.ones(len(z))
    by_hand = lambda p: jnp.mean((z - models.student.apply({"params": p}, z, ones, ctx, pooled) - x0) ** 2)
    mse, mse_grads = jax.value_and_grad(by_hand)(teacher)
    np.testing.assert_allclose(losses["anchor"], mse, rtol=1e-5)
    np.testing.assert_allclose(losses["g_total"], base["g_total"] + WEIGHT * mse, rtol=1e-5)
    for a, b, m in zip(*(jax.tree.leaves(g) for g in (g_grads, base_g_grads, mse_grads)), strict=True):
        np.testing.assert_allclose(a, b + WEIGHT * m, rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(d_grads), jax.tree.leaves(base_d_grads), strict=True):
        np.testing.assert_array_equal(a, b)  # the heads' objective does not see it
    assert mse > 0 and "anchor" not in base


def test_perceptual_anchor_is_the_latent_perceptual_distance_of_the_pairs_at_its_decayed_weight(world, latent_features):
    """anchor_distance "perceptual" (DMD's LPIPS), in a DMD run whose loader brings each latent's noise: the ensembled
    latent perceptual distance of the student's 1-step image of that noise to the latent, under the step's
    augmentation draws, added to DMD's G loss; with anchor_decay "cosine", at step 1 of 4 it weighs
    WEIGHT * (1 + cos(pi / 4)) / 2 (one step checks both: each costs a DMD step's compilation)."""
    from ladd_jax.models.latent_perceptual import AugmentConfig, load_latent_features, perceptual_distance

    over = dict(d_steps=1, lr_warmup_steps=1, anchor_weight=WEIGHT, anchor_distance="perceptual")
    over.update(anchor_decay="cosine", total_steps=4)
    c = tiny_config(world, "dmd", features=latent_features, **over)
    assert "noise" in methods.batch_fields(c)
    setup, state, _, metrics, batch, key = one_step(c, at_step=1)
    x0, ctx, pooled, z = (batch[k] for k in ("latent", "context", "pooled", "noise"))
    x0_hat = z - setup.models.student.apply({"params": state.student}, z, jnp.ones(len(z)), ctx, pooled)
    net_config, params = load_latent_features(latent_features)
    augment = AugmentConfig(**c.perceptual.augment)
    draw = jax.random.fold_in(jax.random.fold_in(key, 1), AUGMENT_KEY)  # step 1's draws
    want = perceptual_distance(net_config, params, x0_hat, x0, draw, c.perceptual.num_draws, augment)
    np.testing.assert_allclose(metrics["anchor"], jnp.mean(want), rtol=1e-4)
    weight = WEIGHT * (1 + np.cos(np.pi / 4)) / 2
    np.testing.assert_allclose(metrics["g_total"], metrics["dmd"] + weight * metrics["anchor"], rtol=1e-5)


def test_anchor_weight_decays_by_a_half_cosine():
    """anchor_decay "cosine": WEIGHT at step 0, WEIGHT * (1 + cos(pi / 4)) / 2 at step 1 of 4, 0 at the end; constant
    without it (the step applies it: the perceptual test above, at step 1)."""
    over = ml_collections.ConfigDict(dict(anchor_weight=WEIGHT, anchor_decay="cosine", total_steps=4))
    for step, want in ((0, WEIGHT), (1, WEIGHT * (1 + np.cos(np.pi / 4)) / 2), (4, 0.0)):
        np.testing.assert_allclose(steps.anchor_weight_at(over, step), want, rtol=1e-6, atol=1e-7)
    over.anchor_decay = "constant"
    np.testing.assert_allclose(steps.anchor_weight_at(over, 3), WEIGHT)


@pytest.mark.parametrize("name", ["lcm", "d2g"])
def test_anchor_is_refused_where_it_has_no_place(world, name):
    with pytest.raises(LaddError, match=f"{name} has no regression anchor"):
        methods.method(tiny_config(world, name, anchor_weight=WEIGHT))


def test_anchor_settings_are_checked(world):
    with pytest.raises(LaddError, match="anchor_distance"):
        methods.method(tiny_config(world, "dmd", anchor_distance="l1"))
    with pytest.raises(LaddError, match="anchor_decay='linear'"):
        methods.method(tiny_config(world, "dmd", anchor_decay="linear"))
    with pytest.raises(LaddError, match="use anchor_distance='mse' with method add"):
        methods.method(tiny_config(world, "add", anchor_weight=WEIGHT, anchor_distance="perceptual"))
