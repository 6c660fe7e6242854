"""The toy world's inpainting data: renders with a hole to fill, as an image folder `ladd-jax encode-real` reads.

Each item is a render of a split's scene, its caption (the whole scene, as SD inpainting prompts describe the
picture) and a mask: with probability `object_prob` a box over one of the scene's objects grown by a few pixels
(the model must redraw what the caption says is there), else a box anywhere (often background, sometimes part of
an object). Boxes lie on the VAE's latent grid (`cell` pixels), so the pixel hole and the latent mask coincide.

    python -m ladd_jax.toy.items --kind inpaint --world TEACHER_FOLDER --split train --num 8192 --out DIR
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ladd_jax.atomic import atomic_path
from ladd_jax.toy.world import Placed, ToyWorld, image_seeds, place, render, sample_scenes

_MASK_STREAM = 1 << 21  # keeps mask draws apart from the scene and render streams of the same seed


@dataclasses.dataclass(frozen=True)
class MaskConfig:
    cell: int = 4  # the toy VAE's downscale factor: boxes snap to its latent cells
    object_prob: float = 0.75  # a box over an object (else anywhere)
    grow: tuple[int, int] = (1, 6)  # pixels an object's box grows by on each side, uniform
    side: tuple[int, int] = (12, 32)  # sides of a box anywhere, pixels, uniform


def object_box(placed: Placed, grow: int) -> tuple[float, float, float, float]:
    """(y0, y1, x0, x1) of the object's square of half-extent r, grown by `grow` pixels."""
    (cy, cx), r = placed.center, placed.r + grow
    return cy - r, cy + r, cx - r, cx + r


def box_mask(size: int, box: tuple[float, float, float, float], cell: int) -> np.ndarray:
    """float32 [size, size]: 1 inside the box widened to whole latent cells, inside the image."""
    y0, y1, x0, x1 = box
    snap_lo = lambda v: int(np.clip(np.floor(v / cell) * cell, 0, size))
    snap_hi = lambda v: int(np.clip(np.ceil(v / cell) * cell, 0, size))
    mask = np.zeros((size, size), np.float32)
    mask[snap_lo(y0) : snap_hi(y1), snap_lo(x0) : snap_hi(x1)] = 1.0
    return mask


def draw_mask(world: ToyWorld, placed: list[Placed], rng: np.random.Generator, config: MaskConfig) -> np.ndarray:
    s = world.image_size
    if rng.random() < config.object_prob:
        target = placed[rng.integers(len(placed))]
        return box_mask(s, object_box(target, int(rng.integers(config.grow[0], config.grow[1] + 1))), config.cell)
    h, w = rng.integers(config.side[0], config.side[1] + 1, size=2)
    y0, x0 = rng.uniform(0, s - h), rng.uniform(0, s - w)
    return box_mask(s, (y0, y0 + h, x0, x0 + w), config.cell)


def inpainting_items(
    world: ToyWorld, split: str, num: int, seed: int, config: MaskConfig = MaskConfig()
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 [N, S, S, 3], masks float32 [N, S, S], captions) of `num` scenes of the split."""
    scenes = sample_scenes(world, split, num, seed)
    seeds = image_seeds(seed, num)
    rng = np.random.default_rng([seed, _MASK_STREAM])
    images = np.empty((num, world.image_size, world.image_size, 3), np.uint8)
    masks = np.empty((num, world.image_size, world.image_size), np.float32)
    for i in tqdm(range(num), desc=f"inpainting {split}", leave=False):
        images[i] = render(world, scenes[i], int(seeds[i]))
        masks[i] = draw_mask(world, place(world, scenes[i], int(seeds[i])), rng, config)
    return images, masks, [scene.caption() for scene in scenes]


def write_inpainting_folder(
    world: ToyWorld, split: str, num: int, seed: int, out_dir: str | Path, overwrite: bool = False
) -> Path:
    """images/ and masks/ PNGs and captions.jsonl ({"image", "prompt", "mask"} a line) for `ladd-jax encode-real`."""
    from PIL import Image

    out_dir = Path(out_dir)
    images, masks, captions = inpainting_items(world, split, num, seed)
    with atomic_path(out_dir, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        lines = []
        for i in tqdm(range(num), desc=f"write {out_dir.name}", leave=False):
            image, mask = f"images/{i:06d}.png", f"masks/{i:06d}.png"
            Image.fromarray(images[i]).save(tmp / image)
            Image.fromarray((masks[i] * 255).astype(np.uint8)).save(tmp / mask)
            lines.append(json.dumps({"image": image, "prompt": captions[i], "mask": mask}))
        (tmp / "captions.jsonl").write_text("".join(line + "\n" for line in lines))
    return out_dir
