"""The train step's D phase. What it logs: with several D updates a step, the D metrics (d_loss, d_acc, the logits)
describe the heads as they meet the step's batch, before the updates fit them to that batch. Measured after 3 of its
4 updates, the toy world's long LADD run read 0.85 accuracy at step 4800 where the heads told a fresh batch's samples
apart 0.51-0.58 of the time (alignment notes, "The heads' accuracy, before and after their updates"). What its
updates see: with config.d_renoise each update after the first reads the step's samples re-noised afresh."""

from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_sd3_transformer
from test_conditioning import SHAPES
from test_train import ROOT

from ladd_jax.config_files import load_config_file
from ladd_jax.convert.mmdit import load_mmdit
from ladd_jax.models.discriminator import init_discriminator
from ladd_jax.train import sharding
from ladd_jax.train.state import init_state, make_models
from ladd_jax.train.steps import make_step_gradients, make_train_step, step_draws

D_METRICS = ("d_loss", "d_acc", "logits_real", "logits_fake", "logit_gap")


def setup(tmp_path, **overrides):
    """A tiny teacher, heads that answer from the start and D updates that move them at step 0; the step's inputs."""
    tiny_sd3_transformer("sd3-medium").save_pretrained(tmp_path / "teacher")
    teacher_config, teacher = load_mmdit(tmp_path / "teacher")
    c = load_config_file(ROOT / "configs" / "ladd.py", "tiny")
    c.disc.output_init = "normal"
    c.disc.hidden, c.disc.cond_dim, c.disc.norm_groups = 16, 16, 4
    c.d_steps, c.d_lr, c.lr_warmup_steps = 2, 1e-2, 0
    c.update(overrides)
    rng = np.random.default_rng(0)
    batch = {k: rng.standard_normal(s, dtype=np.float32) for k, s in SHAPES.items()}
    models = make_models(c, teacher_config, teacher_config)
    heads = init_discriminator(models.disc.config, jax.random.key(2), 16, teacher_config.pooled_projection_dim)
    return c, models, teacher, heads, batch


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> SimpleNamespace:
    """`setup`'s game (d_renoise off) and what both tests read of it, each compiled once: its step from the fresh
    state (new state, logged metrics) and its jitted `step_gradients` (the objectives at given heads, nothing
    updated; d_renoise does not enter them)."""
    c, models, teacher, heads, batch = setup(tmp_path_factory.mktemp("step_metrics"))
    key, mesh = jax.random.key(0), sharding.make_mesh()
    state = init_state(models, teacher, heads)
    new_state, logged = jax.jit(make_train_step(c, models, mesh))(state, dict(teacher=teacher), batch, key)
    gradients = jax.jit(make_step_gradients(c, models, mesh))
    return SimpleNamespace(
        c=c,
        models=models,
        teacher=teacher,
        heads=heads,
        batch=batch,
        key=key,
        mesh=mesh,
        state=state,
        new_state=new_state,
        logged=logged,
        gradients=gradients,
    )


def test_d_metrics_are_the_heads_before_the_steps_d_updates(plain):
    draws = step_draws(plain.c, jnp.zeros((), jnp.int32), plain.key, SHAPES["latent"])
    before = plain.gradients(plain.teacher, plain.heads, plain.teacher, plain.batch, draws)[0]
    # As host arrays, like `heads`: the step's mesh-placed outputs would make jit compile `gradients` a second time.
    after = plain.gradients(plain.teacher, jax.device_get(plain.new_state.disc), plain.teacher, plain.batch, draws)[0]
    for k in D_METRICS:
        np.testing.assert_allclose(plain.logged[k], before[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # The updates did fit the heads to this batch: measured after them the step would have logged other values.
    assert after["d_loss"] < before["d_loss"] - 1e-3, (after["d_loss"], before["d_loss"])


def test_d_renoise_gives_each_further_d_update_its_own_draws(plain):
    c = plain.c.copy_and_resolve_references()
    c.d_renoise = True
    step = jnp.zeros((), jnp.int32)
    draws = step_draws(c, step, plain.key, SHAPES["latent"])
    base = step_draws(plain.c, step, plain.key, SHAPES["latent"])
    assert set(draws) - set(base) == {"d_t_hat", "d_eps_real", "d_eps_fake"}
    for k, v in base.items():  # the step's other draws do not move when the option is on
        np.testing.assert_array_equal(draws[k], v, err_msg=k)
    assert draws["d_eps_fake"].shape == (1, *SHAPES["latent"]) and draws["d_t_hat"].shape == (1, SHAPES["latent"][0])
    assert not np.allclose(draws["d_eps_fake"][0], draws["eps_fake"])

    # The step's heads against two updates by hand: the first on the step's draws, the second on the fresh ones
    # (`gradients` takes the plain draws' keys: the d_ ones would only make jit trace it again).
    new_state, _ = jax.jit(make_train_step(c, plain.models, plain.mesh))(
        plain.state, dict(teacher=plain.teacher), plain.batch, plain.key
    )
    fresh = dict(base, **{k: draws[f"d_{k}"][0] for k in ("t_hat", "eps_real", "eps_fake")})
    expected, d_opt = plain.heads, plain.state.d_opt
    for d in (base, fresh):
        d_grads = plain.gradients(plain.teacher, expected, plain.teacher, plain.batch, d)[1]
        updates, d_opt = plain.models.d_tx.update(d_grads, d_opt, expected)
        expected = jax.device_get(optax.apply_updates(expected, updates))  # host arrays: one compile of `gradients`
    same, _ = jax.tree.flatten(
        jax.tree.map(lambda a, b: np.allclose(a, b, rtol=1e-4, atol=1e-6), new_state.disc, expected)
    )
    assert all(same)
    # Without the option the second update reads the first's draws again, and the heads come out elsewhere.
    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), plain.new_state.disc, new_state.disc)
    assert max(jax.tree.leaves(moved)) > 1e-4
