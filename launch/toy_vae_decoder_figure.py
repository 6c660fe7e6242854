"""Two VAE decoders side by side on the same latents: train-split renders with crosses (the toy world's finest
shape), encoded once to the posterior mean and decoded by each folder's VAE (ladd_jax/toy/assets/vae_decoder.png).

    python launch/toy_vae_decoder_figure.py FIRST_FOLDER SECOND_FOLDER OUT.png
"""

from __future__ import annotations

import sys

import matplotlib
import numpy as np

from ladd_jax.pipeline import SD3Pipeline
from ladd_jax.toy.components import read_toy_world
from ladd_jax.toy.evaluator import render_scenes
from ladd_jax.toy.latent_features import encode_images
from ladd_jax.toy.world import sample_scenes

COLUMNS = 8


def main() -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first, second, out = sys.argv[1:4]
    a, b = SD3Pipeline.from_pretrained(first), SD3Pipeline.from_pretrained(second)
    world = read_toy_world(first)
    scenes = [s for s in sample_scenes(world, "train", 200, 11) if "cross" in s.caption()][:COLUMNS]
    renders = render_scenes(world, scenes, 7, "render")
    latents = encode_images(a.vae_config, a.vae_params, renders)[0]  # the encoders are the same
    rows = [("render", renders / 255.0), ("first decoder", a.decode(latents))]
    rows.append(("fine-tuned decoder", b.decode(latents)))
    fig, axes = plt.subplots(len(rows), len(scenes), figsize=(1.6 * len(scenes), 5.2))
    for r, (name, images) in enumerate(rows):
        for c, scene in enumerate(scenes):
            ax = axes[r, c]
            ax.imshow(np.clip(images[c], 0.0, 1.0))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=8)
            if r == 0:
                words = scene.caption().split()
                ax.set_title(" ".join(words[:4]) + "\n" + " ".join(words[4:]), fontsize=5.5)
    fig.suptitle("VAE round trip (posterior mean) of renders with crosses: the same latents, two decoders", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
