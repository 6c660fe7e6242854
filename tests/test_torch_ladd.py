"""The LADD step against its PyTorch reference (ladd_jax/torch_ref/ladd_step.py) at step 0, float32.

The tiny diffusers teacher is converted to JAX; the student is a copy of it on both sides; the heads are random with
random output layers (zero ones would give the student no gradient) and converted to PyTorch. Both sides take the
draws of `step_draws` and compute the losses, the heads' gradients of the D objective and the student's gradients of
the G objective at the same heads (`make_step_gradients`). Every gradient tensor is compared on its own scale.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import rel_err, tiny_sd3_transformer

from ladd_jax.convert.mmdit import POS_EMBED, export_tensors, load_mmdit
from ladd_jax.errors import LaddError
from ladd_jax.models.discriminator import init_discriminator
from ladd_jax.torch_ref.ladd_step import LaddReference, heads_from_jax, heads_to_jax, torch_inputs
from ladd_jax.train import sharding
from ladd_jax.train.state import init_state, make_models
from ladd_jax.train.steps import make_step_gradients, make_train_step, step_draws

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "configs"))
import ladd  # noqa: E402  (configs/ is not a package)

LOSS_TOL, GRAD_TOL = 1e-5, 1e-4
SHAPES = dict(latent=(2, 8, 8, 4), context=(2, 5, 32), pooled=(2, 24))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """(diffusers model, JAX config, JAX params) of the same tiny random teacher."""
    model = tiny_sd3_transformer("sd3-medium")
    folder = tmp_path_factory.mktemp("teacher")
    model.save_pretrained(folder)
    config, params = load_mmdit(folder)
    return model, config, params


def ladd_config(kind: str):
    c = ladd.get_config("tiny")
    c.loss = kind
    c.disc.output_init = "normal"
    c.disc.hidden, c.disc.cond_dim, c.disc.norm_groups = 16, 16, 4
    return c


def setup(teacher, kind: str) -> tuple:
    """(LADD config, models, random heads, batch) on the tiny teacher."""
    mmdit = teacher[1]
    c = ladd_config(kind)
    models = make_models(c, mmdit, mmdit)
    heads = init_discriminator(models.disc.config, jax.random.key(2), mmdit.hidden_size, mmdit.pooled_projection_dim)
    rng = np.random.default_rng(0)
    batch = {k: rng.standard_normal(s, dtype=np.float32) for k, s in SHAPES.items()}
    return c, models, heads, batch


def both_sides(teacher, kind: str) -> tuple[dict, dict, dict, dict]:
    """JAX losses, head grads and student grads (by diffusers name), and the reference's output."""
    model, mmdit, params = teacher
    c, models, heads, batch = setup(teacher, kind)
    draws = jax.device_get(step_draws(c, jnp.zeros((), jnp.int32), jax.random.key(0), SHAPES["latent"]))
    gradients = jax.jit(make_step_gradients(c, models, sharding.make_mesh()))
    losses, head_grads, student_grads = jax.device_get(gradients(params, heads, params, batch, draws))
    student_grads = {k: t.load() for k, t in export_tensors(mmdit, student_grads).items() if k != POS_EMBED}

    reference = LaddReference.from_config(
        c, copy.deepcopy(model), copy.deepcopy(model), heads_from_jax(models.disc.config, heads)
    )
    ref = reference.gradients(torch_inputs(batch), torch_inputs(draws))
    ref["head_grads"] = heads_to_jax(ref["head_grads"], heads)
    return losses, head_grads, student_grads, ref


@pytest.mark.parametrize("kind", ["hinge", pytest.param("non_saturating", marks=pytest.mark.slow)])
def test_losses_and_gradients_match_the_pytorch_reference(teacher, kind):
    losses, head_grads, student_grads, ref = both_sides(teacher, kind)
    for key in ("d_loss_real", "d_loss_fake", "d_loss", "g_loss"):
        assert rel_err(losses[key], ref[key].numpy()) < LOSS_TOL, (key, losses[key], ref[key])

    flat = lambda tree: dict(jax.tree_util.tree_flatten_with_path(tree)[0])
    ref_heads = flat(ref["head_grads"])
    head_errors = {jax.tree_util.keystr(k): rel_err(v, ref_heads[k]) for k, v in flat(head_grads).items()}
    assert max(head_errors.values()) < GRAD_TOL, sorted(head_errors.items(), key=lambda kv: -kv[1])[:3]

    assert sorted(student_grads) == sorted(ref["student_grads"])
    student_errors = {k: rel_err(v, ref["student_grads"][k].numpy()) for k, v in student_grads.items()}
    assert max(student_errors.values()) < GRAD_TOL, sorted(student_errors.items(), key=lambda kv: -kv[1])[:3]
    # Not vacuous: every head tensor and every student tensor but one gets a gradient. The exception: the last
    # block's context queries, whose only output (the context stream after the last block) is never used.
    assert all(np.abs(v).max() > 0 for v in ref_heads.values())
    unused = {f"transformer_blocks.{teacher[1].num_layers - 1}.attn.add_q_proj.{p}" for p in ("weight", "bias")}
    assert {k for k, v in student_grads.items() if not np.abs(v).max() > 0} == unused


@pytest.mark.slow  # 30 s
def test_step_gradients_are_the_train_steps_at_step_0(teacher):
    """What ties the comparison to training: at step 0 the warm-up's learning rate is 0, so the train step's D update
    leaves the heads as they were and its metrics are those of `make_step_gradients` (same draws, same math)."""
    params = teacher[2]
    c, models, heads, batch = setup(teacher, "hinge")
    mesh, key = sharding.make_mesh(), jax.random.key(0)
    state = init_state(models, params, heads)
    _, metrics = jax.jit(make_train_step(c, models, mesh))(state, dict(teacher=params), batch, key)
    draws = step_draws(c, state.step, key, SHAPES["latent"])
    losses, head_grads, student_grads = jax.jit(make_step_gradients(c, models, mesh))(
        params, heads, params, batch, draws
    )
    for name in ("d_loss_real", "d_loss_fake", "d_loss", "g_loss"):
        np.testing.assert_allclose(metrics[name], losses[name], rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(metrics["d_grad_norm"], optax.tree.norm(head_grads), rtol=1e-5)
    np.testing.assert_allclose(metrics["g_grad_norm"], optax.tree.norm(student_grads), rtol=1e-5)


def test_the_reference_refuses_what_it_does_not_model(teacher):
    model, mmdit, _ = teacher
    c = ladd_config("hinge")
    c.r1_gamma = 1e-5
    disc = make_models(c, mmdit, mmdit).disc.config
    params = init_discriminator(disc, jax.random.key(0), mmdit.hidden_size, mmdit.pooled_projection_dim)
    heads = heads_from_jax(disc, params)
    with pytest.raises(LaddError, match="r1_gamma"):
        LaddReference.from_config(c, model, copy.deepcopy(model), heads)
    with pytest.raises(LaddError, match="own module"):
        LaddReference(model, model, heads)
