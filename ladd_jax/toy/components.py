"""The toy world's Stable Diffusion 3 components, saved as a diffusers-layout SD3 pipeline folder.

Everything SD3 has, in miniature and in the same formats: tokenizers whose vocabulary is the toy grammar (every
word one token; CLIP pads and truncates to 16 tokens, T5 is used with max_sequence_length 16), CLIP-L-, CLIP-G-
and T5-shaped text encoders, a VAE trained here on rendered images, and an MMDiT teacher (untrained here;
`ladd-jax pretrain` trains it). `ladd-jax toy-components --out DIR` builds the whole folder from scratch.

The text encoders are random and frozen, not trained. SD3 keeps its (pretrained) text encoders frozen too: its
MMDiT learns to read fixed features. What the toy teacher needs from them is that different captions give
different, O(1) features, word order included; a random transformer gives that (CLIP through its absolute position
embeddings and causal attention, T5 through its relative position bias). `tests/test_toy_components.py` checks it
over the grammar's 6440 captions: the nearest pair's pooled embeddings are 5% of the median pair distance apart
(0.4 in absolute terms, against an fp32 agreement with transformers of ~1e-5), its context embeddings 26% (CLIP)
and 32% (T5) among 800 random captions, and swapping two objects' colours moves both clearly. Training them
(contrastively, against images) would add a stage and minutes of CPU for no capability the teacher lacks. The
random weights are scaled so activations stay O(1): unit normal token and position embeddings (flax's N(0, 0.02)
default suits a trained model, not a frozen random one), T5 queries scaled by 1/sqrt(d_kv) (T5 folds the attention
scale into its weights) and a unit normal relative position bias, so positions move the attention logits as much as
content does.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ladd_jax import arguments
from ladd_jax.errors import LaddError

# The CLI registers this module's subcommand at start-up: jax, flax and the models load only when used.
if TYPE_CHECKING:
    from ladd_jax.models.clip import CLIPTextConfig
    from ladd_jax.models.mmdit import MMDiTConfig
    from ladd_jax.models.t5 import T5Config
    from ladd_jax.models.vae import VAEConfig
    from ladd_jax.toy.world import ToyWorld

CLIP_MAX_LENGTH = 16  # the longest caption, "a large yellow triangle to the right of a small white square", is 14
T5_MAX_LENGTH = 16  # use as the pipelines' max_sequence_length
# Widths in SD3's proportions (CLIP-L 768 + CLIP-G 1280, zero-padded to T5's 4096).
CLIP_L_WIDTH, CLIP_G_WIDTH, T5_WIDTH = 32, 64, 128
CLIP_HEAD_DIM, CLIP_LAYERS = 16, 3  # SD3 reads the penultimate layer, so at least 2
T5_HEADS, T5_LAYERS = 4, 2
SCHEDULER_CLASS = "FlowMatchEulerDiscreteScheduler"
NUM_TRAIN_TIMESTEPS = 1000
# Which library provides each component's class, as diffusers' model_index.json records it.
MODEL_INDEX = {
    "scheduler": ("diffusers", SCHEDULER_CLASS),
    "text_encoder": ("transformers", "CLIPTextModelWithProjection"),
    "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
    "text_encoder_3": ("transformers", "T5EncoderModel"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
    "tokenizer_2": ("transformers", "CLIPTokenizer"),
    "tokenizer_3": ("transformers", "T5TokenizerFast"),
    "transformer": ("diffusers", "SD3Transformer2DModel"),
    "vae": ("diffusers", "AutoencoderKL"),
}
WORLD_FILE = "toy_world.json"  # the ToyWorld the folder was built for, and how


def toy_corpus(world: ToyWorld) -> list[str]:
    """Every word and phrase of the world's grammar (the tokenizers' training text)."""
    return ["a", *world.sizes, *world.colors, *world.shapes, *world.relations]


def write_toy_tokenizers(folder: str | Path, world: ToyWorld) -> tuple[int, int]:
    """tokenizer/ (CLIP-L), tokenizer_2/ (CLIP-G, pads with "!") and tokenizer_3/ (T5) under `folder`; returns
    the (CLIP, T5) vocabulary sizes."""
    from ladd_jax.toy.tokenizers import write_clip_tokenizer, write_t5_tokenizer

    folder, corpus = Path(folder), toy_corpus(world)
    clip_vocab = write_clip_tokenizer(folder / "tokenizer", corpus, max_length=CLIP_MAX_LENGTH)
    write_clip_tokenizer(folder / "tokenizer_2", corpus, pad_token="!", max_length=CLIP_MAX_LENGTH)
    t5_vocab = write_t5_tokenizer(folder / "tokenizer_3", corpus, max_length=T5_MAX_LENGTH)
    return clip_vocab, t5_vocab


def toy_text_encoder_configs(clip_vocab: int, t5_vocab: int) -> tuple[CLIPTextConfig, CLIPTextConfig, T5Config]:
    """(CLIP-L, CLIP-G, T5) configs: SD3's activations and token-id conventions at toy widths."""
    from ladd_jax.models.clip import CLIPTextConfig
    from ladd_jax.models.t5 import T5Config

    def clip(width: int, act: str) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=clip_vocab,
            hidden_size=width,
            intermediate_size=4 * width,
            projection_dim=width,
            num_hidden_layers=CLIP_LAYERS,
            num_attention_heads=width // CLIP_HEAD_DIM,
            max_position_embeddings=CLIP_MAX_LENGTH,
            hidden_act=act,
            # SD3's configs keep the legacy ids: eos_token_id 2 pools at the argmax of the ids (<|endoftext|>).
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        )

    t5 = T5Config(
        vocab_size=t5_vocab,
        d_model=T5_WIDTH,
        d_kv=T5_WIDTH // T5_HEADS,
        d_ff=2 * T5_WIDTH,
        num_layers=T5_LAYERS,
        num_heads=T5_HEADS,
        relative_attention_max_distance=2 * T5_MAX_LENGTH,
        feed_forward_proj="gated-gelu",
    )
    return clip(CLIP_L_WIDTH, "quick_gelu"), clip(CLIP_G_WIDTH, "gelu"), t5


def random_params(abstract: Mapping, seed: int) -> dict:
    """A param tree of `abstract`'s shapes (`jax.eval_shape` of an init) drawn with numpy, no compilation:
    kernels N(0, 1 / fan_in) (fan_in = all but the last axis), embeddings N(0, 1), biases 0, norm scales 1.
    These are flax's default initialisers (untruncated), with unit-normal embeddings everywhere. Stacked
    (`nn.scan`) kernels count their layer axis into fan_in too, which only makes them smaller."""
    import jax

    rng = np.random.default_rng(seed)

    def draw(path, leaf) -> np.ndarray:
        name, shape = path[-1].key, tuple(leaf.shape)
        if name == "kernel":
            return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
        if name == "embedding":
            return rng.standard_normal(shape).astype(np.float32)
        if name in ("bias", "scale"):
            return np.full(shape, float(name == "scale"), np.float32)
        raise ValueError(f"no initialiser for param {jax.tree_util.keystr(path)}")

    return jax.tree_util.tree_map_with_path(draw, abstract)


def random_clip_params(config: CLIPTextConfig, seed: int) -> dict:
    """Frozen random CLIP weights with O(1) activations (`random_params`: unit normal token and position
    embeddings)."""
    from ladd_jax.convert.clip import abstract_params

    return random_params(abstract_params(config), seed)


def random_t5_params(config: T5Config, seed: int) -> dict:
    """Frozen random T5 weights with O(1) activations (`random_params`), queries scaled by 1/sqrt(d_kv) as T5's
    own init does (its attention has no 1/sqrt(d_kv)), a unit normal relative position bias."""
    from ladd_jax.convert.t5 import abstract_params

    params = random_params(abstract_params(config), seed)
    for i in range(config.num_layers):
        q = params[f"block_{i}"]["attention"]["q"]
        q["kernel"] = q["kernel"] * np.float32(config.d_kv**-0.5)
    return params


def toy_vae_config() -> VAEConfig:
    """64x64 RGB -> 16x16x16 latents (downscale 4, SD3's 16 channels): three blocks of 16-32-32 channels, one
    resnet each, no mid-block attention (so training on crops sees what full images see). The scaling and
    shift factors are placeholders until `calibrate_latent_scale`."""
    from ladd_jax.models.vae import VAEConfig

    return VAEConfig(
        latent_channels=16,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=False,
        scaling_factor=1.0,
        shift_factor=0.0,
        sample_size=64,
    )


def toy_mmdit_config(
    vae_config: VAEConfig | None = None,
    image_size: int = 64,
    num_layers: int = 4,
    num_attention_heads: int = 2,
    attention_head_dim: int = 64,
) -> MMDiTConfig:
    """The toy teacher: hidden 128 (2 heads x 64), patch 2 over the VAE's latents, context as wide as the toy
    T5, pooled text = the two CLIP projections side by side."""
    from ladd_jax.models.mmdit import MMDiTConfig

    vae_config = vae_config or toy_vae_config()
    latent = image_size // vae_config.downscale
    hidden = num_attention_heads * attention_head_dim
    return MMDiTConfig(
        sample_size=latent,
        patch_size=2,
        in_channels=vae_config.latent_channels,
        out_channels=vae_config.latent_channels,
        num_layers=num_layers,
        attention_head_dim=attention_head_dim,
        num_attention_heads=num_attention_heads,
        joint_attention_dim=T5_WIDTH,
        caption_projection_dim=hidden,
        pooled_projection_dim=CLIP_L_WIDTH + CLIP_G_WIDTH,
        pos_embed_max_size=latent,
    )


def _check_compatible(vae_config: VAEConfig, mmdit_config: MMDiTConfig, world: ToyWorld) -> None:
    problems, latent = [], vae_config.latent_channels
    if mmdit_config.in_channels != latent or mmdit_config.out_channels != latent:
        problems.append(
            f"the transformer has {mmdit_config.in_channels} in / {mmdit_config.out_channels} out channels, the VAE "
            f"{latent} latent channels"
        )
    if mmdit_config.joint_attention_dim != T5_WIDTH:
        problems.append(f"joint_attention_dim is {mmdit_config.joint_attention_dim}, the toy T5 is {T5_WIDTH} wide")
    if mmdit_config.pooled_projection_dim != CLIP_L_WIDTH + CLIP_G_WIDTH:
        problems.append(
            f"pooled_projection_dim is {mmdit_config.pooled_projection_dim}, the toy CLIPs give "
            f"{CLIP_L_WIDTH + CLIP_G_WIDTH}"
        )
    if world.image_size % (vae_config.downscale * mmdit_config.patch_size):
        problems.append(
            f"{world.image_size}-pixel images do not split into {vae_config.downscale}x VAE latents of "
            f"{mmdit_config.patch_size}x{mmdit_config.patch_size} patches"
        )
    if problems:
        raise LaddError("toy SD3 components do not fit together: " + "; ".join(problems) + " (use toy_mmdit_config)")


def write_toy_sd3_folder(
    out_dir: str | Path,
    world: ToyWorld,
    vae_config: VAEConfig,
    vae_params: Mapping,
    mmdit_config: MMDiTConfig,
    mmdit_params: Mapping | None = None,
    seed: int = 0,
    overwrite: bool = False,
    shift: float = 1.0,
    notes: Mapping[str, Any] | None = None,
) -> Path:
    """Writes a complete diffusers-layout SD3 pipeline folder for `world`, atomically, without torch.

    The text encoders are random from `seed` (the same seed gives the same encoders); `mmdit_params` None
    writes a randomly initialised transformer. `shift` is the scheduler's static timestep shift (1.0 suits
    16x16 latents; SD3 uses 3.0 at 128x128). `notes` (JSON-serialisable) join the world in toy_world.json."""
    import jax

    from ladd_jax.atomic import atomic_path, check_writable_destination
    from ladd_jax.convert.clip import save_clip
    from ladd_jax.convert.mmdit import save_mmdit
    from ladd_jax.convert.t5 import save_t5
    from ladd_jax.convert.vae import save_vae
    from ladd_jax.models.mmdit import init_params

    out_dir = Path(out_dir)
    check_writable_destination(out_dir, overwrite)
    _check_compatible(vae_config, mmdit_config, world)
    if shift <= 0:
        raise LaddError(f"the scheduler shift must be positive, got {shift}")
    if mmdit_params is None:
        latent = world.image_size // vae_config.downscale
        mmdit_params = init_params(mmdit_config, jax.random.key(seed), (latent, latent))
    with atomic_path(out_dir, overwrite) as tmp:
        clip_vocab, t5_vocab = write_toy_tokenizers(tmp, world)
        clip_l, clip_g, t5 = toy_text_encoder_configs(clip_vocab, t5_vocab)
        save_clip(clip_l, random_clip_params(clip_l, seed + 1), tmp / "text_encoder")
        save_clip(clip_g, random_clip_params(clip_g, seed + 2), tmp / "text_encoder_2")
        save_t5(t5, random_t5_params(t5, seed + 3), tmp / "text_encoder_3")
        save_vae(vae_config, vae_params, tmp / "vae")
        save_mmdit(mmdit_config, mmdit_params, tmp / "transformer")
        (tmp / "scheduler").mkdir()
        scheduler = {"_class_name": SCHEDULER_CLASS, "num_train_timesteps": NUM_TRAIN_TIMESTEPS, "shift": shift}
        _write_json(tmp / "scheduler" / "scheduler_config.json", scheduler)
        index = {"_class_name": "StableDiffusion3Pipeline", **{k: list(v) for k, v in MODEL_INDEX.items()}}
        _write_json(tmp / "model_index.json", index)
        _write_json(tmp / WORLD_FILE, {"world": world.to_dict(), "seed": seed, **(notes or {})})
    return out_dir


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def read_toy_world(folder: str | Path) -> ToyWorld:
    """The ToyWorld a folder written by `write_toy_sd3_folder` was built for."""
    from ladd_jax.jsonfile import read_json
    from ladd_jax.toy.world import ToyWorld

    path = Path(folder) / WORLD_FILE
    data = read_json(path, f"{folder} has no {WORLD_FILE}; it was not written by `ladd-jax toy-components`")
    return ToyWorld.from_dict(data["world"])


# ------------------------------------------------------------------------------------------------------- CLI


def _require_positive(args: argparse.Namespace, names: tuple[str, ...]) -> None:
    """One clear error for the first of the integer options `names` below 1 (before any work)."""
    for name in names:
        if getattr(args, name) < 1:
            raise LaddError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")


def add_toy_components_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers the `toy-components` subcommand."""
    p = subparsers.add_parser(
        "toy-components",
        help="build the toy world's SD3 folder: train the VAE, write tokenizers, text encoders, untrained teacher",
    )
    p.add_argument("--out", required=True, help="the SD3 pipeline folder to write")
    p.add_argument("--vae-steps", type=int, default=1500, help="VAE training steps")
    p.add_argument("--vae-batch", type=int, default=12, help="image crops per VAE step")
    p.add_argument("--vae-crop", type=int, default=32, help="side of the random crops the VAE trains on (pixels)")
    p.add_argument("--vae-lr", type=float, default=3e-3, help="peak AdamW learning rate of the VAE")
    p.add_argument("--vae-kl-weight", type=float, default=1e-4, help="KL weight (per latent element, vs mean L2)")
    p.add_argument("--train-images", type=int, default=4096, help="rendered train-split images for the VAE")
    p.add_argument("--eval-images", type=int, default=256, help="held-out (test-split) renders for the PSNR")
    p.add_argument("--teacher-layers", type=int, default=4, help="blocks of the (untrained) MMDiT teacher")
    p.add_argument("--shift", type=float, default=1.0, help="the scheduler's timestep shift")
    p.add_argument("--seed", type=arguments.seed, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(fn=run_toy_components)


def run_toy_components(args: argparse.Namespace) -> None:
    """Renders the toy world, trains and calibrates the VAE, reports its held-out PSNR, writes the folder."""
    from ladd_jax.atomic import check_writable_destination
    from ladd_jax.toy.vae import calibrate_latent_scale, reconstruction_psnr, train_vae
    from ladd_jax.toy.world import ToyWorld, render_dataset

    out = Path(args.out)
    check_writable_destination(out, args.overwrite)  # before minutes of training
    _require_positive(args, ("vae_steps", "vae_batch", "vae_crop", "train_images", "eval_images", "teacher_layers"))
    start = time.perf_counter()
    world = ToyWorld()
    train_images, _, _ = render_dataset(world, "train", args.train_images, args.seed)
    eval_images, _, _ = render_dataset(world, "test", args.eval_images, args.seed + 1)
    config = toy_vae_config()
    params = train_vae(
        config,
        train_images,
        args.vae_steps,
        args.vae_batch,
        args.vae_lr,
        args.vae_kl_weight,
        seed=args.seed,
        crop=args.vae_crop,
    )
    config = calibrate_latent_scale(config, params, train_images, seed=args.seed)
    psnr = reconstruction_psnr(config, params, eval_images)
    vae_seconds = time.perf_counter() - start
    print(
        f"VAE: {args.vae_steps} steps of {args.vae_batch} in {vae_seconds:.0f} s; held-out PSNR {psnr:.2f} dB; "
        f"shift_factor {config.shift_factor:.4f}, scaling_factor {config.scaling_factor:.4f}"
    )
    notes = {
        "vae": {
            "steps": args.vae_steps,
            "batch": args.vae_batch,
            "crop": args.vae_crop,
            "lr": args.vae_lr,
            "kl_weight": args.vae_kl_weight,
            "train_images": args.train_images,
            "heldout_psnr_db": round(psnr, 2),
        }
    }
    mmdit_config = toy_mmdit_config(config, world.image_size, num_layers=args.teacher_layers)
    write_toy_sd3_folder(
        out,
        world,
        config,
        params,
        mmdit_config,
        seed=args.seed,
        overwrite=args.overwrite,
        shift=args.shift,
        notes=notes,
    )
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MiB) in {time.perf_counter() - start:.0f} s")


def add_toy_vae_decoder_parser(subparsers: argparse._SubParsersAction) -> None:
    """Registers the `toy-vae-decoder` subcommand."""
    p = subparsers.add_parser(
        "toy-vae-decoder",
        help="fine-tune a toy folder's VAE decoder alone (its encoder, so the latent space, stays exactly as it is)",
    )
    p.add_argument("--model", required=True, help="the toy SD3 pipeline folder whose VAE is fine-tuned")
    p.add_argument("--out", required=True, help="the diffusers AutoencoderKL folder to write")
    # The toy world's first VAE (1500 joint steps of 12 crops) decoded small crosses as blobs: its round trip
    # capped alignment at 0.88; 4000 decoder steps of 16 crops lift it to 0.996 (ladd_jax/toy/assets/README.md).
    p.add_argument("--steps", type=int, default=4000, help="decoder training steps")
    p.add_argument("--batch", type=int, default=16, help="image crops per step")
    p.add_argument("--crop", type=int, default=32, help="side of the random crops (pixels)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate")
    p.add_argument("--train-images", type=int, default=16384, help="rendered train-split images")
    p.add_argument("--eval-images", type=int, default=512, help="held-out (test-split) renders for the PSNR")
    p.add_argument("--seed", type=arguments.seed, default=3)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(fn=run_toy_vae_decoder)


def run_toy_vae_decoder(args: argparse.Namespace) -> None:
    """Fine-tunes the folder's VAE decoder on fresh renders; prints the held-out PSNR before and after."""
    from ladd_jax.atomic import check_writable_destination
    from ladd_jax.convert.vae import load_vae, save_vae
    from ladd_jax.toy.vae import decoder_modules, reconstruction_psnr, train_vae
    from ladd_jax.toy.world import render_dataset

    out = Path(args.out)
    check_writable_destination(out, args.overwrite)  # before minutes of training
    _require_positive(args, ("steps", "batch", "crop", "train_images", "eval_images"))
    world = read_toy_world(args.model)
    config, params = load_vae(Path(args.model) / "vae")
    train_images, _, _ = render_dataset(world, "train", args.train_images, args.seed)
    eval_images, _, _ = render_dataset(world, "test", args.eval_images, args.seed + 1)
    before = reconstruction_psnr(config, params, eval_images)
    start = time.perf_counter()
    params = train_vae(
        config,
        train_images,
        args.steps,
        args.batch,
        args.lr,
        seed=args.seed,
        crop=args.crop,
        init_params=params,
        trainable=decoder_modules(config),
    )
    seconds = time.perf_counter() - start
    after = reconstruction_psnr(config, params, eval_images)
    save_vae(config, params, out, overwrite=args.overwrite)
    print(
        f"decoder: {args.steps} steps of {args.batch} in {seconds:.0f} s; held-out PSNR {before:.2f} -> {after:.2f} "
        f"dB; wrote {out} (put it in place of the folder's vae/: the encoder and latent scaling are unchanged)"
    )
