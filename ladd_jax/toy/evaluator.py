"""The toy world's evaluator: a small CNN, trained by the project on rendered images, that reads a scene back.

It answers what an image alone can determine: how many objects there are, whether two objects lie one above
the other or side by side, and the shape, colour and size of each object, in reading order (the single object,
or the upper / left one first). That is a caption's `Scene.canonical()`, so "does the image show every attribute
its caption requests" is one comparison. Its penultimate layer is the feature space of the Frechet distance.

Training uses fresh renders of scenes from both splits (the evaluator is a measuring instrument: it must know
the held-out colour-shape pairs too); accuracy is measured on new renders (new scene draws and new jitter seeds).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from tqdm import tqdm

from ladd_jax.atomic import atomic_path
from ladd_jax.errors import LaddError
from ladd_jax.jsonfile import read_json
from ladd_jax.toy.world import SPLITS, Obj, Scene, ToyWorld, image_seeds, render, sample_scenes

DEFAULT_DIR = Path(__file__).resolve().parent / "assets" / "evaluator"
PARAMS_FILE = "params.msgpack"
CONFIG_FILE = "evaluator.json"
SLOTS = 2  # objects per scene at most
ATTRIBUTES = ("shape", "color", "size")
INFERENCE_BATCH = 256


@dataclasses.dataclass(frozen=True)
class EvaluatorConfig:
    patch: int = 2  # the stem: a linear embedding of non-overlapping patch x patch pixel blocks
    channels: tuple[int, ...] = (16, 32, 64, 64)  # 3x3 conv widths; the first keeps the stem's resolution, each
    # later one halves it (64 px -> stem 32 -> 32, 16, 8, 4 with the defaults)
    groups: int = 8  # GroupNorm after each conv: without it shape is learnt far slower (67% vs 92% in 1500 steps)
    hidden: int = 128  # size of the feature vector (the Frechet distance's space)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    # Generated images carry some pixel noise; trained on clean renders only, the evaluator misread a third of
    # the renders with noise of std 0.05. Alignment should ask "are the attributes there", not "is it clean".
    noise_std: float = 0.05
    pool_size: int = 32768  # rendered training images, half from each split's scenes
    eval_size: int = 1024  # fresh held-out renders per split for the reported accuracy
    seed: int = 0


class EvaluatorNet(nn.Module):
    """Images [B, S, S, 3] in [-1, 1] -> (features [B, hidden], logits of each label)."""

    config: EvaluatorConfig
    num_shapes: int
    num_colors: int
    num_sizes: int

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        p = self.config.patch
        x = nn.gelu(nn.Conv(self.config.channels[0], (p, p), strides=p, name="stem")(images))
        for i, width in enumerate(self.config.channels):
            x = nn.Conv(width, (3, 3), strides=1 if i == 0 else 2)(x)
            x = nn.gelu(nn.GroupNorm(num_groups=self.config.groups)(x))
        # Flattening (not pooling) keeps where things are: the reading order of two objects depends on it.
        x = x.reshape(x.shape[0], -1)
        features = nn.gelu(nn.Dense(self.config.hidden)(x))
        logits = {"count": nn.Dense(SLOTS, name="count")(features), "axis": nn.Dense(2, name="axis")(features)}
        for name, n in (("shape", self.num_shapes), ("color", self.num_colors), ("size", self.num_sizes)):
            logits[name] = nn.Dense(SLOTS * n, name=name)(features).reshape(-1, SLOTS, n)
        return features, logits


def make_net(world: ToyWorld, config: EvaluatorConfig) -> EvaluatorNet:
    return EvaluatorNet(config, len(world.shapes), len(world.colors), len(world.sizes))


def init_params(net: EvaluatorNet, world: ToyWorld, key: jax.Array) -> Any:
    return net.init(key, jnp.zeros((1, *world.shape, 3)))["params"]


def scene_labels(world: ToyWorld, scenes: list[Scene]) -> dict[str, np.ndarray]:
    """Integer labels of canonical scenes: count (objects - 1), axis (0 above, 1 left of), per-slot attributes.
    Slot 1 of a one-object scene is filled with 0 and masked out by count."""
    labels = {"count": np.zeros(len(scenes), np.int32), "axis": np.zeros(len(scenes), np.int32)}
    vocab = {"shape": world.shapes, "color": world.colors, "size": world.sizes}
    for name in ATTRIBUTES:
        labels[name] = np.zeros((len(scenes), SLOTS), np.int32)
    for i, scene in enumerate(scenes):
        scene = scene.canonical()
        labels["count"][i] = len(scene.objects) - 1
        labels["axis"][i] = 0 if scene.relation in (None, "above") else 1
        for k, obj in enumerate(scene.objects):
            for name in ATTRIBUTES:
                labels[name][i, k] = vocab[name].index(getattr(obj, name))
    return labels


def labels_to_scenes(world: ToyWorld, labels: dict[str, np.ndarray]) -> list[Scene]:
    """The inverse of `scene_labels`: canonical scenes."""
    scenes = []
    for i in range(len(labels["count"])):
        objects = tuple(
            Obj(
                shape=world.shapes[labels["shape"][i, k]],
                color=world.colors[labels["color"][i, k]],
                size=world.sizes[labels["size"][i, k]],
            )
            for k in range(labels["count"][i] + 1)
        )
        relation = None if len(objects) == 1 else ("above", "to the left of")[labels["axis"][i]]
        scenes.append(Scene(objects=objects, relation=relation))
    return scenes


def to_net_input(images: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] or floats in [0, 1] (what pipelines return) -> float32 in [-1, 1]."""
    images = np.asarray(images)
    x = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else np.clip(images, 0.0, 1.0)
    return (x * 2.0 - 1.0).astype(np.float32)


@functools.partial(jax.jit, static_argnums=0)
def _forward(net: EvaluatorNet, params: Any, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    features, logits = net.apply({"params": params}, x)
    return features, {name: jnp.argmax(v, axis=-1) for name, v in logits.items()}


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """A trained evaluator: the world it reads, its net's config and params (see `load_evaluator`)."""

    world: ToyWorld
    config: EvaluatorConfig
    params: Any

    def run(self, images: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(features float32 [N, hidden], predicted labels) of uint8 or [0, 1] float images [N, H, W, 3]."""
        images, (height, width) = np.asarray(images), self.world.shape
        if images.ndim != 4 or images.shape[1:] != (height, width, 3):
            raise LaddError(
                f"the evaluator reads images [N, {height}, {width}, 3], got {images.shape}; images of another size "
                "need the evaluator trained at it (`ladd-jax toy-evaluator --bucket HxW`)"
            )
        net = make_net(self.world, self.config)
        features, labels = [], []
        for i in range(0, len(images), INFERENCE_BATCH):
            chunk = to_net_input(images[i : i + INFERENCE_BATCH])
            n = len(chunk)
            # Every call sees one batch shape (one compilation): the last chunk is padded.
            chunk = np.pad(chunk, ((0, INFERENCE_BATCH - n), (0, 0), (0, 0), (0, 0)))
            f, y = _forward(net, self.params, chunk)
            features.append(np.asarray(f)[:n])
            labels.append({k: np.asarray(v)[:n] for k, v in y.items()})
        return np.concatenate(features), {k: np.concatenate([y[k] for y in labels]) for k in labels[0]}

    def predict(self, images: np.ndarray) -> list[Scene]:
        """The canonical scene each image shows."""
        return labels_to_scenes(self.world, self.run(images)[1])


def render_scenes(world: ToyWorld, scenes: list[Scene], seed: int, desc: str) -> np.ndarray:
    seeds = image_seeds(seed, len(scenes))
    return np.stack([render(world, scenes[i], int(seeds[i])) for i in tqdm(range(len(scenes)), desc=desc, leave=False)])


def _mixed_scenes(world: ToyWorld, num: int, seed: int) -> list[Scene]:
    """Scenes of both splits, half each, interleaved."""
    train, test = (sample_scenes(world, split, (num + 1) // 2, seed) for split in SPLITS)
    return [sc for pair in zip(train, test, strict=True) for sc in pair][:num]


def accuracy(predicted: dict[str, np.ndarray], true: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Per-image all-attributes accuracy ("all", and over the one- and two-object scenes alone: "one_object",
    "two_objects"; None where there are none) and per-attribute accuracy over the labels that apply."""
    two = true["count"] == 1
    count_ok = predicted["count"] == true["count"]
    axis_ok = ~two | (predicted["axis"] == true["axis"])
    result = {"count": count_ok.mean(), "axis": axis_ok[two].mean() if two.any() else 1.0}
    slot_applies = np.stack([np.ones_like(two), two], axis=1)
    all_ok = count_ok & axis_ok
    for name in ATTRIBUTES:
        ok = predicted[name] == true[name]
        result[name] = ok[slot_applies].mean()
        all_ok &= (ok | ~slot_applies).all(axis=1)
    result["all"] = all_ok.mean()
    result["one_object"] = all_ok[~two].mean() if (~two).any() else None
    result["two_objects"] = all_ok[two].mean() if two.any() else None
    return {k: None if v is None else float(v) for k, v in result.items()}


def shape_accuracy_by(
    predicted: dict[str, np.ndarray], true: dict[str, np.ndarray], world: ToyWorld
) -> dict[str, float | None]:
    """The share of objects drawn with the right shape, per shape and per size the prompt asks for ("cross",
    "small", ...; None where no object asks for it): which objects the shape errors fall on."""
    two = true["count"] == 1
    applies = np.stack([np.ones_like(two), two], axis=1)
    ok = (predicted["shape"] == true["shape"])[applies]
    result = {}
    for name, vocab in (("shape", world.shapes), ("size", world.sizes)):
        asked = true[name][applies]
        result.update({v: float(ok[asked == i].mean()) if (asked == i).any() else None for i, v in enumerate(vocab)})
    return result


def label_loss(logits: dict[str, jax.Array], labels: dict[str, jax.Array]) -> jax.Array:
    """Summed mean cross-entropy of the labels that apply (axis and slot 1 only for two-object scenes), for
    any net with `EvaluatorNet`'s logits layout (the toy latent feature net trains on it too)."""
    ce = optax.softmax_cross_entropy_with_integer_labels
    two = (labels["count"] == 1).astype(jnp.float32)
    loss = ce(logits["count"], labels["count"]).mean() + (ce(logits["axis"], labels["axis"]) * two).mean()
    slot_weight = jnp.stack([jnp.ones_like(two), two], axis=1)
    for name in ATTRIBUTES:
        loss += (ce(logits[name], labels[name]) * slot_weight).sum(axis=1).mean()
    return loss


def _loss(net: EvaluatorNet, params: Any, x: jax.Array, labels: dict[str, jax.Array]) -> jax.Array:
    return label_loss(net.apply({"params": params}, x)[1], labels)


def add_pixel_noise(x: jax.Array, key: jax.Array, max_std: float) -> jax.Array:
    """Gaussian noise of a random strength in [0, max_std] (in [0, 1] pixel units) on each image in [-1, 1]."""
    std_key, noise_key = jax.random.split(key)
    std = jax.random.uniform(std_key, (x.shape[0], 1, 1, 1), maxval=max_std) * 2.0  # [-1, 1] spans 2x [0, 1]
    return jnp.clip(x + std * jax.random.normal(noise_key, x.shape), -1.0, 1.0)


def train_evaluator(
    world: ToyWorld,
    out_dir: str | Path,
    train: TrainConfig = TrainConfig(),
    config: EvaluatorConfig = EvaluatorConfig(),
    overwrite: bool = False,
) -> dict[str, Any]:
    """Trains the evaluator, measures it on fresh renders, writes params + JSON to `out_dir`; returns the report."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    with atomic_path(out_dir, overwrite=overwrite) as tmp:
        pool_scenes = _mixed_scenes(world, train.pool_size, train.seed)
        pool = render_scenes(world, pool_scenes, train.seed, "render training images")
        pool_labels = scene_labels(world, pool_scenes)

        net = make_net(world, config)
        init_key, noise_key = jax.random.split(jax.random.key(train.seed))
        params = init_params(net, world, init_key)
        warmup = min(train.warmup_steps, train.steps // 2)  # short runs (tests) warm up for half their steps
        schedule = optax.warmup_cosine_decay_schedule(0.0, train.learning_rate, warmup, train.steps)
        optimizer = optax.adamw(schedule, weight_decay=train.weight_decay)
        opt_state = optimizer.init(params)

        @jax.jit
        def step(params, opt_state, x, labels, key):
            x = add_pixel_noise(x, key, train.noise_std)
            loss, grads = jax.value_and_grad(functools.partial(_loss, net))(params, x, labels)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        rng = np.random.default_rng(train.seed)  # batch draws
        bar = tqdm(range(train.steps), desc="train evaluator")
        for i in bar:
            idx = rng.integers(len(pool), size=train.batch_size)
            batch_labels = {k: v[idx] for k, v in pool_labels.items()}
            x = to_net_input(pool[idx])
            params, opt_state, loss = step(params, opt_state, x, batch_labels, jax.random.fold_in(noise_key, i))
            bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
        train_seconds = time.perf_counter() - start

        evaluator = Evaluator(world, config, params)
        report = {"accuracy": measure_accuracy(evaluator, train.eval_size, seed=train.seed + 1)}
        report["train_seconds"] = train_seconds
        report["num_params"] = int(sum(np.size(p) for p in jax.tree.leaves(params)))
        save_evaluator(evaluator, tmp, report, train)
    return report


def measure_accuracy(evaluator: Evaluator, num: int, seed: int) -> dict[str, dict[str, float]]:
    """Accuracy on `num` new renders of each split's scenes (scene draws and jitter from `seed`)."""
    result = {}
    for split in SPLITS:
        scenes = sample_scenes(evaluator.world, split, num, seed)
        images = render_scenes(evaluator.world, scenes, seed, f"render {split} check images")
        predicted = evaluator.run(images)[1]
        result[split] = accuracy(predicted, scene_labels(evaluator.world, scenes))
    return result


def save_evaluator(evaluator: Evaluator, folder: Path, report: dict[str, Any], train: TrainConfig) -> None:
    (folder / PARAMS_FILE).write_bytes(serialization.to_bytes(evaluator.params))
    meta = {
        "world": evaluator.world.to_dict(),
        "net": dataclasses.asdict(evaluator.config),
        "train": dataclasses.asdict(train),
        "report": report,
    }
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def load_evaluator(folder: str | Path = DEFAULT_DIR) -> Evaluator:
    """The evaluator saved in `folder` (default: the one shipped with the project)."""
    folder = Path(folder)
    fix = "train one with `ladd-jax toy-evaluator --out DIR`"
    meta = read_json(folder / CONFIG_FILE, f"{folder} holds no {CONFIG_FILE}: not an evaluator folder; {fix}")
    world = ToyWorld.from_dict(meta["world"])
    config = EvaluatorConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["net"].items()})
    params_path = folder / PARAMS_FILE
    if not params_path.is_file():
        raise LaddError(f"{folder} holds no {PARAMS_FILE}; {fix}")
    net = make_net(world, config)
    template = jax.eval_shape(functools.partial(init_params, net, world), jax.random.key(0))
    try:
        params = serialization.from_bytes(template, params_path.read_bytes())
    except (ValueError, KeyError) as e:
        raise LaddError(f"{params_path} does not match {folder / CONFIG_FILE} ({e}); {fix}") from e
    return Evaluator(world, config, jax.tree.map(jnp.asarray, params))


def load_bucket_evaluator(folder: str | Path, world: ToyWorld) -> Evaluator:
    """The evaluator of `world` as drawn at its bucket: `folder` (the square world's) itself for the square world,
    else the folder beside it named for the bucket (evaluator_48x80 beside evaluator)."""
    folder = Path(folder)
    height, width = world.shape
    if world.bucket is not None:
        folder = folder.with_name(f"{folder.name}_{height}x{width}")
    fix = f"train it with `BUCKET={height}x{width} OUT={folder} bash launch/toy_evaluator.sh`"
    if not folder.is_dir():
        raise LaddError(f"no evaluator for {height}x{width} images at {folder}; {fix}")
    evaluator = load_evaluator(folder)
    if evaluator.world != world:
        raise LaddError(f"the evaluator {folder} reads another toy world than the one measured here; {fix}")
    return evaluator
