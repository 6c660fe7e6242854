"""Do the few-step rows depend on the sampler or on the schedule? The teacher and students at 1, 2 and 4 steps, each
with LADD's re-noising sampler (x0 estimate, then fresh noise to the next time; what the demo's rows use) and
with the deterministic one (an Euler step of the flow ODE to the next time: re-noising with the noise the model
implies, which is how diffusers samples SD3-Turbo), on the student's timesteps (1, 1 - 1/n, ...) as they are and
warped by SD3's shift (`student_timesteps(n, shift)`: 4 steps (1, 0.9, 0.75, 0.5) at shift 3).

    python launch/toy_student_schedules.py --student ladd=DEMO/student [--student NAME=DIR ...]
        [--student-cfg 1 2 ...] --out F.json

The demo's evaluation prompts and noise (256 per split, `ladd-jax demo`'s seed 0), the teacher with its CFG, the
students without (as the demo samples them) or at each `--student-cfg` scale; writes F.json (FD, alignment and
shape accuracy per row) and prints each row as it is measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from ladd_jax.errors import LaddError
from ladd_jax.flow import sample_euler, sample_student, student_timesteps
from ladd_jax.toy.demo import ASSETS, DemoConfig, Sampler, load_ladd_config
from ladd_jax.toy.evaluate import load_study, measured_rows_setup

SAMPLERS = ("re-noising", "euler")


def sample(sampler: Sampler, params, guidance: float, timesteps: tuple[float, ...], how: str) -> np.ndarray:
    """Images from the sampler's noise: LADD's re-noising sampler, or Euler on the same times (then to 0)."""
    x0 = sampler.denoiser(params, guidance)
    if how == "re-noising":
        latents = sample_student(x0, sampler.noise, timesteps, jax.random.key(0))
    else:  # the velocity that gives this x0 estimate: v = (x - x0) / t
        latents = sample_euler(lambda x, t: (x - x0(x, t)) / t[:, None, None, None], sampler.noise, [*timesteps, 0.0])
    return sampler.pipe.decode(latents)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--student", action="append", required=True, help="NAME=FOLDER (an exported student)")
    ap.add_argument("--teacher", default=str(ASSETS / "teacher"))
    ap.add_argument("--shift", type=float, default=3.0, help="the warped schedule's shift (SD3's: 3)")
    ap.add_argument(
        "--student-cfg",
        type=float,
        nargs="+",
        default=[1.0],
        help="the students' CFG scales, each its own rows (default 1: none, as LADD students are sampled)",
    )
    ap.add_argument("--out", required=True, help="a .json file")
    args = ap.parse_args()
    out = Path(args.out)
    if not out.parent.is_dir():  # before minutes of sampling, not after
        ap.error(f"--out {out}: its folder {out.parent} does not exist; create it or choose another file")
    try:
        teacher, world, evaluator, students = load_study(args.student, args.teacher)
    except LaddError as e:
        ap.error(str(e))
    demo, msl = DemoConfig(), load_ladd_config("toy").max_sequence_length
    models = [("teacher", teacher.transformer_params, demo.cfg)]
    models += [(name, params, guidance) for name, params in students.items() for guidance in args.student_cfg]
    rows = []
    for split, sampler, measure in measured_rows_setup(teacher, world, evaluator, demo, msl):
        plan = [(m, 1, None, SAMPLERS[0]) for m in models]  # one step: the same for every schedule and sampler
        plan += [(m, n, s, h) for m in models for n in (2, 4) for s in (None, args.shift) for h in SAMPLERS]
        for (model, params, guidance), steps, shift, how in plan:
            timesteps = student_timesteps(steps, shift)
            m = measure(sample(sampler, params, guidance, timesteps, how))
            row = dict(split=split, model=model, steps=steps, cfg=guidance, timesteps=timesteps, sampler=how)
            row.update(fd=m["fd"], alignment=m["alignment"], shape=m["attributes"]["shape"])
            print(json.dumps(row), flush=True)
            rows.append(row)
    out.write_text(json.dumps(dict(shift=args.shift, rows=rows), indent=1) + "\n")


if __name__ == "__main__":
    main()
