"""Stable Diffusion 3 text-to-image in JAX: the same function as diffusers' `StableDiffusion3Pipeline`.

`SD3Pipeline.from_pretrained(folder)` reads a local diffusers-layout SD3 folder (model_index.json with
transformer/, vae/, text_encoder{,_2,_3}/, tokenizer{,_2,_3}/, scheduler/). `encode_prompt` gives the
pipeline's text conditioning (CLIP-L and CLIP-G penultimate states side by side, zero-padded to T5's width,
then T5's tokens after them on the sequence axis; pooled = both CLIP projections), `__call__` runs the
flow-matching Euler sampler with classifier-free guidance and decodes with the VAE. Latents are NHWC.

Every model runs under `jax.jit` with replicated params; batches are sharded along the "data" axis of a mesh
over all local devices when the batch size is a multiple of the device count, and replicated otherwise.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ladd_jax.errors import LaddError
from ladd_jax.flow import flow_match_sigmas, sample_euler
from ladd_jax.jsonfile import read_json

logger = logging.getLogger(__name__)

# model_index.json entry -> the classes that may fill it (diffusers' or transformers' class names).
COMPONENTS: dict[str, tuple[str, ...]] = {
    "transformer": ("SD3Transformer2DModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModelWithProjection",),
    "text_encoder_2": ("CLIPTextModelWithProjection",),
    "text_encoder_3": ("T5EncoderModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "tokenizer_2": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "tokenizer_3": ("T5TokenizerFast", "T5Tokenizer"),
    "scheduler": ("FlowMatchEulerDiscreteScheduler",),
}
# diffusers lets T5 be absent (null in model_index.json): its tokens are then zeros.
OPTIONAL = ("text_encoder_3", "tokenizer_3")
# FlowMatchEulerDiscreteScheduler options that change the sigmas; `flow_match_sigmas` models none of them.
_UNSUPPORTED_SCHEDULER_OPTIONS = (
    "use_dynamic_shifting",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "invert_sigmas",
    "shift_terminal",
    "stochastic_sampling",
)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
MAX_T5_LENGTH = 512  # diffusers' check_inputs limit


def read_model_index(folder: str | Path) -> dict[str, str | None]:
    """model_index.json of an SD3 pipeline folder -> {component: class name or None}, validated: every
    required component is listed with a known class and has its sub-folder."""
    folder = Path(folder)
    path = folder / "model_index.json"
    index = read_json(path, f"{folder} has no model_index.json; point --model at a diffusers Stable Diffusion 3 folder")
    out: dict[str, str | None] = {}
    for name, allowed in COMPONENTS.items():
        entry = index.get(name)
        cls = entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 else None
        if cls is None:
            if name in OPTIONAL:
                out[name] = None
                continue
            raise LaddError(f"{path} lists no {name!r}; an SD3 pipeline needs it (re-save it with diffusers)")
        if cls not in allowed:
            raise LaddError(
                f"{path}: {name} is a {cls!r}, which this pipeline does not implement; expected "
                f"{' or '.join(repr(a) for a in allowed)} (is this a Stable Diffusion 3 / 3.5 checkpoint?)"
            )
        if not (folder / name).is_dir():
            raise LaddError(
                f"{path} lists the component {name!r} ({cls}) but {folder / name} is missing; "
                "copy or re-download that sub-folder"
            )
        out[name] = cls
    if out["text_encoder_3"] is None:
        out["tokenizer_3"] = None
    elif out["tokenizer_3"] is None:
        raise LaddError(f"{path} lists text_encoder_3 but no tokenizer_3; add the T5 tokenizer folder")
    return out


def read_scheduler_config(folder: str | Path) -> dict[str, Any]:
    """scheduler_config.json of a FlowMatchEulerDiscreteScheduler, checked to use only the static shift."""
    path = Path(folder) / "scheduler_config.json"
    config = read_json(path, f"{Path(folder)} has no scheduler_config.json; re-save the pipeline's scheduler")
    used = [k for k in _UNSUPPORTED_SCHEDULER_OPTIONS if config.get(k)]
    if used:
        raise LaddError(
            f"{path} sets {used}, which the JAX sampler does not implement (it reproduces SD3's static shift); "
            "set them to false/null"
        )
    return config


def size_rules(folder: str | Path) -> tuple[int, int]:
    """(what height and width must be multiples of, the default size), from the configs alone, without loading."""
    from ladd_jax.convert.vae import read_vae_config

    folder = Path(folder)
    read_model_index(folder)
    path = folder / "transformer" / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LaddError(f"cannot read {path} ({e}); re-download it") from e
    downscale = read_vae_config(folder / "vae").downscale
    return downscale * int(config.get("patch_size", 2)), downscale * int(config.get("sample_size", 128))


def check_size(height: int, width: int, multiple: int) -> None:
    """diffusers' rule: both sides divisible by `multiple` = vae_scale_factor * patch_size."""
    if height < multiple or width < multiple or height % multiple or width % multiple:
        raise LaddError(
            f"height and width must be positive multiples of {multiple} (the VAE's downscale factor times the "
            f"transformer's patch size), got {height}x{width}; e.g. use "
            f"{max(multiple, height - height % multiple)}x{max(multiple, width - width % multiple)}"
        )


def local_data_mesh() -> Mesh:
    devices = jax.local_devices()
    return jax.make_mesh((len(devices),), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def cast_floats(tree: Any, dtype: Any) -> Any:
    """Floating leaves to `dtype` (bf16 halves the memory of the 4.7B-param T5-XXL); the rest as is."""
    if dtype == jnp.float32:
        return tree
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


# The jitted models, one per (config, dtype): pipelines loaded from the same architecture share compilations.


@functools.cache
def _transformer_fn(config: Any) -> Callable:
    from ladd_jax.models.mmdit import MMDiT

    model = MMDiT(config)
    return jax.jit(lambda p, x, t, ctx, pooled: model.apply({"params": p}, x, t, ctx, pooled))


@functools.cache
def _decode_fn(config: Any, dtype: str) -> Callable:
    from ladd_jax.models.vae import AutoencoderKL, unscale_latents

    model = AutoencoderKL(config, DTYPES[dtype])

    def decode(p, latents):
        z = unscale_latents(latents.astype(jnp.float32), config)
        images = model.apply({"params": p}, z, method=AutoencoderKL.decode)
        return jnp.clip(images / 2 + 0.5, 0.0, 1.0)

    return jax.jit(decode)


@functools.cache
def vae_encode_fn(config: Any, dtype: str, kind: str = "mean") -> Callable:
    """(params, images [B, H, W, 3] in [-1, 1], seeds [B]) -> scaled latents: the VAE posterior's mean
    (`kind="mean"`) or a draw from it (`"sample"`, one key per image, independent of the batch)."""
    from ladd_jax.models.vae import AutoencoderKL, sample_latents, scale_latents

    model = AutoencoderKL(config, DTYPES[dtype])

    def encode(params, images, seeds):
        mean, logvar = model.apply({"params": params}, images, method=AutoencoderKL.encode)
        if kind == "sample":  # one key per image, so an image's draw does not depend on its batch
            draw = lambda m, lv, s: sample_latents(m[None], lv[None], jax.random.key(s))[0]
            mean = jax.vmap(draw)(mean, logvar, seeds)
        return scale_latents(mean, config).astype(jnp.float32)

    return jax.jit(encode)


@functools.cache
def _clip_fn(config: Any, dtype: str) -> Callable:
    from ladd_jax.models.clip import CLIPTextEncoder

    model = CLIPTextEncoder(config, DTYPES[dtype])

    def encode(p, ids):
        out = model.apply({"params": p}, ids)
        # diffusers with clip_skip=None: the penultimate layer's output, and the projected pooled token.
        return out.hidden_states[-2].astype(jnp.float32), out.text_embeds.astype(jnp.float32)

    return jax.jit(encode)


@functools.cache
def _t5_fn(config: Any, dtype: str) -> Callable:
    from ladd_jax.models.t5 import T5Encoder

    model = T5Encoder(config, DTYPES[dtype])
    # No attention mask: diffusers runs T5 over the padded ids without one.
    return jax.jit(lambda p, ids: model.apply({"params": p}, ids).astype(jnp.float32))


class SD3Pipeline:
    """SD3 text-to-image: `SD3Pipeline.from_pretrained(folder)(["a photo of a cat"], height=..., width=...)`."""

    def __init__(
        self, folder: Path, dtype: str, classes: dict[str, str | None], transformer: tuple[Any, Any] | None = None
    ):
        # Imported here: transformers and the converters are only needed once a pipeline is built.
        import transformers

        from ladd_jax.convert.clip import load_clip
        from ladd_jax.convert.mmdit import load_mmdit
        from ladd_jax.convert.t5 import load_t5
        from ladd_jax.convert.vae import load_vae

        self.folder, self.dtype = folder, dtype
        compute = DTYPES[dtype]
        self.mesh = local_data_mesh()
        replicated = NamedSharding(self.mesh, P())
        put = lambda tree: jax.device_put(cast_floats(tree, compute), replicated)

        def tokenizer(name: str):
            return getattr(transformers, classes[name]).from_pretrained(folder / name)

        self.scheduler_config = read_scheduler_config(folder / "scheduler")
        self.shift = float(self.scheduler_config.get("shift", 1.0))
        self.num_train_timesteps = int(self.scheduler_config.get("num_train_timesteps", 1000))

        if transformer is None:
            self.transformer_config, params = load_mmdit(folder / "transformer", dtype=dtype)
            self.transformer_params = put(params)
        else:  # already on the devices, placed by the caller (e.g. the trainer's sharded teacher)
            self.transformer_config, self.transformer_params = transformer
        self._transformer = _transformer_fn(self.transformer_config)

        self.vae_config, params = load_vae(folder / "vae")
        self.vae_params = put(params)
        self._decode = _decode_fn(self.vae_config, dtype)
        self._vae_encode = vae_encode_fn(self.vae_config, dtype)

        self.tokenizers = [tokenizer("tokenizer"), tokenizer("tokenizer_2")]
        self.clip_configs, self.clip_params = [], []
        for name in ("text_encoder", "text_encoder_2"):
            config, params = load_clip(folder / name)
            self.clip_configs.append(config)
            self.clip_params.append(put(params))
        self._clip = [_clip_fn(config, dtype) for config in self.clip_configs]

        self.t5_config = self.t5_params = self.t5_tokenizer = self._t5 = None
        if classes["text_encoder_3"] is not None:
            self.t5_config, params = load_t5(folder / "text_encoder_3")
            self.t5_params = put(params)
            self.t5_tokenizer = tokenizer("tokenizer_3")
            self._t5 = _t5_fn(self.t5_config, dtype)

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, dtype: str = "float32", transformer: tuple[Any, Any] | None = None
    ) -> SD3Pipeline:
        """Loads a local diffusers SD3 / SD3.5 pipeline folder. `dtype` ("float32", "bfloat16", "float16") is the
        compute dtype of every model, and the dtype their params are kept in on the devices. `transformer`:
        (MMDiTConfig, params already on the devices) to use instead of loading the folder's transformer."""
        if dtype not in DTYPES:
            raise LaddError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
        folder = Path(folder)
        if not folder.is_dir():
            raise LaddError(f"{folder} is not a folder; point at a diffusers Stable Diffusion 3 pipeline folder")
        return cls(folder, dtype, read_model_index(folder), transformer)

    def with_transformer(self, config: Any, params: Any) -> SD3Pipeline:
        """This pipeline (its text encoders, VAE and scheduler, shared) with another transformer: `config` and
        params already on the devices, e.g. a student deeper than its teacher."""
        pipe = copy.copy(self)
        pipe.transformer_config, pipe.transformer_params = config, params
        pipe._transformer = _transformer_fn(config)
        return pipe

    # ------------------------------------------------------------------------------------------------ properties

    @property
    def vae_scale_factor(self) -> int:
        return self.vae_config.downscale

    @property
    def latent_channels(self) -> int:
        """Channels of the latents the sampler integrates (the transformer's output)."""
        return self.transformer_config.out_channels

    @property
    def cond_channels(self) -> int:
        """Conditioning channels the transformer takes beside the latents (inpainting: masked image + mask;
        editing: the source image), 0 for a text-to-image model."""
        return self.transformer_config.in_channels - self.transformer_config.out_channels

    @property
    def patch_size(self) -> int:
        return self.transformer_config.patch_size

    @property
    def default_size(self) -> int:
        """diffusers' default height and width: the transformer's sample_size in pixels (1024 for SD3)."""
        return self.transformer_config.sample_size * self.vae_scale_factor

    @property
    def clip_max_length(self) -> int:
        # diffusers pads and truncates both CLIPs to the first tokenizer's model_max_length (77).
        return min(int(self.tokenizers[0].model_max_length), self.clip_configs[0].max_position_embeddings)

    def _shard(self, x: Any) -> jax.Array:
        """On the devices: split along the "data" axis when the batch divides evenly, else replicated."""
        x = jnp.asarray(x)
        spec = P("data") if x.shape[0] % self.mesh.devices.size == 0 else P()
        return jax.device_put(x, NamedSharding(self.mesh, spec))

    # ------------------------------------------------------------------------------------------------- text

    def _tokenize(self, tokenizer, prompts: list[str], max_length: int, what: str) -> np.ndarray:
        ids = tokenizer(
            prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="np"
        ).input_ids
        # One token past the limit tells whether anything was cut, without transformers' over-length warning.
        longer = tokenizer(prompts, truncation=True, max_length=max_length + 1).input_ids
        if any(len(row) > max_length for row in longer):
            logger.warning("a prompt longer than %d %s tokens was truncated", max_length, what)
        return ids.astype(np.int32)

    def _encode(self, prompts: list[str], max_sequence_length: int) -> tuple[jax.Array, jax.Array]:
        """(prompt_embeds [B, 77 + max_sequence_length, joint_dim], pooled [B, P]) for one list of prompts."""
        embeds, pooled = [], []
        for tokenizer, params, fn, what in zip(
            self.tokenizers, self.clip_params, self._clip, ("CLIP-L", "CLIP-G"), strict=True
        ):
            ids = self._tokenize(tokenizer, prompts, self.clip_max_length, what)
            e, p = fn(params, self._shard(ids))
            embeds.append(e)
            pooled.append(p)
        clip = jnp.concatenate(embeds, axis=-1)
        width = self.transformer_config.joint_attention_dim
        if self._t5 is None:
            t5 = jnp.zeros((len(prompts), max_sequence_length, width), jnp.float32)
        else:
            ids = self._tokenize(self.t5_tokenizer, prompts, max_sequence_length, "T5")
            t5 = self._t5(self.t5_params, self._shard(ids))
            width = t5.shape[-1]
        if clip.shape[-1] > width:
            raise LaddError(
                f"the CLIP embeddings are {clip.shape[-1]} wide, wider than T5's {width}; the text encoders do not "
                "belong to this transformer"
            )
        clip = jnp.pad(clip, ((0, 0), (0, 0), (0, width - clip.shape[-1])))
        return jnp.concatenate([clip, t5], axis=1), jnp.concatenate(pooled, axis=-1)

    def encode_prompt(
        self,
        prompts: str | Sequence[str],
        negative_prompts: str | Sequence[str] | None = None,
        max_sequence_length: int = 256,
        do_classifier_free_guidance: bool = True,
    ) -> tuple[jax.Array, jax.Array | None, jax.Array, jax.Array | None]:
        """diffusers' `StableDiffusion3Pipeline.encode_prompt` (clip_skip None, one image per prompt):
        (prompt_embeds, negative_prompt_embeds, pooled, negative_pooled), float32; the negatives are None
        without guidance. The negative prompt defaults to "" for every prompt."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise LaddError("no prompt given; pass at least one")
        if not 1 <= max_sequence_length <= MAX_T5_LENGTH:
            raise LaddError(f"max_sequence_length must be in 1..{MAX_T5_LENGTH}, got {max_sequence_length}")
        embeds, pooled = self._encode(prompts, max_sequence_length)
        if not do_classifier_free_guidance:
            return embeds, None, pooled, None
        negative = negative_prompts or ""
        negative = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
        if len(negative) != len(prompts):
            raise LaddError(
                f"{len(negative)} negative prompts for {len(prompts)} prompts; give one per prompt or a single one"
            )
        neg_embeds, neg_pooled = self._encode(negative, max_sequence_length)
        return embeds, neg_embeds, pooled, neg_pooled

    # ----------------------------------------------------------------------------------------------- sampling

    def check_size(self, height: int, width: int) -> None:
        """diffusers' rule: both sides divisible by vae_scale_factor * patch_size."""
        check_size(height, width, self.vae_scale_factor * self.patch_size)

    def initial_latents(self, batch: int, height: int, width: int, seed: int | Sequence[int] = 0) -> jax.Array:
        """Standard normal NHWC latents from `jax.random` (not torch's generator, so the same seed gives other
        noise than diffusers). An int seeds the whole batch; a sequence gives image i the key of seed[i], so an
        image does not depend on what else is in its batch."""
        shape = (height // self.vae_scale_factor, width // self.vae_scale_factor, self.latent_channels)
        if isinstance(seed, (int, np.integer)):
            return jax.random.normal(jax.random.key(int(seed)), (batch, *shape), jnp.float32)
        seeds = [int(s) for s in seed]
        if len(seeds) != batch:
            raise LaddError(f"{len(seeds)} seeds for {batch} images; give one seed per image or a single one")
        return jnp.stack([jax.random.normal(jax.random.key(s), shape, jnp.float32) for s in seeds])

    def __call__(
        self,
        prompts: str | Sequence[str],
        negative_prompts: str | Sequence[str] | None = None,
        num_inference_steps: int = 28,
        guidance_scale: float = 7.0,
        height: int | None = None,
        width: int | None = None,
        latents: Any = None,
        seed: int | Sequence[int] = 0,
        max_sequence_length: int = 256,
        output_type: str = "np",
        progress: bool | Callable[[int, int], None] = False,
        cond: Any = None,
    ) -> np.ndarray:
        """Text to images [B, H, W, 3] float32 in [0, 1] (`output_type="np"`), or the sampler's final latents
        [B, h, w, C] NHWC before any VAE scaling (`output_type="latent"`, as diffusers gives them).

        height/width default to the model's size (1024 for SD3). `latents`: NHWC initial noise; without it,
        noise comes from `initial_latents(..., seed)`. `progress`: True for a tqdm bar over the steps, or a
        callback(step, total). guidance_scale <= 1 runs without classifier-free guidance, as diffusers.
        `cond`: a conditioned model's conditioning latents [B, h, w, cond_channels] (conditioning.py makes them
        from images and masks), given to both branches of classifier-free guidance."""
        if output_type not in ("np", "latent"):
            raise LaddError(f"output_type must be 'np' or 'latent', got {output_type!r}")
        height = height or self.default_size
        width = width or self.default_size
        self.check_size(height, width)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        batch = len(prompts)
        self._sigmas(num_inference_steps)  # fails before any encoding
        if latents is None:
            x = self.initial_latents(batch, height, width, seed)
        else:
            x = jnp.asarray(latents, jnp.float32)
            want = (batch, height // self.vae_scale_factor, width // self.vae_scale_factor)
            want += (self.latent_channels,)
            if x.shape != want:
                raise LaddError(f"latents have shape {x.shape}; {height}x{width} images need NHWC latents {want}")

        embeds, neg_embeds, pooled, neg_pooled = self.encode_prompt(
            prompts, negative_prompts, max_sequence_length, do_classifier_free_guidance=guidance_scale > 1.0
        )
        x = self.denoise(x, embeds, pooled, neg_embeds, neg_pooled, num_inference_steps, guidance_scale, progress, cond)
        if output_type == "latent":
            return np.asarray(x)
        return self.decode(x)

    def decode(self, latents: Any) -> np.ndarray:
        """NHWC latents as the sampler gives them -> images [B, H, W, 3] float32 in [0, 1]."""
        return np.asarray(self._decode(self.vae_params, self._shard(latents)))

    def _sigmas(self, num_inference_steps: int) -> np.ndarray:
        try:
            return flow_match_sigmas(num_inference_steps, self.shift, self.num_train_timesteps)
        except ValueError as e:
            raise LaddError(f"{e}; use a positive number of steps") from None

    def velocity(self, x: Any, t: Any, embeds: Any, pooled: Any, params: Any = None, cond: Any = None) -> jax.Array:
        """The transformer's velocity for NHWC latents `x` at flow times `t` [B] with conditioning from
        `encode_prompt` (and a conditioned model's `cond` latents); `params` replaces the folder's transformer
        weights (e.g. a student's in training)."""
        params = self.transformer_params if params is None else params
        x = self.with_cond(x, cond)
        return self._transformer(params, *(self._shard(a) for a in (x, t, embeds, pooled)))

    def with_cond(self, x: Any, cond: Any) -> jax.Array:
        """The transformer's input: latents `x` [B, h, w, C] with the conditioning latents on the channel axis
        (`cond` [b, h, w, cond_channels], b dividing B: repeated, as the doubled batch of guidance needs)."""
        x = jnp.asarray(x)
        if cond is None:
            if self.cond_channels:
                raise LaddError(
                    f"{self.folder}'s transformer takes {self.cond_channels} conditioning channels beside the latents "
                    "(an inpainting or editing model): pass cond (ladd-jax sample --inpaint IMAGE --mask MASK, or "
                    "--edit IMAGE)"
                )
            return x
        cond = jnp.asarray(cond, x.dtype)
        if not self.cond_channels:
            raise LaddError(f"{self.folder}'s transformer takes no conditioning latents; sample it without cond")
        if cond.ndim != 4 or cond.shape[1:] != (*x.shape[1:3], self.cond_channels) or x.shape[0] % cond.shape[0]:
            raise LaddError(
                f"cond has shape {cond.shape}; latents {x.shape} need [B, {x.shape[1]}, {x.shape[2]}, "
                f"{self.cond_channels}] (one per image, at the latents' size)"
            )
        return jnp.concatenate([x, jnp.tile(cond, (x.shape[0] // cond.shape[0], 1, 1, 1))], axis=-1)

    def encode_images(self, images: Any) -> jax.Array:
        """Images [B, H, W, 3] in [-1, 1] -> scaled latents [B, h, w, C] as the transformer sees them (the VAE
        posterior's mean, shifted and scaled)."""
        images = self._shard(jnp.asarray(images, jnp.float32))
        return self._vae_encode(self.vae_params, images, jnp.zeros(images.shape[0], jnp.int32))

    def denoise(
        self,
        latents: Any,
        embeds: jax.Array,
        pooled: jax.Array,
        neg_embeds: jax.Array | None = None,
        neg_pooled: jax.Array | None = None,
        num_inference_steps: int = 28,
        guidance_scale: float = 7.0,
        progress: bool | Callable[[int, int], None] = False,
        cond: Any = None,
    ) -> jax.Array:
        """The sampler alone: NHWC initial `latents` -> the final latents (what `output_type="latent"` gives), for
        conditioning from `encode_prompt` (the negatives are needed when guidance_scale > 1) and a conditioned
        model's `cond` latents. For callers that keep the text embeddings, e.g. the synthetic-data job."""
        sigmas = self._sigmas(num_inference_steps)
        if guidance_scale > 1.0:  # diffusers' order: [uncond; cond], which sample_euler's contract expects
            if neg_embeds is None or neg_pooled is None:
                raise LaddError("guidance_scale > 1 needs the negative embeddings; encode with guidance on")
            embeds = jnp.concatenate([neg_embeds, embeds])
            pooled = jnp.concatenate([neg_pooled, pooled])
        context, pooled = self._shard(embeds), self._shard(pooled)
        self.with_cond(latents, cond)  # fails before any step

        def velocity(x: jax.Array, t: jax.Array) -> jax.Array:
            x = self.with_cond(x, cond)
            return self._transformer(self.transformer_params, self._shard(x), self._shard(t), context, pooled)

        callback, bar = (progress or None), None
        if progress is True:
            from tqdm.auto import tqdm

            bar = tqdm(total=num_inference_steps, desc="sampling", unit="step")
            callback = lambda i, n: bar.update(1)
        try:
            return sample_euler(velocity, self._shard(latents), sigmas, guidance_scale, callback)
        finally:
            if bar is not None:
                bar.close()
