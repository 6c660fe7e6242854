"""Conditioning latents of inpainting and editing models: what is concatenated to the noisy latents on the channel
axis before patching (models/mmdit.py `with_extra_inputs`; pipeline.py `with_cond`; the trainer's `cond` field).

    inpaint: [VAE latent of the masked image, the mask at latent resolution]   latent_channels + 1 channels
             (Stable Diffusion 2's inpainting layout: masked pixels set to 0, i.e. grey in [-1, 1]; the mask is 1
             where the model is to draw, max-pooled so that a latent cell touching the hole counts as masked)
    edit:    the VAE latent of the source image                                latent_channels channels
             (InstructPix2Pix's layout; the prompt is the instruction)

Images are float [B, H, W, 3] in [-1, 1]; masks float [B, H, W] in {0, 1}, white (1) = to be drawn, as diffusers'
inpainting pipelines read mask files.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ladd_jax.errors import LaddError

KINDS = ("inpaint", "edit")
# The captions .jsonl key that names each item's conditioning file, per kind (`ladd-jax encode-real`).
JSONL_KEYS = {"inpaint": "mask", "edit": "source"}


def cond_channels(kind: str, latent_channels: int) -> int:
    """Channels of `kind`'s conditioning latents for a VAE of `latent_channels`."""
    check_kind(kind)
    return latent_channels + 1 if kind == "inpaint" else latent_channels


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise LaddError(f"unknown conditioning {kind!r}: choose one of {', '.join(KINDS)}")


def latent_mask(masks: np.ndarray, factor: int) -> np.ndarray:
    """Pixel masks [B, H, W] -> [B, H / factor, W / factor, 1]: 1 where any pixel of the cell is masked."""
    b, h, w = masks.shape
    if h % factor or w % factor:
        raise LaddError(f"a {h}x{w} mask does not divide into the VAE's {factor}x{factor} latent cells")
    cells = masks.reshape(b, h // factor, factor, w // factor, factor)
    return cells.max(axis=(2, 4))[..., None].astype(np.float32)


def masked_images(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The images with their masked pixels set to 0 (grey in [-1, 1]): what an inpainting model sees."""
    return (images * (1.0 - masks[..., None])).astype(np.float32)


def make_cond(
    kind: str, encode: Callable[[np.ndarray], np.ndarray], images: np.ndarray, factor: int, masks: np.ndarray = None
) -> np.ndarray:
    """`kind`'s conditioning latents [B, h, w, cond_channels]. `encode`: images in [-1, 1] -> scaled latents
    (`SD3Pipeline.encode_images`); `images`: the image to inpaint (with `masks`) or the source to edit."""
    check_kind(kind)
    if kind == "edit":
        return np.asarray(encode(images), np.float32)
    if masks is None or masks.shape != images.shape[:3]:
        got = getattr(masks, "shape", None)
        raise LaddError(f"inpainting needs one mask [H, W] per image of {images.shape}; got masks of shape {got}")
    latents = np.asarray(encode(masked_images(images, masks)), np.float32)
    return np.concatenate([latents, latent_mask(masks, factor)], axis=-1)
