"""Measures toy teacher folders (e.g. checkpoints of a `ladd-jax pretrain` run exported along the way) the way the
demo does: full-step Euler samples with CFG on train- and test-split prompts, FD against real renders of each
split, alignment and the evaluator's per-attribute accuracy (count, relation axis, shape, colour, size), the toy
judge's score (DPO's preference signal), plus the 1-step sample. Writes OUT.json and OUT.png (the curves over
training steps).

    python launch/toy_teacher_eval.py --out runs/teacher_curve step0=ladd_jax/toy/assets/teacher 2000=runs/t2000 ...

Each folder argument is LABEL=FOLDER; labels that are integers are plotted as training steps (no plot without any).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from ladd_jax.toy.demo import DemoConfig, Measure, Sampler


def main() -> None:
    from ladd_jax.pipeline import SD3Pipeline
    from ladd_jax.toy.components import read_toy_world
    from ladd_jax.toy.evaluator import accuracy, load_evaluator, render_scenes, scene_labels
    from ladd_jax.toy.judge import score as judge_score
    from ladd_jax.toy.world import sample_scenes

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="OUT.json and OUT.png are written")
    ap.add_argument("--prompts", type=int, default=256, help="per split")
    ap.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the demo's)")
    ap.add_argument("--steps", type=int, default=None, help="Euler steps (default: the demo's synth_steps)")
    ap.add_argument("--series", default="", help="this run's name in the plot's legend")
    ap.add_argument(
        "--earlier",
        nargs=2,
        action="append",
        default=[],
        metavar=("JSON", "NAME"),
        help="an earlier run's OUT.json drawn beside this one (e.g. measured with another VAE decoder)",
    )
    ap.add_argument(
        "--extend",
        metavar="JSON",
        help="an earlier run's OUT.json (same --prompts, --steps, --cfg) whose entries this run's continue: "
        "OUT.json holds both, the plot draws them as one series",
    )
    ap.add_argument("folders", nargs="+", help="LABEL=FOLDER")
    args = ap.parse_args()
    demo = DemoConfig()
    demo = dataclasses.replace(
        demo,
        cfg=demo.cfg if args.cfg is None else args.cfg,
        synth_steps=demo.synth_steps if args.steps is None else args.steps,
    )
    evaluator = load_evaluator(demo.evaluator)
    results = json.loads(Path(args.extend).read_text()) if args.extend else {}
    setup = {}
    for item in args.folders:
        label, _, folder = item.partition("=")
        pipe = SD3Pipeline.from_pretrained(folder)
        world = read_toy_world(folder)
        results[label] = {}
        for i, split in enumerate(("train", "test")):
            scenes = sample_scenes(world, split, args.prompts, 100 + i)
            prompts = [s.caption() for s in scenes]
            if split not in setup:
                real = render_scenes(world, scenes, 200 + i, "real renders")
                measure = Measure(evaluator, split, prompts, demo.reference_images, 300 + i)
                setup[split] = (measure, measure(real))
            measure, floor = setup[split]
            sampler = Sampler(pipe, prompts, list(range(len(prompts))), 16, demo.cfg)
            images = sampler.euler(demo.synth_steps, demo.cfg)
            full = measure(images)
            truth = scene_labels(world, [s.canonical() for s in scenes])
            full["attributes"] = accuracy(evaluator.run(images)[1], truth)  # which attribute fails
            # The toy judge's verdict too (DPO's preference signal; independent of the evaluator).
            pixels = np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)
            judged = np.asarray([judge_score(world, im, p) for im, p in zip(pixels, prompts, strict=True)])
            full["judge_score"], full["judge_all"] = float(judged.mean()), float(np.mean(judged == 1.0))
            one = measure(sampler.few_step(pipe.transformer_params, 1, demo.cfg))
            results[label][split] = dict(full=full, one_step=one, real=floor)
        print(json.dumps({label: results[label]}))
    Path(args.out + ".json").write_text(json.dumps(results, indent=1))
    if any(k.lstrip("-").isdigit() for k in results):  # a curve needs labels that are training steps
        earlier = [(name, json.loads(Path(path).read_text())) for path, name in args.earlier]
        plot([*earlier, (args.series, results)], Path(args.out + ".png"), demo)


def plot(series: list[tuple[str, dict]], path: Path, demo: DemoConfig) -> None:
    """Alignment and FD over the labels that are training steps, one line per (series, split)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (name, results) in enumerate(series):
        steps = [k for k in results if k.lstrip("-").isdigit()]
        xs = [int(k) for k in steps]
        for split, style in (("train", "-"), ("test", "--")):
            label, color = f"{split}, {name}" if name else split, f"C{2 * i + (split == 'test')}"
            for ax, key in zip(axes, ("alignment", "fd"), strict=True):
                ys = [results[k][split]["full"][key] for k in steps]
                ax.plot(xs, ys, style, marker="o", color=color, label=label)
            axes[1].axhline(results[steps[0]][split]["real"]["fd"], ls=":", color="gray")
    axes[0].set_title(f"teacher alignment ({demo.synth_steps} steps, CFG {demo.cfg:g})", fontsize=9)
    axes[1].set_title("teacher FD (dotted: real-render floor)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("pretraining step (stage 2 counted after stage 1's 3000)", fontsize=8)
        ax.legend(fontsize=8)
    axes[1].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
