"""Trains the toy world's latent feature network: the features of `ladd_jax.models.latent_perceptual`'s distance.

A perceptual distance on latents needs a network that has learnt what matters in them. For the toy world that
is what a caption can ask for, so the net learns to read a scene straight from the teacher VAE's latents of a
render: the evaluator's labels (object count, relation axis, shape / colour / size per slot, `scene_labels`)
through a classifier head that only training uses. It is deliberately not the evaluator: another architecture,
input (latents, not pixels), seed and training set (train-split scenes only, like the student's data), so a
student trained against this distance is not graded by the instrument it was fitted to.

Latents are the VAE posterior's mean, scaled as the diffusion model sees them; a share `sample_prob` of each
batch are posterior draws instead, so features tolerate the small latent noise the student's outputs carry.
Accuracy is measured on fresh renders of train-split scenes (new scene draws and jitter), and a sanity check
compares the distance between two renders of the same scene (different jitter) with that between different
scenes, beside the MSE's same ratio.

    python -m ladd_jax.toy.latent_features --teacher ladd_jax/toy/assets/teacher --out DIR [--steps N]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from ladd_jax import arguments
from ladd_jax.atomic import check_writable_destination
from ladd_jax.convert.vae import load_vae
from ladd_jax.errors import LaddError
from ladd_jax.models.latent_perceptual import (
    AugmentConfig,
    LatentFeatureConfig,
    LatentFeatureNet,
    init_latent_features,
    perceptual_distance,
    save_latent_features,
)
from ladd_jax.models.vae import AutoencoderKL, VAEConfig, scale_latents
from ladd_jax.toy.components import read_toy_world
from ladd_jax.toy.evaluator import SLOTS, accuracy, label_loss, render_scenes, scene_labels
from ladd_jax.toy.vae import to_model_range
from ladd_jax.toy.world import ToyWorld, sample_scenes

BATCH = 256  # images per VAE / net call outside training (the last chunk is padded: one compilation per size)

# 16x16x16 latents -> 16, 8, 4 maps; 0.56M params (half of them the head's first Dense), ~0.06 s a step of 64
# on 2 CPU cores.
DEFAULT_NET = LatentFeatureConfig(channels=(32, 64, 128), blocks=2, groups=8, head_hidden=128, head_grid=4)


@dataclasses.dataclass(frozen=True)
class ClassifierTrainConfig:
    """What every toy feature net trained on the scene labels shares (this module's latent net and
    `ladd_jax.toy.pixel_features`' pixel net): AdamW with warmup and cosine decay, on random batches drawn from
    a pool of train-split renders, and the size of the fresh renders its accuracy is measured on."""

    steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    pool_size: int = 8192  # train-split renders, made once
    eval_size: int = 1024  # fresh renders for the held-out accuracy
    seed: int = 0

    POSITIVE: ClassVar[tuple[str, ...]] = ("steps", "batch_size", "pool_size", "eval_size")  # checked fields

    def __post_init__(self):
        for name in self.POSITIVE:
            if getattr(self, name) < 1:
                raise LaddError(f"{type(self).__name__}.{name} must be at least 1, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class FeatureTrainConfig(ClassifierTrainConfig):
    """How the toy latent feature net is trained; the defaults take about 4 minutes on 2 shared CPU cores."""

    steps: int = 2000  # the loss is near 0 by step 1500; 3000 steps: 99.6% all-correct held out, 2000: 99.4%
    pool_size: int = 8192  # train-split renders, encoded once (about a minute on 2 CPU cores)
    sample_prob: float = 0.5  # share of each batch that are posterior draws rather than the posterior mean
    check_size: int = 256  # scenes of the same-scene vs different-scene distance check
    check_draws: int = 4  # the check's augmentation draws (AugmentConfig's defaults)
    seed: int = 7  # the evaluator trains with seed 0

    POSITIVE: ClassVar[tuple[str, ...]] = (*ClassifierTrainConfig.POSITIVE, "check_size", "check_draws")

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.sample_prob <= 1.0:
            raise LaddError(f"FeatureTrainConfig.sample_prob must be in [0, 1], got {self.sample_prob}")


def label_heads(world: ToyWorld) -> dict[str, tuple[int, ...]]:
    """The logits' layout (the evaluator's): name -> shape per example; the head's outputs are their concatenation."""
    heads = {"count": (SLOTS,), "axis": (2,)}
    for name, vocab in (("shape", world.shapes), ("color", world.colors), ("size", world.sizes)):
        heads[name] = (SLOTS, len(vocab))
    return heads


def split_logits(world: ToyWorld, flat: jax.Array) -> dict[str, jax.Array]:
    """The head's [B, outputs] logits -> the evaluator's dict of per-label logits."""
    heads = label_heads(world)
    sizes = [math.prod(shape) for shape in heads.values()]
    parts = jnp.split(flat, np.cumsum(sizes)[:-1], axis=-1)
    return {name: p.reshape(-1, *shape) for (name, shape), p in zip(heads.items(), parts, strict=True)}


def head_outputs(world: ToyWorld) -> int:
    """The classifier head's width: every label's logits, concatenated (`label_heads`)."""
    return sum(math.prod(shape) for shape in label_heads(world).values())


def labels_of_logits(world: ToyWorld, flat: jax.Array) -> dict[str, jax.Array]:
    """The head's [B, outputs] logits -> the predicted labels (argmax), in `scene_labels`' layout."""
    return {name: jnp.argmax(v, axis=-1) for name, v in split_logits(world, flat).items()}


def train_split_renders(world: ToyWorld, num: int, seed: int, desc: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """uint8 renders [num, S, S, 3] of train-split scenes and their `scene_labels`: the held-out colour-shape
    pairs stay unseen, as they are by the student's data."""
    scenes = sample_scenes(world, "train", num, seed)
    return render_scenes(world, scenes, seed, desc), scene_labels(world, scenes)


def in_batches(fn: Callable[[np.ndarray], Any], x: np.ndarray, desc: str) -> Any:
    """fn over x in chunks of min(BATCH, len(x)), the last one padded; the outputs' leaves concatenated as numpy."""
    size, outs = min(BATCH, len(x)), []
    for i in tqdm(range(0, len(x), size), desc=desc, leave=False):
        chunk = x[i : i + size]
        n = len(chunk)
        chunk = np.pad(chunk, [(0, size - n)] + [(0, 0)] * (chunk.ndim - 1))
        outs.append(jax.tree.map(lambda a, n=n: np.asarray(a)[:n], fn(chunk)))
    return jax.tree.map(lambda *a: np.concatenate(a), *outs)


@functools.cache
def _encode_fn(vae_config: VAEConfig) -> Callable:
    model = AutoencoderKL(vae_config)

    def encode(params: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        mean, logvar = model.apply({"params": params}, to_model_range(images), method=AutoencoderKL.encode)
        return scale_latents(mean, vae_config), jnp.exp(0.5 * logvar) * vae_config.scaling_factor

    return jax.jit(encode)


def encode_images(vae_config: VAEConfig, vae_params: Any, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 renders [N, S, S, 3] -> (posterior mean, posterior std), both scaled as diffusion latents."""
    return in_batches(functools.partial(_encode_fn(vae_config), vae_params), images, "encode with the VAE")


@functools.cache
def _predict_fn(world: ToyWorld, config: LatentFeatureConfig) -> Callable:
    def predict(params: Any, latents: jax.Array) -> dict[str, jax.Array]:
        _, flat = LatentFeatureNet(config).apply({"params": params}, latents, method=LatentFeatureNet.classify)
        return labels_of_logits(world, flat)

    return jax.jit(predict)


def predict_labels(
    world: ToyWorld, config: LatentFeatureConfig, params: Any, latents: np.ndarray
) -> dict[str, np.ndarray]:
    """The classifier head's labels (argmax) of latents [N, h, w, C], in `scene_labels`' layout."""
    return in_batches(functools.partial(_predict_fn(world, config), params), latents, "classify latents")


def scene_distance_check(
    world: ToyWorld,
    vae_config: VAEConfig,
    vae_params: Any,
    config: LatentFeatureConfig,
    params: Any,
    num: int,
    seed: int,
    num_draws: int = 4,
) -> dict[str, float]:
    """Mean distance (perceptual and MSE) between the latents of two renders of one scene (different jitter) and
    between those of two different scenes; a useful distance makes the first clearly smaller than the second."""
    scenes = sample_scenes(world, "train", num, seed)
    first = encode_images(vae_config, vae_params, render_scenes(world, scenes, seed, "render check images"))[0]
    second = encode_images(vae_config, vae_params, render_scenes(world, scenes, seed + 1, "render check images"))[0]
    other = np.roll(second, 1, axis=0)  # scene i against scene i - 1's render
    key = jax.random.key(seed)
    distance = jax.jit(functools.partial(perceptual_distance, config, num_draws=num_draws, augment=AugmentConfig()))
    perceptual = {
        name: float(np.mean(distance(params, first, y, key))) for name, y in (("same", second), ("other", other))
    }
    mse = {name: float(np.mean(np.square(first - y))) for name, y in (("same", second), ("other", other))}
    return {
        "perceptual_same_scene": perceptual["same"],
        "perceptual_different_scenes": perceptual["other"],
        "perceptual_ratio": perceptual["same"] / perceptual["other"],
        "mse_same_scene": mse["same"],
        "mse_different_scenes": mse["other"],
        "mse_ratio": mse["same"] / mse["other"],
    }


def fit_label_classifier(
    world: ToyWorld,
    logits_fn: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    pool: Any,
    pool_labels: dict[str, np.ndarray],
    augment: Callable[[Any, jax.Array], jax.Array],
    cfg: ClassifierTrainConfig,
    key: jax.Array,
    desc: str,
) -> tuple[Any, dict[str, float]]:
    """Trains `params` to predict the scene labels with `label_loss`: each step draws a batch from `pool` (arrays,
    or a tuple of them, indexed alike along their first axis), makes the net's input with `augment(batch, key)`
    and the head's flat logits with `logits_fn(params, input)`. Both run inside the jitted step, so the pool can
    stay compact (uint8 pixels, latent mean and std) and the augmentation costs no host round trip. Returns the
    params and the loss at the first step and over the last 5% of steps."""
    warmup = min(cfg.warmup_steps, cfg.steps // 2)  # short runs (tests) warm up for half their steps
    optimizer = optax.adamw(
        optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, warmup, cfg.steps), weight_decay=cfg.weight_decay
    )
    opt_state = optimizer.init(params)

    def loss_fn(params: Any, x: jax.Array, labels: dict[str, jax.Array]) -> jax.Array:
        return label_loss(split_logits(world, logits_fn(params, x)), labels)

    @jax.jit
    def step(params, opt_state, batch, labels, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, augment(batch, key), labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    rng = np.random.default_rng(cfg.seed)  # batch draws
    losses = []
    bar = tqdm(range(cfg.steps), desc=desc)
    for i in bar:
        idx = rng.integers(len(pool_labels["count"]), size=cfg.batch_size)
        labels = {k: v[idx] for k, v in pool_labels.items()}
        batch = jax.tree.map(lambda a, idx=idx: a[idx], pool)
        params, opt_state, loss = step(params, opt_state, batch, labels, jax.random.fold_in(key, i))
        losses.append(float(loss))
        bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    return params, {"loss_first": losses[0], "loss_last": float(np.mean(losses[-max(1, cfg.steps // 20) :]))}


def train_latent_features(
    teacher_folder: str | Path,
    out_dir: str | Path,
    train_config: FeatureTrainConfig = FeatureTrainConfig(),
    net_config: LatentFeatureConfig = DEFAULT_NET,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Trains the latent feature net on the teacher folder's world and VAE, measures it, writes it to `out_dir`
    (`load_latent_features` reads it); returns the report (also in the folder's meta). `net_config`'s in_channels
    and head_outputs are set from the VAE and the world."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    check_writable_destination(out_dir, overwrite)  # before minutes of work
    cfg = train_config
    world = read_toy_world(teacher_folder)
    vae_config, vae_params = load_vae(Path(teacher_folder) / "vae")
    net_config = dataclasses.replace(
        net_config, in_channels=vae_config.latent_channels, head_outputs=head_outputs(world)
    )

    images, pool_labels = train_split_renders(world, cfg.pool_size, cfg.seed, "render training images")
    pool = encode_images(vae_config, vae_params, images)  # (posterior mean, posterior std)

    net = LatentFeatureNet(net_config)
    init_key, aug_key = jax.random.split(jax.random.key(cfg.seed))
    params = init_latent_features(net_config, init_key)

    def logits_fn(params: Any, latents: jax.Array) -> jax.Array:
        return net.apply({"params": params}, latents, method=LatentFeatureNet.classify)[1]

    # The batch's first examples get posterior draws: which ones does not matter, since batches are random draws
    # from the pool, and a fixed count spares a second random call (each costs seconds of compile on a CPU).
    draw = (np.arange(cfg.batch_size) < round(cfg.sample_prob * cfg.batch_size))[:, None, None, None]

    def augment(batch: tuple[jax.Array, jax.Array], key: jax.Array) -> jax.Array:
        mean, std = batch
        return jnp.where(draw, mean + std * jax.random.normal(key, mean.shape), mean)

    params, loss_stats = fit_label_classifier(
        world, logits_fn, params, pool, pool_labels, augment, cfg, aug_key, "train latent features"
    )
    train_seconds = time.perf_counter() - start

    eval_images, eval_labels = train_split_renders(world, cfg.eval_size, cfg.seed + 1, "render check images")
    predicted = predict_labels(world, net_config, params, encode_images(vae_config, vae_params, eval_images)[0])
    report = {
        "accuracy": accuracy(predicted, eval_labels),
        **loss_stats,
        "train_seconds": train_seconds,  # rendering and encoding the pool included
        "num_params": int(sum(np.size(p) for p in jax.tree.leaves(params))),
        "distance_check": scene_distance_check(
            world, vae_config, vae_params, net_config, params, cfg.check_size, cfg.seed + 2, cfg.check_draws
        ),
    }
    meta = {
        "teacher": str(teacher_folder),
        "world": world.to_dict(),
        "train": dataclasses.asdict(cfg),
        "report": report,
    }
    save_latent_features(out_dir, net_config, params, meta, overwrite=overwrite)
    return report


def run_trainer_cli(
    argv: Sequence[str] | None, module: str, description: str, out_help: str, config_type: type, train: Callable
) -> tuple[str, dict] | None:
    """The shared console entry of the toy feature-network trainers: `python -m MODULE --teacher DIR --out DIR
    [--steps N] [--seed S] [--overwrite]`; returns (the folder written, `train`'s report), or None after printing
    a LaddError's one line."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    p.add_argument("--teacher", required=True, help="a toy SD3 folder (its toy_world.json and vae/)")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--steps", type=int, default=config_type.steps, help="optimizer steps (default: %(default)s)")
    p.add_argument("--seed", type=arguments.seed, default=config_type.seed, help="(default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    args = p.parse_args(argv)
    try:
        config = config_type(steps=args.steps, seed=args.seed)
        return args.out, train(args.teacher, args.out, config, overwrite=args.overwrite)
    except LaddError as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ladd_jax.toy.latent_features --teacher DIR --out DIR [--steps N]`; returns the exit status (2
    with a one-line message on a LaddError, as `ladd-jax` does)."""
    module, description = "ladd_jax.toy.latent_features", __doc__.split("\n")[0]
    train = train_latent_features
    result = run_trainer_cli(argv, module, description, "the folder to write", FeatureTrainConfig, train)
    if result is None:
        return 2
    out, report = result
    print("held-out train-split renders: " + ", ".join(f"{k} {v:.2%}" for k, v in report["accuracy"].items()))
    check = report["distance_check"]
    print(
        f"same scene vs different scenes: perceptual {check['perceptual_same_scene']:.4f} vs "
        f"{check['perceptual_different_scenes']:.4f} (ratio {check['perceptual_ratio']:.3f}); "
        f"MSE {check['mse_same_scene']:.4f} vs {check['mse_different_scenes']:.4f} (ratio {check['mse_ratio']:.3f})"
    )
    print(f"wrote {out} ({report['num_params']:,} params, trained in {report['train_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
