"""Short runs of the trainer in the toy world (LADD, or any method of train/methods.py), one per config and set of
overrides, each measured like the demo's curves: the EMA student's 1-step FD and alignment on held-out test prompts
every EVAL_EVERY steps, beside D accuracy and the logit gap. Each run's EMA student is exported to OUT/NAME/student
(for `ladd-jax evaluate`) and its wall-clock recorded. How the toy config's game settings were chosen (README,
"Tuning the game"), and the method comparison (README, "Baselines").

    python launch/toy_ladd_sweep.py --out runs/sweep --steps 300 \
        --run base= --run ns=loss=non_saturating --run d4=d_steps=4,d_lr=3e-4 \
        --run lcm@lcm:toy= --run mse@d2g:toy-mse= --run add@add:toy=features=runs/pixel_features

Each --run is NAME[@FILE:VARIANT]=KEY=VALUE,KEY=VALUE: configs/FILE.py:VARIANT (default ladd:toy), values Python
literals (tuples too: student.layers=(0,0,1,1,2,2,3)), nested keys with dots. The synthetic data (--synth-prompts
train-split prompts, 512 as in the demo, with the demo's sampling settings) is made once in OUT/synth. Prints one
JSON line per run and writes OUT/sweep.json and OUT/curves.png (every run's curves; `--curves NAME=RUN,RUN` also
draws a few runs alone, in OUT/curves_NAME.png). Re-running the same command resumes it: the runs that finished (in
sweep.json, their student exported) are kept, the others start over; runs of earlier commands with the same OUT stay
in sweep.json and the curves.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ladd_jax.config_files import load_config_file
from ladd_jax.toy.demo import ASSETS, ROOT, DemoConfig, Measure, Sampler
from ladd_jax.toy.report import training_curves
from ladd_jax.train.export import export_workdir
from ladd_jax.train.loop import train_and_evaluate
from ladd_jax.train.student import student_architecture
from ladd_jax.train.writer import read_metrics


def parse_run(text: str) -> tuple[str, str, dict]:
    """NAME[@FILE:VARIANT]=overrides -> (name, "FILE:VARIANT", overrides)."""
    head, _, rest = text.partition("=")
    name, _, spec = head.partition("@")
    overrides = {}
    for item in filter(None, re.split(r",(?=[\w.]+=)", rest)):  # commas inside a value (a tuple) stay
        key, _, value = item.partition("=")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return name, spec or "ladd:toy", overrides


def apply(config, overrides: dict):
    for key, value in overrides.items():
        target, *path = config, *key.split(".")
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = tuple(value) if isinstance(value, list) else value
    return config


def main() -> None:
    from ladd_jax.data.synth import run_synth
    from ladd_jax.pipeline import SD3Pipeline
    from ladd_jax.toy.components import read_toy_world
    from ladd_jax.toy.evaluator import load_evaluator
    from ladd_jax.toy.world import sample_scenes, write_mismatched_prompts, write_prompts

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--teacher", default=str(ASSETS / "teacher"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--synth-prompts", type=int, default=DemoConfig().synth_prompts, help="synthetic latents")
    ap.add_argument("--eval-prompts", type=int, default=128)
    ap.add_argument("--split", default="test", help="the split of the measured prompts (other scenes than the data's)")
    ap.add_argument(
        "--mismatch",
        type=lambda s: tuple(s.split(",")),
        help="ATTRIBUTE[,ATTRIBUTE...] of shape, color, size: the data also hold each prompt's caption with one "
        "object's attribute (one of these, drawn per prompt) changed (hard misaligned pairs for runs with "
        "misaligned_weight>0,misaligned_source=records); a new OUT, as the data differ",
    )
    ap.add_argument("--run", action="append", required=True)
    ap.add_argument(
        "--curves",
        action="append",
        default=[],
        metavar="NAME=RUN,RUN,...",
        help="also draw these runs of OUT alone, in OUT/curves_NAME.png (curves.png holds every run)",
    )
    args = ap.parse_args()
    out, demo = Path(args.out), DemoConfig()
    out.mkdir(parents=True, exist_ok=True)
    # Re-running the same command resumes it: runs already in sweep.json with an exported student are kept. Runs of
    # earlier commands in OUT stay in sweep.json (and the curves): a new --run adds to a folder, it erases nothing.
    done = json.loads((out / "sweep.json").read_text()) if (out / "sweep.json").is_file() else {}
    results = dict(done)
    # --curves selections, checked first: a misspelt name ends the command here, not after the synthesis and training.
    selections = {name: names.split(",") for name, _, names in (c.partition("=") for c in args.curves)}
    known = set(done) | {parse_run(text)[0] for text in args.run}
    for name, names in selections.items():
        if missing := [n for n in names if n not in known]:
            raise SystemExit(f"--curves {name}: {missing} are not runs of {out} nor of this command; name those")
    teacher = SD3Pipeline.from_pretrained(args.teacher)
    world, evaluator = read_toy_world(args.teacher), load_evaluator(demo.evaluator)
    if args.mismatch:  # the same prompts (and so the same latents), each with its mismatched caption
        prompts = out / "prompts.jsonl"
        write_mismatched_prompts(world, "train", args.synth_prompts, 0, args.mismatch, prompts, overwrite=True)
    else:
        prompts = write_prompts(world, "train", args.synth_prompts, 0, out / "prompts.txt", overwrite=True)
    run_synth(
        model=args.teacher,
        prompts=str(prompts),
        mismatch_column="mismatch" if args.mismatch else None,
        out=str(out / "synth"),
        num_steps=demo.synth_steps,
        cfg=demo.cfg,
        max_sequence_length=16,
        batch_size=32,
    )
    held_out = [s.caption() for s in sample_scenes(world, args.split, args.eval_prompts, 10)]
    measure = Measure(evaluator, args.split, held_out, demo.reference_images, 11)

    def probe_for(c) -> Callable[[Any], dict]:
        """The probe of a run: its student's architecture (the teacher's blocks, a subset or repeats, widened)."""
        arch = student_architecture(teacher.transformer_config, c.student)
        # The sampler is handed the params to sample, so the pipeline needs the architecture only.
        pipe = teacher if arch == teacher.transformer_config else teacher.with_transformer(arch, None)
        sampler = Sampler(pipe, held_out, list(range(len(held_out))), 16, demo.cfg)

        def probe(ema_params) -> dict:
            m = measure(sampler.few_step(ema_params, 1))
            return {"fd_1step": m["fd"], "alignment_1step": m["alignment"]}

        return probe

    for text in args.run:
        name, spec, overrides = parse_run(text)
        if name in done and (out / name / "student").is_dir():
            print(f"{name}: done earlier, kept")
            continue
        file, _, variant = spec.partition(":")
        c = load_config_file(ROOT / "configs" / f"{file}.py", variant or "toy")
        c.teacher, c.data = args.teacher, str(out / "synth")
        c.total_steps = c.checkpoint_every = args.steps
        c.eval_every = args.eval_every
        apply(c, overrides)
        workdir = out / name
        start = time.perf_counter()
        train_and_evaluate(c, workdir, evaluate=probe_for(c))
        seconds = time.perf_counter() - start  # training with its eval probes, as every run pays for them
        export_workdir(workdir, workdir / "student", ema=True, overwrite=True)
        rows = read_metrics(workdir)
        curve = [(r["step"], r["eval/fd_1step"], r["eval/alignment_1step"]) for r in rows if "eval/fd_1step" in r]
        acc = [(r["step"], r["d_acc"], r["logit_gap"]) for r in rows if "d_acc" in r]
        budget = dict(steps=c.total_steps, batch=c.batch_size, seconds=seconds)
        results[name] = dict(config=spec, overrides=overrides, curve=curve, d_acc=acc, **budget)
        print(
            json.dumps(
                {
                    "run": name,
                    "config": spec,
                    "overrides": overrides,
                    "seconds": round(seconds),
                    "fd": [round(x[1]) for x in curve],
                    "align": [round(x[2], 3) for x in curve],
                    "d_acc": [round(x[1], 2) for x in acc],
                }
            )
        )
        (out / "sweep.json").write_text(json.dumps(results, indent=1))  # after every run: partial results survive
        draw_curves(runs_of(out, list(results)), out / "curves.png", args.split)
    for name, names in selections.items():
        draw_curves(runs_of(out, names), out / f"curves_{name}.png", args.split)


def draw_curves(runs: dict[str, Path], path: Path, split: str) -> Path:
    """The training curves of `runs` (label -> run folder) in one picture, the probe's panels titled by its split."""
    panels = (
        ("eval/fd_1step", f"student 1-step FD, {split}-split prompts of their own draw (lower is better)"),
        ("eval/alignment_1step", f"student 1-step alignment, {split}-split prompts of their own draw"),
    )
    return training_curves(runs, {}, path, eval_panels=panels)


def runs_of(out: Path, names: list[str]) -> dict[str, Path]:
    """Runs `names` of OUT by name, those whose folders still exist (a run's folder may have been removed since)."""
    return {n: out / n for n in names if (out / n).is_dir()}


if __name__ == "__main__":
    main()
