"""Conditioned models (inpainting, editing): the data's conditioning latents reach the student and the teacher
alike, concatenated to every model input. A teacher widened with zero conditioning weights plays exactly the base
teacher's game whatever the conditioning holds, and the conditioning weights receive gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err, tiny_sd3_transformer
from test_train import ROOT

from ladd_jax.config_files import load_config_file
from ladd_jax.convert.mmdit import load_mmdit
from ladd_jax.errors import LaddError
from ladd_jax.models.discriminator import init_discriminator
from ladd_jax.models.mmdit import with_extra_inputs
from ladd_jax.train import sharding
from ladd_jax.train.loop import check_data
from ladd_jax.train.state import make_models
from ladd_jax.train.steps import make_step_gradients, step_draws

SHAPES = dict(latent=(2, 8, 8, 4), context=(2, 5, 32), pooled=(2, 24))
EXTRA = 3


def test_widened_teacher_with_zero_weights_plays_the_base_game(tmp_path):
    tiny_sd3_transformer("sd3-medium").save_pretrained(tmp_path / "teacher")
    base_config, base = load_mmdit(tmp_path / "teacher")
    wide_config, wide = with_extra_inputs(base_config, base, EXTRA)
    c = load_config_file(ROOT / "configs" / "ladd.py", "tiny")
    c.disc.output_init = "normal"  # heads that answer, so the student gets a gradient
    c.disc.hidden, c.disc.cond_dim, c.disc.norm_groups = 16, 16, 4
    c.distill_weight = 1.0  # the distillation term's teacher pass takes the conditioning too
    rng = np.random.default_rng(0)
    batch = {k: rng.standard_normal(s, dtype=np.float32) for k, s in SHAPES.items()}
    cond = rng.standard_normal((*SHAPES["latent"][:3], EXTRA), dtype=np.float32)
    draws = step_draws(c, jnp.zeros((), jnp.int32), jax.random.key(0), SHAPES["latent"])
    mesh = sharding.make_mesh()
    base_models, wide_models = make_models(c, base_config, base_config), make_models(c, wide_config, wide_config)
    heads = init_discriminator(base_models.disc.config, jax.random.key(2), 16, base_config.pooled_projection_dim)

    # Compiled: op by op, the two steps took over a minute of the suite.
    losses, d_grads, g_grads = jax.jit(make_step_gradients(c, base_models, mesh))(base, heads, base, batch, draws)
    w_losses, w_d_grads, w_g_grads = jax.jit(make_step_gradients(c, wide_models, mesh))(
        wide, heads, wide, dict(batch, cond=cond), draws
    )
    for key in ("d_loss", "g_loss", "distill"):
        np.testing.assert_allclose(w_losses[key], losses[key], rtol=1e-6)
    assert max(jax.tree.leaves(jax.tree.map(rel_err, w_d_grads, d_grads))) < 1e-5
    kernel, w_kernel = g_grads["patch_embed"]["kernel"], w_g_grads["patch_embed"]["kernel"]
    assert rel_err(w_kernel[:, :, : kernel.shape[2]], kernel) < 1e-5
    assert np.abs(w_kernel[:, :, kernel.shape[2] :]).max() > 0  # the conditioning weights learn
    rest = lambda g: {k: v for k, v in g.items() if k != "patch_embed"}
    assert max(jax.tree.leaves(jax.tree.map(rel_err, rest(w_g_grads), rest(g_grads)))) < 1e-5


def test_conditioning_channels_must_fill_the_teachers_input(tmp_path):
    tiny_sd3_transformer("sd3-medium").save_pretrained(tmp_path / "teacher")
    config, params = load_mmdit(tmp_path / "teacher")
    wide, _ = with_extra_inputs(config, params, EXTRA)
    spec = {k: (s[1:], "float32") for k, s in SHAPES.items()}
    check_data(dict(spec, cond=((8, 8, EXTRA), "float32")), wide, 2, 1)  # 4 + 3 channels: fine
    with pytest.raises(LaddError, match="2 conditioning channels; the teacher takes 7"):
        check_data(dict(spec, cond=((8, 8, 2), "float32")), wide, 2, 1)
    with pytest.raises(LaddError, match="0 conditioning channels; the teacher takes 7"):
        check_data(spec, wide, 2, 1)


def test_conditioned_configs_read_the_cond_field():
    from ladd_jax.train import methods

    c = load_config_file(ROOT / "configs" / "ladd.py", "tiny")
    assert "cond" not in methods.batch_fields(c)
    c.conditioned = True
    assert methods.batch_fields(c) == ("latent", "context", "pooled", "cond")
    lcm = load_config_file(ROOT / "configs" / "lcm.py", "tiny")
    lcm.conditioned = True
    with pytest.raises(LaddError, match="lcm takes no conditioning latents"):
        methods.batch_fields(lcm)
