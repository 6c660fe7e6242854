"""Diffusion2GAN-style regression in the LADD trainer (ladd_jax/train/regression.py): the 1-step student maps the
noise each synthetic latent was sampled from to that latent (the ODE pairs `ladd-jax synth` stores).

    ladd-jax train --config configs/d2g.py:VARIANT[-LOSS] --workdir W --config.teacher=DIR --config.data=DIR
                   [--config.features=DIR]

VARIANT: as configs/ladd.py ("tiny", "toy", "sd3-medium", ...). LOSS:
    mse    (a) mean squared error in latent space (the default)
    lpips  (b) the ensembled latent perceptual distance; --config.features names the latent feature network
           (the toy world's: `python -m ladd_jax.toy.latent_features --teacher DIR --out DIR`)
    gan    (c) lpips plus LADD's adversarial term on the teacher's features (Diffusion2GAN's full objective,
           with LADD's heads in place of its conditional GAN discriminator)
"""

from pathlib import Path

import ml_collections

from ladd_jax.config_files import load_with_option

TOY_ASSETS = Path(__file__).resolve().parents[1] / "ladd_jax" / "toy" / "assets"
# LOSS -> (mse_weight, perceptual_weight, adv_weight)
LOSSES = {"mse": (1.0, 0.0, 0.0), "lpips": (0.0, 1.0, 0.0), "gan": (0.0, 1.0, 0.1)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c, loss = load_with_option(Path(__file__).with_name("ladd.py"), arg, tuple(LOSSES), "mse", "LOSS")
    c.method = "d2g"
    # The latent feature network folder (LOSS lpips and gan; the distance's ensemble: config.perceptual); the toy
    # variant uses the shipped toy network.
    c.features = str(TOY_ASSETS / "latent_features") if c.variant == "toy" else ""
    c.regression = ml_collections.ConfigDict()
    # Diffusion2GAN weighs its GAN term 0.05-0.1 against E-LatentLPIPS at SD scale; adv_weight is that weight.
    c.regression.mse_weight, c.regression.perceptual_weight, c.adv_weight = LOSSES[loss]
    c.student.timesteps, c.student.probs, c.student.warmup_probs = (1.0,), (1.0,), (1.0,)  # one step, from noise
    c.b1 = 0.9  # Adam's default: a regression (the adversarial games use b1 = 0)
    return c
