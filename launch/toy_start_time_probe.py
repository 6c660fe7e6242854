"""Is the teacher a better 1-step start when told a lower time than its input's? From pure noise (t = 1), each
model's x0 estimate with the time t' given to the network instead: x0 = noise - t' v(noise, t'). At t' = 1 the
teacher's estimate is E[x0 | prompt], the same blur for every noise (the student's initialisation); told t' < 1 it
reads structure into the noise. A start that already draws shapes is a better start for LADD (the regression
starts in assets/alignment/README.md), so this asks whether one is free.

    python launch/toy_start_time_probe.py --out F.json [--student NAME=DIR ...] [--times 1,0.95,0.9,0.8,0.7,0.6,0.5]

The demo's evaluation prompts and noise (256 per split, `ladd-jax demo`'s seed 0); the teacher without and with its
CFG, students without. Writes F.json (FD, alignment and shape accuracy per row) and prints each row.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax.numpy as jnp

from ladd_jax.errors import LaddError
from ladd_jax.toy.demo import DemoConfig, load_ladd_config
from ladd_jax.toy.evaluate import load_study, measured_rows_setup


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--student", action="append", default=[], help="NAME=FOLDER (an exported student)")
    ap.add_argument("--times", default="1,0.95,0.9,0.8,0.7,0.6,0.5", help="the times t' told to the network")
    ap.add_argument("--out", required=True, help="a .json file")
    args = ap.parse_args()
    out = Path(args.out)
    if not out.parent.is_dir():
        ap.error(f"--out {out}: its folder {out.parent} does not exist; create it or choose another file")
    try:
        times = [float(t) for t in args.times.split(",")]
    except ValueError:
        ap.error(f"--times {args.times!r}: give comma-separated numbers in (0, 1], e.g. 1,0.9,0.8")
    if not all(0.0 < t <= 1.0 for t in times):
        ap.error(f"--times {args.times!r}: every time must lie in (0, 1]")
    try:
        teacher, world, evaluator, students = load_study(args.student)
    except LaddError as e:
        ap.error(str(e))
    demo, msl = DemoConfig(), load_ladd_config("toy").max_sequence_length
    models = [("teacher", teacher.transformer_params, g) for g in (1.0, demo.cfg)]
    models += [(name, params, 1.0) for name, params in students.items()]
    rows = []
    for split, sampler, measure in measured_rows_setup(teacher, world, evaluator, demo, msl):
        for model, params, guidance in models:
            x0 = sampler.denoiser(params, guidance)
            for told in times:
                latents = x0(sampler.noise, jnp.full((len(sampler.prompts),), told, jnp.float32))
                m = measure(sampler.pipe.decode(latents))
                row = dict(split=split, model=model, cfg=guidance, time_told=told)
                row.update(fd=m["fd"], alignment=m["alignment"], shape=m["attributes"]["shape"])
                print(json.dumps(row), flush=True)
                rows.append(row)
    out.write_text(json.dumps(dict(rows=rows), indent=1) + "\n")


if __name__ == "__main__":
    main()
