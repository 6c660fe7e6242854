"""`ladd-jax export`: a training workdir's student (or its EMA) as a complete diffusers SD3 pipeline folder, or, for
a LoRA student, its adapters as the diffusers/peft LoRA file (`--lora`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax

from ladd_jax.atomic import atomic_path, check_writable_destination
from ladd_jax.convert.lora import save_lora
from ladd_jax.convert.mmdit import load_mmdit
from ladd_jax.errors import LaddError
from ladd_jax.export import export_student
from ladd_jax.models.lora import LoraSpec, init_lora, merge
from ladd_jax.models.mmdit import MMDiTConfig, abstract_params
from ladd_jax.train.checkpoint import read_meta, restore_params
from ladd_jax.train.student import select_layers, student_layers

# Computation settings of the training run that are not part of the exported architecture: back to the defaults.
_COMPUTE_FIELDS = {
    f.name: f.default
    for f in dataclasses.fields(MMDiTConfig)
    if f.name in ("dtype", "remat_policy", "attention_impl", "attention_block_size")
}


def student_config(meta: dict) -> MMDiTConfig:
    """The student's MMDiTConfig from a checkpoint's meta item (JSON lists back to tuples)."""
    fields = {f.name for f in dataclasses.fields(MMDiTConfig)}
    saved = meta["architecture"]["student"]
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in fields}
    return MMDiTConfig(**{**values, **_COMPUTE_FIELDS})


def lora_of(meta: dict) -> LoraSpec | None:
    """The run's LoRA adapters (None: the whole student was trained)."""
    saved = meta["architecture"].get("lora")
    return LoraSpec(**saved) if saved else None


def export_workdir(
    workdir: str | Path,
    out: str | Path,
    ema: bool = False,
    step: int | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    teacher: str | Path | None = None,
    lora: bool = False,
) -> Path:
    """Writes `out` from checkpoint `step` (default: latest): the student as a pipeline folder, whose other
    components come from the teacher folder the run was trained with (or `teacher`, if it has moved); a LoRA
    student is merged into its base (the teacher's weights), or with `lora` written as the LoRA file alone."""
    step, meta = read_meta(workdir, step)
    config, spec = student_config(meta), lora_of(meta)
    teacher = Path(teacher or meta["config"]["teacher"])
    which = "ema" if ema else "student"
    if spec is None:
        if lora:
            raise LaddError(f"{workdir} trained the whole student (lora.rank=0), not a LoRA; export it without --lora")
        _check_teacher(teacher)
        params = restore_params(workdir, step, which, abstract_params(config))
        return export_student(teacher, config, params, out, dtype=dtype, overwrite=overwrite)

    abstract = jax.eval_shape(lambda: init_lora(spec, abstract_params(config), jax.random.key(0)))
    adapters = restore_params(workdir, step, which, abstract)
    if lora:
        check_writable_destination(Path(out), overwrite)
        with atomic_path(Path(out), overwrite) as tmp:
            save_lora(tmp, config, adapters, spec, dtype)
        return Path(out)
    _check_teacher(teacher)
    teacher_config, teacher_params = load_mmdit(teacher)
    layers = student_layers(teacher_config, meta["config"]["student"]["layers"])
    _, base = select_layers(teacher_config, teacher_params, layers)
    return export_student(teacher, config, merge(base, adapters, spec.scale), out, dtype=dtype, overwrite=overwrite)


def _check_teacher(teacher: Path) -> None:
    if not teacher.is_dir():
        raise LaddError(f"the run's teacher folder {teacher} is gone; pass the teacher folder it was trained with")
