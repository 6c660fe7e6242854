"""The distillation trainer (LADD, and the baselines of train/methods.py): `train_and_evaluate(config, workdir)`,
read top to bottom.

Set up (mesh, teacher, data, student, heads, state shardings), resume from the workdir if a checkpoint is there,
compile the step ahead of time once per bucket of the data (printing per-device memory), then `runner.run_steps`:
batch -> step -> metrics; log, check for NaN/Inf, checkpoint, draw sample grids; SIGTERM saves and stops
(preemption).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ladd_jax.atomic import make_writable_folder
from ladd_jax.convert.mmdit import load_mmdit
from ladd_jax.data.loader import Loader
from ladd_jax.errors import LaddError
from ladd_jax.models.lora import init_lora
from ladd_jax.train import methods, sharding
from ladd_jax.train.checkpoint import Checkpointer, abstract_with_shardings
from ladd_jax.train.runner import CompiledSteps, check_run_config, resume_or_init, run_steps
from ladd_jax.train.state import Models, init_state, make_models
from ladd_jax.train.steps import BATCH_FIELDS, COND_FIELD, jit_train_step
from ladd_jax.train.student import init_student, lora_spec, student_architecture

logger = logging.getLogger(__name__)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class Setup:
    """What the loop (and the AOT check, and export) builds from a config before the first step."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    models: Models
    frozen: dict[str, Any]  # the step's frozen params: "teacher", and what the method adds
    frozen_sharding: Any
    abstract_state: Any  # ShapeDtypeStructs carrying the state's shardings
    batch_sharding: Any


def architecture(models: Models) -> dict:
    """The architectures in a checkpoint's meta item (enough to rebuild the student without the config file)."""
    teacher, student = models.teacher.config, models.student.config
    return dict(
        teacher=dataclasses.asdict(teacher),
        student=dataclasses.asdict(student),
        disc=dataclasses.asdict(models.disc.config),
        lora=dataclasses.asdict(models.lora) if models.lora else None,
    )


def require_folder(config: ml_collections.ConfigDict, key: str, what: str) -> Path:
    value = config.get(key)
    if not value:
        raise LaddError(f"config.{key} is empty; pass --config.{key}=DIR ({what})")
    if not Path(value).is_dir():
        raise LaddError(f"config.{key}={value} is not a folder ({what})")
    return Path(value)


def check_data(spec: dict, teacher: Any, batch_size: int, multiple: int) -> None:
    (h, w, c), (_, width), (pooled,) = (spec[f][0] for f in BATCH_FIELDS)
    if "noise" in spec and tuple(spec["noise"][0]) != (h, w, c):
        raise LaddError(f"the data's noise is {spec['noise'][0]}, its latents {(h, w, c)}: the records are broken")
    cond = spec[COND_FIELD][0] if COND_FIELD in spec else (h, w, 0)
    if tuple(cond[:2]) != (h, w):
        raise LaddError(f"the data's conditioning latents are {cond}, its latents {(h, w, c)}: the records are broken")
    if c + cond[2] != teacher.in_channels or h % teacher.patch_size or w % teacher.patch_size:
        raise LaddError(
            f"the data's latents are {h}x{w}x{c} with {cond[2]} conditioning channels; the teacher takes "
            f"{teacher.in_channels} input channels and sides divisible by {teacher.patch_size}: was the data made by "
            "this teacher's pipeline (and is config.conditioned set as its records need)?"
        )
    if width != teacher.joint_attention_dim or pooled != teacher.pooled_projection_dim:
        raise LaddError(
            f"the data's text embeddings are {width} / pooled {pooled} wide; the teacher expects "
            f"{teacher.joint_attention_dim} / {teacher.pooled_projection_dim}"
        )
    if batch_size % multiple:
        raise LaddError(f"batch_size={batch_size} must be a multiple of {multiple}, the devices splitting the batch")


def build(
    config: ml_collections.ConfigDict, spec: dict, mesh: jax.sharding.Mesh, teacher: tuple[Any, Any] | None = None
) -> tuple[Setup, Any, Any]:
    """Everything but the data and the state: returns (setup, student host params, head host params).

    `teacher`: (MMDiTConfig, params) instead of loading config.teacher; params given as ShapeDtypeStructs build
    an abstract setup (nothing materialised), which is what the ahead-of-time memory check of large models uses.
    """
    teacher_folder = None if teacher else require_folder(config, "teacher", "an SD3 pipeline folder")
    teacher_cfg, teacher_host = teacher or load_mmdit(teacher_folder)
    is_abstract = isinstance(jax.tree.leaves(teacher_host)[0], jax.ShapeDtypeStruct)
    networks = methods.frozen_networks(config, teacher_folder, (teacher_cfg, teacher_host), spec)
    check_data(spec, teacher_cfg, config.batch_size, sharding.batch_size_multiple(mesh))
    key = jax.random.key(config.seed)
    make_student = lambda p: init_student(teacher_cfg, p, config.student, jax.random.fold_in(key, 1))[1]
    student_host = jax.eval_shape(make_student, teacher_host) if is_abstract else make_student(teacher_host)
    student_cfg = student_architecture(teacher_cfg, config.student)
    lora = lora_spec(config.get("lora"))
    if lora is not None and (config.student.init != "teacher" or config.student.width_factor != 1):
        raise LaddError(
            "a LoRA student adapts the teacher's weights: set student.init=teacher and student.width_factor=1 "
            "(or lora.rank=0)"
        )
    models = make_models(
        config,
        teacher_cfg,
        student_cfg,
        **networks.modules,
        heads_on_features=networks.heads_on_features,
        lora=lora,
        d_tx=methods.second_network_optimizer(config),
    )
    feature_dim = networks.feature_dim or teacher_cfg.hidden_size
    disc_host = methods.initial_second_network(
        config, models, (teacher_cfg, teacher_host), jax.random.fold_in(key, 2), feature_dim
    )
    frozen_host = dict(teacher=teacher_host, **networks.params)
    # The teacher is cast to teacher_dtype, a LoRA student's base to lora.base_dtype; the other frozen networks
    # stay as loaded (float32).
    casts = dict(teacher=DTYPES[config.teacher_dtype])
    if lora is not None:  # the student's initial params become its frozen base; its trainable params, adapters
        frozen_host["student_base"], casts["student_base"] = student_host, DTYPES[config.lora.base_dtype]
        make_adapters = lambda p: init_lora(lora, p, jax.random.fold_in(key, 3))
        student_host = jax.eval_shape(make_adapters, student_host) if is_abstract else make_adapters(student_host)
    frozen_sharding = sharding.param_shardings(frozen_host, mesh)
    frozen = {}
    for name, host in frozen_host.items():
        cast = casts.get(name, jnp.float32)
        if is_abstract:
            place = lambda x, s, cast=cast: jax.ShapeDtypeStruct(x.shape, cast, sharding=s)
        else:
            place = lambda x, s, cast=cast: jax.device_put(np.asarray(x).astype(cast), s)
        frozen[name] = jax.tree.map(place, host, frozen_sharding[name])
    state = jax.eval_shape(functools.partial(init_state, models), student_host, disc_host)
    setup = Setup(
        config=config,
        mesh=mesh,
        models=models,
        frozen=frozen,
        frozen_sharding=frozen_sharding,
        abstract_state=abstract_with_shardings(
            state, sharding.state_shardings(models, state, mesh, offload=config.offload)
        ),
        batch_sharding={f: sharding.batch_sharding(mesh, len(spec[f][0]) + 1) for f in methods.batch_fields(config)},
    )
    return setup, student_host, disc_host


def compile_step(setup: Setup, spec: dict) -> Any:
    """The jitted step lowered and compiled ahead of time for the state, teacher and batch shapes; nothing runs."""
    state_sharding = jax.tree.map(lambda x: x.sharding, setup.abstract_state)
    step = jit_train_step(
        methods.make_step(setup.config, setup.models, setup.mesh),
        state_sharding,
        setup.frozen_sharding,
        setup.batch_sharding,
        setup.mesh,
    )
    abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    batch = {
        f: jax.ShapeDtypeStruct((setup.config.batch_size, *spec[f][0]), jnp.float32, sharding=setup.batch_sharding[f])
        for f in methods.batch_fields(setup.config)
    }
    key = jax.eval_shape(lambda: jax.random.key(0))
    return step.lower(setup.abstract_state, jax.tree.map(abstract, setup.frozen), batch, key).compile()


def make_loader(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, fields: tuple[str, ...] | None = None
) -> Loader:
    """The training data (latents and text embeddings; `fields`, default the method's), the batch split like the
    trainers' batch axis."""
    return Loader(
        require_folder(config, "data", "a `ladd-jax synth` or `ladd-jax encode-real` output folder"),
        config.batch_size,
        mesh,
        seed=config.seed,
        fields=fields or methods.batch_fields(config),
        batch_axes=tuple(sharding.LOGICAL_RULES["batch"]),
    )


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    evaluate: Callable[[Any], dict[str, float]] | None = None,
) -> dict[str, float]:
    """Trains (or resumes) until config.total_steps; returns the last logged metrics. `evaluate(params)`, if given,
    takes the EMA student's full params (a LoRA student's merged into its base), runs at the start and every
    config.eval_every steps, and is logged as eval/NAME (e.g. the toy world's FD)."""
    if config.get("conditioned") and config.sample_every:
        raise LaddError("the sample grid draws text-to-image samples; a conditioned run needs config.sample_every=0")
    for warning in methods.stalled_game_warnings(config):
        logger.warning(warning)
    check_run_config(config)
    workdir = make_writable_folder(workdir, "the workdir", "--workdir")
    mesh = sharding.make_mesh(**config.mesh)
    loader = make_loader(config, mesh)
    setup, student_host, disc_host = build(config, loader.element_spec, mesh)
    models = setup.models
    meta = dict(config=config.to_dict(), architecture=architecture(models))
    checkpoints = Checkpointer(workdir, config.keep_checkpoints)
    state_sharding = jax.tree.map(lambda x: x.sharding, setup.abstract_state)
    init = lambda: jax.jit(functools.partial(init_state, models), out_shardings=state_sharding)(student_host, disc_host)
    state = resume_or_init(checkpoints, config.restore_step, setup.abstract_state, init, loader, meta)

    for spec in loader.element_specs[1:]:  # multi-aspect data: build checked the first bucket
        check_data(spec, models.teacher.config, config.batch_size, sharding.batch_size_multiple(mesh))
    name = methods.method(config).upper()
    steps = CompiledSteps(name, functools.partial(compile_step, setup), loader.element_specs)
    ema_params = lambda state: models.student_params(state.ema, setup.frozen)
    samples = None
    if config.sample_every and jax.process_index() == 0:
        grids = _sample_grids(config, setup, [spec["latent"][0][:2] for spec in loader.element_specs])
        samples = lambda state, path: grids.save(ema_params(state), path)
    return run_steps(
        name,
        config,
        workdir,
        steps,
        state,
        (setup.frozen,),
        loader,
        checkpoints,
        meta,
        dict(d="d_loss", g="g_loss", acc="d_acc", lcm="lcm_loss", mse="mse", lpips="perceptual", dmd="dmd"),
        samples,
        None if evaluate is None else lambda state: evaluate(ema_params(state)),
    )[1]


def _sample_grids(config: ml_collections.ConfigDict, setup: Setup, latent_sizes: list[tuple[int, int]]) -> Any:
    from ladd_jax.train.samples import SampleGrids

    teacher = setup.models.teacher
    return SampleGrids(
        config.teacher,
        (teacher.config, setup.frozen["teacher"]),
        setup.models.student,
        config.sample_prompts,
        latent_sizes,
        config.sample_steps,
        config.teacher_sample_steps,
        config.teacher_cfg,
        config.max_sequence_length,
        config.student.shift,
        config.seed,
    )
