"""Training an `AutoencoderKL` on images (the toy world's VAE): reconstruction + KL, AdamW, SD3-style scaling.

The loss per batch is mean reconstruction error (L1 or L2, on images in [-1, 1]) plus `kl_weight` times the
mean KL divergence per latent element from N(0, 1); the decoder sees a posterior sample (reparameterised), as
in the latent-diffusion autoencoders. `calibrate_latent_scale` then sets `shift_factor` and `scaling_factor`
the SD3 way, so that diffusion latents (z - shift) * scale have zero mean and unit std over the data.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Collection, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from ladd_jax.errors import LaddError
from ladd_jax.models.vae import AutoencoderKL, VAEConfig, init_vae, sample_latents

RECONSTRUCTION_LOSSES = {
    "l1": lambda x, y: jnp.mean(jnp.abs(x - y)),
    "l2": lambda x, y: jnp.mean(jnp.square(x - y)),
}
WARMUP_FRACTION = 0.05  # of the steps: linear warm-up, then cosine decay
FINAL_LR_FRACTION = 0.05  # the cosine ends at this fraction of the peak learning rate
WEIGHT_DECAY = 1e-4
POSTFIX_EVERY = 10  # steps between progress-bar loss updates (each one waits for the device)
EVAL_BATCH = 64


def decoder_modules(config: VAEConfig) -> tuple[str, ...]:
    """The top-level modules that map latents to images: what a decoder-only fine-tune trains."""
    return ("decoder", "post_quant_conv") if config.use_post_quant_conv else ("decoder",)


def to_model_range(images: np.ndarray | jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [-1, 1], the VAE's image range."""
    return jnp.asarray(images, jnp.float32) / 127.5 - 1.0


def _check_images(images: np.ndarray, config: VAEConfig, what: str = "images") -> None:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != config.in_channels:
        raise LaddError(
            f"{what} must be uint8 [N, H, W, {config.in_channels}] (NHWC), got {images.dtype} {images.shape}"
        )
    h, w = images.shape[1:3]
    if h % config.downscale or w % config.downscale or len(images) == 0:
        raise LaddError(
            f"{what} of {h}x{w} pixels: need at least one image whose sides are multiples of the VAE's "
            f"downscale factor {config.downscale}"
        )


def _random_batches(images: np.ndarray, batch: int, seed: int) -> Iterator[np.ndarray]:
    """Endless batches of `images`, each epoch a new permutation."""
    rng = np.random.default_rng(seed)
    order, pos = rng.permutation(len(images)), 0
    while True:
        if pos + batch > len(order):
            order, pos = order[pos:], 0
            while len(order) < batch:  # a batch may span epochs (or, with few images, several)
                order = np.concatenate([order, rng.permutation(len(images))])
        yield images[order[pos : pos + batch]]
        pos += batch


def _random_crops(images: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A size x size window of each image, at independent uniform positions."""
    n, h, w, _ = images.shape
    ys, xs = rng.integers(0, h - size + 1, n), rng.integers(0, w - size + 1, n)
    return np.stack([im[y : y + size, x : x + size] for im, y, x in zip(images, ys, xs, strict=True)])


def vae_loss(
    params: dict, config: VAEConfig, images: jax.Array, rng: jax.Array, kl_weight: float, loss: str = "l2"
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(total loss, {"loss", "recon", "kl"}) for images in [-1, 1]; KL per latent element, in nats."""
    model = AutoencoderKL(config)
    mean, logvar = model.apply({"params": params}, images, method=AutoencoderKL.encode)
    z = sample_latents(mean, logvar, rng)
    recon = model.apply({"params": params}, z, method=AutoencoderKL.decode)
    rec = RECONSTRUCTION_LOSSES[loss](recon, images)
    kl = 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    total = rec + kl_weight * kl
    return total, {"loss": total, "recon": rec, "kl": kl}


def make_optimizer(lr: float, steps: int) -> optax.GradientTransformation:
    """AdamW with a short linear warm-up and a cosine decay over `steps`."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=lr,
        warmup_steps=max(1, int(WARMUP_FRACTION * steps)),
        decay_steps=max(2, steps),
        end_value=lr * FINAL_LR_FRACTION,
    )
    return optax.adamw(schedule, weight_decay=WEIGHT_DECAY)


def train_vae(
    config: VAEConfig,
    images: np.ndarray | Iterable[np.ndarray],
    steps: int,
    batch: int,
    lr: float = 1e-3,
    kl_weight: float = 1e-4,
    seed: int = 0,
    progress: bool = True,
    loss: str = "l2",
    crop: int | None = None,
    init_params: dict | None = None,
    trainable: Collection[str] | None = None,
) -> dict:
    """Trains an `AutoencoderKL(config)` and returns its params; the progress bar shows the loss.

    `images`: uint8 NHWC, either one array (shuffled batches of `batch` are drawn from it, epoch by epoch) or
    an iterable of batches. `crop`: train on random crop x crop windows (a multiple of the downscale factor),
    which costs (crop / side)^2 of a full image; the convolutions see the same local statistics, so this suits
    VAEs without mid-block attention, whose receptive field is local anyway. `init_params` continues from given
    params instead of a fresh flax init. `trainable`: the top-level modules that train (e.g. `decoder_modules(config)`,
    which keep the encoder and so the latent space a diffusion model was trained on); None: all."""
    if steps < 1 or batch < 1:
        raise LaddError(f"steps and batch must be at least 1, got steps={steps}, batch={batch}")
    if loss not in RECONSTRUCTION_LOSSES:
        raise LaddError(f"unknown reconstruction loss {loss!r}; choose one of {sorted(RECONSTRUCTION_LOSSES)}")
    if kl_weight < 0 or lr <= 0:
        raise LaddError(f"need lr > 0 and kl_weight >= 0, got lr={lr}, kl_weight={kl_weight}")
    if crop is not None and (crop < 1 or crop % config.downscale):
        raise LaddError(f"crop must be a positive multiple of the VAE's downscale {config.downscale}, got {crop}")
    if isinstance(images, np.ndarray):
        _check_images(images, config)
        batches: Iterator[np.ndarray] = _random_batches(images, batch, seed)
    else:
        batches = iter(images)

    key, crop_rng = jax.random.key(seed), np.random.default_rng([seed, 1])
    if init_params is None:
        params = init_vae(config, jax.random.fold_in(key, 0))
    else:
        params = jax.tree.map(jnp.array, init_params)  # a copy: the step donates its params
    names = set(params) if trainable is None else set(trainable)
    if not names or names - set(params):
        raise LaddError(f"trainable must name some of the VAE's modules {sorted(params)}, got {sorted(names)}")
    train_params = {k: v for k, v in params.items() if k in names}
    frozen = {k: v for k, v in params.items() if k not in names}
    optimizer = make_optimizer(lr, steps)
    opt_state = optimizer.init(train_params)

    def loss_of(train_params, images, rng):  # gradients only for what trains: a frozen encoder costs no backward
        return vae_loss({**frozen, **train_params}, config, images, rng, kl_weight, loss)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(train_params, opt_state, images, rng):
        grads, metrics = jax.grad(loss_of, has_aux=True)(train_params, images, rng)
        updates, opt_state = optimizer.update(grads, opt_state, train_params)
        return optax.apply_updates(train_params, updates), opt_state, metrics

    bar = tqdm(range(steps), desc="train VAE", unit="step", disable=not progress)
    for step in bar:
        try:
            x = next(batches)
        except StopIteration:
            raise LaddError(f"the image iterator ran out after {step} of {steps} steps; give more batches") from None
        _check_images(x, config, "a batch of images")
        if crop is not None:
            if crop > min(x.shape[1:3]):
                raise LaddError(f"crop {crop} is larger than the {x.shape[1]}x{x.shape[2]} images")
            x = _random_crops(x, crop, crop_rng)
        train_params, opt_state, metrics = train_step(
            train_params, opt_state, to_model_range(x), jax.random.fold_in(key, step + 1)
        )
        if progress and (step % POSTFIX_EVERY == 0 or step == steps - 1):
            bar.set_postfix(loss=f"{float(metrics['loss']):.4f}", kl=f"{float(metrics['kl']):.2f}")
    return {**frozen, **train_params}


@functools.cache
def _encode_fn(config: VAEConfig):
    model = AutoencoderKL(config)
    return jax.jit(lambda p, x: model.apply({"params": p}, to_model_range(x), method=AutoencoderKL.encode))


@functools.cache
def _reconstruct_fn(config: VAEConfig):
    model = AutoencoderKL(config)
    return jax.jit(lambda p, x: jnp.clip(model.apply({"params": p}, to_model_range(x)) / 2 + 0.5, 0.0, 1.0))


def _in_batches(images: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    for i in range(0, len(images), batch):
        yield images[i : i + batch]


def calibrate_latent_scale(
    config: VAEConfig, params: dict, images: np.ndarray, seed: int = 0, batch: int = EVAL_BATCH
) -> VAEConfig:
    """`config` with shift_factor = mean and scaling_factor = 1 / std of posterior samples over `images` (one
    number each, over every latent element, as SD3's 0.0609 and 1.5305), so (z - shift) * scale has unit std."""
    _check_images(images, config)
    key, total, total_sq, count = jax.random.key(seed), 0.0, 0.0, 0
    for i, x in enumerate(_in_batches(images, batch)):
        mean, logvar = _encode_fn(config)(params, x)
        z = np.asarray(sample_latents(mean, logvar, jax.random.fold_in(key, i)), np.float64)
        total, total_sq, count = total + z.sum(), total_sq + np.square(z).sum(), count + z.size
    mu = total / count
    std = float(np.sqrt(max(total_sq / count - mu * mu, 0.0)))
    if not np.isfinite(std) or std == 0.0:
        raise LaddError("the VAE's latents have zero or non-finite spread; the VAE is not trained (or diverged)")
    return dataclasses.replace(config, shift_factor=float(mu), scaling_factor=1.0 / std)


def reconstruction_psnr(config: VAEConfig, params: dict, images: np.ndarray, batch: int = EVAL_BATCH) -> float:
    """Mean per-image PSNR in dB of the reconstructions (from the posterior mean) of uint8 `images`."""
    _check_images(images, config)
    psnrs = []
    for x in _in_batches(images, batch):
        recon = np.asarray(_reconstruct_fn(config)(params, x), np.float64)
        mse = np.mean(np.square(recon - x / 255.0), axis=(1, 2, 3))
        psnrs.append(10.0 * np.log10(1.0 / np.maximum(mse, 1e-12)))
    return float(np.mean(np.concatenate(psnrs)))
