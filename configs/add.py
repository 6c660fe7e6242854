"""Adversarial Diffusion Distillation (ADD) in the LADD trainer (ladd_jax/train/add.py): the discriminator works on
VAE-decoded pixels through a frozen pixel feature network, plus ADD's distillation loss in pixel space.

    ladd-jax train --config configs/add.py:VARIANT --workdir W --config.teacher=DIR --config.data=DIR \
                   --config.features=DIR

VARIANT: as configs/ladd.py ("tiny", "toy", "sd3-medium", ...). `features`: a transformers Dinov2 folder (ADD:
DINOv2 ViT-S/14 features; any size works) or the toy world's pixel feature network (a tiny Dinov2 the project
trains on renders: `python -m ladd_jax.toy.pixel_features --out DIR`), never the toy evaluator.
"""

from pathlib import Path

import ml_collections

from ladd_jax.config_files import load_config_file

TOY_ASSETS = Path(__file__).resolve().parents[1] / "ladd_jax" / "toy" / "assets"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = load_config_file(Path(__file__).with_name("ladd.py"), arg)
    small = c.variant in ("tiny", "toy")
    c.method = "add"
    # The pixel feature network folder; the toy variant uses the shipped toy network (a tiny Dinov2).
    c.features = str(TOY_ASSETS / "pixel_features") if c.variant == "toy" else ""
    c.add = ml_collections.ConfigDict()
    c.add.features_size = 64 if small else 224  # pixels fed to the feature network (ADD: 224 for DINOv2)
    c.add.pixel_mean = (0.485, 0.456, 0.406)  # DINOv2's ImageNet normalisation (the toy network's too)
    c.add.pixel_std = (0.229, 0.224, 0.225)
    c.add.weighting = "exponential"  # the distillation loss's c(t): "exponential" (ADD's choice) or "uniform"
    # Heads on every 3rd block counted back from the last (ViT-S/B: blocks 2, 5, 8, 11, StyleGAN-T's choice).
    c.disc.feature_stride = 3
    c.loss = "hinge"  # ADD
    c.r1_gamma = 1e-5  # ADD's R1 on the heads' inputs
    c.distill_weight = 2.5  # ADD's lambda
    return c
