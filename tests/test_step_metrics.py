"""What the train step logs about the game: with several D updates a step, the D metrics (d_loss, d_acc, the logits)
describe the heads as they meet the step's batch, before the updates fit them to that batch. Measured after 3 of its
4 updates, the toy world's long LADD run read 0.85 accuracy at step 4800 where the heads told a fresh batch's samples
apart 0.51-0.58 of the time (alignment notes, "The heads' accuracy, before and after their updates")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
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


def test_d_metrics_are_the_heads_before_the_steps_d_updates(tmp_path):
    tiny_sd3_transformer("sd3-medium").save_pretrained(tmp_path / "teacher")
    teacher_config, teacher = load_mmdit(tmp_path / "teacher")
    c = load_config_file(ROOT / "configs" / "ladd.py", "tiny")
    c.disc.output_init = "normal"  # heads that answer from the start
    c.disc.hidden, c.disc.cond_dim, c.disc.norm_groups = 16, 16, 4
    c.d_steps, c.d_lr, c.lr_warmup_steps = 3, 1e-2, 0  # updates that move the heads at step 0
    rng = np.random.default_rng(0)
    batch = {k: rng.standard_normal(s, dtype=np.float32) for k, s in SHAPES.items()}
    key, mesh = jax.random.key(0), sharding.make_mesh()
    models = make_models(c, teacher_config, teacher_config)
    heads = init_discriminator(models.disc.config, jax.random.key(2), 16, teacher_config.pooled_projection_dim)
    draws = step_draws(c, jnp.zeros((), jnp.int32), key, SHAPES["latent"])
    gradients = jax.jit(make_step_gradients(c, models, mesh))  # the objectives at given heads, nothing updated

    new_state, logged = jax.jit(make_train_step(c, models, mesh))(
        init_state(models, teacher, heads), dict(teacher=teacher), batch, key
    )
    before = gradients(teacher, heads, teacher, batch, draws)[0]
    after = gradients(teacher, new_state.disc, teacher, batch, draws)[0]
    for k in D_METRICS:
        np.testing.assert_allclose(logged[k], before[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # The updates did fit the heads to this batch: measured after them the step would have logged other values.
    assert after["d_loss"] < before["d_loss"] - 1e-3, (after["d_loss"], before["d_loss"])
