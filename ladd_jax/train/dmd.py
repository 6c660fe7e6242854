"""Distribution Matching Distillation (DMD, Yin et al. 2024; DMD2's two time-scale rule and GAN term) as a `Game` of
the LADD step (train/steps.py): the student's samples move along the difference of two scores, the frozen
teacher's ("real", CFG-guided) and a "fake" score that keeps learning the student's own distribution; with
adv_weight > 0, LADD's heads play beside it (DMD2's GAN term, on the teacher's features as in LADD).

    x0_hat = x_t - t * student(x_t, t)                                   as in LADD (the same student times)
    state.disc = {"fake_score": phi, a trainable copy of the teacher (rate dmd.fake_score_lr),
                  "heads": LADD's heads (rate d_lr), only with adv_weight > 0}
    D step (x d_steps): phi <- phi - grad || v_phi(x_s, s) - (eps - sg(x0_hat)) ||^2     flow matching on the
                        student's samples, x_s = (1 - s) sg(x0_hat) + s eps, s ~ U(dmd.t_min, dmd.t_max);
                        the heads' LADD update beside it
    G step:  x_s  = (1 - s) sg(x0_hat) + s eps_fake                      s ~ U(dmd.t_min, dmd.t_max)
             real = the teacher's x0 estimate of x_s, CFG distill_cfg    fake = phi's x0 estimate of x_s
             grad = (fake - real) / mean |x0_hat - real|                 per sample (DMD's normalisation)
             loss = distill_weight * 0.5 * mean ||x0_hat - sg(x0_hat - grad)||^2   (d loss / d x0_hat ~ grad)
                  + adv_weight * LADD's g_loss

disc.train=False freezes the heads at their initialisation (LADD's control; the fake score still learns);
dmd.fake_score_lr=0 freezes the fake score at the teacher: with an unguided real score (distill_cfg 1) DMD's
gradient is then exactly zero, with a guided one it is the guidance direction alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ladd_jax.flow import add_noise, denoise
from ladd_jax.train.losses import g_loss
from ladd_jax.train.state import adamw, learning_rate
from ladd_jax.train.steps import Draws, Features, Game, Objective

SCORE_TIME_KEY = 11  # fold_in tag of the fake score's time draw, apart from LADD's draws


def second_network_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW over state.disc with each part clipped on its own and at its own rate: the fake score at
    dmd.fake_score_lr, the heads at d_lr, or 0 when they are frozen (disc.train=False). One Adam over the whole
    tree, its updates scaled per part: optax's per-label optimisers cannot be mapped to the state's shardings."""
    clip = optax.clip_by_global_norm(config.grad_clip)
    rates = dict(fake_score=config.dmd.fake_score_lr, heads=config.d_lr if config.disc.train else 0.0)
    per_part = lambda fn: optax.stateless(lambda updates, params=None: {k: fn(k, v) for k, v in updates.items()})
    return optax.chain(
        per_part(lambda _, u: clip.update(u, clip.init(u))[0]),
        adamw(learning_rate(1.0, config), config, config.get("d_b1")),
        per_part(lambda k, u: jax.tree.map(lambda x: rates[k] * x, u)),
    )


class DMDGame(Game):
    @classmethod
    def step_draws(cls, config: ml_collections.ConfigDict, step: jax.Array, key: jax.Array, shape: tuple) -> Draws:
        """LADD's draws, with the distribution-matching time `t_distill` in [t_min, t_max] and the fake score's own
        training time `t_score` from the same range; the fake score's noise is `eps_real` (the heads' real latents
        are re-noised with it too, at another time)."""
        draws = super().step_draws(config, step, key, shape)
        lo, hi = config.dmd.t_min, config.dmd.t_max
        u = jax.random.uniform(jax.random.fold_in(jax.random.fold_in(key, step), SCORE_TIME_KEY), (shape[0],))
        return dict(draws, t_distill=lo + (hi - lo) * draws["t_distill"], t_score=lo + (hi - lo) * u)

    @property
    def trains_second_network(self) -> bool:
        return True  # the fake score (and the heads when they play)

    @property
    def d_updates(self) -> int:
        return self.config.d_steps  # frozen heads are held by their rate of 0 (`second_network_optimizer`)

    def score(self, params: Any, x: jax.Array, t: jax.Array) -> jax.Array:
        """The velocity of the network `params` (the teacher's architecture) at x, t under the batch's text."""
        _, ctx, pooled = self.inputs
        return self.models.teacher.apply({"params": params}, self.with_cond(x), t, ctx, pooled)

    def student_pass(self, student_params: Any) -> tuple[jax.Array, Callable, tuple, Callable | None]:
        """LADD's student pass; its `fake` is (the teacher's features of the sample, when heads play; the sample
        itself as a constant, which the fake score learns from)."""
        x0_hat, pull_back, feats, feats_pull_back = super().student_pass(student_params)
        pull = None if feats_pull_back is None else (lambda cotangent: feats_pull_back(cotangent[0]))
        return x0_hat, pull_back, (feats, jax.lax.stop_gradient(x0_hat)), pull

    def d_features(self, fake: tuple) -> Features:
        feats, sample = fake
        return dict(super().d_features(feats) if self.adversarial else {}, sample=(sample,))

    def d_objective(self, disc_params: Any, feats: Features) -> Objective:
        """The fake score's flow-matching loss on the student's samples, plus the heads' LADD loss when they play."""
        (x0,) = feats["sample"]
        s, eps = self.draws["t_score"], self.draws["eps_real"]
        err = self.score(disc_params["fake_score"], add_noise(x0, eps, s), s).astype(jnp.float32) - (eps - x0)
        loss = jnp.mean(jnp.square(err))
        aux = dict(fake_score_loss=loss)
        if self.adversarial:
            heads_loss, heads_aux = super().d_objective(disc_params["heads"], feats)
            loss, aux = loss + heads_loss, dict(aux, **heads_aux)
        return loss, aux

    def g_objective(self, disc_params: Any, x0_hat: jax.Array, fake: tuple) -> Objective:
        """distill_weight * DMD's loss (the module docstring), plus adv_weight * LADD's term when heads play."""
        feats, _ = fake
        loss, aux = 0.0, {}
        if self.adversarial:
            aux["g_loss"] = g_loss(self.heads(disc_params["heads"], feats), self.config.loss)
            loss = self.config.adv_weight * aux["g_loss"]
        s = self.draws["t_distill"]
        x_s = add_noise(jax.lax.stop_gradient(x0_hat), self.draws["eps_fake"], s)
        real = self.teacher_denoised(x_s, s).astype(jnp.float32)
        fake_x0 = denoise(x_s, self.score(disc_params["fake_score"], x_s, s), s).astype(jnp.float32)
        x = x0_hat.astype(jnp.float32)
        scale = jnp.mean(jnp.abs(jax.lax.stop_gradient(x) - real), axis=tuple(range(1, x.ndim)), keepdims=True)
        grad = jax.lax.stop_gradient((fake_x0 - real) / jnp.maximum(scale, 1e-6))
        aux["dmd"] = 0.5 * jnp.mean(jnp.square(x - jax.lax.stop_gradient(x - grad)))
        aux["dmd_fake_real_gap"] = jnp.mean(jnp.abs(fake_x0 - real))
        return loss + self.config.distill_weight * aux["dmd"], aux
