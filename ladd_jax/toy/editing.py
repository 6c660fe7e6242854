"""The toy world's instruction-editing data: (source render, instruction, edited render) triples from the grammar,
as an image folder `ladd-jax encode-real` reads (the edited render is the image, the instruction the prompt).

    recolour  "make the SHAPE COLOUR"        an object whose shape is unique in the scene takes another colour
    move      "move the SHAPE to the left"   a one-object scene's object moves by `move` of the image side
              (... "to the right", "up", "down"), where it stays inside the margins

The edited render keeps everything else of the source exactly (sizes, positions, colour jitter: world.place), so
the pixels an edit changes are known: `changed` marks them (every pixel where source and target differ), and
preservation is measured outside them. Split: "test" when the source or the target shows a held-out (colour,
shape) pair, so test edits ask for combinations the teacher never saw.

    python -m ladd_jax.toy.items --kind edit --world TEACHER_FOLDER --split train --num 8192 --out DIR
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ladd_jax.atomic import atomic_path
from ladd_jax.toy.world import Obj, Placed, Scene, ToyWorld, draw, image_seeds, place, sample_scenes, scene_split

# direction word -> (instruction suffix, unit displacement (dy, dx))
MOVES = {
    "left": ("to the left", (0.0, -1.0)),
    "right": ("to the right", (0.0, 1.0)),
    "up": ("up", (-1.0, 0.0)),
    "down": ("down", (1.0, 0.0)),
}
_EDIT_STREAM = 1 << 22  # keeps edit draws apart from the scene and render streams of the same seed


@dataclasses.dataclass(frozen=True)
class EditConfig:
    move: float = 0.25  # displacement of a move, fraction of the image side
    move_prob: float = 0.5  # a one-object scene is moved with this probability (else recoloured)


@dataclasses.dataclass(frozen=True)
class Edit:
    kind: str
    instruction: str
    source: Scene
    target: Scene
    source_placed: tuple[Placed, ...]
    target_placed: tuple[Placed, ...]


def _recolour(world: ToyWorld, scene: Scene, placed: list[Placed], rng: np.random.Generator) -> Edit | None:
    shapes = [o.shape for o in scene.objects]
    unique = [k for k, s in enumerate(shapes) if shapes.count(s) == 1]
    if not unique:
        return None  # "the circle" would not say which
    k = unique[rng.integers(len(unique))]
    old = scene.objects[k]
    color = [c for c in world.colors if c != old.color][rng.integers(len(world.colors) - 1)]
    new = Obj(shape=old.shape, color=color, size=old.size)
    objects = tuple(new if j == k else o for j, o in enumerate(scene.objects))
    target_placed = tuple(dataclasses.replace(p, obj=new) if j == k else p for j, p in enumerate(placed))
    target = Scene(objects=objects, relation=scene.relation)
    return Edit("recolour", f"make the {old.shape} {color}", scene, target, tuple(placed), target_placed)


def _move(world: ToyWorld, scene: Scene, placed: list[Placed], rng: np.random.Generator, move: float) -> Edit | None:
    (p,) = placed
    s, margin = world.image_size, world.margin * world.image_size
    for direction in rng.permutation(list(MOVES)):
        words, (dy, dx) = MOVES[direction]
        cy, cx = p.center[0] + dy * move * s, p.center[1] + dx * move * s
        if all(margin + p.r <= v <= s - margin - p.r for v in (cy, cx)):
            moved = (dataclasses.replace(p, center=(cy, cx)),)
            return Edit("move", f"move the {p.obj.shape} {words}", scene, scene, (p,), moved)
    return None


def sample_edits(world: ToyWorld, split: str, num: int, seed: int, config: EditConfig = EditConfig()) -> list[Edit]:
    """`num` edits of the split, drawn from the grammar (deterministic by seed)."""
    rng = np.random.default_rng([seed, _EDIT_STREAM])
    edits: list[Edit] = []
    draw_seed = 0
    while len(edits) < num:
        # Sources from both splits: a train source can become a test target and the other way round.
        source_split = "test" if rng.random() < 0.5 else "train"
        (scene,) = sample_scenes(world, source_split, 1, int(rng.integers(1 << 31)))
        placed = place(world, scene, int(image_seeds(seed, draw_seed + 1)[draw_seed]))
        draw_seed += 1
        moving = len(scene.objects) == 1 and rng.random() < config.move_prob
        edit = _move(world, scene, placed, rng, config.move) if moving else _recolour(world, scene, placed, rng)
        if edit is None:
            continue
        pair_split = "test" if "test" in (scene_split(world, edit.source), scene_split(world, edit.target)) else "train"
        if pair_split == split:
            edits.append(edit)
    return edits


def changed_pixels(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """float32 [S, S]: 1 where an edit changes the picture."""
    return (np.abs(source.astype(np.int16) - target.astype(np.int16)).max(axis=-1) > 0).astype(np.float32)


def write_editing_folder(
    world: ToyWorld, split: str, num: int, seed: int, out_dir: str | Path, overwrite: bool = False
) -> Path:
    """sources/, images/ (the edited renders) and changed/ PNGs and captions.jsonl, a line per edit:
    {"image", "source", "prompt" (the instruction), "caption" (the target's), "edit" (its kind), "changed"}."""
    from PIL import Image

    out_dir = Path(out_dir)
    edits = sample_edits(world, split, num, seed)
    with atomic_path(out_dir, overwrite=overwrite) as tmp:
        for sub in ("sources", "images", "changed"):
            (tmp / sub).mkdir()
        lines = []
        for i, edit in enumerate(tqdm(edits, desc=f"editing {split}", leave=False)):
            source, target = draw(world, edit.source_placed), draw(world, edit.target_placed)
            names = {sub: f"{sub}/{i:06d}.png" for sub in ("sources", "images", "changed")}
            Image.fromarray(source).save(tmp / names["sources"])
            Image.fromarray(target).save(tmp / names["images"])
            Image.fromarray((changed_pixels(source, target) * 255).astype(np.uint8)).save(tmp / names["changed"])
            item = dict(image=names["images"], source=names["sources"], prompt=edit.instruction)
            item |= dict(caption=edit.target.caption(), edit=edit.kind, changed=names["changed"])
            lines.append(json.dumps(item))
        (tmp / "captions.jsonl").write_text("".join(line + "\n" for line in lines))
    return out_dir
