"""The distillation methods of the one trainer (`config.method`), and what each adds to LADD's setup.

    ladd  LADD: heads on the frozen teacher's features of re-noised latents                    train/steps.py
    add   ADD: heads on a frozen pixel feature network (DINOv2) of VAE-decoded samples, hinge
          + R1, plus the distillation loss in pixel space                                      train/add.py
    lcm   latent consistency distillation carried to rectified flow                            train/lcm.py
    d2g   Diffusion2GAN-style regression of the teacher's ODE pairs (noise -> latent): MSE
          and/or an ensembled latent perceptual distance, + LADD's adversarial term
          (adv_weight > 0)                                                                     train/regression.py
    dmd   Distribution Matching Distillation: the teacher's guided score minus a fake score that
          learns the student's samples (a trainable copy of the teacher, in the heads' place)  train/dmd.py

Every method shares the state (student, EMA, heads, optimisers), sharding, checkpoints, resume, metrics and export;
a method without heads keeps an empty head tree.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import ml_collections
import optax
from jax.sharding import Mesh

from ladd_jax.data.records import MISMATCH_FIELDS
from ladd_jax.errors import LaddError
from ladd_jax.models.discriminator import init_discriminator
from ladd_jax.train.state import Models, optimizer
from ladd_jax.train.steps import (
    BATCH_FIELDS,
    COND_FIELD,
    DISC_TEXTS,
    MISALIGNED_SOURCES,
    StepFn,
    caption_blind,
    make_train_step,
)

METHODS = ("ladd", "add", "lcm", "d2g", "dmd")
ANCHOR_DISTANCES = ("mse", "perceptual")  # config.anchor_distance
ANCHOR_DECAYS = ("constant", "cosine")  # config.anchor_decay
# The methods whose D phase has no re-noised teacher features for config.d_renoise to draw afresh, and why.
RENOISE_FREE = {
    "add": "ADD's heads read a pixel feature network on clean images",
    "dmd": "DMD's D phase trains its fake score on the step's samples",
    "lcm": "LCM has no D phase",
}


@dataclasses.dataclass
class FrozenNetworks:
    """What a method adds to the teacher: modules for `Models` and host params for the step's `frozen` argument."""

    modules: dict[str, Any] = dataclasses.field(default_factory=dict)  # "vae", "features"
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    heads_on_features: int | None = None  # the feature network's depth, when the heads read it (ADD)
    feature_dim: int | None = None  # the heads' input width when not the teacher's


def method(config: ml_collections.ConfigDict) -> str:
    name = config.get("method", "ladd")
    if name not in METHODS:
        raise LaddError(f"config.method={name!r} is not a method; use one of {METHODS}")
    if name == "lcm" and config.adv_weight:
        raise LaddError("lcm has no discriminator: set adv_weight=0 (or train method d2g/ladd for an adversarial term)")
    if name == "lcm" and config.get("conditioned"):
        raise LaddError("lcm takes no conditioning latents yet; distil a conditioned teacher with ladd, add or d2g")
    if name in ("lcm", "d2g") and config.get("anchor_weight", 0.0):
        raise LaddError(
            f"config.anchor_weight={config.anchor_weight}: {name} has no regression anchor (d2g regresses the ODE "
            "pairs itself, with regression.mse_weight); set anchor_weight=0, or train method ladd or dmd"
        )
    if config.get("anchor_distance", "mse") not in ANCHOR_DISTANCES:
        raise LaddError(f"config.anchor_distance={config.anchor_distance!r}: use one of {ANCHOR_DISTANCES}")
    if config.get("anchor_decay", "constant") not in ANCHOR_DECAYS:
        raise LaddError(f"config.anchor_decay={config.anchor_decay!r}: use one of {ANCHOR_DECAYS}")
    if name == "add" and perceptual_anchor(config):
        raise LaddError(
            "config.anchor_distance='perceptual' needs config.features to name a latent feature network, and ADD's "
            "names its pixel feature network: use anchor_distance='mse' with method add (or train method ladd or dmd)"
        )
    if name == "dmd" and not config.distill_weight:
        raise LaddError("dmd's loss is weighted by distill_weight: set it above 0 (configs/dmd.py: 1)")
    if config.misaligned_source not in MISALIGNED_SOURCES:
        raise LaddError(f"config.misaligned_source={config.misaligned_source!r}: use one of {MISALIGNED_SOURCES}")
    if config.get("distill_cfg", 1.0) < 1.0:
        raise LaddError(f"config.distill_cfg={config.distill_cfg}: a CFG scale is >= 1 (1: the teacher unguided)")
    for key in ("feature_cfg", "feature_cfg_t1"):
        if config.disc.get(key) is not None and config.disc[key] < 1.0:
            raise LaddError(
                f"config.disc.{key}={config.disc[key]}: a CFG scale is >= 1 (1: the heads read the "
                "text-conditioned features)"
            )
        if name == "add" and config.disc.get(key) not in (None, 1.0):
            raise LaddError(
                f"config.disc.{key}={config.disc[key]}: ADD's heads read a pixel feature network, not the teacher, "
                "so there are no teacher features to guide; leave it at 1 (or train method ladd)"
            )
    if config.disc.get("text", "caption") not in DISC_TEXTS:
        raise LaddError(f"config.disc.text={config.disc.text!r}: use one of {DISC_TEXTS}")
    if caption_blind(config) and (config.misaligned_weight or guided_features(config)):
        raise LaddError(
            "config.disc.text='empty' gives the heads no caption, so neither misaligned pairs nor guided features "
            "(disc.feature_cfg, feature_cfg_t1) mean anything: set misaligned_weight=0 and the scales to 1, or "
            "disc.text='caption'"
        )
    if name in RENOISE_FREE and config.get("d_renoise", False):
        raise LaddError(
            f"config.d_renoise re-noises the teacher's inputs of each D update, and {RENOISE_FREE[name]}: leave "
            f"d_renoise False with method {name} (or train method ladd or d2g)"
        )
    if ((uses_heads(config) and config.disc.train) or name == "dmd") and config.get("d_steps", 1) < 1:
        raise LaddError(
            f"config.d_steps={config.d_steps}: heads and DMD's fake score need at least one update a step "
            "(or, for LADD's heads, disc.train=False)"
        )
    return name


def uses_heads(config: ml_collections.ConfigDict) -> bool:
    return config.adv_weight > 0


def stalled_game_warnings(config: ml_collections.ConfigDict) -> list[str]:
    """Settings that run but are measured to stop the heads' game: what `train_and_evaluate` warns about once."""
    found = []
    if uses_heads(config) and config.disc.train and config.misaligned_weight and config.loss == "hinge":
        found.append(
            f"config.misaligned_weight={config.misaligned_weight} with loss='hinge': the extra fakes hold the heads "
            "at logit -1 on every input, the hinge's kink, where neither side has a gradient left (accuracy 0.50 "
            "to the end; measured in ladd_jax/toy/assets/alignment/README.md). The pairs play with "
            "--config.loss=non_saturating"
        )
    return found


def perceptual_anchor(config: ml_collections.ConfigDict) -> bool:
    """Whether the regression anchor plays with the latent perceptual distance (its network in `features`)."""
    return bool(config.get("anchor_weight", 0.0)) and config.get("anchor_distance", "mse") == "perceptual"


def initial_second_network(
    config: ml_collections.ConfigDict, models: Models, teacher: tuple[Any, Any], key: jax.Array, feature_dim: int
) -> Any:
    """The host params the step's D phase trains (state.disc): LADD's heads, reading `feature_dim`-wide features;
    for DMD its fake score, which starts as the teacher (`teacher`: its (MMDiTConfig, params)), and the heads when
    they play; or an empty tree."""
    teacher_cfg, teacher_params = teacher
    heads = {}
    if uses_heads(config):
        heads = init_discriminator(models.disc.config, key, feature_dim, teacher_cfg.pooled_projection_dim)
    if method(config) == "dmd":
        return dict(fake_score=teacher_params, **(dict(heads=heads) if heads else {}))
    return heads


def second_network_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The optimiser of state.disc: the heads' (rate d_lr), or DMD's one per part."""
    if method(config) == "dmd":
        from ladd_jax.train.dmd import second_network_optimizer as dmd_optimizer

        return dmd_optimizer(config)
    return optimizer(config.d_lr, config, config.get("d_b1"))


def batch_fields(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The record fields a step reads: regression also needs the noise each teacher latent came from, and a
    conditioned model its conditioning latents."""
    regresses = method(config) == "d2g" or config.get("anchor_weight", 0.0)
    extra = (("noise",) if regresses else ()) + ((COND_FIELD,) if config.get("conditioned") else ())
    if uses_heads(config) and config.misaligned_weight and config.misaligned_source == "records":
        extra += MISMATCH_FIELDS
    return BATCH_FIELDS + extra


def _require(config: ml_collections.ConfigDict, key: str, what: str) -> Path:
    value = config.get(key)
    if not value or not Path(value).is_dir():
        raise LaddError(f"config.{key}={value!r} is not a folder; pass --config.{key}=DIR ({what})")
    return Path(value)


def frozen_networks(
    config: ml_collections.ConfigDict, teacher_folder: Path | None, teacher: tuple[Any, Any], element_spec: dict
) -> FrozenNetworks:
    """Loads what `config.method` needs beyond the teacher (for LADD nothing, or the empty prompt for a guided
    distillation target); `teacher`: the (MMDiTConfig, params) already loaded, so that no folder's transformer is
    read twice."""
    networks = _method_networks(config, teacher_folder)
    if guides_teacher(config) or caption_blind(config):  # both need the empty prompt's embeddings
        from ladd_jax.pipeline import SD3Pipeline
        from ladd_jax.train.uncond import empty_prompt

        pipe = SD3Pipeline.from_pretrained(teacher_folder, transformer=teacher)  # for its text encoders
        ctx, pooled = empty_prompt(pipe, config.max_sequence_length, element_spec)
        networks.params.update(empty_context=ctx, empty_pooled=pooled)
    return networks


def guides_teacher(config: ml_collections.ConfigDict) -> bool:
    """Whether the step runs the teacher with CFG: LCM's ODE step, a guided distillation target, or guided features
    for the heads."""
    guided_target = bool(config.distill_weight and config.get("distill_cfg", 1.0) != 1.0)
    return method(config) == "lcm" or guided_target or guided_features(config)


def guided_features(config: ml_collections.ConfigDict) -> bool:
    """Whether the heads read CFG-guided teacher features (disc.feature_cfg or feature_cfg_t1 above 1)."""
    scales = (config.disc.get("feature_cfg", 1.0), config.disc.get("feature_cfg_t1"))
    return bool(config.adv_weight and any(s not in (None, 1.0) for s in scales))


def _method_networks(config: ml_collections.ConfigDict, teacher_folder: Path | None) -> FrozenNetworks:
    name = method(config)
    if name == "add":
        from ladd_jax.train.add import load_add_networks

        what = "a transformers Dinov2 folder: DINOv2, or the toy world's pixel feature network"
        return load_add_networks(config, teacher_folder, _require(config, "features", what))
    if (name == "d2g" and config.regression.perceptual_weight) or perceptual_anchor(config):
        from ladd_jax.models.latent_perceptual import LatentFeatureNet, load_latent_features

        what = "a latent feature network folder (the toy world's: python -m ladd_jax.toy.latent_features)"
        net_config, params = load_latent_features(_require(config, "features", what))
        return FrozenNetworks(modules=dict(features=LatentFeatureNet(net_config)), params=dict(features=params))
    return FrozenNetworks()


def make_step(config: ml_collections.ConfigDict, models: Models, mesh: Mesh) -> StepFn:
    """The pure train step of `config.method`; jit it with `steps.jit_train_step`."""
    name = method(config)
    if name == "lcm":
        from ladd_jax.train.lcm import make_lcm_step

        return make_lcm_step(config, models, mesh)
    if name == "add":
        from ladd_jax.train.add import PixelGame

        return make_train_step(config, models, mesh, game=PixelGame)
    if name == "d2g":
        from ladd_jax.train.regression import RegressionGame

        return make_train_step(config, models, mesh, game=RegressionGame)
    if name == "dmd":
        from ladd_jax.train.dmd import DMDGame

        return make_train_step(config, models, mesh, game=DMDGame)
    return make_train_step(config, models, mesh)
