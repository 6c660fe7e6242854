"""Diffusion2GAN-style regression (Kang et al. 2024) as a `Game` of the LADD step (train/steps.py):

x0_hat = z - 1 * student(z, t = 1)      z: the noise each teacher latent x0 was sampled from (`ladd-jax synth`
                                         stores the ODE pair (z, x0)), so the student learns the teacher's
                                         noise -> latent map in one step
G loss = mse_weight * mean ||x0_hat - x0||^2
       + perceptual_weight * E_aug d(aug(x0_hat), aug(x0))      an ensembled latent perceptual distance
         (models/latent_perceptual.py): a frozen latent feature network, the same random augmentation on
         both inputs, averaged over perceptual.num_draws draws (Diffusion2GAN's E-LatentLPIPS, our own network)
       + adv_weight * LADD's adversarial term                   (c) regression + GAN: the teacher-feature
         heads play on x0_hat exactly as in LADD (D step included); adv_weight = 0 skips heads and D step
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ladd_jax.train.steps import Draws, Game, Objective


class RegressionGame(Game):
    @classmethod
    def step_draws(cls, config: ml_collections.ConfigDict, step: jax.Array, key: jax.Array, shape: tuple) -> Draws:
        """LADD's draws (its heads re-noise at t_hat); the student's own time is always 1."""
        draws = super().step_draws(config, step, key, shape)
        return dict(draws, t=jnp.ones_like(draws["t"]))

    def generate(self, student_params: Any) -> jax.Array:
        """x0_hat = z - student(z, 1): one step from the stored noise."""
        return self.one_step(student_params)

    def sample_terms(self, x0_hat: jax.Array) -> Objective:
        """The regression to the stored ODE output (MSE, and the latent perceptual distance when weighted); LADD's
        adversarial term is added by `g_objective` when adv_weight > 0."""
        r = self.config.regression
        target = jax.lax.stop_gradient(self.inputs[0])
        loss, aux = super().sample_terms(x0_hat)
        aux["mse"] = jnp.mean(jnp.square(x0_hat.astype(jnp.float32) - target))
        loss = loss + r.mse_weight * aux["mse"]
        if r.perceptual_weight:
            aux["perceptual"] = jnp.mean(self.perceptual(x0_hat, target))
            loss = loss + r.perceptual_weight * aux["perceptual"]
        return loss, aux
