"""`ladd-jax demo --out DIR`: LADD end to end in the toy world, on a CPU, through the same code as SD3 at scale.

From the shipped toy checkpoints (`ladd_jax/toy/assets/`: a pretrained toy SD3 teacher folder and the evaluator;
`launch/make_toy_world.sh` rebuilds them) it
  1. writes train-split prompts and generates synthetic latents with the teacher (`run_synth`: ArrayRecord shards),
  2. distils the teacher into a student with LADD (`train_and_evaluate`, configs/ladd.py:toy; `--recipe
     anchored-mix`: the toy world's best-measured route, configs/dmd.py:toy-anchored, past the 10-minute bound),
     measuring the EMA student's 1-step FD and alignment on held-out prompts every few steps, and exports it,
  3. runs the same distillation with the heads frozen at a random initialisation (the control: no adversarial
     game, the same everything else),
  4. samples train- and test-split prompts with the teacher (full steps + CFG; 1, 2, 4 steps + CFG on the
     student's schedule; 1 step without CFG, exactly the student's initialisation), the student and the control
     (1, 2, 4 steps), and measures each row with the evaluator: FD (Frechet distance to real renders of the
     split, in the evaluator's features) and alignment (share of images showing exactly what the prompt asks):
     `evaluate_students`, what `ladd-jax evaluate` runs for any exported students,
  5. writes report.md, report.html, metrics.json (with the targets and whether each holds), labelled grids and
     the training curves.

`--multi-aspect` synthesises each prompt at one of the toy world's buckets (64x64, 48x80, 80x48; data/buckets.py)
and distils on all three (the trainer compiles its step once per bucket), then measures every row of step 4 in
each bucket: the prompts drawn at the bucket's size, FD against real renders of the world drawn at that size and
alignment, each with the evaluator trained at that size (assets/evaluator_48x80, _80x48: the evaluator flattens
its last feature map, so it reads one size). The teacher was pretrained at 64x64 alone; its rows in the other
buckets say how well it draws there.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from ladd_jax import arguments
from ladd_jax.atomic import make_writable_folder
from ladd_jax.errors import LaddError

# launch/toy_*.py import ASSETS, Measure and Sampler from here too.
from ladd_jax.toy.evaluate import (
    ASSETS,
    TEACHER_FIX,
    EvalConfig,
    Measure,
    Sampler,
    evaluate_students,
    print_rows,
    require_pipeline_folder,
)
from ladd_jax.toy.evaluate import QUICK as EVAL_QUICK

ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class DemoConfig(EvalConfig):
    """The evaluation's settings (`EvalConfig`: synth_steps also makes the synthetic latents) and the runs'."""

    teacher: Path = ASSETS / "teacher"
    evaluator: Path = ASSETS / "evaluator"
    synth_prompts: int = 512  # train-split prompts the teacher turns into synthetic latents
    recipe: str = "ladd"  # how the student is distilled: a name of RECIPES
    ladd_steps: int | None = None  # distillation iterations; None: the recipe's config's total_steps
    control: bool = True  # also run the frozen-random-heads control
    curve_prompts: int = 128  # held-out test prompts for the FD/alignment curves during training
    curve_points: int = 6  # points of those curves after the start, evenly over the run (LADD's 150: every 25)
    multi_aspect: bool = False  # synthesise, distil and measure at the toy world's three buckets


QUICK = dict(EVAL_QUICK, synth_prompts=64, ladd_steps=12, curve_prompts=32, curve_points=2)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A distillation the demo runs, with its control (the same run with its heads frozen at random)."""

    file: str  # a config file of configs/
    variant: str  # its variant
    label: str  # the run's name in the curves, the phases and the report's title
    method: str  # one sentence for the report: how the student learns


RECIPES = {
    # The demo's default, within its 10-minute bound on 2 CPU cores.
    "ladd": Recipe(
        "ladd.py",
        "toy",
        "LADD",
        "LADD trains a student (initialised as the teacher) to draw in 1-4 steps: discriminator heads on the frozen "
        "teacher's features learn to tell the teacher's samples (real) from the student's (fake), and the student "
        "follows their gradient through the teacher.",
    ),
    # The toy world's best-measured route (alignment notes, "DMD's regression anchor": 8-9 of the 10 student
    # targets at three seeds): 4800 steps, 33-38 CPU minutes of training alone, and as many for its control.
    "anchored-mix": Recipe(
        "dmd.py",
        "toy-anchored",
        "anchored mix",
        "The anchored mix trains a student (initialised as the teacher) to draw in 1-4 steps with three terms: "
        "DMD's distribution matching (the teacher's guided score minus a fake score that keeps learning the "
        "student's samples), LADD's discriminator heads on the frozen teacher's features at weight 0.1 (the "
        "student follows their gradient through the teacher), and DMD's regression anchor at weight 0.1 (the "
        "student's 1-step image of each synthetic latent's stored noise pulled toward that latent).",
    ),
}


class Phases:
    """Wall-clock seconds per part of a run, for metrics.json's `phase_seconds`: where a demo's minutes go (the
    10-minute bound is a sum of them, and which part grows on a slow day is what one wants to know)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._name: str | None = "setup"
        self._since = time.perf_counter()

    def enter(self, name: str | None) -> None:
        """Close the current part (its time added to its name's total) and start `name` (None: stop timing)."""
        now = time.perf_counter()
        if self._name is not None:
            self.seconds[self._name] = self.seconds.get(self._name, 0.0) + now - self._since
        self._name, self._since = name, now


def load_ladd_config(variant: str, file: str = "ladd.py") -> Any:
    """configs/FILE:VARIANT from the checkout (configs/ is data, not an installed package)."""
    from ladd_jax.config_files import load_config_file

    return load_config_file(ROOT / "configs" / file, variant)


# -------------------------------------------------------------------------------------------------------- main


def distil(ladd: Any, workdir: Path, student_dir: Path, probe: Callable[[Any], dict[str, float]]) -> Path:
    from ladd_jax.train.export import export_workdir
    from ladd_jax.train.loop import train_and_evaluate

    train_and_evaluate(ladd, workdir, evaluate=probe)
    return export_workdir(workdir, student_dir, ema=True, overwrite=True)


def run_demo(out: str | Path, config: DemoConfig = DemoConfig(), progress: Callable[[str], None] = print) -> dict:
    from ladd_jax.data.buckets import TOY_BUCKETS, format_bucket
    from ladd_jax.data.synth import run_synth
    from ladd_jax.pipeline import SD3Pipeline
    from ladd_jax.toy.components import read_toy_world
    from ladd_jax.toy.evaluator import load_bucket_evaluator, load_evaluator, render_scenes
    from ladd_jax.toy.report import Figure, check_targets, demo_report, save_grids, training_curves
    from ladd_jax.toy.world import sample_scenes, write_prompts

    start, phases = time.perf_counter(), Phases()
    if config.recipe not in RECIPES:
        raise LaddError(f"unknown demo recipe {config.recipe!r}; choose one of {sorted(RECIPES)}")
    recipe = RECIPES[config.recipe]
    require_pipeline_folder(config.teacher, "the toy teacher", f"build it first ({TEACHER_FIX})")
    out = make_writable_folder(out, "the demo's output folder").resolve()
    world = read_toy_world(config.teacher)
    evaluator = load_evaluator(config.evaluator)
    run = load_ladd_config(recipe.variant, recipe.file)
    msl = run.max_sequence_length
    teacher = SD3Pipeline.from_pretrained(config.teacher)

    progress("1/5 synthetic latents from the teacher")
    phases.enter("synthesis")
    prompts_file = write_prompts(world, "train", config.synth_prompts, config.seed, out / "prompts.txt", overwrite=True)
    buckets = ",".join(format_bucket(b) for b in TOY_BUCKETS) if config.multi_aspect else None
    run_synth(
        buckets=buckets,
        model=str(config.teacher),
        prompts=str(prompts_file),
        out=str(out / "synth"),
        num_steps=config.synth_steps,
        cfg=config.cfg,
        seed=config.seed,
        max_sequence_length=msl,
        batch_size=max(1, 32 // jax.local_device_count()),
    )

    phases.enter(recipe.label)  # with its curves' setup: their prompts' real renders and reference statistics
    # The curves: the EMA student's 1-step samples of held-out test prompts, every eval_every steps.
    curve_scenes = sample_scenes(world, "test", config.curve_prompts, config.seed + 10)
    curve_prompts = [s.caption() for s in curve_scenes]
    curve_sampler = Sampler(teacher, curve_prompts, list(range(len(curve_prompts))), msl, config.cfg)
    curve_measure = Measure(evaluator, "test", curve_prompts, config.reference_images, config.seed + 11)

    def probe(ema_params: Any) -> dict[str, float]:
        m = curve_measure(curve_sampler.few_step(ema_params, 1))
        return {"fd_1step": m["fd"], "alignment_1step": m["alignment"]}

    run.teacher, run.data, run.seed = str(config.teacher), str(out / "synth"), config.seed
    if config.ladd_steps is not None:
        run.total_steps = config.ladd_steps
    run.checkpoint_every, run.eval_every = run.total_steps, max(1, run.total_steps // config.curve_points)
    if config.multi_aspect:  # the trainer's grid at the end: a block per bucket, teacher beside the student
        run.sample_every, run.sample_prompts = run.total_steps, tuple(prompts_file.read_text().splitlines()[:2])
    progress(f"2/5 distillation: {recipe.label} (configs/{recipe.file}:{recipe.variant}), {run.total_steps} steps")
    runs = {recipe.label: out / "train"}
    students = {"student": distil(run, runs[recipe.label], out / "student", probe)}
    if config.control:
        progress("3/5 the control: the same run with the heads frozen at a random initialisation")
        phases.enter("control")
        control = run.copy_and_resolve_references()
        control.disc.train, control.disc.output_init, control.sample_every = False, "normal", 0
        runs["control (frozen random heads)"] = out / "control_train"
        students["control"] = distil(control, runs["control (frozen random heads)"], out / "control", probe)

    progress("4/5 evaluation on train- and test-split prompts")
    phases.enter("evaluation")
    table, real, grids = evaluate_students(teacher, students, world, evaluator, config, msl)
    per_bucket = {}
    for bucket in TOY_BUCKETS if config.multi_aspect else ():
        if world.at_bucket(bucket) == world:  # the square world: the table above
            per_bucket[format_bucket(bucket)] = dict(rows=table, real_renders=real)
            continue
        progress(f"4/5 evaluation at {format_bucket(bucket)}")
        bucket_world = world.at_bucket(bucket)
        scorer = load_bucket_evaluator(config.evaluator, bucket_world)
        rows, bucket_real, bucket_grids = evaluate_students(teacher, students, bucket_world, scorer, config, msl)
        per_bucket[format_bucket(bucket)] = dict(rows=rows, real_renders=bucket_real)
        grids.update({f"{format_bucket(bucket)}, {title}": grid for title, grid in bucket_grids.items()})

    progress("5/5 report")
    phases.enter("report")
    curve_teacher = curve_measure(curve_sampler.euler(config.synth_steps, config.cfg))
    curve_real = curve_measure(render_scenes(world, curve_scenes, config.seed + 12, "real renders"))
    teacher_label = f"teacher {config.synth_steps} steps CFG {config.cfg:g}"
    references = {
        f"eval/{k}_1step": [(teacher_label, curve_teacher[k]), ("real renders", curve_real[k])]
        for k in ("fd", "alignment")
    }
    training_curves(runs, references, out / "curves.png")
    result = dict(
        teacher=str(Path(config.teacher).resolve()),
        recipe=dict(name=config.recipe, **dataclasses.asdict(recipe)),
        student=str(students["student"]),
        control=str(students.get("control", "")),
        evaluator=str(Path(config.evaluator).resolve()),
        devices=f"{jax.device_count()} {jax.devices()[0].platform} device(s)",
        eval_prompts=config.eval_prompts,
        ladd_steps=run.total_steps,
        rows=table,
        real_renders=real,
        curves=dict(prompts=config.curve_prompts, teacher=curve_teacher, real_renders=curve_real),
        targets=check_targets(table, real),
        buckets=per_bucket,
        config={k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()},
    )
    figures = save_grids(grids, out)
    if config.multi_aspect:
        caption = f"every bucket after {run.total_steps} steps: the teacher ({run.teacher_sample_steps} steps, CFG"
        caption += f" {run.teacher_cfg:g}) beside the student at {', '.join(map(str, run.sample_steps))} steps"
        caption += " (distilled on all three buckets; each bucket's table is in 'Per bucket')"
        path = shutil.copy(runs[recipe.label] / "samples" / f"{run.total_steps:07d}.png", out / "grid_buckets.png")
        figures.append(Figure(caption, Path(path)))
    result["seconds"] = time.perf_counter() - start
    phases.enter(None)
    result["phase_seconds"] = phases.seconds
    demo_report(out, result, figures, out / "curves.png")
    return result


def add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="LADD end to end in the toy world on a CPU, with an evaluated report")
    p.add_argument("--out", required=True, help="folder for the data, the runs, the students and the report")
    p.add_argument("--quick", action="store_true", help="a shortened run (CI): fewer prompts, steps and images")
    what = "how the student is distilled: ladd (LADD, the default: 3.5-5.8 minutes in all on 2 Zen 5 EPYC or Intel "
    what += "Xeon cores, 7.9-12.6 on 2 AVX2 AMD EPYC ones) or "
    what += "anchored-mix (DMD + LADD's heads + DMD's regression anchor, 4800 steps: 77 minutes on 2 cores)"
    p.add_argument("--recipe", choices=sorted(RECIPES), default="ladd", help=what)
    what = "distillation iterations (default: the recipe's config's total_steps, LADD's 150; quick 12)"
    p.add_argument("--ladd-steps", type=int, default=None, help=what)
    p.add_argument("--no-control", action="store_true", help="skip the frozen-heads control run")
    what = "seed of the prompts, the synthesis noise, the runs and the evaluation's prompts and renders"
    p.add_argument("--seed", type=arguments.seed, default=0, help=what)
    p.add_argument(
        "--multi-aspect", action="store_true", help="synthesise, distil and measure at 64x64, 48x80 and 80x48"
    )
    p.set_defaults(fn=_run_cli)


def _run_cli(args: argparse.Namespace) -> None:
    overrides = dict(QUICK) if args.quick else {}
    if args.ladd_steps is not None:
        if args.ladd_steps < 1:
            raise LaddError(f"--ladd-steps must be at least 1, got {args.ladd_steps}")
        overrides["ladd_steps"] = args.ladd_steps
    config = DemoConfig(
        seed=args.seed, recipe=args.recipe, control=not args.no_control, multi_aspect=args.multi_aspect, **overrides
    )
    result = run_demo(args.out, config)
    print_rows(result["rows"], result["real_renders"])
    missed = [t for t in result["targets"] if not t["holds"]]
    print(f"targets: {len(result['targets']) - len(missed)} of {len(result['targets'])} hold")
    for t in missed:
        print(f"  MISSED {t['target']} ({t['split']}): {t['value']:.3f} vs {t['bound']:.3f}")
    print(f"report: {Path(args.out) / 'report.md'} ({result['seconds'] / 60:.1f} min)")
