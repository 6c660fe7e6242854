"""The LADD training loop: `train_and_evaluate(config, workdir)`, read top to bottom.

Set up (mesh, teacher, data, student, heads, state shardings), resume from the workdir if a checkpoint is there,
compile the step ahead of time (printing per-device memory), then loop: batch -> step -> metrics; log, check for
NaN/Inf, checkpoint, draw sample grids; SIGTERM saves and stops (preemption).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from clu import metrics as clu_metrics
from tqdm.auto import tqdm

from ladd_jax.bench import peak_tflops
from ladd_jax.convert.mmdit import load_mmdit
from ladd_jax.data.loader import Loader
from ladd_jax.errors import LaddError
from ladd_jax.models.discriminator import init_discriminator
from ladd_jax.train import sharding
from ladd_jax.train.checkpoint import Checkpointer, abstract_with_shardings
from ladd_jax.train.state import Models, init_state, make_models
from ladd_jax.train.steps import jit_train_step, make_train_step
from ladd_jax.train.student import init_student, student_layers, subset_config
from ladd_jax.train.writer import MetricWriter

logger = logging.getLogger(__name__)
FIELDS = ("latent", "context", "pooled")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass
class Setup:
    """What the loop (and the AOT check, and export) builds from a config before the first step."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    models: Models
    teacher_params: Any
    teacher_sharding: Any
    abstract_state: Any  # ShapeDtypeStructs carrying the state's shardings
    batch_sharding: Any
    latent_hw: tuple[int, int]


def architecture(models: Models) -> dict:
    """The architectures in a checkpoint's meta item (enough to rebuild the student without the config file)."""
    teacher, student = models.teacher.config, models.student.config
    return dict(
        teacher=dataclasses.asdict(teacher),
        student=dataclasses.asdict(student),
        disc=dataclasses.asdict(models.disc.config),
    )


def _require(config: ml_collections.ConfigDict, key: str, what: str) -> Path:
    value = config.get(key)
    if not value:
        raise LaddError(f"config.{key} is empty; pass --config.{key}=DIR ({what})")
    if not Path(value).is_dir():
        raise LaddError(f"config.{key}={value} is not a folder ({what})")
    return Path(value)


def _check_data(spec: dict, teacher: Any, batch_size: int, multiple: int) -> tuple[int, int]:
    (h, w, c), (_, width), (pooled,) = (spec[f][0] for f in FIELDS)
    if c != teacher.in_channels or h % teacher.patch_size or w % teacher.patch_size:
        raise LaddError(
            f"the data's latents are {h}x{w}x{c}; the teacher needs {teacher.in_channels} channels and sides divisible "
            f"by {teacher.patch_size}: was the data made by this teacher's pipeline?"
        )
    if width != teacher.joint_attention_dim or pooled != teacher.pooled_projection_dim:
        raise LaddError(
            f"the data's text embeddings are {width} / pooled {pooled} wide; the teacher expects "
            f"{teacher.joint_attention_dim} / {teacher.pooled_projection_dim}"
        )
    if batch_size % multiple:
        raise LaddError(f"batch_size={batch_size} must be a multiple of {multiple}, the devices splitting the batch")
    return h, w


def build(
    config: ml_collections.ConfigDict, spec: dict, mesh: jax.sharding.Mesh, teacher: tuple[Any, Any] | None = None
) -> tuple[Setup, Any, Any]:
    """Everything but the data and the state: returns (setup, student host params, head host params).

    `teacher`: (MMDiTConfig, params) instead of loading config.teacher; params given as ShapeDtypeStructs build
    an abstract setup (nothing materialised), which is what the ahead-of-time memory check of large models uses.
    """
    teacher_cfg, teacher_host = teacher or load_mmdit(_require(config, "teacher", "an SD3 pipeline folder"))
    is_abstract = isinstance(jax.tree.leaves(teacher_host)[0], jax.ShapeDtypeStruct)
    h, w = _check_data(spec, teacher_cfg, config.batch_size, sharding.batch_size_multiple(mesh))
    key = jax.random.key(config.seed)
    make_student = lambda p: init_student(
        teacher_cfg, p, config.student.layers, config.student.init, jax.random.fold_in(key, 1)
    )[1]
    student_host = jax.eval_shape(make_student, teacher_host) if is_abstract else make_student(teacher_host)
    student_cfg = subset_config(teacher_cfg, student_layers(teacher_cfg, config.student.layers))
    models = make_models(config, teacher_cfg, student_cfg)
    disc_host = init_discriminator(
        models.disc.config, jax.random.fold_in(key, 2), teacher_cfg.hidden_size, teacher_cfg.pooled_projection_dim
    )
    teacher_sharding = sharding.param_shardings(teacher_host, mesh)
    cast = DTYPES[config.teacher_dtype]
    if is_abstract:
        place = lambda x, s: jax.ShapeDtypeStruct(x.shape, cast, sharding=s)
    else:
        place = lambda x, s: jax.device_put(np.asarray(x).astype(cast), s)
    state = jax.eval_shape(functools.partial(init_state, models), student_host, disc_host)
    setup = Setup(
        config=config,
        mesh=mesh,
        models=models,
        teacher_params=jax.tree.map(place, teacher_host, teacher_sharding),
        teacher_sharding=teacher_sharding,
        abstract_state=abstract_with_shardings(state, sharding.state_shardings(models, state, mesh)),
        batch_sharding={f: sharding.batch_sharding(mesh, len(spec[f][0]) + 1) for f in FIELDS},
        latent_hw=(h, w),
    )
    return setup, student_host, disc_host


def compile_step(setup: Setup, spec: dict) -> Any:
    """The jitted step lowered and compiled ahead of time for the state, teacher and batch shapes; nothing runs."""
    state_sharding = jax.tree.map(lambda x: x.sharding, setup.abstract_state)
    step = jit_train_step(
        make_train_step(setup.config, setup.models, setup.mesh),
        state_sharding,
        setup.teacher_sharding,
        setup.batch_sharding,
        setup.mesh,
    )
    abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    batch = {
        f: jax.ShapeDtypeStruct((setup.config.batch_size, *spec[f][0]), jnp.float32, sharding=setup.batch_sharding[f])
        for f in FIELDS
    }
    key = jax.eval_shape(lambda: jax.random.key(0))
    return step.lower(setup.abstract_state, jax.tree.map(abstract, setup.teacher_params), batch, key).compile()


def memory_report(compiled: Any) -> dict[str, float]:
    """Per-device GiB of the compiled step (XLA's memory analysis; None fields where a backend gives none)."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    gib = 2.0**30
    out = dict(
        arguments_gib=m.argument_size_in_bytes / gib,
        outputs_gib=m.output_size_in_bytes / gib,
        temp_gib=m.temp_size_in_bytes / gib,
        aliased_gib=m.alias_size_in_bytes / gib,
    )
    out["peak_estimate_gib"] = out["arguments_gib"] + out["outputs_gib"] + out["temp_gib"] - out["aliased_gib"]
    return out


def step_flops(compiled: Any) -> float | None:
    """FLOPs of one step on one device, by XLA's cost analysis."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


class _Preemption:
    """SIGTERM (a preempted TPU VM, SLURM's time limit) asks the loop to save and stop at the next step."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def _collection(metrics: dict) -> Any:
    return clu_metrics.Collection.create(**{k: clu_metrics.Average.from_output(k) for k in metrics})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, float]:
    """Trains (or resumes) until config.total_steps; returns the last logged metrics."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = sharding.make_mesh(**config.mesh)
    loader = Loader(
        _require(config, "data", "a `ladd-jax synth` output folder"),
        config.batch_size,
        mesh,
        seed=config.seed,
        fields=FIELDS,
        batch_axes=tuple(a for a in sharding.LOGICAL_RULES["batch"]),
    )
    setup, student_host, disc_host = build(config, loader.element_spec, mesh)
    models = setup.models
    state_sharding = jax.tree.map(lambda x: x.sharding, setup.abstract_state)
    meta = dict(config=config.to_dict(), architecture=architecture(models))

    checkpoints = Checkpointer(workdir, config.keep_checkpoints)
    resume = config.restore_step if config.restore_step is not None else (checkpoints.steps() or [None])[-1]
    if resume is None:
        state = jax.jit(functools.partial(init_state, models), out_shardings=state_sharding)(student_host, disc_host)
    else:
        state, data_state, saved = checkpoints.restore(resume, setup.abstract_state)
        if saved["architecture"] != json_roundtrip(meta["architecture"]):
            raise LaddError(
                f"the checkpoint of step {resume} in {checkpoints.directory} was made with other architectures than "
                "this config's; use another --workdir, or the config it was trained with"
            )
        loader.set_state(data_state)
        logger.info("resumed from step %d", resume)
    del student_host, disc_host

    start = time.perf_counter()
    compiled = compile_step(setup, loader.element_spec)
    memory, flops = memory_report(compiled), step_flops(compiled)
    print(
        f"compiled the LADD step in {time.perf_counter() - start:.1f} s; per device: "
        + (", ".join(f"{k} {v:.3f}" for k, v in memory.items()) or "no memory analysis on this backend")
    )
    peak = peak_tflops(jax.devices()[0])
    writer = MetricWriter(workdir)
    grids = _sample_grids(config, setup) if config.sample_every and jax.process_index() == 0 else None
    key = jax.random.key(config.seed)
    preemption = _Preemption()
    first = int(state.step)
    pending, last, tick, since = None, {}, time.perf_counter(), 0
    bar = tqdm(total=config.total_steps, initial=first, desc="LADD", unit="step", disable=jax.process_index() != 0)
    try:
        for step in range(first, config.total_steps):
            state, metrics = compiled(state, setup.teacher_params, next(loader), key)
            update = _collection(metrics).single_from_model_output(**metrics)
            pending = update if pending is None else pending.merge(update)
            done, since = step + 1, since + 1
            bar.update(1)
            is_last = done == config.total_steps or preemption.requested
            if done % config.log_every == 0 or is_last or done % config.checkpoint_every == 0:
                last = {k: float(v) for k, v in pending.compute().items()}
                _guard(last, done, checkpoints)
                seconds = (time.perf_counter() - tick) / since
                last.update(step_time_s=seconds, img_per_s=config.batch_size / seconds)
                if flops and peak:
                    last["mfu"] = flops / seconds / (peak * 1e12)
                writer.write_scalars(done, last)
                bar.set_postfix(d=f"{last['d_loss']:.3f}", g=f"{last['g_loss']:.3f}", acc=f"{last['d_acc']:.2f}")
                pending, tick, since = None, time.perf_counter(), 0
            if done % config.checkpoint_every == 0 or is_last:
                checkpoints.save(done, state, loader.get_state(), meta, force=True)
            if grids is not None and (done % config.sample_every == 0 or is_last):
                writer.write_image(done, "samples", grids.save(state.ema, workdir / "samples" / f"{done:07d}.png"))
            if preemption.requested:
                print(f"SIGTERM: saved step {done} in {checkpoints.directory}; rerun the same command to resume")
                break
    finally:
        bar.close()
        preemption.restore()
        checkpoints.wait()
        checkpoints.close()
        writer.close()
        loader.close()
    return last


def json_roundtrip(x: Any) -> Any:
    """What a JSON save and restore makes of `x` (tuples become lists), to compare with a restored item."""
    return json.loads(json.dumps(x))


def _guard(metrics: dict[str, float], step: int, checkpoints: Checkpointer) -> None:
    """Stops on a non-finite metric before anything is saved, naming the last good checkpoint."""
    bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
    if bad:
        steps = checkpoints.steps()
        where = f"the last good checkpoint is step {steps[-1]} in {checkpoints.directory}" if steps else "none saved"
        raise LaddError(
            f"non-finite {bad} by step {step}; training stopped and nothing was saved after it ({where}). Lower "
            "g_lr/d_lr, raise grad_clip's strictness, or use float32 (config.dtype) to find the cause"
        )


def _sample_grids(config: ml_collections.ConfigDict, setup: Setup) -> Any:
    from ladd_jax.train.samples import SampleGrids

    teacher = setup.models.teacher
    return SampleGrids(
        config.teacher,
        (teacher.config, setup.teacher_params),
        setup.models.student,
        config.sample_prompts,
        setup.latent_hw,
        config.sample_steps,
        config.teacher_sample_steps,
        config.teacher_cfg,
        config.max_sequence_length,
        config.student.shift,
        config.seed,
    )
