"""A perceptual distance on VAE latents: LPIPS-style comparison of a small conv net's features, ensembled over
random augmentations (in the spirit of E-LatentLPIPS, Kang et al. 2024; this is the project's own code).

Why: a one-step student regressed onto the teacher's latents (Diffusion2GAN-style ODE pairs) learns blurry
averages under MSE, which weighs every latent element alike. Comparing unit-normalised features of a network
trained to read latents weighs what the network found informative (shapes, colours, layout) instead, without
decoding to pixels. A single network has blind spots the student can exploit (adversarial-example-like
residuals); averaging the distance over random translations, cutouts and flips, each applied identically to
both inputs, makes those blind spots move from draw to draw, so only genuine agreement scores zero everywhere.

    features   = LatentFeatureNet(config)(latents)        # one NHWC map per stage
    d(x, y)    = sum over stages of mean over locations of || f_x / |f_x| - f_y / |f_y| ||^2
    ensembled  = mean over `num_draws` augmentations a of d(a(x), a(y))

The per-location channel normalisation and the sum over channels are LPIPS with uniform channel weights.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import serialization

from ladd_jax.atomic import atomic_path
from ladd_jax.errors import LaddError
from ladd_jax.jsonfile import read_json

CONFIG_FILE = "latent_features.json"
PARAMS_FILE = "params.msgpack"
AUGMENT_NUMBERS = 5  # uniforms per sample and draw: the shift (2), the cutout's centre (2), the flip (1)
NORM_EPS = 1e-10  # inside the square root: a feature vector of zeros normalises to zeros with finite gradients
FOLDER_FIX = "write one with save_latent_features (the toy world's: `python -m ladd_jax.toy.latent_features`)"


@dataclasses.dataclass(frozen=True)
class LatentFeatureConfig:
    """The feature net's architecture.

    Stage i runs `blocks` x (3x3 conv -> GroupNorm -> SiLU) at `channels[i]` width; every stage after the first
    starts with a stride-2 conv, so a 16x16 latent gives 16, 8 and 4 maps with three stages. The optional
    classifier head (`head_outputs` > 0) exists only to train the features: it average-pools the last stage to
    a `head_grid` x `head_grid` grid (keeping coarse positions; its param shapes do not depend on the latent
    size), then Dense(head_hidden) -> SiLU -> Dense(head_outputs).
    """

    in_channels: int = 16
    channels: tuple[int, ...] = (64, 128, 256)
    blocks: int = 2
    groups: int = 8
    head_outputs: int = 0
    head_hidden: int = 128
    head_grid: int = 4

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(self.channels))
        problems = []
        if self.in_channels < 1:
            problems.append(f"in_channels must be >= 1, got {self.in_channels}")
        if not self.channels or min(self.channels) < 1:
            problems.append(f"channels must be a non-empty tuple of positive widths, got {self.channels}")
        if self.blocks < 1:
            problems.append(f"blocks must be >= 1, got {self.blocks}")
        if self.groups < 1 or any(c % self.groups for c in self.channels):
            problems.append(f"every width in channels {self.channels} must be a multiple of groups {self.groups}")
        if self.head_outputs < 0:
            problems.append(f"head_outputs must be >= 0 (0: no classifier head), got {self.head_outputs}")
        if self.head_hidden < 1 or self.head_grid < 1:
            problems.append(f"head_hidden and head_grid must be >= 1, got {self.head_hidden} and {self.head_grid}")
        if problems:
            raise LaddError("invalid LatentFeatureConfig: " + "; ".join(problems))

    @property
    def downscale(self) -> int:
        """Latent pixels per location of the last stage."""
        return 2 ** (len(self.channels) - 1)


class LatentFeatureNet(nn.Module):
    """Latents [B, h, w, in_channels] -> tuple of feature maps [B, h_i, w_i, channels[i]], one per stage.

    `method=LatentFeatureNet.classify` also runs the classifier head (training only); the distance calls the
    default method, which never touches the head's params.
    """

    config: LatentFeatureConfig

    def setup(self):
        cfg = self.config
        self.convs = [
            nn.Conv(width, (3, 3), strides=2 if i > 0 and b == 0 else 1, name=f"stage{i}_conv{b}")
            for i, width in enumerate(cfg.channels)
            for b in range(cfg.blocks)
        ]
        self.norms = [
            nn.GroupNorm(num_groups=cfg.groups, name=f"stage{i}_norm{b}")
            for i in range(len(cfg.channels))
            for b in range(cfg.blocks)
        ]
        if cfg.head_outputs:
            self.head_dense = nn.Dense(cfg.head_hidden, name="head_dense")
            self.head_out = nn.Dense(cfg.head_outputs, name="head_out")

    def __call__(self, latents: jax.Array) -> tuple[jax.Array, ...]:
        cfg = self.config
        if latents.ndim != 4 or latents.shape[-1] != cfg.in_channels:
            raise LaddError(f"LatentFeatureNet reads latents [B, h, w, {cfg.in_channels}], got {latents.shape}")
        x, features = latents, []
        for i in range(len(cfg.channels)):
            for b in range(cfg.blocks):
                k = i * cfg.blocks + b
                x = nn.silu(self.norms[k](self.convs[k](x)))
            features.append(x)
        return tuple(features)

    def classify(self, latents: jax.Array) -> tuple[tuple[jax.Array, ...], jax.Array]:
        """(feature maps, logits [B, head_outputs]); the head needs h and w divisible by head_grid * downscale."""
        cfg = self.config
        if not cfg.head_outputs:
            raise LaddError("this LatentFeatureNet has no classifier head: set head_outputs > 0 to train one")
        features = self(latents)
        last, g = features[-1], cfg.head_grid
        b, h, w, c = last.shape
        if h % g or w % g:
            raise LaddError(
                f"the classifier head pools to a {g}x{g} grid: latent sides must be multiples of "
                f"{g * cfg.downscale}, got {latents.shape[1:3]}"
            )
        pooled = last.reshape(b, g, h // g, g, w // g, c).mean(axis=(2, 4)).reshape(b, -1)
        return features, self.head_out(nn.silu(self.head_dense(pooled)))


def init_latent_features(config: LatentFeatureConfig, key: jax.Array) -> Any:
    """Random params (flax default initialisers), the classifier head's included when the config has one."""
    side = config.head_grid * config.downscale
    latents = jnp.zeros((1, side, side, config.in_channels), jnp.float32)
    method = LatentFeatureNet.classify if config.head_outputs else LatentFeatureNet.__call__
    # Jitted: eagerly, every initialiser call of another shape would compile on its own (seconds on a CPU).
    init = jax.jit(functools.partial(LatentFeatureNet(config).init, method=method))
    return init(key, latents)["params"]


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """The ensemble's random augmentations; each draw is applied identically to both compared inputs, per sample.

    translate: largest integer shift in latent pixels along each axis (0: off). The border is filled by
        reflection, not zeros: a latent of zeros is not what any image encodes to (a plain background has its
        own latent vector), so zero padding would put an edge into the net's input that it never saw in
        training; reflection keeps the border region looking like the latents around it.
    cutout: side of a randomly placed square set to 0 (the scaled latents' data mean), as a fraction of each
        latent side (0: off).
    flip: mirror left-right with probability 1/2. Legitimate because both inputs flip together; leave it off
        when the feature net was trained on data that is not mirror-symmetric and its features may not be.
    """

    translate: int = 2
    cutout: float = 0.25
    flip: bool = False

    def __post_init__(self):
        if self.translate < 0:
            raise LaddError(f"AugmentConfig.translate must be >= 0 latent pixels, got {self.translate}")
        if not 0.0 <= self.cutout < 1.0:
            raise LaddError(f"AugmentConfig.cutout must be a fraction of the side in [0, 1), got {self.cutout}")

    @property
    def enabled(self) -> bool:
        return self.translate > 0 or self.cutout > 0 or self.flip


NO_AUGMENT = AugmentConfig(translate=0, cutout=0.0, flip=False)


def _augment_sample(augment: AugmentConfig, u: jax.Array, z: jax.Array) -> jax.Array:
    """z [N, h, w, C] (the compared inputs of one sample) augmented alike, as uniforms u [AUGMENT_NUMBERS] say."""
    n, h, w, c = z.shape
    if augment.translate:
        t = augment.translate
        start = jnp.floor(u[:2] * (2 * t + 1)).astype(jnp.int32)  # shifts -t..t, uniformly
        padded = jnp.pad(z, ((0, 0), (t, t), (t, t), (0, 0)), mode="reflect")
        z = jax.lax.dynamic_slice(padded, (0, start[0], start[1], 0), (n, h, w, c))
    if augment.cutout:
        ch, cw = max(1, round(augment.cutout * h)), max(1, round(augment.cutout * w))
        centre = jnp.floor(u[2:4] * jnp.array([h, w])).astype(jnp.int32)  # uniform over the latent
        top, left = centre[0] - ch // 2, centre[1] - cw // 2
        rows = (jnp.arange(h) >= top) & (jnp.arange(h) < top + ch)
        cols = (jnp.arange(w) >= left) & (jnp.arange(w) < left + cw)
        z = jnp.where((rows[:, None] & cols[None, :])[None, :, :, None], 0.0, z)
    if augment.flip:
        z = jnp.where(u[4] < 0.5, z[:, :, ::-1], z)
    return z


def _stage_distance(config: LatentFeatureConfig, params: Any, x: jax.Array, y: jax.Array) -> jax.Array:
    """[B] distance of un-augmented inputs: one net call on [x; y], per-stage normalised squared differences."""
    features = LatentFeatureNet(config).apply({"params": params}, jnp.concatenate([x, y]))
    total = jnp.zeros(x.shape[0], jnp.float32)
    for f in features:
        f = f.astype(jnp.float32)
        f = f * jax.lax.rsqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True) + NORM_EPS)
        fx, fy = jnp.split(f, 2)
        total += jnp.mean(jnp.sum(jnp.square(fx - fy), axis=-1), axis=(1, 2))
    return total


def perceptual_distance(
    config: LatentFeatureConfig,
    params: Any,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    num_draws: int = 4,
    augment: AugmentConfig = AugmentConfig(),
) -> jax.Array:
    """Ensembled perceptual distance [B] between latents x and y [B, h, w, C] (see the module docstring).

    Each draw augments each sample independently, identically for its x and y; the same key (and batch size)
    gives the same number. With augmentation off every draw would be identical, so one is computed.
    Differentiable in both inputs: a regression loss passes `jax.lax.stop_gradient(target)` as y. jit- and
    vmap-friendly (config, num_draws and augment are static Python values).
    """
    if num_draws < 1:
        raise LaddError(f"num_draws must be >= 1, got {num_draws}")
    if x.shape != y.shape or x.ndim != 4:
        raise LaddError(f"perceptual_distance compares latents of one shape [B, h, w, C], got {x.shape} and {y.shape}")
    if augment.translate >= min(x.shape[1:3]):
        raise LaddError(f"AugmentConfig.translate {augment.translate} must be below the latent sides {x.shape[1:3]}")
    if not augment.enabled:
        return _stage_distance(config, params, x, y)

    def one_draw(u: jax.Array) -> jax.Array:
        pairs = jnp.stack([x, y], axis=1)  # [B, 2, h, w, C]: one draw per sample, shared by its x and y
        pairs = jax.vmap(functools.partial(_augment_sample, augment))(u, pairs)
        return _stage_distance(config, params, pairs[:, 0], pairs[:, 1])

    # One random call for every draw and sample: each call site of jax.random costs compile time.
    u = jax.random.uniform(key, (num_draws, x.shape[0], AUGMENT_NUMBERS))
    return jnp.mean(jax.vmap(one_draw)(u), axis=0)


def save_latent_features(
    folder: str | Path, config: LatentFeatureConfig, params: Any, meta: dict[str, Any], overwrite: bool = False
) -> Path:
    """Writes config + `meta` (JSON-serialisable: how it was trained, its report) and params, atomically."""
    folder = Path(folder)
    with atomic_path(folder, overwrite=overwrite) as tmp:
        (tmp / PARAMS_FILE).write_bytes(serialization.to_bytes(jax.device_get(params)))
        record = {"config": dataclasses.asdict(config), "meta": meta}
        (tmp / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return folder


def load_latent_features(folder: str | Path) -> tuple[LatentFeatureConfig, Any]:
    """(config, params) saved by `save_latent_features`; a LaddError naming the fix for anything else."""
    folder = Path(folder)
    missing = f"{folder} holds no {CONFIG_FILE}: not a latent feature folder; {FOLDER_FIX}"
    data = read_json(folder / CONFIG_FILE, missing)
    try:
        config = LatentFeatureConfig(**data["config"])
    except (KeyError, TypeError) as e:
        raise LaddError(f"{folder / CONFIG_FILE} does not describe a LatentFeatureConfig ({e}); {FOLDER_FIX}") from e
    params_path = folder / PARAMS_FILE
    if not params_path.is_file():
        raise LaddError(f"{folder} holds no {PARAMS_FILE}; {FOLDER_FIX}")
    template = jax.eval_shape(functools.partial(init_latent_features, config), jax.random.key(0))
    try:
        params = serialization.from_bytes(template, params_path.read_bytes())
    except (ValueError, KeyError) as e:
        raise LaddError(f"{params_path} does not match {folder / CONFIG_FILE} ({e}); {FOLDER_FIX}") from e
    expected = jax.tree.map(lambda a: a.shape, template)
    if jax.tree.map(jnp.shape, params) != expected:
        raise LaddError(f"{params_path} holds arrays of other shapes than {folder / CONFIG_FILE} says; {FOLDER_FIX}")
    return config, jax.tree.map(jnp.asarray, params)
