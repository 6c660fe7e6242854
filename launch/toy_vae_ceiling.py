"""The toy VAE's ceiling on alignment: fresh renders of each split encoded to the posterior mean, decoded, and read
by the demo's evaluator beside the renders themselves. A teacher that drew every latent perfectly would score
about what the round trip scores (ladd_jax/toy/assets/README.md, "What limited it").

    python launch/toy_vae_ceiling.py [TEACHER_FOLDER] [PROMPTS_PER_SPLIT]
"""

from __future__ import annotations

import json
import sys

from ladd_jax.pipeline import SD3Pipeline
from ladd_jax.toy.components import read_toy_world
from ladd_jax.toy.demo import ASSETS, DemoConfig, Measure
from ladd_jax.toy.evaluator import accuracy, load_evaluator, render_scenes, scene_labels
from ladd_jax.toy.latent_features import encode_images
from ladd_jax.toy.world import sample_scenes


def main() -> None:
    folder = sys.argv[1] if len(sys.argv) > 1 else str(ASSETS / "teacher")
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    demo = DemoConfig()
    evaluator = load_evaluator(demo.evaluator)
    pipe, world = SD3Pipeline.from_pretrained(folder), read_toy_world(folder)
    for i, split in enumerate(("train", "test")):
        scenes = sample_scenes(world, split, n, 100 + i)
        truth = scene_labels(world, [s.canonical() for s in scenes])
        measure = Measure(evaluator, split, [s.caption() for s in scenes], demo.reference_images, 300 + i)
        renders = render_scenes(world, scenes, 7, "render")
        round_trip = pipe.decode(encode_images(pipe.vae_config, pipe.vae_params, renders)[0])
        for name, images in (("renders", renders), ("vae round trip", round_trip)):
            result = measure(images)
            result["attributes"] = accuracy(evaluator.run(images)[1], truth)
            print(split, name, json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
