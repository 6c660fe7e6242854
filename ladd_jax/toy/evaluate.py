"""`ladd-jax evaluate --student [NAME=]DIR ... --out DIR`: exported students measured beside their toy teacher.

The demo's evaluation (step 4 of `ladd-jax demo`) for any students: train- and test-split prompts are sampled with
the teacher (full steps + CFG with the pipeline's Euler sampler; 1, 2, 4 steps + CFG on the student's schedule; 1
step without CFG, a student's initialisation) and with each student (1, 2, 4 steps), every row from the same
initial noise, and each row is measured with the toy evaluator: FD (Frechet distance to real renders of the split,
in the evaluator's features) and alignment (share of images showing exactly what the prompt asks). It writes
metrics.json, report.md, report.html and labelled sample grids: one table for comparing distillation methods.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ladd_jax import arguments
from ladd_jax.atomic import make_writable_folder
from ladd_jax.errors import LaddError

ASSETS = Path(__file__).resolve().parent / "assets"
TEACHER_FIX = "the shipped one is built by `bash launch/make_toy_world.sh`"
TEACHER_ROWS = "teacher"  # the model name of the teacher's rows, so no student may take it


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    eval_prompts: int = 256  # per split, one image each per row (FD's floor falls as 1/N)
    reference_images: int = 1024  # real renders per split for the FD reference statistics
    grid_prompts: int = 2  # per split
    grid_seeds: int = 4
    student_steps: tuple[int, ...] = (1, 2, 4)
    synth_steps: int = 20  # the teacher's full steps (the demo's synthetic latents use the same)
    cfg: float = 3.0
    seed: int = 0


QUICK = dict(eval_prompts=48, reference_images=256, grid_prompts=1, grid_seeds=2, synth_steps=8)


def require_pipeline_folder(folder: Path, what: str, fix: str) -> None:
    if not (folder / "model_index.json").is_file():
        raise LaddError(f"{what} {folder} is not an SD3 pipeline folder (it has no model_index.json); {fix}")


# ---------------------------------------------------------------------------------------------------- sampling


class Sampler:
    """Samples a fixed set of prompts, all rows from the same initial noise, with any transformer params (and a
    conditioned model's `cond` latents, one per prompt), at the model's square size or `shape` (height, width)."""

    def __init__(
        self,
        pipe: Any,
        prompts: list[str],
        seeds: list[int],
        msl: int,
        cfg: float,
        cond: Any = None,
        shape: tuple[int, int] | None = None,
    ):
        from ladd_jax.flow import cfg_combine, denoise

        self.pipe, self.prompts, self.msl, self.cond = pipe, prompts, msl, cond
        size = pipe.transformer_config.sample_size * pipe.vae_scale_factor
        self.height, self.width = shape or (size, size)
        self.noise = pipe.initial_latents(len(prompts), self.height, self.width, seed=seeds)
        embeds, neg, pooled, neg_pooled = pipe.encode_prompt(prompts, max_sequence_length=msl)
        both = (jnp.concatenate([neg, embeds]), jnp.concatenate([neg_pooled, pooled]))

        def x0(params: Any, x: jax.Array, t: jax.Array, guidance: float) -> jax.Array:
            if guidance <= 1.0:
                return denoise(x, pipe.velocity(x, t, embeds, pooled, params, cond), t)
            v = pipe.velocity(jnp.concatenate([x, x]), jnp.concatenate([t, t]), *both, params, cond)
            return denoise(x, cfg_combine(v[len(x) :], v[: len(x)], guidance), t)

        self._x0 = x0

    def denoiser(self, params: Any, guidance: float = 1.0) -> Callable[[jax.Array, jax.Array], jax.Array]:
        """(x, t) -> the x0 estimate of these prompts' latents x at flow times t, with CFG `guidance` above 1."""
        return lambda x, t: self._x0(params, x, t, guidance)

    def few_step(self, params: Any, steps: int, guidance: float = 1.0) -> np.ndarray:
        """Images [N, H, W, 3] in [0, 1] from the LADD student sampler (t = 1, 1 - 1/n, ...; re-noised between)."""
        from ladd_jax.flow import sample_student, student_timesteps

        fn = self.denoiser(params, guidance)
        return self.pipe.decode(sample_student(fn, self.noise, student_timesteps(steps), jax.random.key(0)))

    def euler(self, steps: int, guidance: float) -> np.ndarray:
        """The pipeline's own sampler (diffusers' flow-matching Euler schedule) with the folder's weights."""
        return self.pipe(
            self.prompts,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=self.height,
            width=self.width,
            latents=self.noise,
            max_sequence_length=self.msl,
            cond=self.cond,
        )


class Measure:
    """FD (against real renders of a split), alignment and per-attribute accuracy of images for a fixed list of
    prompts, from one pass of the evaluator."""

    def __init__(self, evaluator: Any, split: str, prompts: list[str], reference_images: int, seed: int):
        from ladd_jax.toy.evaluator import scene_labels
        from ladd_jax.toy.metrics import reference_stats
        from ladd_jax.toy.world import parse_caption

        self.evaluator, self.prompts = evaluator, prompts
        self.labels = scene_labels(evaluator.world, [parse_caption(evaluator.world, p) for p in prompts])
        self.reference = reference_stats(evaluator, reference_images, seed, split=split)

    def __call__(self, images: np.ndarray) -> dict[str, Any]:
        """fd, alignment (the share of images showing exactly what their prompt asks), attributes (the
        evaluator's `accuracy`: which attributes the images get right, alignment being its "all") and shapes
        (`shape_accuracy_by`: the right shape per asked shape and size)."""
        from ladd_jax.toy.evaluator import accuracy, shape_accuracy_by
        from ladd_jax.toy.metrics import feature_stats, frechet_distance_from_stats

        if len(images) != len(self.prompts):
            raise LaddError(f"{len(images)} images but {len(self.prompts)} prompts: give one image per prompt")
        feats, predicted = self.evaluator.run(images)
        fd = frechet_distance_from_stats(feature_stats(feats.astype(np.float64)), self.reference)
        attributes = accuracy(predicted, self.labels)
        shapes = shape_accuracy_by(predicted, self.labels, self.evaluator.world)
        return dict(fd=float(fd), alignment=attributes["all"], attributes=attributes, shapes=shapes)


# ------------------------------------------------------------------------------------------------- evaluation


MEASURES = ("fd", "alignment", "attributes", "shapes")  # what `Measure` gives each row, per split


def row_plan(students: list[str], config: EvalConfig) -> list[tuple[str, int, float, str]]:
    """(model, steps, CFG, sampler) of every row, grouped per model: the teacher's references first."""
    plan = [(TEACHER_ROWS, config.synth_steps, config.cfg, "euler")]
    plan += [(TEACHER_ROWS, n, config.cfg, "student schedule") for n in config.student_steps]
    plan += [(TEACHER_ROWS, 1, 1.0, "student schedule")]  # = a student's initialisation
    return plan + [(m, n, 1.0, "student schedule") for m in students for n in config.student_steps]


# What a student may change of its teacher's transformer: its depth (train/student.py's repeated blocks) and its
# width (models/net2wider.py's copied channels).
SIZE_FIELDS = (
    "num_layers",
    "dual_attention_layers",
    "num_attention_heads",
    "caption_projection_dim",
    "pos_embed_tiles",
)


def load_student(teacher: Any, name: str, folder: Path) -> Any:
    """The teacher's pipeline with the student's transformer. The student shares the teacher's text encoders and
    VAE, so its transformer must read and write the same tensors; only its depth and width may differ."""
    from ladd_jax.pipeline import SD3Pipeline

    student = SD3Pipeline.from_pretrained(folder)
    interface = lambda c: {k: v for k, v in dataclasses.asdict(c).items() if k not in SIZE_FIELDS}
    if interface(student.transformer_config) != interface(teacher.transformer_config):
        raise LaddError(
            f"student {name!r} ({folder}) has a transformer of other shapes than the teacher's ({teacher.folder}); "
            "evaluate it beside the teacher it was distilled from (--teacher DIR)"
        )
    return teacher.with_transformer(student.transformer_config, student.transformer_params)


def split_scenes(world: Any, config: EvalConfig, i: int, split: str) -> list:
    """The scenes whose prompts `evaluate_students` measures on split number `i` of `SPLITS`."""
    from ladd_jax.toy.world import sample_scenes

    return sample_scenes(world, split, config.eval_prompts, config.seed + 1 + i)


def split_measure(evaluator: Any, config: EvalConfig, i: int, split: str, prompts: list[str]) -> Measure:
    """`evaluate_students`' `Measure` of split number `i` (its reference renders' seed)."""
    return Measure(evaluator, split, prompts, config.reference_images, config.seed + 3 + i)


def measured_rows_setup(
    pipe: Any, world: Any, evaluator: Any, config: EvalConfig, msl: int
) -> Iterator[tuple[str, Sampler, Measure]]:
    """Per split: (split, a `Sampler` and a `Measure`) over exactly the prompts, initial noise and FD reference of
    `evaluate_students`' measured rows (without the grid's prompts, which it samples first), so that a study of
    other samplers or models reproduces the demo's rows to the digit."""
    from ladd_jax.toy.report import SPLITS

    for i, split in enumerate(SPLITS):
        scenes = split_scenes(world, config, i, split)
        n_grid = len(scenes[: config.grid_prompts]) * config.grid_seeds
        prompts = [s.caption() for s in scenes]
        seeds = list(range(n_grid, n_grid + len(prompts)))
        sampler = Sampler(pipe, prompts, seeds, msl, config.cfg, shape=world.shape)
        yield split, sampler, split_measure(evaluator, config, i, split, prompts)


def evaluate_students(
    teacher: Any, students: dict[str, Path], world: Any, evaluator: Any, config: EvalConfig, msl: int
) -> tuple[list[dict], dict[str, dict[str, float]], dict[str, Image.Image]]:
    """Samples and measures the row plan on both splits with the teacher (an `SD3Pipeline`) and the students
    (name -> exported pipeline folder; no name "teacher").

    Returns (rows: model, steps, cfg, sampler and, per split, `MEASURES` (fd_SPLIT, ...); real: the same
    measures of real renders of the same prompts per split, FD's floor; grids: title -> labelled picture, a real
    render then every row)."""
    from ladd_jax.toy.evaluator import render_scenes
    from ladd_jax.toy.report import SPLITS, labelled_grid, row_label

    plan = row_plan(list(students), config)
    pipes = {TEACHER_ROWS: teacher, **{m: load_student(teacher, m, d) for m, d in students.items()}}
    rows = {key: dict(model=key[0], steps=key[1], cfg=key[2], sampler=key[3]) for key in plan}
    real, grids = {}, {}
    for i, split in enumerate(SPLITS):
        scenes = split_scenes(world, config, i, split)
        grid_scenes = scenes[: config.grid_prompts]
        prompts = [s.caption() for s in grid_scenes for _ in range(config.grid_seeds)]
        n_grid = len(prompts)
        prompts += [s.caption() for s in scenes]
        samplers = {}  # one per transformer architecture: the same prompts and noise
        for pipe in pipes.values():
            if pipe.transformer_config not in samplers:
                samplers[pipe.transformer_config] = Sampler(
                    pipe, prompts, list(range(len(prompts))), msl, config.cfg, shape=world.shape
                )
        measure = split_measure(evaluator, config, i, split, prompts[n_grid:])
        columns = []
        for key in tqdm(plan, desc=f"evaluate {split}", unit="row"):
            model, steps, cfg, how = key
            sampler = samplers[pipes[model].transformer_config]
            images = (
                sampler.euler(steps, cfg)
                if how == "euler"
                else sampler.few_step(pipes[model].transformer_params, steps, cfg)
            )
            m = measure(images[n_grid:])
            rows[key].update({f"{k}_{split}": m[k] for k in MEASURES})
            columns.append((row_label(rows[key]), images[:n_grid]))
        # FD's floor at this N: real renders of the same prompts (other render seeds) against the reference.
        real[split] = measure(render_scenes(world, scenes, config.seed + 20 + i, "real renders"))
        real_grid = render_scenes(world, grid_scenes, config.seed + 30 + i, "real renders")
        for p, scene in enumerate(grid_scenes):
            lines = slice(p * config.grid_seeds, (p + 1) * config.grid_seeds)
            cells = [("real render", np.repeat(real_grid[p : p + 1] / 255.0, config.grid_seeds, 0))]
            cells += [(label, images[lines]) for label, images in columns]
            grids[f"{split} split: {scene.caption()}"] = labelled_grid(cells, f'{split} split: "{scene.caption()}"')
    return list(rows.values()), real, grids


def check_students(students: dict[str, Path]) -> None:
    """Before anything is loaded or written: every student a pipeline folder, none named like the teacher's rows."""
    for name, folder in students.items():
        if name == TEACHER_ROWS:
            raise LaddError(
                f"the student {folder} is named {TEACHER_ROWS!r}, the name of the teacher's own rows; "
                "name it otherwise with --student NAME=DIR"
            )
        require_pipeline_folder(folder, f"the student {name!r}:", "pass a folder `ladd-jax export` wrote")


def load_study(
    specs: list[str], teacher: str | Path = ASSETS / "teacher", evaluator: str | Path = ASSETS / "evaluator"
) -> tuple[Any, Any, Any, dict[str, Any]]:
    """For a study of students beside the demo's rows (launch/toy_*.py): (the teacher's pipeline, its world, the
    evaluator, name -> student transformer params) from --student specs, NAME=DIR or DIR. A bad spec or folder is
    one LaddError, before anything loads."""
    from ladd_jax.pipeline import SD3Pipeline
    from ladd_jax.toy.components import read_toy_world
    from ladd_jax.toy.evaluator import load_evaluator

    students = parse_students(specs)
    check_students(students)
    require_pipeline_folder(Path(teacher), "the teacher", f"pass the toy teacher folder ({TEACHER_FIX})")
    pipe = SD3Pipeline.from_pretrained(teacher)
    params = {name: load_student(pipe, name, folder).transformer_params for name, folder in students.items()}
    return pipe, read_toy_world(teacher), load_evaluator(evaluator), params


def run_evaluate(
    out: str | Path,
    students: dict[str, str | Path],
    teacher: str | Path = ASSETS / "teacher",
    evaluator: str | Path = ASSETS / "evaluator",
    config: EvalConfig = EvalConfig(),
) -> dict:
    """Evaluates the students beside the toy teacher and writes metrics.json, report.md, report.html and the grids
    to `out`; returns what metrics.json holds."""
    from ladd_jax.pipeline import SD3Pipeline
    from ladd_jax.toy.components import T5_MAX_LENGTH, read_toy_world
    from ladd_jax.toy.evaluator import load_evaluator
    from ladd_jax.toy.report import evaluation_report, save_grids

    start = time.perf_counter()
    students = {name: Path(folder) for name, folder in students.items()}
    teacher, evaluator = Path(teacher), Path(evaluator)
    if not students:
        raise LaddError("no students to evaluate; name at least one with --student [NAME=]DIR")
    check_students(students)
    require_pipeline_folder(teacher, "the teacher", f"pass the toy teacher folder with --teacher DIR ({TEACHER_FIX})")
    out = make_writable_folder(out, "the evaluation's output folder").resolve()
    world = read_toy_world(teacher)
    scorer = load_evaluator(evaluator)
    pipe = SD3Pipeline.from_pretrained(teacher)
    rows, real, grids = evaluate_students(pipe, students, world, scorer, config, T5_MAX_LENGTH)
    result = dict(
        teacher=str(teacher.resolve()),
        students={name: str(folder.resolve()) for name, folder in students.items()},
        evaluator=str(evaluator.resolve()),
        devices=f"{jax.device_count()} {jax.devices()[0].platform} device(s)",
        eval_prompts=config.eval_prompts,
        rows=rows,
        real_renders=real,
        settings=dict(dataclasses.asdict(config), max_sequence_length=T5_MAX_LENGTH),
    )
    result["seconds"] = time.perf_counter() - start
    evaluation_report(out, result, save_grids(grids, out))
    return result


# --------------------------------------------------------------------------------------------------------- CLI


def print_rows(rows: list[dict], real: dict[str, dict[str, float]]) -> None:
    """The table on the terminal, the real-render floor last."""
    width = max(len(r["model"]) for r in rows)
    for r in rows:
        print(
            f"{r['model']:{width}s} {r['steps']:3d} steps cfg {r['cfg']:4.1f} {r['sampler']:17s} "
            f"FD train {r['fd_train']:8.2f} align {r['alignment_train']:.3f}  "
            f"FD test {r['fd_test']:8.2f} align {r['alignment_test']:.3f}"
        )
    floor = "real renders (floor)"
    print(
        f"{floor:{width + 37}s} FD train {real['train']['fd']:8.2f} align {real['train']['alignment']:.3f}  "
        f"FD test {real['test']['fd']:8.2f} align {real['test']['alignment']:.3f}"
    )


def parse_students(specs: list[str]) -> dict[str, Path]:
    """--student values, NAME=DIR or DIR (named after the folder), as name -> folder; names must differ."""
    students: dict[str, Path] = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or "/" in name:  # a bare DIR (which may itself hold a "=")
            name, folder = Path(spec).resolve().name, spec
        if name in students:
            raise LaddError(
                f"two students are named {name!r} ({students[name]} and {folder}); "
                "name them apart with --student NAME=DIR"
            )
        students[name] = Path(folder)
    return students


def add_evaluate_parser(subparsers: argparse._SubParsersAction) -> None:
    what = "measure exported students beside the toy teacher (FD, alignment, sample grids, report)"
    p = subparsers.add_parser("evaluate", help=what, description=what)
    p.add_argument(
        "--student",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="an exported student pipeline folder (`ladd-jax export`), named NAME (default: the folder's name); "
        "repeat to compare several",
    )
    p.add_argument(
        "--teacher", default=str(ASSETS / "teacher"), metavar="DIR", help="the toy teacher (default: shipped)"
    )
    p.add_argument(
        "--evaluator", default=str(ASSETS / "evaluator"), metavar="DIR", help="the toy evaluator (default: shipped)"
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="folder for metrics.json, report.md, report.html and the grids"
    )
    p.add_argument(
        "--eval-prompts", type=int, default=None, metavar="N", help="prompts per split (default 256; quick 48)"
    )
    p.add_argument("--quick", action="store_true", help="fewer prompts, reference images and teacher steps")
    p.add_argument("--seed", type=arguments.seed, default=0, metavar="S", help="seed of the prompts, noise and renders")
    p.set_defaults(fn=_run_cli)


def _run_cli(args: argparse.Namespace) -> None:
    overrides = dict(QUICK) if args.quick else {}
    if args.eval_prompts is not None:
        if args.eval_prompts < 2:  # FD needs a covariance
            raise LaddError(f"--eval-prompts must be at least 2, got {args.eval_prompts}")
        overrides["eval_prompts"] = args.eval_prompts
    config = EvalConfig(seed=args.seed, **overrides)
    result = run_evaluate(args.out, parse_students(args.student), Path(args.teacher), Path(args.evaluator), config)
    print_rows(result["rows"], result["real_renders"])
    print(f"report: {Path(args.out) / 'report.md'} ({result['seconds'] / 60:.1f} min)")
