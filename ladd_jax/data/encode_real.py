"""`ladd-jax encode-real`: real (image, caption) pairs -> latent records, for the real-versus-synthetic ablation.

Input: a captions .jsonl, one {"image": "relative/path.png", "prompt": "..."} a line (what `ladd_jax.toy.world`
writes), image paths relative to the .jsonl's folder. Each image is converted to RGB, brought to height x width
(centre crop to that aspect ratio, then bicubic resize) when it has another size, scaled to [-1, 1] and encoded by
the pipeline folder's VAE. The record's `latent` is the VAE posterior's mean (default) or a draw from it
(`latent="sample"`, from `jax.random.key(seed)` with item i's seed as synth derives it), scaled as the diffusion
model sees latents: `scale_latents(z) = (z - shift_factor) * scaling_factor`. Records follow synth's schema
without `noise`, plus `image` (the relative path); the manifest's source is "real", so the same Loader reads them.

Conditioned models (conditioning.py): when every line also names a "mask" (inpainting: white where the model is to
draw) or a "source" image (editing: the image before the edit; the prompt is the instruction), the records carry
`cond`, the conditioning latents the image is the answer to: the data a conditioned teacher is pretrained on, and
the conditioning `ladd-jax synth` reads from a records folder to sample that teacher for distillation.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ladd_jax import arguments
from ladd_jax.conditioning import cond_channels, make_cond
from ladd_jax.data.records import STORE_DTYPES, check_output_folder, make_manifest, record_seeds, write_shards
from ladd_jax.data.synth import TEXT_COMPONENTS, loaded_pipeline, pipeline_fingerprint
from ladd_jax.errors import LaddError

LATENT_KINDS = ("mean", "sample")
PIXEL_MAX = 255.0
MASK_THRESHOLD = 0.5  # a grey-level mask pixel above half is masked


def read_captions(jsonl: str | Path) -> list[tuple[str, str]]:
    """(image path relative to the file's folder, prompt) of every line; each image must exist."""
    jsonl = Path(jsonl)
    if not jsonl.is_file():
        raise LaddError(f"captions file {jsonl} does not exist")
    try:
        lines = jsonl.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LaddError(f"cannot read captions file {jsonl} ({e}); it must be UTF-8 JSON lines") from e
    pairs = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise LaddError(f"{jsonl}, line {n}: not JSON ({e})") from None
        if not (isinstance(item, dict) and isinstance(item.get("image"), str) and isinstance(item.get("prompt"), str)):
            raise LaddError(f'{jsonl}, line {n}: expected {{"image": "relative/path.png", "prompt": "..."}}')
        if not (jsonl.parent / item["image"]).is_file():
            raise LaddError(f"{jsonl}, line {n}: image {jsonl.parent / item['image']} does not exist")
        pairs.append((item["image"], item["prompt"]))
    if not pairs:
        raise LaddError(f"captions file {jsonl} holds no (image, prompt) pairs")
    return pairs


def read_conditioning(jsonl: str | Path) -> tuple[str | None, list[str]]:
    """(kind, path of each line's conditioning file) when the lines carry a "mask" (inpainting) or a "source"
    (editing) field, else (None, []); every line must carry the same one, and the files must exist."""
    from ladd_jax.conditioning import JSONL_KEYS

    jsonl = Path(jsonl)
    items = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]
    found = [kind for kind, key in JSONL_KEYS.items() if key in items[0]]
    if not found:
        return None, []
    if len(found) > 1:
        raise LaddError(f"{jsonl}: a line has both {list(JSONL_KEYS.values())}; a model is inpainting or editing")
    kind, key = found[0], JSONL_KEYS[found[0]]
    paths = []
    for n, item in enumerate(items, 1):
        if not isinstance(item.get(key), str) or not (jsonl.parent / item[key]).is_file():
            raise LaddError(f"{jsonl}, line {n}: every line needs {key!r}, an existing file (the first line has one)")
        paths.append(item[key])
    return kind, paths


def _encode_on(encode: Callable, params: Any, sharding: Any, images: np.ndarray) -> Any:
    """`encode` of images placed with `sharding` (the posterior's mean: no seeds needed)."""
    import jax

    return encode(params, jax.device_put(images, sharding), np.zeros(len(images), np.int32))


def _open_image(path: Path, mode: str, fix: str) -> Any:
    """The image file converted to PIL `mode`, or one clear error saying `fix`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as f:
            return f.convert(mode)
    except (OSError, UnidentifiedImageError) as e:
        raise LaddError(f"cannot read image {path} ({e}); {fix}") from e


def load_image(path: Path, height: int, width: int) -> np.ndarray:
    """An image file -> float32 [height, width, 3] in [-1, 1] (centre-cropped to the aspect ratio and resized)."""
    from PIL import Image

    image = _open_image(path, "RGB", "replace it or drop its line")
    if image.size != (width, height):
        w, h = image.size
        scale = min(w / width, h / height)
        cw, ch = round(width * scale), round(height * scale)
        box = ((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)
        image = image.resize((width, height), Image.Resampling.BICUBIC, box=box)
    return np.asarray(image, np.float32) / (PIXEL_MAX / 2) - 1.0


def load_mask(path: str | Path, height: int, width: int) -> np.ndarray:
    """A mask image file (white = to be drawn) -> float32 [height, width] in {0, 1} (nearest resize)."""
    from PIL import Image

    mask = _open_image(Path(path), "L", "give a black-and-white image, white where the model is to draw")
    if mask.size != (width, height):
        mask = mask.resize((width, height), Image.Resampling.NEAREST)
    return (np.asarray(mask, np.float32) / PIXEL_MAX > MASK_THRESHOLD).astype(np.float32)


def encode_real(
    model_dir: str | Path,
    jsonl: str | Path,
    out_dir: str | Path,
    *,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 1,
    latent: str = "mean",
    seed: int = 0,
    max_sequence_length: int = 256,
    text_embeddings: bool = True,
    store_dtype: str = "float32",
    shard_size: int = 256,
    dtype: str = "float32",
    pipeline: Any = None,
) -> dict[str, Any]:
    """Encodes the (image, prompt) pairs of `jsonl` into records in `out_dir` (resumable like synth); returns the
    manifest. `model_dir`: a diffusers SD3 pipeline folder (its VAE, and its text encoders unless
    `text_embeddings=False`). height/width default to the first image's size; `batch_size` is per local device.
    `pipeline`: an SD3Pipeline already loaded from `model_dir` (saves loading it again)."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from ladd_jax.pipeline import DTYPES, cast_floats, check_size, local_data_mesh, size_rules, vae_encode_fn

    if latent not in LATENT_KINDS:
        raise LaddError(f"latent must be one of {LATENT_KINDS}, got {latent!r}")
    if store_dtype not in STORE_DTYPES:
        raise LaddError(f"store_dtype must be one of {sorted(STORE_DTYPES)}, got {store_dtype!r}")
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if value < 1:
            raise LaddError(f"{name} must be at least 1, got {value}")
    jsonl = Path(jsonl)
    pairs = read_captions(jsonl)
    if height is None or width is None:
        first = _open_image(jsonl.parent / pairs[0][0], "RGB", "replace it or drop its line")
        width, height = width or first.width, height or first.height
    multiple, _ = size_rules(model_dir)
    check_size(height, width, multiple)
    check_output_folder(out_dir)

    if text_embeddings or pipeline is not None:
        pipe = loaded_pipeline(model_dir, dtype, pipeline)
        mesh, vae_config, vae_params = pipe.mesh, pipe.vae_config, pipe.vae_params
    else:
        from ladd_jax.convert.vae import load_vae

        mesh = local_data_mesh()
        vae_config, params = load_vae(Path(model_dir) / "vae")
        vae_params = jax.device_put(cast_floats(params, DTYPES[dtype]), NamedSharding(mesh, P()))
    encode = vae_encode_fn(vae_config, dtype, latent)
    batched = NamedSharding(mesh, P("data"))
    per_call = batch_size * mesh.devices.size
    item_settings = {"latent": latent, "height": height, "width": width, "max_sequence_length": max_sequence_length}
    cond_kind, cond_paths = read_conditioning(jsonl)
    if cond_kind is not None:
        item_settings["conditioning"] = cond_kind

    cond_encode = vae_encode_fn(vae_config, dtype)  # conditioning latents are the posterior's mean, as sampling's

    def conditioning_inputs(items: list[int], pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(images to condition on, masks): the source images to edit, or the items' own `pixels` and their masks
        to inpaint."""
        if cond_kind == "edit":
            return np.stack([load_image(jsonl.parent / cond_paths[i], height, width) for i in items]), None
        return pixels, np.stack([load_mask(jsonl.parent / cond_paths[i], height, width) for i in items])

    def produce(start: int, stop: int) -> Iterator[dict[str, Any]]:
        for lo in range(start, stop, per_call):
            items = list(range(lo, min(lo + per_call, stop)))
            padded = items + [items[-1]] * (per_call - len(items))  # one shape for every call
            seeds = record_seeds(seed, padded)
            pixels = np.stack([load_image(jsonl.parent / pairs[i][0], height, width) for i in padded])
            images, item_seeds = jax.device_put((pixels, seeds.astype(np.int32)), batched)
            arrays = {"latent": encode(vae_params, images, item_seeds)}
            if cond_kind is not None:
                cond_images, masks = conditioning_inputs(padded, pixels)
                encode_mean = functools.partial(_encode_on, cond_encode, vae_params, batched)
                arrays["cond"] = make_cond(cond_kind, encode_mean, cond_images, vae_config.downscale, masks)
            if text_embeddings:
                embeds, _, pooled, _ = pipe.encode_prompt(
                    [pairs[i][1] for i in padded],
                    max_sequence_length=max_sequence_length,
                    do_classifier_free_guidance=False,
                )
                arrays |= {"context": embeds, "pooled": pooled}
            arrays = jax.device_get(arrays)
            for j, i in enumerate(items):
                record = {"prompt": pairs[i][1], "image": pairs[i][0], "index": i, "seed": int(seeds[j])}
                yield record | {"settings": item_settings} | {k: np.asarray(a[j]) for k, a in arrays.items()}

    factor = vae_config.downscale
    fields = {"latent": ((height // factor, width // factor, vae_config.latent_channels), store_dtype)}
    if cond_kind is not None:
        channels = cond_channels(cond_kind, vae_config.latent_channels)
        fields["cond"] = ((height // factor, width // factor, channels), store_dtype)
    if text_embeddings:
        t = pipe.transformer_config
        fields["context"] = ((pipe.clip_max_length + max_sequence_length, t.joint_attention_dim), store_dtype)
        fields["pooled"] = ((t.pooled_projection_dim,), store_dtype)
    components = ("vae", *TEXT_COMPONENTS) if text_embeddings else ("vae",)
    settings = item_settings | {
        "seed": seed,
        "batch_size_per_device": batch_size,
        "dtype": dtype,
        "text_embeddings": text_embeddings,
        "captions_sha256": hashlib.sha256(json.dumps(pairs + cond_paths).encode()).hexdigest(),
        "model_fingerprint": pipeline_fingerprint(model_dir, components),
    }
    origin = {"model": str(model_dir), "images": str(jsonl)}
    manifest = make_manifest("real", len(pairs), shard_size, fields, settings, origin)
    write_shards(out_dir, manifest, produce, desc="encode-real")
    return manifest


def add_encode_real_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers the `encode-real` subcommand."""
    p = subparsers.add_parser("encode-real", help="real (image, caption) pairs -> VAE-latent records (as synth's)")
    p.add_argument("--model", required=True, help="a diffusers SD3 pipeline folder (its VAE and text encoders)")
    p.add_argument(
        "--images",
        required=True,
        help='a .jsonl of {"image": "relative/path.png", "prompt": "..."}; a "mask" (inpainting) or "source" '
        "(editing) path on every line adds the conditioning latents as the records' cond",
    )
    p.add_argument("--out", required=True, help="the data folder to write; re-running the same command resumes it")
    p.add_argument("--height", type=int, default=None, help="pixels (default: the first image's)")
    p.add_argument("--width", type=int, default=None, help="pixels (default: the first image's)")
    p.add_argument("--batch-size", type=int, default=1, help="images per local device per call")
    p.add_argument("--latent", choices=LATENT_KINDS, default="mean", help="the VAE posterior's mean or a sample")
    p.add_argument("--seed", type=arguments.seed, default=0, help="base seed of the posterior samples")
    p.add_argument("--max-sequence-length", type=int, default=256, help="T5 tokens")
    p.add_argument(
        "--text-embeddings",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="store context and pooled (default); --no-text-embeddings leaves them out",
    )
    p.add_argument("--store-dtype", choices=sorted(STORE_DTYPES), default="float32")
    p.add_argument("--shard-size", type=int, default=256, help="records per shard")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="compute dtype")
    p.set_defaults(fn=_run_cli)


def _run_cli(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    options = {k: v for k, v in vars(args).items() if k not in ("fn", "command", "model", "images", "out")}
    manifest = encode_real(args.model, args.images, args.out, **options)
    print(
        f"{args.out}: {manifest['num_records']} records in {len(manifest['shards'])} shards; "
        f"this run took {time.perf_counter() - start:.1f} s"
    )
