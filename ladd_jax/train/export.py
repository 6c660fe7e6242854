"""`ladd-jax export`: a training workdir's student (or its EMA) as a complete diffusers SD3 pipeline folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ladd_jax.errors import LaddError
from ladd_jax.export import export_student
from ladd_jax.models.mmdit import MMDiTConfig, abstract_params
from ladd_jax.train.checkpoint import read_meta, restore_params

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


def export_workdir(
    workdir: str | Path,
    out: str | Path,
    ema: bool = False,
    step: int | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    teacher: str | Path | None = None,
) -> Path:
    """Writes `out` from checkpoint `step` (default: latest); the other components come from the teacher folder
    the run was trained with (or `teacher`, if it has moved)."""
    step, meta = read_meta(workdir, step)
    config = student_config(meta)
    teacher = Path(teacher or meta["config"]["teacher"])
    if not teacher.is_dir():
        raise LaddError(f"the run's teacher folder {teacher} is gone; pass the teacher folder it was trained with")
    params = restore_params(workdir, step, "ema" if ema else "student", abstract_params(config))
    return export_student(teacher, config, params, out, dtype=dtype, overwrite=overwrite)
