"""Where along its ODE does a toy teacher lose alignment? Starts the teacher's own sampler (the demo's Euler steps
and CFG) from real renders' latents noised to the k-th sigma of its schedule (SDEdit) instead of from pure noise,
and measures FD and alignment per start: what is lost starting at sigma_k is decided below sigma_k.

    python launch/toy_teacher_sdedit.py --out OUT.json [--prompts 256] [--teacher DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from ladd_jax.toy.demo import DemoConfig

BATCH = 64


def main() -> None:
    from ladd_jax.flow import flow_match_sigmas, sample_euler
    from ladd_jax.pipeline import SD3Pipeline
    from ladd_jax.toy.components import read_toy_world
    from ladd_jax.toy.evaluate import Measure
    from ladd_jax.toy.evaluator import load_evaluator, render_scenes
    from ladd_jax.toy.world import sample_scenes

    demo = DemoConfig()
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="OUT.json")
    ap.add_argument("--prompts", type=int, default=256, help="per split")
    ap.add_argument("--teacher", default=str(demo.teacher))
    ap.add_argument("--starts", default="0,2,4,6,8,10,12,14", help="indices k into the sampler's sigmas")
    args = ap.parse_args()
    pipe = SD3Pipeline.from_pretrained(args.teacher)
    world = read_toy_world(args.teacher)
    evaluator = load_evaluator(demo.evaluator)
    sigmas = flow_match_sigmas(demo.synth_steps, pipe.shift, pipe.num_train_timesteps)
    size = pipe.default_size
    results = {}
    for i, split in enumerate(("train", "test")):  # the seeds of launch/toy_teacher_eval.py: the same prompts
        scenes = sample_scenes(world, split, args.prompts, 100 + i)
        prompts = [s.caption() for s in scenes]
        real = render_scenes(world, scenes, 200 + i, "real renders").astype(np.float32) / 127.5 - 1
        measure = Measure(evaluator, split, prompts, demo.reference_images, 300 + i)
        x0 = jnp.concatenate([pipe.encode_images(real[j : j + BATCH]) for j in range(0, len(real), BATCH)])
        eps = pipe.initial_latents(len(prompts), size, size, seed=list(range(len(prompts))))
        embeds, neg, pooled, neg_pooled = pipe.encode_prompt(prompts, max_sequence_length=16)
        for k in (int(k) for k in args.starts.split(",")):
            s = float(sigmas[k])
            latents = []
            for j in range(0, len(prompts), BATCH):
                part = slice(j, j + BATCH)
                ctx = jnp.concatenate([neg[part], embeds[part]])  # [uncond; cond]: sample_euler's contract
                pool = jnp.concatenate([neg_pooled[part], pooled[part]])
                velocity = lambda x, t, ctx=ctx, pool=pool: pipe.velocity(x, t, ctx, pool)
                start = (1 - s) * x0[part] + s * eps[part]
                latents.append(sample_euler(velocity, start, sigmas[k:], demo.cfg))
            m = measure(pipe.decode(jnp.concatenate(latents)))
            results[f"{split}_{k}"] = dict(
                split=split, start=k, sigma=s, fd=m["fd"], alignment=m["alignment"], shape=m["attributes"]["shape"]
            )
            print(f"{split} start {k:2d} sigma {s:.3f}: FD {m['fd']:7.1f} alignment {m['alignment']:.3f}", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
