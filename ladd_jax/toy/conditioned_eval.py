"""Inpainting and editing teachers beside their distilled students, measured in the toy world.

    python -m ladd_jax.toy.conditioned_eval --kind inpaint --teacher DIR --student [NAME=]DIR ... \
        --items TRAIN_FOLDER --items TEST_FOLDER --out DIR

`--items`: folders written by toy/inpainting.py or toy/editing.py (held-out items: another seed than the
training data's), one per split. Every model samples the same items from the same noise: the teacher with its
full Euler steps and CFG, the teacher in 1 step without CFG (a student's initialisation), each student in 1 and 4
steps. Measured per split:

    inpaint  FD       of the fill: the output's masked region pasted into the original render (so only the fill
                      differs from a real image), Frechet distance to real renders in the evaluator's features
             alignment of that composite with the caption (the evaluator's exact-scene check)
             PSNR out the raw output outside the mask against the original (how well the model keeps the rest)
    edit     success  the output is closer (mean squared error over the pixels the edit changes) to the edited
                      render than to the source
             alignment of the output with the edited scene's caption (the evaluator's check)
             PSNR out the output outside the changed pixels against the source (preservation)

Reference rows: the input itself (the grey-holed render / the unedited source) and the answer (the original
render / the edited render). Writes metrics.json, report.md, report.html and a labelled grid per split.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ladd_jax.conditioning import KINDS, check_kind, make_cond
from ladd_jax.data.encode_real import load_image, load_mask
from ladd_jax.errors import LaddError, run_command

PIXEL_EPS = 1e-10  # keeps the PSNR of an exact copy finite


@dataclasses.dataclass(frozen=True)
class CondEvalConfig:
    num_items: int = 256  # per split
    reference_images: int = 1024  # real renders per split for the FD reference statistics
    teacher_steps: int = 20
    cfg: float = 3.0
    student_steps: tuple[int, ...] = (1, 4)
    grid_items: int = 8
    max_sequence_length: int = 16
    seed: int = 0


@dataclasses.dataclass
class Items:
    """What the models are given and what they are measured against, images in [0, 1]."""

    split: str
    prompts: list[str]
    captions: list[str]  # the scene the answer shows (inpainting: the prompt)
    inputs: np.ndarray  # the image to inpaint (its hole grey) or the source to edit
    answers: np.ndarray  # the original render / the edited render
    region: np.ndarray  # [N, S, S]: the mask / the pixels the edit changes
    cond_images: np.ndarray  # in [-1, 1]: the render (inpaint, with `region` as its mask) or the source
    kinds: list[str]  # the edit kind of each item ("inpaint" for inpainting)


def read_items(kind: str, folder: str | Path, split: str, num: int) -> Items:
    """The first `num` items of a folder written by toy/inpainting.py or toy/editing.py."""
    from PIL import Image

    folder = Path(folder)
    lines = [json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines() if line.strip()]
    if len(lines) < num:
        raise LaddError(f"{folder} holds {len(lines)} items, fewer than the {num} asked for; write more")
    lines = lines[:num]
    with Image.open(folder / lines[0]["image"]) as first:
        size = first.height
    pixels = lambda key: np.stack([load_image(folder / item[key], size, size) for item in lines]) * 0.5 + 0.5
    masks = lambda key: np.stack([load_mask(folder / item[key], size, size) for item in lines])
    prompts, answers = [item["prompt"] for item in lines], pixels("image")
    if kind == "inpaint":
        region = masks("mask")
        inputs = np.where(region[..., None] > 0, 0.5, answers)
        return Items(split, prompts, prompts, inputs, answers, region, answers * 2 - 1, ["inpaint"] * num)
    sources = pixels("source")
    captions, edits = [item["caption"] for item in lines], [item["edit"] for item in lines]
    return Items(split, prompts, captions, sources, answers, masks("changed"), sources * 2 - 1, edits)


def psnr_outside(images: np.ndarray, reference: np.ndarray, region: np.ndarray) -> float:
    """Mean over images of the PSNR (dB, peak 1) of the pixels outside `region`."""
    keep = 1.0 - region[..., None]
    mse = (np.square(images - reference) * keep).sum(axis=(1, 2, 3)) / (3 * keep.sum(axis=(1, 2, 3)) + PIXEL_EPS)
    return float(np.mean(10 * np.log10(1.0 / (mse + PIXEL_EPS))))


def measure(kind: str, items: Items, images: np.ndarray, evaluator: Any, reference: Any) -> dict[str, float]:
    from ladd_jax.toy.metrics import aligned, feature_stats, features, frechet_distance_from_stats

    if kind == "inpaint":
        composite = np.where(items.region[..., None] > 0, images, items.answers)
        fd = frechet_distance_from_stats(feature_stats(features(evaluator, composite)), reference)
        ok = aligned(evaluator, composite, items.captions)
        return dict(
            fd=float(fd), alignment=float(ok.mean()), psnr_out=psnr_outside(images, items.answers, items.region)
        )
    r = items.region[..., None]
    err = lambda ref: (np.square(images - ref) * r).sum(axis=(1, 2, 3))
    success = err(items.answers) < err(items.inputs)
    ok = aligned(evaluator, images, items.captions)
    row = dict(success=float(success.mean()), alignment=float(ok.mean()))
    row["psnr_out"] = psnr_outside(images, items.inputs, items.region)
    for edit in sorted(set(items.kinds)):
        pick = np.asarray([k == edit for k in items.kinds])
        row[f"success_{edit}"] = float(success[pick].mean())
        row[f"alignment_{edit}"] = float(ok[pick].mean())
    return row


def item_sampler(kind: str, teacher: Any, items: Items, config: CondEvalConfig) -> Any:
    """A toy `Sampler` of the items' prompts with their conditioning latents, one seed per item."""
    from ladd_jax.toy.evaluate import Sampler

    cond = make_cond(kind, teacher.encode_images, items.cond_images, teacher.vae_scale_factor, items.region)
    seeds = list(range(config.seed, config.seed + len(items.prompts)))
    return Sampler(teacher, items.prompts, seeds, config.max_sequence_length, config.cfg, cond=cond)


# The two numbers of a training curve (`make_probe`; report.training_curves' lower panels), per kind.
CURVE_METRICS = {"inpaint": ("fd", "alignment"), "edit": ("success", "alignment")}


def make_probe(kind: str, teacher: Any, items: Items, evaluator: Any, reference: Any, config: CondEvalConfig) -> Any:
    """params -> {"METRIC_1step": ...}: a student's 1-step samples of the items measured (train_and_evaluate's
    `evaluate` hook, for curves of the student over training)."""
    sampler = item_sampler(kind, teacher, items, config)

    def probe(params: Any) -> dict[str, float]:
        row = measure(kind, items, sampler.few_step(params, 1), evaluator, reference)
        return {f"{k}_1step": row[k] for k in CURVE_METRICS[kind]}

    return probe


def sample_rows(
    kind: str, teacher: Any, students: dict[str, Path], items: Items, config: CondEvalConfig
) -> dict[str, np.ndarray]:
    """label -> images [N, S, S, 3] in [0, 1] of every model on the items, all from the same noise."""
    from ladd_jax.toy.evaluate import load_student

    sampler = item_sampler(kind, teacher, items, config)
    rows = {f"teacher {config.teacher_steps} steps CFG {config.cfg:g}": sampler.euler(config.teacher_steps, config.cfg)}
    rows["teacher 1 step (student init)"] = sampler.few_step(teacher.transformer_params, 1)
    for name, folder in students.items():
        student = load_student(teacher, name, folder)
        size = lambda c: f"{c.num_layers} blocks of width {c.hidden_size}"
        if student.transformer_config != teacher.transformer_config:
            raise LaddError(
                f"student {name!r} ({folder}) has {size(student.transformer_config)}, its teacher "
                f"{size(teacher.transformer_config)}: conditioned evaluation samples the teacher's architecture"
            )
        params = student.transformer_params
        for n in config.student_steps:
            rows[f"{name} {n} step{'s' if n > 1 else ''}"] = sampler.few_step(params, n)
    return rows


def evaluate(
    kind: str,
    teacher_dir: str | Path,
    students: dict[str, Path],
    item_folders: dict[str, Path],
    out: str | Path,
    config: CondEvalConfig = CondEvalConfig(),
    evaluator_dir: str | Path | None = None,
    extra: tuple[dict[str, Any], list[Any]] = ({}, []),
) -> dict[str, Any]:
    """Samples and measures the teacher and `students` on each split's items (`item_folders`: split -> folder);
    writes `out`. `extra`: (entries for metrics.json, report blocks placed after the tables), e.g. training
    curves."""
    from ladd_jax.atomic import make_writable_folder
    from ladd_jax.pipeline import SD3Pipeline
    from ladd_jax.toy.evaluate import ASSETS, require_pipeline_folder
    from ladd_jax.toy.evaluator import load_evaluator
    from ladd_jax.toy.metrics import reference_stats
    from ladd_jax.toy.report import Figure, labelled_grid, write_reports

    check_kind(kind)
    start = time.perf_counter()
    require_pipeline_folder(Path(teacher_dir), f"the {kind} teacher", "train it with launch/toy_conditioned.sh")
    out = make_writable_folder(out, "the evaluation's output folder")
    teacher = SD3Pipeline.from_pretrained(teacher_dir)
    evaluator = load_evaluator(evaluator_dir or ASSETS / "evaluator")
    result: dict[str, Any] = dict(kind=kind, teacher=str(Path(teacher_dir).resolve()), rows={})
    result["students"] = {k: str(Path(v).resolve()) for k, v in students.items()}
    result["config"] = dataclasses.asdict(config)
    figures = []
    for split, folder in item_folders.items():
        items = read_items(kind, folder, split, config.num_items)
        reference = reference_stats(evaluator, config.reference_images, config.seed + 1, split=split)
        rows = {"input (" + ("grey hole" if kind == "inpaint" else "unedited source") + ")": items.inputs}
        rows |= sample_rows(kind, teacher, students, items, config)
        rows["answer (" + ("original render" if kind == "inpaint" else "edited render") + ")"] = items.answers
        result["rows"][split] = {
            label: measure(kind, items, images, evaluator, reference) for label, images in rows.items()
        }
        g = config.grid_items
        title = f"{kind}, {split} split: each line one item ({'; '.join(items.prompts[:3])}; ...)"
        grid = labelled_grid([(label, images[:g]) for label, images in rows.items()], title)
        path = Path(out) / f"grid_{split}.png"
        grid.save(path)
        figures.append(Figure(f"{split} split", path))
    result |= extra[0]
    result["seconds"] = time.perf_counter() - start
    blocks = ["## What you are looking at", READING[kind], *_tables(kind, result), *extra[1], *figures]
    write_reports(Path(out), result, f"Toy {kind} teacher and students", blocks)
    return result


READING = {
    "inpaint": "Each model fills the grey hole of held-out renders (the prompt describes the whole picture); "
    "every model starts from the same noise. fd: Frechet distance of the fill (the output's hole pasted into the "
    "original) to real renders in the evaluator's features; alignment: share of those composites showing exactly "
    "the caption's scene; psnr_out: PSNR (dB) of the raw output outside the hole against the original (100: an "
    "exact copy). The answer row is the original render, the input row the holed image itself.",
    "edit": "Each model edits held-out source renders as the instruction says; every model starts from the same "
    "noise. success: the output is nearer the edited render than the source over the pixels the edit changes; "
    "alignment: share of outputs showing exactly the edited scene's caption; psnr_out: PSNR (dB) outside the "
    "changed pixels against the source (100: an exact copy); _move and _recolour: the two kinds of instruction. "
    "The answer row is the edited render, the input row the unedited source.",
}


def _tables(kind: str, result: dict[str, Any]) -> list[str]:
    keys = ["fd", "alignment", "psnr_out"] if kind == "inpaint" else ["success", "alignment", "psnr_out"]
    if kind == "edit":  # then the per-kind breakdown
        first_split = next(iter(result["rows"].values()))
        keys += sorted(k for k in next(iter(first_split.values())) if "_" in k and k not in keys)
    blocks = []
    for split, rows in result["rows"].items():
        head = "| model | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys) + "\n"
        body = "".join(f"| {label} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |\n" for label, r in rows.items())
        blocks += [f"## {split} split", head + body]
    return blocks


def main(argv: list[str] | None = None) -> None:
    from ladd_jax.toy.evaluate import parse_students

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--teacher", required=True, help="the conditioned toy teacher's pipeline folder")
    p.add_argument("--student", action="append", default=[], help="[NAME=]DIR of an exported student; repeatable")
    p.add_argument("--items", action="append", required=True, help="SPLIT=FOLDER of toy inpainting/editing items")
    p.add_argument("--out", required=True)
    p.add_argument("--num-items", type=int, default=CondEvalConfig.num_items)
    args = p.parse_args(argv)
    folders = dict(spec.split("=", 1) for spec in args.items)
    config = CondEvalConfig(num_items=args.num_items)
    result = evaluate(args.kind, args.teacher, parse_students(args.student), folders, args.out, config)
    for block in _tables(args.kind, result):
        print(block)


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m ladd_jax.toy.conditioned_eval"))
