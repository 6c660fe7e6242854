"""`ladd-jax demo --out DIR`: LADD end to end in the toy world, on a CPU, through the same code as SD3 at scale.

From the shipped toy checkpoints (`ladd_jax/toy/assets/`: a pretrained toy SD3 teacher folder and the evaluator;
`launch/make_toy_world.sh` rebuilds them) it
  1. writes train-split prompts and generates synthetic latents with the teacher (`run_synth`: ArrayRecord shards),
  2. distils the teacher into a student with LADD (`train_and_evaluate`, configs/ladd.py:toy), measuring the
     EMA student's 1-step FD and alignment on held-out prompts every few steps, and exports it,
  3. runs the same distillation with the heads frozen at a random initialisation (the control: no adversarial
     game, the same everything else),
  4. samples train- and test-split prompts with the teacher (full steps + CFG; 1, 2, 4 steps + CFG on the
     student's schedule; 1 step without CFG, exactly the student's initialisation), the student and the control
     (1, 2, 4 steps), and measures each row with the evaluator: FD (Frechet distance to real renders of the
     split, in the evaluator's features) and alignment (share of images showing exactly what the prompt asks),
  5. writes report.md, report.html, metrics.json (with the targets and whether each holds), labelled grids and
     the training curves.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ladd_jax.errors import LaddError

ROOT = Path(__file__).resolve().parents[2]
ASSETS = Path(__file__).resolve().parent / "assets"


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    teacher: Path = ASSETS / "teacher"
    evaluator: Path = ASSETS / "evaluator"
    synth_prompts: int = 512  # train-split prompts the teacher turns into synthetic latents
    synth_steps: int = 20
    cfg: float = 3.0
    ladd_steps: int = 300
    control: bool = True  # also run the frozen-random-heads control
    eval_prompts: int = 256  # per split, one image each per row (FD's floor falls as 1/N)
    reference_images: int = 1024  # real renders per split for the FD reference statistics
    curve_prompts: int = 128  # held-out test prompts for the FD/alignment curves during training
    eval_every: int = 25  # LADD steps between two points of those curves
    grid_prompts: int = 2  # per split
    grid_seeds: int = 4
    student_steps: tuple[int, ...] = (1, 2, 4)
    seed: int = 0


QUICK = dict(
    synth_prompts=64,
    synth_steps=8,
    ladd_steps=12,
    eval_prompts=48,
    reference_images=256,
    curve_prompts=32,
    eval_every=6,
    grid_prompts=1,
    grid_seeds=2,
)


def load_ladd_config(variant: str) -> Any:
    """configs/ladd.py:VARIANT from the checkout (configs/ is data, not an installed package)."""
    path = ROOT / "configs" / "ladd.py"
    if not path.exists():
        raise LaddError(f"{path} is missing; run the demo from a checkout of ladd_jax (pip install -e .)")
    spec = importlib.util.spec_from_file_location("ladd_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def make_out_dir(out: str | Path) -> Path:
    """The output folder, created; one clear error where it cannot be."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise LaddError(f"cannot write the demo's output folder {out} ({e.strerror}); choose another --out") from None
    return out


# ---------------------------------------------------------------------------------------------------- sampling


class Sampler:
    """Samples a fixed set of prompts, all rows from the same initial noise, with any transformer params."""

    def __init__(self, pipe: Any, prompts: list[str], seeds: list[int], msl: int, cfg: float):
        from ladd_jax.flow import cfg_combine, denoise

        self.pipe, self.prompts, self.msl = pipe, prompts, msl
        size = pipe.transformer_config.sample_size * pipe.vae_scale_factor
        self.size = size
        self.noise = pipe.initial_latents(len(prompts), size, size, seed=seeds)
        embeds, neg, pooled, neg_pooled = pipe.encode_prompt(prompts, max_sequence_length=msl)
        both = (jnp.concatenate([neg, embeds]), jnp.concatenate([neg_pooled, pooled]))

        def x0(params: Any, x: jax.Array, t: jax.Array, guidance: float) -> jax.Array:
            if guidance <= 1.0:
                return denoise(x, pipe.velocity(x, t, embeds, pooled, params), t)
            v = pipe.velocity(jnp.concatenate([x, x]), jnp.concatenate([t, t]), *both, params)
            return denoise(x, cfg_combine(v[len(x) :], v[: len(x)], guidance), t)

        self._x0 = x0

    def few_step(self, params: Any, steps: int, guidance: float = 1.0) -> np.ndarray:
        """Images [N, S, S, 3] in [0, 1] from the LADD student sampler (t = 1, 1 - 1/n, ...; re-noised between)."""
        from ladd_jax.flow import sample_student, student_timesteps

        fn = lambda x, t: self._x0(params, x, t, guidance)
        return self.pipe.decode(sample_student(fn, self.noise, student_timesteps(steps), jax.random.key(0)))

    def euler(self, steps: int, guidance: float) -> np.ndarray:
        """The pipeline's own sampler (diffusers' flow-matching Euler schedule) with the folder's weights."""
        return self.pipe(
            self.prompts,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=self.size,
            width=self.size,
            latents=self.noise,
            max_sequence_length=self.msl,
        )


class Measure:
    """FD (against real renders of a split) and alignment of images for a fixed list of prompts."""

    def __init__(self, evaluator: Any, split: str, prompts: list[str], reference_images: int, seed: int):
        from ladd_jax.toy.metrics import reference_stats

        self.evaluator, self.prompts = evaluator, prompts
        self.reference = reference_stats(evaluator, reference_images, seed, split=split)

    def __call__(self, images: np.ndarray) -> dict[str, float]:
        from ladd_jax.toy.metrics import alignment, feature_stats, features, frechet_distance_from_stats

        fd = frechet_distance_from_stats(feature_stats(features(self.evaluator, images)), self.reference)
        return dict(fd=float(fd), alignment=alignment(self.evaluator, images, self.prompts))


# -------------------------------------------------------------------------------------------------------- main


def distil(ladd: Any, workdir: Path, student_dir: Path, probe: Callable[[Any], dict[str, float]]) -> Path:
    from ladd_jax.train.export import export_workdir
    from ladd_jax.train.loop import train_and_evaluate

    train_and_evaluate(ladd, workdir, evaluate=probe)
    return export_workdir(workdir, student_dir, ema=True, overwrite=True)


def run_demo(out: str | Path, config: DemoConfig = DemoConfig(), progress: Callable[[str], None] = print) -> dict:
    from ladd_jax.data.synth import run_synth
    from ladd_jax.pipeline import SD3Pipeline
    from ladd_jax.toy.components import read_toy_world
    from ladd_jax.toy.evaluator import load_evaluator, render_scenes
    from ladd_jax.toy.report import SPLITS, check_targets, labelled_grid, row_label, training_curves, write_reports
    from ladd_jax.toy.world import sample_scenes, write_prompts

    start = time.perf_counter()
    if not (config.teacher / "model_index.json").exists():
        raise LaddError(
            f"no toy teacher at {config.teacher}; build the toy world with `bash launch/make_toy_world.sh` first"
        )
    out = make_out_dir(out).resolve()
    world = read_toy_world(config.teacher)
    evaluator = load_evaluator(config.evaluator)
    ladd = load_ladd_config("toy")
    msl = ladd.max_sequence_length
    teacher = SD3Pipeline.from_pretrained(config.teacher)

    progress("1/5 synthetic latents from the teacher")
    prompts_file = write_prompts(world, "train", config.synth_prompts, config.seed, out / "prompts.txt", overwrite=True)
    run_synth(
        model=str(config.teacher),
        prompts=str(prompts_file),
        out=str(out / "synth"),
        num_steps=config.synth_steps,
        cfg=config.cfg,
        seed=config.seed,
        max_sequence_length=msl,
        batch_size=max(1, 32 // jax.local_device_count()),
    )

    # The curves: the EMA student's 1-step samples of held-out test prompts, every eval_every steps.
    curve_scenes = sample_scenes(world, "test", config.curve_prompts, config.seed + 10)
    curve_prompts = [s.caption() for s in curve_scenes]
    curve_sampler = Sampler(teacher, curve_prompts, list(range(len(curve_prompts))), msl, config.cfg)
    curve_measure = Measure(evaluator, "test", curve_prompts, config.reference_images, config.seed + 11)

    def probe(state: Any) -> dict[str, float]:
        m = curve_measure(curve_sampler.few_step(state.ema, 1))
        return {"fd_1step": m["fd"], "alignment_1step": m["alignment"]}

    ladd.teacher, ladd.data, ladd.seed = str(config.teacher), str(out / "synth"), config.seed
    ladd.total_steps, ladd.checkpoint_every, ladd.eval_every = config.ladd_steps, config.ladd_steps, config.eval_every
    progress("2/5 LADD distillation")
    runs = {"LADD": out / "train"}
    students = {"student": distil(ladd, runs["LADD"], out / "student", probe)}
    if config.control:
        progress("3/5 the control: the same run with the heads frozen at a random initialisation")
        control = ladd.copy_and_resolve_references()
        control.disc.train, control.disc.output_init = False, "normal"
        runs["control (frozen random heads)"] = out / "control_train"
        students["control"] = distil(control, runs["control (frozen random heads)"], out / "control", probe)

    progress("4/5 evaluation on train- and test-split prompts")
    plan = [("teacher", config.synth_steps, config.cfg, "euler")]
    plan += [("teacher", n, config.cfg, "student schedule") for n in config.student_steps]
    plan += [("teacher", 1, 1.0, "student schedule")]  # = the student's initialisation
    plan += [(m, n, 1.0, "student schedule") for m in students for n in config.student_steps]
    params = {"teacher": teacher.transformer_params}
    params.update({m: SD3Pipeline.from_pretrained(d).transformer_params for m, d in students.items()})
    rows = {key: dict(model=key[0], steps=key[1], cfg=key[2], sampler=key[3]) for key in plan}
    real, grids = {}, {}
    for i, split in enumerate(SPLITS):
        scenes = sample_scenes(world, split, config.eval_prompts, config.seed + 1 + i)
        grid_scenes = scenes[: config.grid_prompts]
        prompts = [s.caption() for s in grid_scenes for _ in range(config.grid_seeds)]
        n_grid = len(prompts)
        prompts += [s.caption() for s in scenes]
        sampler = Sampler(teacher, prompts, list(range(len(prompts))), msl, config.cfg)
        measure = Measure(evaluator, split, prompts[n_grid:], config.reference_images, config.seed + 3 + i)
        columns = []
        for key in tqdm(plan, desc=f"evaluate {split}", unit="row"):
            model, steps, cfg, how = key
            images = sampler.euler(steps, cfg) if how == "euler" else sampler.few_step(params[model], steps, cfg)
            m = measure(images[n_grid:])
            rows[key].update({f"fd_{split}": m["fd"], f"alignment_{split}": m["alignment"]})
            columns.append((row_label(rows[key]), images[:n_grid]))
        # FD's floor at this N: real renders of the same prompts (other render seeds) against the reference.
        real_images = render_scenes(world, scenes, config.seed + 20 + i, "real renders")
        real[split] = measure(real_images)
        real_grid = render_scenes(world, grid_scenes, config.seed + 30 + i, "real renders")
        for p, scene in enumerate(grid_scenes):
            lines = slice(p * config.grid_seeds, (p + 1) * config.grid_seeds)
            cells = [("real render", np.repeat(real_grid[p : p + 1] / 255.0, config.grid_seeds, 0))]
            cells += [(label, images[lines]) for label, images in columns]
            grids[f"{split} split: {scene.caption()}"] = labelled_grid(cells, f'{split} split: "{scene.caption()}"')

    progress("5/5 report")
    table = list(rows.values())
    curve_teacher = curve_measure(curve_sampler.euler(config.synth_steps, config.cfg))
    curve_real = curve_measure(render_scenes(world, curve_scenes, config.seed + 12, "real renders"))
    teacher_label = f"teacher {config.synth_steps} steps CFG {config.cfg:g}"
    references = {
        f"eval/{k}_1step": [(teacher_label, curve_teacher[k]), ("real renders", curve_real[k])]
        for k in ("fd", "alignment")
    }
    training_curves(runs, references, out / "curves.png")
    grid_paths = []
    for i, (title, image) in enumerate(grids.items()):
        image.save(out / f"grid_{i}.png")
        grid_paths.append((title, out / f"grid_{i}.png"))
    result = dict(
        teacher=str(Path(config.teacher).resolve()),
        student=str(students["student"]),
        control=str(students.get("control", "")),
        evaluator=str(Path(config.evaluator).resolve()),
        devices=f"{jax.device_count()} {jax.devices()[0].platform} device(s)",
        eval_prompts=config.eval_prompts,
        ladd_steps=config.ladd_steps,
        rows=table,
        real_renders=real,
        curves=dict(prompts=config.curve_prompts, teacher=curve_teacher, real_renders=curve_real),
        targets=check_targets(table, real),
        config={k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()},
    )
    result["seconds"] = time.perf_counter() - start
    write_reports(out, result, grid_paths)
    return result


def add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="LADD end to end in the toy world on a CPU, with an evaluated report")
    p.add_argument("--out", required=True, help="folder for the data, the runs, the students and the report")
    p.add_argument("--quick", action="store_true", help="a shortened run (CI): fewer prompts, steps and images")
    p.add_argument("--ladd-steps", type=int, default=None, help="LADD iterations (default 300; quick 12)")
    p.add_argument("--no-control", action="store_true", help="skip the frozen-heads control run")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_run_cli)


def _run_cli(args: argparse.Namespace) -> None:
    overrides = dict(QUICK) if args.quick else {}
    if args.ladd_steps is not None:
        overrides["ladd_steps"] = args.ladd_steps
    result = run_demo(args.out, DemoConfig(seed=args.seed, control=not args.no_control, **overrides))
    for r in result["rows"]:
        print(
            "{model:8s} {steps:3d} steps cfg {cfg:4.1f} {sampler:17s} FD train {fd_train:8.2f} "
            "align {alignment_train:.3f}  FD test {fd_test:8.2f} align {alignment_test:.3f}".format(**r)
        )
    missed = [t for t in result["targets"] if not t["holds"]]
    print(f"targets: {len(result['targets']) - len(missed)} of {len(result['targets'])} hold")
    for t in missed:
        print(f"  MISSED {t['target']} ({t['split']}): {t['value']:.3f} vs {t['bound']:.3f}")
    print(f"report: {Path(args.out) / 'report.md'} ({result['seconds'] / 60:.1f} min)")
