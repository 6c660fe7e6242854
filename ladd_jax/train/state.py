"""The LADD train state and what it is built from: student, discriminator heads, optimisers, EMA.

The frozen teacher's params are never part of the state: they are a separate argument of the step, never in an
optimizer, never donated, never checkpointed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ladd_jax.errors import LaddError
from ladd_jax.models.discriminator import Discriminator, DiscriminatorConfig, default_feature_layers
from ladd_jax.models.lora import LoraSpec, merge
from ladd_jax.models.mmdit import MMDiT, MMDiTConfig


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    student: Any
    ema: Any
    disc: Any
    g_opt: Any
    d_opt: Any


@dataclasses.dataclass(frozen=True)
class Models:
    """Everything static a step needs: the modules and the optimisers (hashable, closed over by jit). `vae` and
    `features` are the frozen networks some methods add (ADD: the VAE and a pixel feature network; regression: a
    latent feature network); their params travel in the step's `frozen` argument beside the teacher's. With `lora`
    the student's trainable params are adapters, and its frozen base travels in `frozen` as "student_base"."""

    teacher: MMDiT
    student: MMDiT
    disc: Discriminator
    g_tx: optax.GradientTransformation
    d_tx: optax.GradientTransformation
    vae: Any = None
    features: Any = None
    lora: LoraSpec | None = None

    @property
    def feature_layers(self) -> tuple[int, ...]:
        return self.disc.config.feature_layers

    def student_params(self, trainable: Any, frozen: dict[str, Any]) -> Any:
        """The student's full params: `trainable` itself, or its frozen base with the adapters merged in."""
        if self.lora is None:
            return trainable
        return merge(frozen["student_base"], trainable, self.lora.scale, jnp.float32)

    def apply_student(self, trainable: Any, frozen: dict[str, Any], *inputs: jax.Array) -> jax.Array:
        """The student's velocity for (x, t, context, pooled)."""
        return self.student.apply({"params": self.student_params(trainable, frozen)}, *inputs)


def optimizer(lr: float, config: ml_collections.ConfigDict, b1: float | None = None) -> optax.GradientTransformation:
    """AdamW after global-norm clipping, at `learning_rate(lr, config)`; `b1` replaces config.b1."""
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), adamw(learning_rate(lr, config), config, b1))


def adamw(
    schedule: optax.Schedule, config: ml_collections.ConfigDict, b1: float | None = None
) -> optax.GradientTransformation:
    b1 = config.b1 if b1 is None else b1
    return optax.adamw(schedule, b1=b1, b2=config.b2, weight_decay=config.weight_decay)


def learning_rate(lr: float, config: ml_collections.ConfigDict) -> optax.Schedule:
    """A linear warm-up to `lr`, then constant (`lr_decay="constant"`) or a cosine decay to `lr *
    lr_final_fraction` at `lr_decay_steps` (default `total_steps`; `lr_decay="cosine"`)."""
    warmup = max(int(config.lr_warmup_steps), 1)
    if config.lr_decay == "constant":
        schedule = optax.linear_schedule(0.0, lr, warmup)
    elif config.lr_decay == "cosine":
        horizon = config.total_steps if config.lr_decay_steps is None else config.lr_decay_steps
        decay_steps = max(int(horizon) - warmup, 1)
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, lr, warmup, warmup + decay_steps, end_value=lr * config.lr_final_fraction
        )
    else:
        raise LaddError(f"lr_decay={config.lr_decay!r} is not a schedule; use 'constant' or 'cosine'")
    return schedule


def disc_config(config: ml_collections.ConfigDict, num_layers: int, source: str = "teacher") -> DiscriminatorConfig:
    """The heads on `num_layers`-block features (the teacher's, or the feature network's: `source`)."""
    d = config.disc
    layers = tuple(d.feature_layers) or default_feature_layers(num_layers, d.feature_stride)
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise LaddError(f"disc.feature_layers {bad} are not blocks of the {num_layers}-block {source}")
    return DiscriminatorConfig(
        feature_layers=layers,
        hidden=d.hidden,
        num_blocks=d.num_blocks,
        cond_dim=d.cond_dim,
        norm_groups=d.norm_groups,
        dtype=config.dtype,
        output_init=d.output_init,
    )


def compute_fields(config: ml_collections.ConfigDict, remat_policy: str | None = None) -> dict[str, Any]:
    """The MMDiTConfig fields that say how a training config computes the model (not what the model is);
    `remat_policy` overrides the config's."""
    return dict(
        dtype=config.dtype,
        remat_policy=remat_policy or config.remat_policy,
        attention_impl=config.attention_impl,
        attention_block_size=config.attention_block_size,
    )


def make_models(
    config: ml_collections.ConfigDict,
    teacher: MMDiTConfig,
    student: MMDiTConfig,
    vae: Any = None,
    features: Any = None,
    heads_on_features: int | None = None,
    lora: LoraSpec | None = None,
    d_tx: optax.GradientTransformation | None = None,
) -> Models:
    """The modules and optimisers. The heads read the teacher's blocks, or, with `heads_on_features` = the number
    of layers of `features` (a frozen feature network module, ADD's), that network's layers. `lora`: a LoRA
    student (only adapters train). `d_tx`: the optimiser of the D phase's params (default: AdamW at d_lr, b1 d_b1)."""
    if heads_on_features is None:
        heads = disc_config(config, teacher.num_layers)
    else:
        heads = disc_config(config, heads_on_features, type(features).__name__)
    return Models(
        teacher=MMDiT(dataclasses.replace(teacher, **compute_fields(config, config.teacher_remat_policy))),
        student=MMDiT(dataclasses.replace(student, **compute_fields(config))),
        disc=Discriminator(heads),
        g_tx=optimizer(config.g_lr, config),
        d_tx=d_tx or optimizer(config.d_lr, config, config.get("d_b1")),
        vae=vae,
        features=features,
        lora=lora,
    )


def init_state(models: Models, student_params: Any, disc_params: Any) -> TrainState:
    """Step 0. Student and EMA are real copies: the state is donated to the step, and the student's initial
    params may be the very arrays the (never donated) teacher holds."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        student=jax.tree.map(jnp.copy, student_params),
        ema=jax.tree.map(jnp.copy, student_params),
        disc=disc_params,
        g_opt=models.g_tx.init(student_params),
        d_opt=models.d_tx.init(disc_params),
    )
