"""`ladd-jax demo --out DIR`: LADD end to end in the toy world, on a CPU, through the same code as SD3 at scale.

From the shipped toy checkpoints (`ladd_jax/toy/assets/`: a pretrained toy SD3 teacher folder and the evaluator;
`launch/make_toy_world.sh` rebuilds them) it
  1. writes train-split prompts and generates synthetic latents with the teacher (`run_synth`: ArrayRecord shards),
  2. distils the teacher into a student with LADD (`train_and_evaluate`, configs/ladd.py:toy), exports it,
  3. samples held-out test prompts with the teacher (full steps + CFG; 1, 2, 4 steps + CFG; 1 step without CFG,
     which is exactly the student's initialisation) and with the student (1, 2, 4 steps), and measures each row
     with the evaluator: FD (Frechet distance to real renders of the test split, in the evaluator's features)
     and alignment (share of images showing every attribute their prompt asks for),
  4. writes report.md, report.html, metrics.json, a grid per prompt and the training curves.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import importlib.util
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from PIL import Image
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
    ladd_steps: int = 150
    eval_prompts: int = 512  # held-out test-split prompts, one image each per row (FD's floor falls as 1/N)
    reference_images: int = 1024  # real test-split renders for the FD reference statistics
    grid_prompts: int = 4
    grid_seeds: int = 4
    student_steps: tuple[int, ...] = (1, 2, 4)
    seed: int = 0


QUICK = dict(synth_prompts=64, synth_steps=8, ladd_steps=12, eval_prompts=64, reference_images=512, grid_prompts=2)


def load_ladd_config(variant: str) -> Any:
    """configs/ladd.py:VARIANT from the checkout (configs/ is data, not an installed package)."""
    path = ROOT / "configs" / "ladd.py"
    if not path.exists():
        raise LaddError(f"{path} is missing; run the demo from a checkout of ladd_jax (pip install -e .)")
    spec = importlib.util.spec_from_file_location("ladd_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


# ---------------------------------------------------------------------------------------------------- sampling


def sample_rows(
    teacher: Any, student: Any, prompts: list[str], seeds: list[int], config: DemoConfig, msl: int
) -> dict[tuple[str, int, float], np.ndarray]:
    """(model, steps, cfg) -> images [N, S, S, 3] in [0, 1], every row from the same initial noise."""
    from ladd_jax.flow import denoise, sample_student, student_timesteps

    h = teacher.transformer_config.sample_size * teacher.vae_scale_factor
    noise = teacher.initial_latents(len(prompts), h, h, seed=seeds)
    rows: dict[tuple[str, int, float], np.ndarray] = {}
    plan = [("teacher", config.synth_steps, config.cfg)]
    plan += [("teacher", n, config.cfg) for n in config.student_steps] + [("teacher", 1, 1.0)]
    plan += [("student", n, 1.0) for n in config.student_steps]
    embeds, _, pooled, _ = student.encode_prompt(prompts, max_sequence_length=msl, do_classifier_free_guidance=False)
    velocity = lambda x, t: student._transformer(student.transformer_params, x, t, embeds, pooled)
    student_x0 = jax.jit(lambda x, t: denoise(x, velocity(x, t), t))
    for model, steps, cfg in tqdm(plan, desc="evaluate: sampling", unit="row"):
        if model == "teacher":
            rows[(model, steps, cfg)] = teacher(
                prompts,
                num_inference_steps=steps,
                guidance_scale=cfg,
                height=h,
                width=h,
                latents=noise,
                max_sequence_length=msl,
            )
            continue
        latents = sample_student(student_x0, noise, student_timesteps(steps), jax.random.key(config.seed))
        rows[(model, steps, cfg)] = student.decode(latents)
    return rows


# ----------------------------------------------------------------------------------------------------- reports


def training_curves(workdir: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ladd_jax.train.writer import read_metrics

    rows = read_metrics(workdir)
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, keys, title in (
        (axes[0], ("d_loss_real", "d_loss_fake", "g_loss"), "losses"),
        (axes[1], ("logits_real", "logits_fake"), "discriminator logits (mean)"),
        (axes[2], ("d_acc",), "discriminator accuracy"),
    ):
        for k in keys:
            ax.plot(steps, [r[k] for r in rows], label=k)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def prompt_grids(rows: dict, prompts: list[str], config: DemoConfig, out: Path) -> list[Path]:
    """One PNG per prompt: columns = rows of the table, lines = seeds (rows were sampled prompt-major)."""
    from ladd_jax.sample import image_grid

    paths, keys = [], list(rows)
    per = config.grid_seeds
    for p in range(config.grid_prompts):
        cells = [rows[k][p * per + s] for s in range(per) for k in keys]
        path = out / f"grid_{p}.png"
        Image.fromarray(image_grid(np.stack(cells), per, len(keys))).save(path)
        paths.append(path)
    (out / "grid_columns.txt").write_text("\n".join(f"{m} {n} steps cfg {c:g}" for m, n, c in keys) + "\n")
    return paths


def write_reports(
    out: Path, table: list[dict], grids: list[Path], grid_prompts: list[str], seconds: float, baseline: dict
) -> None:
    (out / "metrics.json").write_text(json.dumps({"rows": table, "seconds": seconds}, indent=2) + "\n")
    (out / "real_renders.json").write_text(json.dumps(baseline, indent=2) + "\n")  # FD's floor at this N
    header = "| model | steps | cfg | FD (lower is better) | alignment |\n|---|---|---|---|---|\n"
    lines = "".join(
        f"| {r['model']} | {r['steps']} | {r['cfg']:g} | {r['fd']:.2f} | {r['alignment']:.3f} |\n" for r in table
    )
    columns = ", ".join(f"{r['model']} {r['steps']} steps cfg {r['cfg']:g}" for r in table)
    md = [
        "# ladd-jax demo: LADD in the toy world\n",
        f"Measured in {seconds / 60:.1f} minutes. FD: Frechet distance to real renders of the held-out test split in "
        "the evaluator's features; alignment: share of images whose every requested attribute the evaluator sees. "
        f"Real renders of the same {baseline['n']} prompts score FD {baseline['fd']:.2f} (the floor at this sample "
        f"size) and alignment {baseline['alignment']:.3f}.\n\n",
        header + lines,
        "\n![training curves](curves.png)\n",
        f"\nGrids: columns {columns}; lines are seeds.\n",
        *[f"\n**{p}**\n\n![{p}]({g.name})\n" for p, g in zip(grid_prompts, grids, strict=True)],
    ]
    (out / "report.md").write_text("".join(md))
    cells = "".join(
        f"<tr><td>{r['model']}</td><td>{r['steps']}</td><td>{r['cfg']:g}</td><td>{r['fd']:.2f}</td>"
        f"<td>{r['alignment']:.3f}</td></tr>"
        for r in table
    )
    figures = "".join(
        f"<h3>{html.escape(p)}</h3><img src='{g.name}' style='image-rendering:pixelated;width:100%'>"
        for p, g in zip(grid_prompts, grids, strict=True)
    )
    (out / "report.html").write_text(
        "<html><head><meta charset='utf-8'><title>ladd-jax demo</title></head><body style='font-family:sans-serif'>"
        f"<h1>LADD in the toy world</h1><p>Measured in {seconds / 60:.1f} minutes. Real renders of the same "
        f"{baseline['n']} prompts: FD {baseline['fd']:.2f}, alignment {baseline['alignment']:.3f}.</p>"
        "<table border=1 cellpadding=4><tr><th>model</th><th>steps</th><th>cfg</th><th>FD</th><th>alignment</th></tr>"
        f"{cells}</table><h2>Training</h2><img src='curves.png'><h2>Samples ({html.escape(columns)})</h2>{figures}"
        "</body></html>"
    )


# -------------------------------------------------------------------------------------------------------- main


def run_demo(out: str | Path, config: DemoConfig = DemoConfig(), progress: Callable[[str], None] = print) -> dict:
    from ladd_jax.data.synth import run_synth
    from ladd_jax.pipeline import SD3Pipeline
    from ladd_jax.toy.components import read_toy_world
    from ladd_jax.toy.evaluator import load_evaluator, render_scenes
    from ladd_jax.toy.metrics import alignment, feature_stats, features, frechet_distance_from_stats, reference_stats
    from ladd_jax.toy.world import sample_scenes, write_prompts
    from ladd_jax.train.export import export_workdir
    from ladd_jax.train.loop import train_and_evaluate

    start = time.perf_counter()
    out = Path(out)
    if not (config.teacher / "model_index.json").exists():
        raise LaddError(
            f"no toy teacher at {config.teacher}; build the toy world with `bash launch/make_toy_world.sh` first"
        )
    out.mkdir(parents=True, exist_ok=True)
    world = read_toy_world(config.teacher)
    ladd = load_ladd_config("toy")
    msl = ladd.max_sequence_length

    progress("1/4 synthetic latents from the teacher")
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

    progress("2/4 LADD distillation")
    ladd.teacher, ladd.data, ladd.total_steps, ladd.seed = (
        str(config.teacher),
        str(out / "synth"),
        config.ladd_steps,
        config.seed,
    )
    ladd.checkpoint_every = config.ladd_steps
    train_and_evaluate(ladd, out / "train")
    export_workdir(out / "train", out / "student", ema=True, overwrite=True)

    progress("3/4 evaluation on held-out prompts")
    evaluator = load_evaluator(config.evaluator)
    scenes = sample_scenes(world, "test", config.eval_prompts, config.seed + 1)
    grid_scenes = scenes[: config.grid_prompts]
    prompts = [s.caption() for s in grid_scenes for _ in range(config.grid_seeds)] + [s.caption() for s in scenes]
    seeds = list(range(len(prompts)))
    teacher, student = SD3Pipeline.from_pretrained(config.teacher), SD3Pipeline.from_pretrained(out / "student")
    rows = sample_rows(teacher, student, prompts, seeds, config, msl)
    reference = reference_stats(evaluator, config.reference_images, config.seed + 2, split="test")
    n_grid = len(grid_scenes) * config.grid_seeds
    table = []
    for (model, steps, cfg), images in rows.items():
        images = images[n_grid:]
        fd = frechet_distance_from_stats(feature_stats(features(evaluator, images)), reference)
        align = alignment(evaluator, images, prompts[n_grid:])
        table.append(dict(model=model, steps=steps, cfg=cfg, fd=float(fd), alignment=float(align)))

    # FD's floor at this N: real renders of the same prompts (other render seeds) against the reference.
    real_images = render_scenes(world, scenes, config.seed + 3, "real renders")
    floor = frechet_distance_from_stats(feature_stats(features(evaluator, real_images)), reference)
    real_alignment = alignment(evaluator, real_images, prompts[n_grid:])

    progress("4/4 report")
    training_curves(out / "train", out / "curves.png")
    grids = prompt_grids({k: v[:n_grid] for k, v in rows.items()}, prompts, config, out)
    seconds = time.perf_counter() - start
    baseline = dict(fd=float(floor), alignment=float(real_alignment), n=len(scenes))
    write_reports(out, table, grids, [s.caption() for s in grid_scenes], seconds, baseline)
    return {"rows": table, "seconds": seconds, "real_renders": baseline}


def add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="LADD end to end in the toy world on a CPU, with an evaluated report")
    p.add_argument("--out", required=True, help="folder for the data, the run, the student and the report")
    p.add_argument("--quick", action="store_true", help="a shortened run (CI): fewer prompts, steps and images")
    p.add_argument("--ladd-steps", type=int, default=None, help="LADD iterations (default 150; quick 12)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=_run_cli)


def _run_cli(args: argparse.Namespace) -> None:
    overrides = dict(QUICK) if args.quick else {}
    if args.ladd_steps is not None:
        overrides["ladd_steps"] = args.ladd_steps
    result = run_demo(args.out, DemoConfig(seed=args.seed, **overrides))
    for r in result["rows"]:
        print("{model:8s} {steps:3d} steps cfg {cfg:4.1f}  FD {fd:8.2f}  alignment {alignment:.3f}".format(**r))
    print(f"report: {Path(args.out) / 'report.md'} ({result['seconds'] / 60:.1f} min)")
