"""The student's architecture and initial params: the teacher itself, a subset of its blocks, a wider copy of it,
random, or a saved model of that architecture; and, for a LoRA student, which adapters train."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ladd_jax.convert.lora import flax_targets
from ladd_jax.convert.mmdit import load_mmdit
from ladd_jax.errors import LaddError
from ladd_jax.models.lora import LoraSpec
from ladd_jax.models.mmdit import MMDiTConfig, init_params
from ladd_jax.models.net2wider import wider, wider_config


def subset_config(teacher: MMDiTConfig, layers: Sequence[int]) -> MMDiTConfig:
    """The MMDiT made of the teacher's blocks `layers` (in order; a block may repeat, a deeper student). The last
    must be the teacher's last block, once: only that one is "context pre-only" (no context output), so no other
    block can take its place."""
    layers = tuple(int(i) for i in layers)
    last = teacher.num_layers - 1
    if not layers or layers[-1] != last or layers.count(last) != 1 or min(layers) < 0 or max(layers) > last:
        raise LaddError(
            f"student.layers={layers} must be blocks of the {teacher.num_layers}-block teacher ending with its "
            f"last block {last} (the only context-pre-only block, so it comes once and last); others may repeat"
        )
    dual = tuple(j for j, i in enumerate(layers) if i in teacher.dual_attention_layers)
    return dataclasses.replace(teacher, num_layers=len(layers), dual_attention_layers=dual)


def _per_layer(config: MMDiTConfig, params: dict) -> list[Any]:
    """The stacked block groups split into one param tree per block."""
    out = []
    for name, start, stop in config.block_groups():
        out += [jax.tree.map(lambda a, j=j: a[j], params[name]) for j in range(stop - start)]
    return out


def _identity_block(block: Any, dim: int) -> Any:
    """A block's params with its residual gates' rows of the adaLN projections zeroed: the block then adds
    nothing to either stream (x + 0 * attn, ...), so a repeated block starts as the identity and a deeper
    student starts as the teacher's function. Gates are every third chunk (diffusers' shift, scale, gate order)."""

    def zero_gates(linear):
        n = linear["bias"].shape[-1] // dim
        keep = jnp.repeat(jnp.arange(n) % 3 != 2, dim)
        return {"kernel": linear["kernel"] * keep, "bias": linear["bias"] * keep}

    return {**block, **{k: {"linear": zero_gates(block[k]["linear"])} for k in ("norm1", "norm1_context")}}


def select_layers(teacher: MMDiTConfig, params: dict, layers: Sequence[int]) -> tuple[MMDiTConfig, dict]:
    """(student config, params): the teacher's non-block params and its blocks `layers`, restacked. A block's
    repeats after its first use start as the identity (`_identity_block`)."""
    student = subset_config(teacher, layers)
    if tuple(layers) == tuple(range(teacher.num_layers)):
        return student, params
    blocks = _per_layer(teacher, params)
    chosen = [
        _identity_block(blocks[i], teacher.hidden_size) if i in layers[:j] else blocks[i] for j, i in enumerate(layers)
    ]
    out = {k: v for k, v in params.items() if not k.startswith("blocks_")}
    for name, start, stop in student.block_groups():
        out[name] = jax.tree.map(lambda *xs: jnp.stack(xs), *chosen[start:stop])
    return student, out


def student_layers(teacher: MMDiTConfig, layers: Sequence[int]) -> tuple[int, ...]:
    """The teacher blocks the student keeps: `layers`, or all of them when empty."""
    return tuple(int(i) for i in layers) or tuple(range(teacher.num_layers))


def student_architecture(teacher: MMDiTConfig, student: ml_collections.ConfigDict) -> MMDiTConfig:
    """The student's MMDiTConfig: the teacher's blocks `student.layers`, `student.width_factor` times wider."""
    return wider_config(subset_config(teacher, student_layers(teacher, student.layers)), student.width_factor)


def init_student(
    teacher: MMDiTConfig, teacher_params: dict, student: ml_collections.ConfigDict, rng: jax.Array
) -> tuple[MMDiTConfig, dict]:
    """The student's config and fp32 host params, per `student.init`: "teacher" (its blocks `student.layers`,
    widened `student.width_factor` times by copying channels: the teacher's function either way), "random", or a
    folder holding a transformer of the student's architecture (an exported student: a regression-pretrained start,
    Diffusion2GAN's two stages, or an earlier run's)."""
    narrow, params = select_layers(teacher, teacher_params, student_layers(teacher, student.layers))
    config = wider_config(narrow, student.width_factor)
    if student.init == "teacher":
        _, params = wider(narrow, params, student.width_factor, jax.random.fold_in(rng, 0), student.width_noise)
    elif student.init == "random":
        params = jax.device_get(init_params(config, rng))
    else:
        params = saved_student(student.init, config)
    return config, params


def saved_student(folder: str, config: MMDiTConfig) -> dict:
    """The params of the transformer saved in `folder` (diffusers layout); it must have the student's architecture."""
    if not Path(folder).is_dir():
        raise LaddError(
            f"student.init={folder!r} is neither 'teacher', 'random' nor a folder; point it at an exported student "
            "(`ladd-jax export` output) or a diffusers transformer folder of the student's architecture"
        )
    saved, params = load_mmdit(folder)
    differ = {f.name for f in dataclasses.fields(config) if getattr(saved, f.name) != getattr(config, f.name)}
    if differ:
        detail = ", ".join(f"{k}: {getattr(saved, k)} (student: {getattr(config, k)})" for k in sorted(differ))
        raise LaddError(
            f"student.init={folder}: its transformer is not the student's architecture ({detail}); start from a "
            "model of the teacher's architecture, or set student.layers to the saved model's blocks"
        )
    return params


def lora_spec(lora: ml_collections.ConfigDict | None) -> LoraSpec | None:
    """The adapters a `lora` config section asks for, or None when the whole model trains (no section, rank 0)."""
    if lora is None or not lora.rank:
        return None
    alpha = float(lora.rank if lora.alpha is None else lora.alpha)
    return LoraSpec(int(lora.rank), alpha, flax_targets(lora.targets))
