"""Adversarial Diffusion Distillation (ADD, Sauer et al. 2023) as a `Game` of the LADD step (train/steps.py).

x0_hat = x_t - t * student(x_t, t)                        the student exactly as in LADD
pixels = VAE decoder(x0_hat)  (and of the real latents)   ADD's discriminator works in pixel space
feats  = a frozen pixel feature network's tokens (DINOv2; the toy world's own) of the chosen blocks, on the
         pixels resized to `add.features_size` and normalised with `add.pixel_mean/std`; the CLS token
         dropped, the patch tokens laid out [B, h, w, D]
heads  = LADD's 2D-conv heads on those maps, conditioned on the pooled text (projection, as StyleGAN-T's
         text-conditioned heads); their time input is fixed at 0, since ADD's discriminator sees clean images
D loss = hinge + gamma/2 R1 on the heads' inputs (ADD: gamma 1e-5)          `Game.d_objective`
G loss = adv_weight * -D(fake) + distill_weight * c(t) ||pixels(x0_hat) - sg(pixels(teacher x0 estimate of
         x0_hat re-noised to t))||^2   (ADD: lambda 2.5; c(t) "exponential" = 1 - t, the flow's signal level
         (ADD's alpha_t), or "uniform" = 1; the teacher with CFG `distill_cfg`, 1: none)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ladd_jax.convert.dinov2 import load_dinov2
from ladd_jax.convert.vae import load_vae
from ladd_jax.errors import LaddError
from ladd_jax.flow import add_noise
from ladd_jax.models.dinov2 import Dinov2
from ladd_jax.models.vae import AutoencoderKL, unscale_latents
from ladd_jax.train.losses import distill_loss
from ladd_jax.train.methods import FrozenNetworks
from ladd_jax.train.steps import Game, Logits, Objective

WEIGHTINGS = ("exponential", "uniform")


def load_add_networks(config: ml_collections.ConfigDict, teacher_folder: Path, features: Path) -> FrozenNetworks:
    """The teacher folder's VAE and the pixel feature network (a transformers Dinov2 folder)."""
    if config.add.weighting not in WEIGHTINGS:
        raise LaddError(f"add.weighting={config.add.weighting!r}; use one of {WEIGHTINGS}")
    vae_config, vae_params = load_vae(teacher_folder / "vae")
    net_config, net_params = load_dinov2(features)
    if config.add.features_size % net_config.patch_size:
        raise LaddError(
            f"add.features_size={config.add.features_size} is not a multiple of the feature network's patch size "
            f"{net_config.patch_size}"
        )
    return FrozenNetworks(
        modules=dict(vae=AutoencoderKL(vae_config), features=Dinov2(net_config)),
        params=dict(vae=vae_params, features=net_params),
        heads_on_features=net_config.num_hidden_layers,
        feature_dim=net_config.hidden_size,
    )


class PixelGame(Game):
    def decode(self, latents: jax.Array) -> jax.Array:
        """The VAE's images in [-1, 1] (not clipped: the gradient must reach every pixel)."""
        vae = self.models.vae
        z = unscale_latents(latents.astype(jnp.float32), vae.config)
        return vae.apply({"params": self.frozen["vae"]}, z, method=AutoencoderKL.decode)

    def features(self, x0_like: jax.Array, eps: jax.Array, c: jax.Array, p: jax.Array) -> tuple[jax.Array, ...]:
        """The feature network's patch tokens of the decoded images, [B, h, w, D] per chosen block; clean images,
        so `eps` (and the text) are unused."""
        a = self.config.add
        images = (self.decode(x0_like) + 1.0) / 2.0
        side = a.features_size
        images = jax.image.resize(images, (images.shape[0], side, side, images.shape[-1]), "bilinear")
        images = (images - jnp.asarray(a.pixel_mean)) / jnp.asarray(a.pixel_std)
        # Head i reads block i's output: transformers' hidden_states[i + 1] (hidden_states[0] is the embedding).
        blocks = tuple(i + 1 for i in self.models.feature_layers)
        _, hidden = self.models.features.apply({"params": self.frozen["features"]}, images, layers=blocks)
        grid = side // self.models.features.config.patch_size
        return tuple(h[:, 1:].reshape(h.shape[0], grid, grid, h.shape[-1]) for h in hidden)

    def heads(self, disc_params: Any, feats: tuple[jax.Array, ...], p: jax.Array | None = None) -> Logits:
        pooled = self.disc_text[1] if p is None else p
        t = jnp.zeros((pooled.shape[0],), jnp.float32)
        return self.models.disc.apply({"params": disc_params}, feats, t, pooled)

    def sample_terms(self, x0_hat: jax.Array) -> Objective:
        """ADD's distillation loss in pixel space (adv_weight = 0 with it: ADD's distillation-only ablation)."""
        if not self.config.distill_weight:
            return 0.0, {}
        t_d = self.draws["t_distill"]
        x_d = add_noise(jax.lax.stop_gradient(x0_hat), self.draws["eps_fake"], t_d)
        weight = 1.0 - t_d if self.config.add.weighting == "exponential" else 1.0
        target = jax.lax.stop_gradient(self.decode(self.teacher_denoised(x_d, t_d)))
        distill = distill_loss(self.decode(x0_hat), target, weight)
        return self.config.distill_weight * distill, dict(distill=distill)
