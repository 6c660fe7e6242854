"""A distilled student as a complete diffusers-layout SD3 pipeline folder.

Everything but the transformer (model_index.json, VAE, text encoders, tokenizers, scheduler, and any other
file of the teacher folder) is copied from the teacher; the student is written in diffusers' layout with its
own config.json, so a smaller student (fewer blocks) says so there. diffusers' `StableDiffusion3Pipeline`
and ladd_jax's `SD3Pipeline` both load the result; sample it with 1-4 steps and guidance_scale 1 (no CFG).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from tqdm.auto import tqdm

from ladd_jax.atomic import atomic_path, check_writable_destination
from ladd_jax.conditioning import cond_channels
from ladd_jax.convert.mmdit import load_mmdit, save_mmdit
from ladd_jax.errors import LaddError
from ladd_jax.jsonfile import read_json
from ladd_jax.models.mmdit import MMDiTConfig, with_extra_inputs
from ladd_jax.pipeline import read_model_index

TRANSFORMER = "transformer"
# What the other components fix: latent channels (VAE) and the text conditioning's widths (text encoders).
INTERFACE_FIELDS = ("in_channels", "out_channels", "joint_attention_dim", "pooled_projection_dim")


def export_student(
    teacher_folder: str | Path,
    config: MMDiTConfig,
    params: Mapping,
    out_dir: str | Path,
    dtype: str = "float32",
    overwrite: bool = False,
    new_inputs: bool = False,
) -> Path:
    """Writes `out_dir`: the teacher pipeline folder with the student (`config`, `params`) as its transformer,
    stored in `dtype`. The folder appears only once complete; without `overwrite` an existing one is an error.
    `new_inputs`: the transformer may take other input channels than the folder's (a model widened to take
    conditioning latents, `widen_for_conditioning`)."""
    teacher, out = Path(teacher_folder), Path(out_dir)
    if not teacher.is_dir():
        raise LaddError(f"teacher folder {teacher} does not exist; pass the diffusers SD3 folder the student came from")
    if out.resolve() == teacher.resolve():
        raise LaddError(f"the export destination {out} is the teacher folder itself; choose another --out")
    check_writable_destination(out, overwrite)  # before any work
    read_model_index(teacher)  # a complete SD3 pipeline folder, or one clear error
    _check_interface(teacher, config, ("in_channels",) if new_inputs else ())

    with atomic_path(out, overwrite) as tmp:
        _copy_components(teacher, tmp)
        save_mmdit(config, params, tmp / TRANSFORMER, format="diffusers", dtype=dtype)
    return out


def _check_interface(teacher: Path, student: MMDiTConfig, free: tuple[str, ...] = ()) -> None:
    """The student must fit the teacher's VAE and text encoders (in every INTERFACE_FIELDS entry but `free`)."""
    path = teacher / TRANSFORMER / "config.json"
    teacher_config = read_json(path, f"{path} is missing; the teacher folder needs its transformer's config.json")
    wrong = [
        f"{k}: student {getattr(student, k)}, teacher {teacher_config.get(k)}"
        for k in INTERFACE_FIELDS
        if k not in free and k in teacher_config and teacher_config[k] != getattr(student, k)
    ]
    if wrong:
        raise LaddError(
            f"the student does not fit the teacher's VAE and text encoders ({'; '.join(wrong)}); "
            "give the student the teacher's latent channels and conditioning widths"
        )


def _copy_components(teacher: Path, dst: Path) -> None:
    """Copies every file of the teacher folder except its transformer and hidden files (e.g. the Hugging Face
    download cache's .cache/), following symlinks (a hub snapshot links to blobs), with a progress bar."""
    files = []
    for f in sorted(teacher.rglob("*")):
        parts = f.relative_to(teacher).parts
        if f.is_file() and parts[0] != TRANSFORMER and not any(p.startswith(".") for p in parts):
            files.append(f)
    with tqdm(
        total=sum(f.stat().st_size for f in files), desc="copying teacher components", unit="B", unit_scale=True
    ) as bar:
        for f in files:
            target = dst / f.relative_to(teacher)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
            bar.update(f.stat().st_size)


def widen_for_conditioning(folder: str | Path, kind: str, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Writes `out_dir`: the text-to-image pipeline `folder` with its transformer widened to take `kind`'s
    conditioning latents (conditioning.py) beside the noisy latents, their input weights zero, so that it
    samples exactly as before until fine-tuned (`ladd-jax pretrain` with config.conditioned)."""
    check_writable_destination(Path(out_dir), overwrite)
    config, params = load_mmdit(folder)
    if config.in_channels != config.out_channels:
        raise LaddError(
            f"{folder}'s transformer already takes {config.in_channels - config.out_channels} conditioning "
            "channels; widen a text-to-image model"
        )
    config, params = with_extra_inputs(config, params, cond_channels(kind, config.out_channels))
    return export_student(folder, config, params, out_dir, overwrite=overwrite, new_inputs=True)
