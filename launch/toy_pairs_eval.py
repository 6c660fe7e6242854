"""Can a 1-step student draw the teacher's shapes at all? Measure students on the very ODE pairs they trained on.

A student regressed on a few synthetic latents (`python launch/toy_ladd_sweep.py --synth-prompts 64 --split train
--run NAME@d2g:toy-mse=...`: each stored noise z mapped to the teacher's latent for it) is measured here on those
same pairs: its 1-step sample x0 = z - v(z, 1) from each stored z, decoded and read by the evaluator, beside the
teacher's own latents (the ceiling) and beside the same student from fresh noise for the same prompts (what it
learnt beyond the pairs). If it draws the pairs' shapes, one pass of this architecture can draw them, and the
1-step limit measured elsewhere is one of learning (data, budget, objective); if it cannot even for pairs it has
fitted for hundreds of epochs, the limit is the architecture's.

    python launch/toy_pairs_eval.py --data SWEEP/synth --student mse=SWEEP/mse/student [--student ...] --out F.json
        [--pairs N]  # the first N pairs only (a student fitted to thousands: its fresh-noise row at a comparable N)

Writes F.json (FD, alignment, shape, colour, count per row; the students' MSE to the stored latents) and F.png
(the first GRID_PROMPTS pairs, one per line: the teacher's latent, each student from the stored and from fresh
noise, and the teacher's own sample from the fresh noise).
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from ladd_jax.data.records import iter_records, read_manifest
from ladd_jax.toy.demo import ASSETS, DemoConfig, Measure, load_ladd_config
from ladd_jax.toy.evaluate import load_student, parse_students
from ladd_jax.toy.report import labelled_grid

FRESH_SEED = 10_000  # seeds of the fresh noise: far from synth's record seeds
GRID_PROMPTS = 8


def summary(m: dict, mse: float | None = None) -> dict:
    a = m["attributes"]
    row = dict(fd=m["fd"], alignment=m["alignment"], shape=a["shape"], colour=a["color"], count=a["count"])
    return dict(row, mse_to_teacher=mse) if mse is not None else row


def main() -> None:
    from ladd_jax.pipeline import SD3Pipeline
    from ladd_jax.toy.evaluator import load_evaluator

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="the synth folder the students trained on")
    ap.add_argument("--student", action="append", required=True, help="NAME=FOLDER (an exported student)")
    ap.add_argument("--teacher", default=str(ASSETS / "teacher"))
    ap.add_argument("--out", required=True, help="a .json file")
    ap.add_argument("--pairs", type=int, default=None, help="measure the first N pairs only (default: all)")
    args = ap.parse_args()
    if args.pairs is not None and args.pairs < 1:
        ap.error(f"--pairs {args.pairs}: give a positive number of pairs, or leave it out to measure all")
    demo, msl = DemoConfig(), load_ladd_config("toy").max_sequence_length
    teacher = SD3Pipeline.from_pretrained(args.teacher)
    fitted = read_manifest(args.data)["num_records"]
    records = list(itertools.islice(iter_records(args.data), args.pairs))
    prompts = [r["prompt"] for r in records]
    stored = jnp.asarray(np.stack([r["noise"] for r in records]).astype(np.float32))
    latents = np.stack([r["latent"] for r in records]).astype(np.float32)
    h, w = (s * teacher.vae_scale_factor for s in latents.shape[1:3])
    fresh = teacher.initial_latents(len(records), h, w, seed=[FRESH_SEED + i for i in range(len(records))])
    embeds, _, pooled, _ = teacher.encode_prompt(prompts, max_sequence_length=msl)
    ones = jnp.ones(len(records))
    measure = Measure(load_evaluator(demo.evaluator), "train", prompts, demo.reference_images, 11)
    targets = teacher.decode(latents)
    demo_sampling = dict(num_inference_steps=demo.synth_steps, guidance_scale=demo.cfg, max_sequence_length=msl)
    teacher_fresh = teacher(prompts, latents=fresh, **demo_sampling)
    result = dict(
        pairs=len(records),
        fitted_pairs=fitted,
        grid_prompts=prompts[:GRID_PROMPTS],
        teacher_latents=summary(measure(targets)),
        teacher_fresh_noise=summary(measure(teacher_fresh)),
    )
    print("the teacher's latents (the pairs' targets):", json.dumps(result["teacher_latents"]))
    print("the teacher from the fresh noise:", json.dumps(result["teacher_fresh_noise"]))
    columns = [("the pair's target: the teacher's latent", targets)]
    for name, folder in parse_students(args.student).items():
        params = load_student(teacher, name, folder).transformer_params
        one_step = lambda z, p=params: z - teacher.velocity(z, ones, embeds, pooled, p)  # x0 = z - 1 * v(z, 1)
        on_pairs = np.asarray(one_step(stored))
        mse = float(np.mean(np.square(on_pairs - latents)))
        images = dict(stored=teacher.decode(on_pairs), fresh=teacher.decode(one_step(fresh)))
        result[name] = dict(
            stored_noise=summary(measure(images["stored"]), mse), fresh_noise=summary(measure(images["fresh"]))
        )
        print(name, json.dumps(result[name]))
        columns += [(f"{name}, 1 step, the pair's noise", images["stored"])]
        columns += [(f"{name}, 1 step, fresh noise", images["fresh"])]
    columns.append((f"teacher {demo.synth_steps} steps CFG {demo.cfg:g}, fresh noise", teacher_fresh))
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=1))
    lines = f"lines: the first {GRID_PROMPTS}" + ("" if len(records) < fitted else " pairs' prompts")
    which = f"{len(records)} of the {fitted}" if len(records) < fitted else f"{len(records)}"
    title = f"{which} ODE pairs the students were fitted to; {lines}"
    labelled_grid([(label, images[:GRID_PROMPTS]) for label, images in columns], title).save(out.with_suffix(".png"))


if __name__ == "__main__":
    main()
