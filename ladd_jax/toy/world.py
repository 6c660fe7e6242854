"""The toy world: a procedural captioned-image dataset of one or two coloured shapes, deterministic by seed.

Captions come from a small grammar,

    caption  := object | object " " relation " " object
    object   := "a " size " " colour " " shape
    relation := "above" | "below" | "to the left of" | "to the right of"

e.g. "a small red circle", "a large blue square above a small green triangle". Every word is drawn from the
`ToyWorld`'s vocabulary; `parse_caption` inverts `Scene.caption` and rejects anything else.

Splits hold out attribute combinations: a (colour, shape) pair listed in `ToyWorld.held_out` never occurs in a
"train" scene, and every "test" scene contains at least one such pair (by default red circles, green squares,
blue triangles and yellow crosses; every colour and every shape still occurs in train, only those pairings do
not). The two splits therefore share no scene and no caption.

Rendering draws each shape inside a square of half-extent r (r uniform within its size word's range, as a
fraction of the image's unit length), anti-aliased by supersampling, on a fixed background. Two-object scenes place
the objects apart along the relation's axis with a small offset across it, so the relation is never ambiguous.

The image is image_size pixels square, or of a multi-aspect bucket's size (height, width) (`ToyWorld.at_bucket`).
The unit length is sqrt(height * width), the pixel budget's side (the side itself for a square): an object keeps its
size in pixels across buckets, as in a multi-aspect model whose buckets share a pixel count. A scene too long for
its relation's axis (two large objects above each other in a 48-pixel-high image) is drawn at the largest unit
with which it fits, so the relation stays unambiguous and every object stays whole; in a square image of the
world's checked settings every scene fits at the full unit.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ladd_jax.atomic import atomic_path
from ladd_jax.errors import LaddError

SPLITS = ("train", "test")

# Where each relation puts the first-mentioned object: (axis of the separation, whether the first object comes
# first along it). Axis 0 is y (rows, downwards), axis 1 is x (columns, rightwards).
RELATION_GEOMETRY = {
    "above": (0, True),
    "below": (0, False),
    "to the left of": (1, True),
    "to the right of": (1, False),
}


SHAPES = ("circle", "square", "triangle", "cross")
SQUARE_HALF_SIDE = 0.8  # a square filling the whole box looks much bigger than a circle of the same r
TRIANGLE_BASE = 0.8
CROSS_ARM_HALF_WIDTH = 0.34
FIT_SLACK = 1e-9  # a scene drawn at exactly its tightest unit could get an empty range from float rounding
_RENDER_STREAM = 1 << 20  # keeps render seeds apart from sample_scenes' [seed, split index] streams


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points (u, v), in units of the half-extent r around the centre (v downwards), lie in the shape."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= SQUARE_HALF_SIDE
    if shape == "triangle":  # apex up at v = -1, base at v = TRIANGLE_BASE and as wide as the box
        return (v <= TRIANGLE_BASE) & (np.abs(u) <= (v + 1.0) / (TRIANGLE_BASE + 1.0))
    if shape == "cross":
        arm = CROSS_ARM_HALF_WIDTH
        inside = (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0)
        return inside & ((np.abs(u) <= arm) | (np.abs(v) <= arm))
    raise LaddError(f"unknown shape {shape!r}: the toy renderer draws {', '.join(SHAPES)}")


@dataclasses.dataclass(frozen=True)
class ToyWorld:
    """The grammar and the rendering settings, all as data (JSON-serialisable with `to_dict`)."""

    image_size: int = 64
    bucket: tuple[int, int] | None = None  # (height, width) of a multi-aspect bucket; None: image_size square
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow", "white")
    palette: tuple[tuple[int, int, int], ...] = (
        (220, 50, 50),
        (50, 180, 70),
        (60, 100, 235),
        (235, 205, 50),
        (240, 240, 240),
    )  # RGB of each colour, in the order of `colors`
    sizes: tuple[str, ...] = ("small", "large")
    size_ranges: tuple[tuple[float, float], ...] = ((0.08, 0.11), (0.16, 0.20))  # half-extent / image side
    relations: tuple[str, ...] = tuple(RELATION_GEOMETRY)
    held_out: tuple[tuple[str, str], ...] = (
        ("red", "circle"),
        ("green", "square"),
        ("blue", "triangle"),
        ("yellow", "cross"),
    )  # (colour, shape) pairs never in train; every test scene has at least one
    background: tuple[int, int, int] = (30, 32, 40)
    color_jitter: int = 12  # each channel of an object's colour moves by at most this much
    two_object_prob: float = 0.5
    margin: float = 0.03  # free border, fraction of the image side
    gap: float = 0.06  # least free space between two objects along the relation's axis
    cross_jitter: float = 0.06  # largest offset of each object across the relation's axis
    supersample: int = 4  # anti-aliasing: samples per pixel along each axis

    def __post_init__(self):
        if len(self.palette) != len(self.colors):
            raise LaddError(f"ToyWorld: {len(self.colors)} colours but {len(self.palette)} palette entries")
        if len(self.size_ranges) != len(self.sizes):
            raise LaddError(f"ToyWorld: {len(self.sizes)} sizes but {len(self.size_ranges)} size ranges")
        for shape in self.shapes:
            if shape not in SHAPES:
                raise LaddError(f"ToyWorld: unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
        for relation in self.relations:
            if relation not in RELATION_GEOMETRY:
                raise LaddError(f"ToyWorld: unknown relation {relation!r}; choose from {', '.join(RELATION_GEOMETRY)}")
        for color, shape in self.held_out:
            if color not in self.colors or shape not in self.shapes:
                raise LaddError(f"ToyWorld: held-out pair ({color!r}, {shape!r}) is not in the vocabulary")
        if len(self.held_out) >= len(self.colors) * len(self.shapes):
            raise LaddError("ToyWorld: every (colour, shape) pair is held out, so the train split would be empty")
        if self.bucket is not None and (len(self.bucket) != 2 or min(self.bucket) < 1):
            raise LaddError(f"ToyWorld: bucket {self.bucket} is not (height, width) in pixels, e.g. (48, 80)")
        largest = max(hi for _, hi in self.size_ranges)
        if 2 * self.margin + 4 * largest + self.gap > 1.0:
            raise LaddError("ToyWorld: two of the largest objects plus margins and gap do not fit in the image")
        if self.margin + largest + self.cross_jitter > 0.5:
            raise LaddError("ToyWorld: the largest object plus margin and cross jitter exceeds half the image")

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the images in pixels."""
        return tuple(self.bucket) if self.bucket is not None else (self.image_size, self.image_size)

    @property
    def unit(self) -> float:
        """The length that sizes, margins, gaps and jitter are fractions of: the pixel budget's side."""
        height, width = self.shape
        return float(np.sqrt(height * width))

    def at_bucket(self, bucket: tuple[int, int]) -> ToyWorld:
        """The same world drawn at a bucket's (height, width); (image_size, image_size) gives the square world."""
        bucket = (int(bucket[0]), int(bucket[1]))
        return dataclasses.replace(self, bucket=None if bucket == (self.image_size,) * 2 else bucket)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ToyWorld:
        """The inverse of `to_dict` (JSON turns tuples into lists; this turns them back)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise LaddError(f"ToyWorld: unknown fields {unknown}; the file was written by another version")
        return cls(**{k: _to_tuples(v) for k, v in d.items()})


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


@dataclasses.dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str

    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape}"


@dataclasses.dataclass(frozen=True)
class Scene:
    """One or two objects; with two, `relation` says where the first-mentioned one is relative to the second."""

    objects: tuple[Obj, ...]
    relation: str | None = None

    def caption(self) -> str:
        if len(self.objects) == 1:
            return self.objects[0].phrase()
        first, second = self.objects
        return f"{first.phrase()} {self.relation} {second.phrase()}"

    def canonical(self) -> Scene:
        """The same picture described with "above" or "to the left of" (what an image alone can determine)."""
        if len(self.objects) == 1:
            return self
        _, first_leads = RELATION_GEOMETRY[self.relation]
        if first_leads:
            return self
        inverse = {"below": "above", "to the right of": "to the left of"}[self.relation]
        return Scene(objects=self.objects[::-1], relation=inverse)


def is_held_out(world: ToyWorld, obj: Obj) -> bool:
    return (obj.color, obj.shape) in world.held_out


def scene_split(world: ToyWorld, scene: Scene) -> str:
    """ "test" when the scene shows a held-out (colour, shape) pair, else "train"."""
    return "test" if any(is_held_out(world, o) for o in scene.objects) else "train"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise LaddError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")


def _random_obj(world: ToyWorld, rng: np.random.Generator) -> Obj:
    return Obj(
        shape=world.shapes[rng.integers(len(world.shapes))],
        color=world.colors[rng.integers(len(world.colors))],
        size=world.sizes[rng.integers(len(world.sizes))],
    )


def sample_scenes(world: ToyWorld, split: str, num: int, seed: int) -> list[Scene]:
    """`num` scenes drawn uniformly from the split (rejection keeps each split's scenes equally likely)."""
    _check_split(split)
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    scenes = []
    while len(scenes) < num:
        if rng.random() < world.two_object_prob:
            objects = (_random_obj(world, rng), _random_obj(world, rng))
            relation = world.relations[rng.integers(len(world.relations))]
            scene = Scene(objects=objects, relation=relation)
        else:
            scene = Scene(objects=(_random_obj(world, rng),))
        if scene_split(world, scene) == split:
            scenes.append(scene)
    return scenes


def parse_caption(world: ToyWorld, caption: str) -> Scene:
    """The scene a caption describes (case and extra spaces ignored); LaddError on text outside the grammar."""
    words = " ".join(caption.lower().split())
    match = _caption_pattern(world).fullmatch(words)
    if match is None:
        raise LaddError(
            f"caption {caption!r} is outside the toy grammar: write 'a SIZE COLOUR SHAPE' optionally followed by "
            f"' RELATION a SIZE COLOUR SHAPE' with SIZE in {world.sizes}, COLOUR in {world.colors}, "
            f"SHAPE in {world.shapes}, RELATION in {world.relations}"
        )
    g = match.groups()
    first = Obj(size=g[0], color=g[1], shape=g[2])
    if g[3] is None:
        return Scene(objects=(first,))
    return Scene(objects=(first, Obj(size=g[4], color=g[5], shape=g[6])), relation=g[3])


def _caption_pattern(world: ToyWorld) -> re.Pattern:
    def alt(words: Sequence[str]) -> str:
        return "(" + "|".join(re.escape(w) for w in words) + ")"

    obj = f"a {alt(world.sizes)} {alt(world.colors)} {alt(world.shapes)}"
    return re.compile(f"{obj}(?: {alt(world.relations)} {obj})?")


def _scene_unit(world: ToyWorld, scene: Scene, fractions: list[float]) -> float:
    """The world's unit, or less where the scene would not fit with it (see the module's docstring)."""
    height, width = world.shape
    m, j = world.margin, world.cross_jitter
    fits = [world.unit] + [min(height, width) / (2 * (f + m)) for f in fractions]  # each object alone inside
    if len(scene.objects) == 2:
        axis, _ = RELATION_GEOMETRY[scene.relation]
        along, across = (height, width) if axis == 0 else (width, height)
        fits.append(along / (2 * sum(fractions) + world.gap + 2 * m))  # both apart by the gap, inside the margins
        fits.append(across / (2 * (max(fractions) + m + j)))  # the shared centre line's range is not empty
    return min(fits[0], min(fits[1:]) * (1 - FIT_SLACK))


def _layout(
    world: ToyWorld, scene: Scene, radii: list[float], unit: float, rng: np.random.Generator
) -> list[tuple[float, float]]:
    """Centres (y, x) in pixels for the scene's objects, all inside the image and the relation unambiguous."""
    height, width = world.shape
    margin = world.margin * unit
    if len(scene.objects) == 1:
        r = radii[0]
        return [(rng.uniform(r + margin, height - r - margin), rng.uniform(r + margin, width - r - margin))]
    axis, first_leads = RELATION_GEOMETRY[scene.relation]
    along_size, across_size = (height, width) if axis == 0 else (width, height)
    r_lead, r_trail = radii if first_leads else radii[::-1]
    # Along the axis: the leading object's centre, then the distance to the trailing one (at least touching + gap).
    lo, hi = r_lead + margin, along_size - r_trail - margin
    dist = rng.uniform(r_lead + r_trail + world.gap * unit, hi - lo)
    lead = rng.uniform(lo, hi - dist)
    along = [lead, lead + dist] if first_leads else [lead + dist, lead]
    # Across the axis: a shared centre line, each object moved off it by a little.
    jitter, r_max = world.cross_jitter * unit, max(radii)
    line = rng.uniform(r_max + margin + jitter, across_size - r_max - margin - jitter)
    across = [line + rng.uniform(-jitter, jitter) for _ in radii]
    return [(a, c) if axis == 0 else (c, a) for a, c in zip(along, across, strict=True)]


def _draw(canvas: np.ndarray, world: ToyWorld, shape: str, center: tuple[float, float], r: float, rgb: np.ndarray):
    """Blends one anti-aliased shape into `canvas` (float [H, W, 3]), touching only its bounding box."""
    (height, width), ss = world.shape, world.supersample
    cy, cx = center
    y0, y1 = max(int(np.floor(cy - r)) - 1, 0), min(int(np.ceil(cy + r)) + 1, height)
    x0, x1 = max(int(np.floor(cx - r)) - 1, 0), min(int(np.ceil(cx + r)) + 1, width)
    offsets = (np.arange(ss) + 0.5) / ss  # sample positions inside a pixel
    ys = (np.arange(y0, y1)[:, None] + offsets).reshape(-1)
    xs = (np.arange(x0, x1)[:, None] + offsets).reshape(-1)
    inside = shape_mask(shape, (xs[None, :] - cx) / r, (ys[:, None] - cy) / r)
    coverage = inside.reshape(y1 - y0, ss, x1 - x0, ss).mean(axis=(1, 3))[..., None]
    patch = canvas[y0:y1, x0:x1]
    canvas[y0:y1, x0:x1] = patch * (1.0 - coverage) + rgb * coverage


@dataclasses.dataclass(frozen=True)
class Placed:
    """An object as drawn: centre (y, x) and half-extent r in pixels, and its colour's jitter from the palette."""

    obj: Obj
    center: tuple[float, float]
    r: float
    jitter: tuple[int, int, int]

    def rgb(self, world: ToyWorld) -> np.ndarray:
        base = np.asarray(world.palette[world.colors.index(self.obj.color)], np.float64)
        return np.clip(base + np.asarray(self.jitter, np.float64), 0, 255)


def place(world: ToyWorld, scene: Scene, seed: int) -> list[Placed]:
    """The scene's objects with the sizes, positions and colour jitter `render(world, scene, seed)` draws."""
    rng = np.random.default_rng(seed)
    fractions = []
    for obj in scene.objects:
        lo, hi = world.size_ranges[world.sizes.index(obj.size)]
        fractions.append(rng.uniform(lo, hi))
    unit = _scene_unit(world, scene, fractions)
    radii = [f * unit for f in fractions]
    centers = _layout(world, scene, radii, unit, rng)
    placed = []
    for obj, center, r in zip(scene.objects, centers, radii, strict=True):
        jitter = tuple(int(j) for j in rng.integers(-world.color_jitter, world.color_jitter + 1, size=3))
        placed.append(Placed(obj, (float(center[0]), float(center[1])), float(r), jitter))
    return placed


def draw(world: ToyWorld, placed: Sequence[Placed]) -> np.ndarray:
    """uint8 [H, W, 3]: the placed objects, in order, on the background."""
    canvas = np.empty((*world.shape, 3), np.float64)
    canvas[...] = world.background
    for p in placed:
        _draw(canvas, world, p.obj.shape, p.center, p.r, p.rgb(world))
    return np.round(canvas).astype(np.uint8)


def render(world: ToyWorld, scene: Scene, seed: int) -> np.ndarray:
    """uint8 [H, W, 3] picture of the scene; the jitter of sizes, positions and colours depends only on `seed`."""
    return draw(world, place(world, scene, seed))


def image_seeds(seed: int, num: int) -> np.ndarray:
    """Per-image render seeds of a dataset, a stream independent of the scene draws of the same seed."""
    return np.random.SeedSequence([seed, _RENDER_STREAM]).generate_state(num, dtype=np.uint64)


def render_dataset(
    world: ToyWorld, split: str, num: int, seed: int, progress: bool = True
) -> tuple[np.ndarray, list[str], list[Scene]]:
    """(images uint8 [N, H, W, 3], captions, scenes) of `num` scenes of the split."""
    scenes = sample_scenes(world, split, num, seed)
    images = np.empty((num, *world.shape, 3), np.uint8)
    seeds = image_seeds(seed, num)
    for i in tqdm(range(num), desc=f"render {split}", disable=not progress, leave=False):
        images[i] = render(world, scenes[i], int(seeds[i]))
    return images, [sc.caption() for sc in scenes], scenes


def write_image_folder(
    world: ToyWorld, split: str, num: int, seed: int, out_dir: str | Path, overwrite: bool = False
) -> Path:
    """Writes images/000000.png ... and captions.jsonl ({"image": "images/000000.png", "prompt": ...} a line)."""
    from PIL import Image

    out_dir = Path(out_dir)
    with atomic_path(out_dir, overwrite=overwrite) as tmp:
        images, captions, _ = render_dataset(world, split, num, seed, progress=False)
        (tmp / "images").mkdir()
        lines = []
        for i in tqdm(range(num), desc=f"write {out_dir.name}", leave=False):
            name = f"images/{i:06d}.png"
            Image.fromarray(images[i]).save(tmp / name)
            lines.append(json.dumps({"image": name, "prompt": captions[i]}))
        (tmp / "captions.jsonl").write_text("".join(line + "\n" for line in lines))
    return out_dir


def write_prompts(world: ToyWorld, split: str, num: int, seed: int, path: str | Path, overwrite: bool = False) -> Path:
    """Writes `num` captions of the split to a text file, one a line (what `ladd-jax synth` reads)."""
    path = Path(path)
    captions = [scene.caption() for scene in sample_scenes(world, split, num, seed)]
    with atomic_path(path, overwrite=overwrite, is_dir=False) as tmp:
        tmp.write_text("".join(c + "\n" for c in captions))
    return path


def mismatched(world: ToyWorld, scene: Scene, attribute: str, rng: np.random.Generator) -> Scene:
    """`scene` with one object's `attribute` ("shape", "color" or "size") replaced by another of the world's, drawn
    from the changes that keep the scene's split: a caption that differs from the picture in one detail only (a
    hard misaligned pair)."""
    if attribute not in ("shape", "color", "size"):
        raise LaddError(f"attribute {attribute!r}: choose shape, color or size")
    split, candidates = scene_split(world, scene), []
    for index, obj in enumerate(scene.objects):
        for value in getattr(world, attribute + "s"):
            objects = list(scene.objects)
            objects[index] = dataclasses.replace(obj, **{attribute: value})
            changed = dataclasses.replace(scene, objects=tuple(objects))
            if value != getattr(obj, attribute) and scene_split(world, changed) == split:
                candidates.append(changed)
    if not candidates:
        raise LaddError(f"no change of one object's {attribute} keeps {scene.caption()!r} in the {split} split")
    return candidates[int(rng.integers(len(candidates)))]


def write_mismatched_prompts(
    world: ToyWorld,
    split: str,
    num: int,
    seed: int,
    attributes: Sequence[str],
    path: str | Path,
    overwrite: bool = False,
) -> Path:
    """`write_prompts`' captions as .jsonl, each with a "mismatch" caption (`mismatched`) that changes one of
    `attributes`, drawn per caption: the prompts file of `ladd-jax synth --prompt-column prompt --mismatch-column
    mismatch`."""
    if isinstance(attributes, str) or not attributes:
        raise LaddError(f"attributes={attributes!r}: give a non-empty list of attributes, e.g. ('shape', 'color')")
    path = Path(path)
    rng = np.random.default_rng([seed, len(SPLITS)])
    # The attribute draws have their own stream, so that one attribute gives the same captions as a list of it.
    pick = np.random.default_rng([seed, len(SPLITS), 1])
    lines = []
    for scene in sample_scenes(world, split, num, seed):
        attribute = attributes[int(pick.integers(len(attributes)))]
        mismatch = mismatched(world, scene, attribute, rng).caption()
        lines.append(json.dumps({"prompt": scene.caption(), "mismatch": mismatch}))
    with atomic_path(path, overwrite=overwrite, is_dir=False) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines))
    return path
