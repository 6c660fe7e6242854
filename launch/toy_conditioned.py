"""Stages 3-5 of launch/toy_conditioned.sh: a conditioned toy teacher (WORK/teacher) distilled with LADD and the
frozen-random-heads control, then both measured beside the teacher on held-out items of both splits.

    python launch/toy_conditioned.py --kind inpaint --work runs/toy_inpaint --out ladd_jax/toy/assets/inpaint

  3. 1024 train-split items (seed 1, none of the teacher's) -> their conditioning latents (`encode_real`) -> the
     teacher's samples, 20 steps CFG 3 (`run_synth` on the records folder: records carry the cond)
  4. LADD (configs/ladd.py:toy, config.conditioned) for `--steps` steps, the EMA student's 1-step samples of 128
     held-out test items measured every 25 steps (the curves), then the control (heads frozen at a random
     initialisation, output layers drawn at random: no adversarial game, everything else the same)
  5. toy/conditioned_eval.py on 256 items per split (seed 2): report.md, report.html, metrics.json, grids, curves
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import jax

from ladd_jax.toy.conditioned_eval import (
    CURVE_METRICS,
    CondEvalConfig,
    evaluate,
    item_sampler,
    make_probe,
    measure,
    read_items,
)
from ladd_jax.toy.demo import distil, load_ladd_config
from ladd_jax.toy.evaluate import ASSETS


def main() -> None:
    from ladd_jax.data.encode_real import encode_real
    from ladd_jax.data.synth import run_synth
    from ladd_jax.pipeline import SD3Pipeline
    from ladd_jax.toy.components import read_toy_world
    from ladd_jax.toy.evaluator import load_evaluator
    from ladd_jax.toy.items import WRITERS
    from ladd_jax.toy.metrics import reference_stats
    from ladd_jax.toy.report import Figure, training_curves

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=("inpaint", "edit"), required=True)
    ap.add_argument("--work", required=True, type=Path, help="holds teacher/ (stage 2); the runs are written here")
    ap.add_argument("--out", required=True, type=Path, help="the report folder")
    ap.add_argument("--steps", type=int, default=300, help="LADD iterations (300: the measured reports')")
    ap.add_argument("--synth-items", type=int, default=1024)
    args = ap.parse_args()
    work, kind = args.work, args.kind
    config = CondEvalConfig()
    teacher_dir = work / "teacher"
    world = read_toy_world(teacher_dir)
    write = WRITERS[kind]
    folders = {
        "distil": write(world, "train", args.synth_items, 1, work / "items_distil", overwrite=True),
        "curve": write(world, "test", 128, 3, work / "items_curve", overwrite=True),
        "train": write(world, "train", config.num_items, 2, work / "items_eval_train", overwrite=True),
        "test": write(world, "test", config.num_items, 2, work / "items_eval_test", overwrite=True),
    }
    teacher = SD3Pipeline.from_pretrained(teacher_dir)
    ladd = load_ladd_config("toy")
    msl = ladd.max_sequence_length

    print("3/5 the teacher's samples of the distillation items' conditioning")
    cond_dir = work / "cond_distil"
    encode_real(
        teacher_dir,
        folders["distil"] / "captions.jsonl",
        cond_dir,
        batch_size=64,
        max_sequence_length=msl,
        pipeline=teacher,
    )
    batch = max(1, 32 // jax.local_device_count())
    run_synth(
        model=str(teacher_dir),
        prompts=str(cond_dir),
        out=str(work / "synth"),
        num_steps=config.teacher_steps,
        cfg=config.cfg,
        max_sequence_length=msl,
        batch_size=batch,
        pipeline=teacher,
    )

    print("4/5 LADD and the control")
    evaluator = load_evaluator(ASSETS / "evaluator")
    curve_items = read_items(kind, folders["curve"], "test", 128)
    reference = reference_stats(evaluator, config.reference_images, config.seed + 1, split="test")
    probe = make_probe(kind, teacher, curve_items, evaluator, reference, config)
    ladd.teacher, ladd.data, ladd.conditioned = str(teacher_dir), str(work / "synth"), True
    ladd.total_steps, ladd.checkpoint_every, ladd.eval_every = args.steps, args.steps, 25
    runs = {"LADD": work / "train"}
    students = {"student": distil(ladd, runs["LADD"], work / "student", probe)}
    control = ladd.copy_and_resolve_references()
    control.disc.train, control.disc.output_init = False, "normal"
    runs["control (frozen random heads)"] = work / "control_train"
    students["control"] = distil(control, runs["control (frozen random heads)"], work / "control", probe)

    print("5/5 evaluation")
    sampler = item_sampler(kind, teacher, curve_items, config)
    teacher_row = measure(kind, curve_items, sampler.euler(config.teacher_steps, config.cfg), evaluator, reference)
    answer_row = measure(kind, curve_items, curve_items.answers, evaluator, reference)
    metrics = CURVE_METRICS[kind]
    references = {
        f"eval/{k}_1step": [(f"teacher {config.teacher_steps} steps", teacher_row[k]), ("answer", answer_row[k])]
        for k in metrics
    }
    titles = {"fd": "FD of the fill (lower is better)", "success": "edit success", "alignment": "alignment"}
    panels = tuple((f"eval/{k}_1step", f"student 1-step {titles[k]}, 128 held-out test items") for k in metrics)
    args.out.mkdir(parents=True, exist_ok=True)
    curves = training_curves(runs, references, args.out / "curves.png", panels)
    extra = dict(
        runs={k: str(v.resolve()) for k, v in runs.items()},
        ladd_steps=args.steps,
        curve_references=dict(teacher=teacher_row, answer=answer_row),
        eval=dataclasses.asdict(config),
    )
    caption = "training: D accuracy, logit gap, and the EMA student's 1-step samples of held-out test items"
    split_folders = {split: folders[split] for split in ("train", "test")}
    evaluate(kind, teacher_dir, students, split_folders, args.out, config, extra=(extra, [Figure(caption, curves)]))
    print(f"report: {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
