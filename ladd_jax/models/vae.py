"""diffusers' `AutoencoderKL` (the SD3 16-channel VAE among others) in Flax linen, NHWC.

Images are [B, H, W, in_channels] in [-1, 1]; latents are [B, H / 2**(n-1), W / 2**(n-1), latent_channels]
for n blocks. Params are fp32; `dtype` is the compute dtype, with GroupNorm statistics and the attention
softmax always in fp32. Module and param names mirror diffusers' (`down_blocks.0.resnets.1` ->
`down_blocks_0/resnets_1`), which keeps the conversion table in `ladd_jax.convert.vae` readable.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ladd_jax.errors import LaddError
from ladd_jax.models.group_norm import GroupNorm

DOWN_BLOCK_TYPES = ("DownEncoderBlock2D",)
UP_BLOCK_TYPES = ("UpDecoderBlock2D",)
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # torch.nn.GELU() is the exact erf form
    "relu": jax.nn.relu,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
}
RESNET_EPS = 1e-6  # diffusers' Encoder/Decoder pass resnet_eps=1e-6 to every block and norm
LOGVAR_RANGE = (-30.0, 20.0)  # DiagonalGaussianDistribution's clamp


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """The fields of diffusers' `AutoencoderKL` config, with diffusers' defaults."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    norm_num_groups: int = 32
    act_fn: str = "silu"
    down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
    up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    scaling_factor: float = 0.18215
    shift_factor: float | None = None
    sample_size: int | tuple[int, ...] = 32
    # Carried for a faithful config round trip; the model and scale_latents do not use them.
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    force_upcast: bool = True

    def __post_init__(self):
        for name in ("block_out_channels", "down_block_types", "up_block_types", "latents_mean", "latents_std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.sample_size, list):
            object.__setattr__(self, "sample_size", tuple(self.sample_size))
        self._validate()

    def _validate(self) -> None:
        problems = []
        bad = sorted({t for t in self.down_block_types if t not in DOWN_BLOCK_TYPES})
        bad += sorted({t for t in self.up_block_types if t not in UP_BLOCK_TYPES})
        if bad:
            problems.append(f"unsupported block types {bad} (supported: {DOWN_BLOCK_TYPES + UP_BLOCK_TYPES})")
        n = len(self.block_out_channels)
        if n == 0 or len(self.down_block_types) != n or len(self.up_block_types) != n:
            problems.append(
                f"block_out_channels, down_block_types and up_block_types must have the same non-zero length, got "
                f"{n}, {len(self.down_block_types)} and {len(self.up_block_types)}"
            )
        if self.act_fn not in ACTIVATIONS:
            problems.append(f"unsupported act_fn {self.act_fn!r} (supported: {sorted(ACTIVATIONS)})")
        if self.layers_per_block < 1:
            problems.append(f"layers_per_block must be >= 1, got {self.layers_per_block}")
        if self.norm_num_groups < 1 or any(c % self.norm_num_groups for c in self.block_out_channels):
            problems.append(
                f"every block_out_channels {self.block_out_channels} must be a multiple of norm_num_groups "
                f"{self.norm_num_groups}"
            )
        if min(self.in_channels, self.out_channels, self.latent_channels) < 1:
            problems.append("in_channels, out_channels and latent_channels must be positive")
        if problems:
            raise LaddError("invalid AutoencoderKL config: " + "; ".join(problems))

    @property
    def downscale(self) -> int:
        """Pixels per latent along each axis."""
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def preset(cls, name: str) -> VAEConfig:
        """Known VAEs by name: "sd3" (SD3 / SD3.5's 16-channel VAE)."""
        if name == "sd3":
            return cls(
                latent_channels=16,
                block_out_channels=(128, 256, 512, 512),
                layers_per_block=2,
                norm_num_groups=32,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                use_quant_conv=False,
                use_post_quant_conv=False,
                scaling_factor=1.5305,
                shift_factor=0.0609,
                sample_size=1024,
            )
        raise LaddError(f"unknown VAE preset {name!r}; known: ['sd3']")

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> VAEConfig:
        """From a diffusers `config.json` dict; missing fields take diffusers' defaults, `_`-keys are ignored."""
        class_name = config.get("_class_name", "AutoencoderKL")
        if class_name != "AutoencoderKL":
            raise LaddError(f"config describes a {class_name}, not an AutoencoderKL; point to the model's vae folder")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})

    def to_diffusers(self) -> dict[str, Any]:
        """A diffusers `config.json` dict (with `_class_name`), lists for tuples."""
        out: dict[str, Any] = {"_class_name": "AutoencoderKL"}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def scale_latents(z: jax.Array, config: VAEConfig) -> jax.Array:
    """VAE latents -> diffusion-model latents, SD3's convention: (z - shift) * scaling."""
    return (z - (config.shift_factor or 0.0)) * config.scaling_factor


def unscale_latents(latents: jax.Array, config: VAEConfig) -> jax.Array:
    """Diffusion-model latents -> VAE latents: latents / scaling + shift."""
    return latents / config.scaling_factor + (config.shift_factor or 0.0)


def sample_latents(mean: jax.Array, logvar: jax.Array, rng: jax.Array) -> jax.Array:
    """A draw from the diagonal Gaussian `encode` describes (diffusers' `latent_dist.sample()`)."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape, mean.dtype)


# ---------------------------------------------------------------- layers


def _conv(features: int, kernel: int, dtype: Any, name: str, stride: int = 1, padding: int | None = None) -> nn.Conv:
    pad = kernel // 2 if padding is None else padding
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


class Conv(nn.Module):
    """A 3x3 conv held as `conv`, as diffusers' Downsample2D/Upsample2D hold theirs."""

    features: int
    stride: int = 1
    padding: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _conv(self.features, 3, self.dtype, "conv", stride=self.stride, padding=self.padding)(x)


class ResnetBlock(nn.Module):
    """diffusers' `ResnetBlock2D` without a time embedding (output_scale_factor 1, dropout 0)."""

    out_channels: int
    groups: int
    act_fn: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.act_fn]
        h = act(GroupNorm(self.groups, RESNET_EPS, name="norm1")(x))
        h = _conv(self.out_channels, 3, self.dtype, "conv1")(h)
        h = act(GroupNorm(self.groups, RESNET_EPS, name="norm2")(h))
        h = _conv(self.out_channels, 3, self.dtype, "conv2")(h)
        if x.shape[-1] != self.out_channels:
            x = _conv(self.out_channels, 1, self.dtype, "conv_shortcut")(x)
        return x + h


class Attention(nn.Module):
    """The mid block's single-head self-attention: GroupNorm, q/k/v, softmax (fp32), out, residual."""

    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        y = GroupNorm(self.groups, RESNET_EPS, name="group_norm")(x).reshape(b, h * w, c)
        dense = lambda name: nn.Dense(c, dtype=self.dtype, param_dtype=jnp.float32, name=name)
        q, k, v = dense("to_q")(y), dense("to_k")(y), dense("to_v")(y)
        logits = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(c)
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        y = jnp.einsum("bqk,bkc->bqc", probs, v)
        y = dense("to_out_0")(y).reshape(b, h, w, c)
        return x + y  # rescale_output_factor is 1 in the VAE


class MidBlock(nn.Module):
    """diffusers' `UNetMidBlock2D` with one layer: resnet, [attention], resnet."""

    groups: int
    act_fn: str
    add_attention: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        x = ResnetBlock(c, self.groups, self.act_fn, self.dtype, name="resnets_0")(x)
        if self.add_attention:
            x = Attention(self.groups, self.dtype, name="attentions_0")(x)
        return ResnetBlock(c, self.groups, self.act_fn, self.dtype, name="resnets_1")(x)


class DownEncoderBlock(nn.Module):
    """diffusers' `DownEncoderBlock2D`: resnets, then (but for the last block) a stride-2 conv."""

    out_channels: int
    num_layers: int
    groups: int
    act_fn: str
    add_downsample: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.num_layers):
            x = ResnetBlock(self.out_channels, self.groups, self.act_fn, self.dtype, name=f"resnets_{j}")(x)
        if self.add_downsample:
            # The encoder's Downsample2D has padding=0: pad right/bottom by one, then a stride-2 VALID conv.
            x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
            x = Conv(self.out_channels, stride=2, padding=0, dtype=self.dtype, name="downsamplers_0")(x)
        return x


class UpDecoderBlock(nn.Module):
    """diffusers' `UpDecoderBlock2D`: resnets, then (but for the last block) nearest x2 and a conv."""

    out_channels: int
    num_layers: int
    groups: int
    act_fn: str
    add_upsample: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.num_layers):
            x = ResnetBlock(self.out_channels, self.groups, self.act_fn, self.dtype, name=f"resnets_{j}")(x)
        if self.add_upsample:
            x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # F.interpolate(scale_factor=2, mode="nearest")
            x = Conv(self.out_channels, dtype=self.dtype, name="upsamplers_0")(x)
        return x


class Encoder(nn.Module):
    """diffusers' `vae.Encoder` with double_z: images -> 2 * latent_channels moments."""

    config: VAEConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        g, act, boc = cfg.norm_num_groups, cfg.act_fn, cfg.block_out_channels
        x = _conv(boc[0], 3, self.dtype, "conv_in")(x.astype(self.dtype))
        for i, channels in enumerate(boc):
            down = i < len(boc) - 1
            x = DownEncoderBlock(channels, cfg.layers_per_block, g, act, down, self.dtype, name=f"down_blocks_{i}")(x)
        x = MidBlock(g, act, cfg.mid_block_add_attention, self.dtype, name="mid_block")(x)
        x = jax.nn.silu(GroupNorm(g, RESNET_EPS, name="conv_norm_out")(x))  # conv_act is always SiLU, whatever act_fn
        return _conv(2 * cfg.latent_channels, 3, self.dtype, "conv_out")(x)


class Decoder(nn.Module):
    """diffusers' `vae.Decoder` (group norm): latents -> images."""

    config: VAEConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        cfg = self.config
        g, act, rev = cfg.norm_num_groups, cfg.act_fn, cfg.block_out_channels[::-1]
        x = _conv(rev[0], 3, self.dtype, "conv_in")(z.astype(self.dtype))
        x = MidBlock(g, act, cfg.mid_block_add_attention, self.dtype, name="mid_block")(x)
        for i, channels in enumerate(rev):
            up = i < len(rev) - 1
            x = UpDecoderBlock(channels, cfg.layers_per_block + 1, g, act, up, self.dtype, name=f"up_blocks_{i}")(x)
        x = jax.nn.silu(GroupNorm(g, RESNET_EPS, name="conv_norm_out")(x))
        return _conv(cfg.out_channels, 3, self.dtype, "conv_out")(x)


class AutoencoderKL(nn.Module):
    """diffusers' `AutoencoderKL`: `encode` images -> (mean, logvar), `decode` latents -> images (fp32 out).

    Latents here are the VAE's own (unscaled); see `scale_latents` for the diffusion model's.
    """

    config: VAEConfig
    dtype: Any = jnp.float32

    def setup(self):
        cfg = self.config
        self.encoder = Encoder(cfg, self.dtype)
        self.decoder = Decoder(cfg, self.dtype)
        self.quant_conv = _conv(2 * cfg.latent_channels, 1, self.dtype, "quant_conv") if cfg.use_quant_conv else None
        self.post_quant_conv = (
            _conv(cfg.latent_channels, 1, self.dtype, "post_quant_conv") if cfg.use_post_quant_conv else None
        )

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[B, H, W, C] images in [-1, 1] -> fp32 (mean, logvar) of the latent distribution, logvar clamped."""
        moments = self.encoder(images)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def decode(self, z: jax.Array) -> jax.Array:
        """[B, h, w, latent_channels] (unscaled) latents -> fp32 images, nominally in [-1, 1]."""
        z = z.astype(self.dtype)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z).astype(jnp.float32)

    def __call__(self, images: jax.Array) -> jax.Array:
        """Reconstruction from the mean latent; also what `init` traces, creating every param."""
        mean, _ = self.encode(images)
        return self.decode(mean)


def init_vae(config: VAEConfig, rng: jax.Array) -> dict:
    """Random params (flax default initialisers) for `config`."""
    x = jnp.zeros((1, config.downscale, config.downscale, config.in_channels), jnp.float32)
    return AutoencoderKL(config).init(rng, x)["params"]


def abstract_vae_params(config: VAEConfig) -> dict:
    """The param tree of `config` as `jax.ShapeDtypeStruct`s, without allocating."""
    return jax.eval_shape(functools.partial(init_vae, config), jax.random.key(0))
