"""`ladd-jax sample`: text to a PNG grid with an SD3 pipeline folder (rows: prompts, columns: seeds); an inpainting
model fills `--inpaint IMAGE` where `--mask MASK` is white, an editing model edits `--edit IMAGE` as the prompt says."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from ladd_jax import arguments
from ladd_jax.atomic import make_writable_folder
from ladd_jax.errors import LaddError


def add_sample_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers the `sample` subcommand."""
    p = subparsers.add_parser("sample", help="text to image with a local SD3 pipeline: a PNG grid, prompts x seeds")
    p.add_argument("--model", required=True, help="a diffusers Stable Diffusion 3 / 3.5 pipeline folder")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (a row of the grid); repeatable")
    p.add_argument("--negative-prompt", default="", help="one negative prompt for every image (default: empty)")
    p.add_argument("--steps", type=int, default=28, help="Euler steps")
    p.add_argument("--cfg", type=float, default=7.0, help="classifier-free guidance scale (<= 1: none)")
    p.add_argument("--seed", type=arguments.seed, default=0, help="the first column's seed (jax.random, not torch's)")
    p.add_argument("--seeds", type=int, default=1, help="columns of the grid: seeds seed, seed+1, ...")
    p.add_argument("--height", type=int, default=None, help="pixels (default: the model's, 1024 for SD3)")
    p.add_argument("--width", type=int, default=None, help="pixels (default: the model's, 1024 for SD3)")
    p.add_argument("--max-sequence-length", type=int, default=256, help="T5 tokens (at most 512)")
    p.add_argument("--batch-size", type=int, default=None, help="images per sampler call (default: all at once)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--inpaint", default=None, help="an inpainting model: the image to fill (with --mask)")
    p.add_argument("--mask", default=None, help="with --inpaint: a mask image, white where the model is to draw")
    p.add_argument("--edit", default=None, help="an editing model: the image to edit; the prompt is the instruction")
    p.add_argument("--out", required=True, help="the PNG file to write")
    p.set_defaults(fn=run_sample)


def image_grid(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """[rows * cols, H, W, 3] floats in [0, 1], row-major -> one [rows * H, cols * W, 3] uint8 image."""
    n, h, w, c = images.shape
    if n != rows * cols:
        raise ValueError(f"{n} images do not fill a {rows}x{cols} grid")
    # diffusers' numpy_to_pil rounding, so a cell equals the image diffusers would save.
    pixels = (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)
    return pixels.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def conditioning_request(args: argparse.Namespace) -> tuple[str, str, str | None] | None:
    """(kind, image, mask) from --inpaint/--mask/--edit, or None for text to image; bad combinations refused."""
    if args.edit and (args.inpaint or args.mask):
        raise LaddError("--edit and --inpaint/--mask ask for different models; give one")
    if args.edit:
        return "edit", args.edit, None
    if bool(args.inpaint) != bool(args.mask):
        raise LaddError("inpainting needs both --inpaint IMAGE and --mask MASK (white where to draw)")
    return ("inpaint", args.inpaint, args.mask) if args.inpaint else None


def load_cond(pipe: Any, request: tuple[str, str, str | None], height: int, width: int) -> np.ndarray:
    """The conditioning latents [1, h, w, C] of an --inpaint/--edit request, checked against the model."""
    from ladd_jax.conditioning import cond_channels, make_cond
    from ladd_jax.data.encode_real import load_image, load_mask

    kind, image, mask = request
    for path in (image, mask):
        if path is not None and not Path(path).is_file():
            raise LaddError(f"{path} does not exist")
    want = cond_channels(kind, pipe.latent_channels)
    if pipe.cond_channels != want:
        what = f"takes {pipe.cond_channels} conditioning channels" if pipe.cond_channels else "is text to image"
        raise LaddError(
            f"{pipe.folder} {what}; --{kind} needs an {'inpainting' if kind == 'inpaint' else 'editing'} model "
            f"({want} conditioning channels)"
        )
    images = load_image(Path(image), height, width)[None]
    masks = None if mask is None else load_mask(mask, height, width)[None]
    return make_cond(kind, pipe.encode_images, images, pipe.vae_scale_factor, masks)


def run_sample(args: argparse.Namespace) -> None:
    """Samples every prompt with every seed and writes the grid to args.out."""
    from PIL import Image

    from ladd_jax.pipeline import SD3Pipeline, check_size, size_rules

    for name in ("steps", "seeds"):
        if getattr(args, name) < 1:
            raise LaddError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.batch_size is not None and args.batch_size < 1:
        raise LaddError(f"--batch-size must be at least 1, got {args.batch_size}")
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise LaddError(f"--out {out} must name a .png file")
    make_writable_folder(out.parent, "the grid's folder")  # before minutes of loading and sampling
    request = conditioning_request(args)

    if args.height or args.width:
        # Fail before minutes of loading: the size rule needs only the configs.
        multiple, default = size_rules(args.model)
        check_size(args.height or default, args.width or default, multiple)
    start = time.perf_counter()
    pipe = SD3Pipeline.from_pretrained(args.model, dtype=args.dtype)
    height, width = args.height or pipe.default_size, args.width or pipe.default_size
    pipe.check_size(height, width)
    print(f"loaded {args.model} in {time.perf_counter() - start:.1f} s")

    cond = None if request is None else load_cond(pipe, request, height, width)
    seeds = [args.seed + j for j in range(args.seeds)]
    jobs = [(prompt, seed) for prompt in args.prompt for seed in seeds]
    size = args.batch_size or len(jobs)
    images = []
    start = time.perf_counter()
    for i in range(0, len(jobs), size):
        chunk = jobs[i : i + size]
        images.append(
            pipe(
                [p for p, _ in chunk],
                negative_prompts=args.negative_prompt,
                num_inference_steps=args.steps,
                guidance_scale=args.cfg,
                height=height,
                width=width,
                seed=[s for _, s in chunk],
                max_sequence_length=args.max_sequence_length,
                progress=True,
                cond=None if cond is None else np.repeat(cond, len(chunk), axis=0),
            )
        )
    seconds = time.perf_counter() - start
    grid = image_grid(np.concatenate(images), len(args.prompt), len(seeds))
    Image.fromarray(grid).save(out, format="PNG")
    print(
        f"{len(jobs)} images of {width}x{height} in {seconds:.1f} s: {seconds / len(jobs):.2f} s per image "
        f"(first batch includes compilation); wrote {out}"
    )
