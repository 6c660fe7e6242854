"""DINOv2 (Oquab et al. 2023, the self-supervised ViT) in Flax linen: the function of transformers' `Dinov2Model`.

`Dinov2(config).apply({"params": p}, pixels)` with pixels [B, H, W, C] float (NHWC: transpose the NCHW
`pixel_values` of transformers' image processor, which are already normalised) returns the last hidden state
[B, 1 + h * w, D]: the CLS token first, then the patch tokens row by row, after the final layer norm, as
`Dinov2Model(...).last_hidden_state`. H and W may be any multiples of the patch size, square or not: the position
embeddings are resampled to the h x w patch grid as transformers' `interpolate_pos_encoding` does it.
`layers=(k, ...)` also returns entries of transformers' `hidden_states` (see `Dinov2.__call__`).

Params are fp32; `config.dtype` sets the compute dtype, while layer norms, softmax and the position-embedding
resampling always run in fp32.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ladd_jax.errors import LaddError
from ladd_jax.models.clip import HF_ACTIVATIONS, check_attention_layout, torch_layer_norm

_HF_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "mlp_ratio",
    "hidden_act",
    "layer_norm_eps",
    "image_size",
    "patch_size",
    "num_channels",
    "qkv_bias",
    "layerscale_value",
    "use_swiglu_ffn",
    "use_mask_token",
)

# torch's bicubic kernel coefficient; jax.image.resize's cubic uses Keys' a = -0.5, a different function.
_CUBIC_A = -0.75


@dataclasses.dataclass(frozen=True)
class Dinov2Config:
    """The architecture fields of transformers' `Dinov2Config` (same names, same defaults: dinov2-base at 224),
    plus `dtype`, the compute dtype, which is not part of the checkpoint."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    mlp_ratio: float = 4
    hidden_act: str = "gelu"  # the MLP's activation; the SwiGLU FFN always uses SiLU
    layer_norm_eps: float = 1e-6
    image_size: int = 224  # the position embeddings' grid is (image_size // patch_size) squared
    patch_size: int = 14
    num_channels: int = 3
    qkv_bias: bool = True
    layerscale_value: float = 1.0  # the layer scales' initial value (checkpoints hold the trained ones)
    use_swiglu_ffn: bool = False  # ViT-g
    use_mask_token: bool = True  # whether the checkpoint holds `embeddings.mask_token`
    dtype: str = "float32"  # activations and matmuls; params stay fp32

    def __post_init__(self):
        check_attention_layout(self.hidden_act, self.hidden_size, self.num_attention_heads)
        for name in ("image_size", "patch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise LaddError(f"{name} must be one positive integer (square images and patches), got {value!r}")
        try:
            floating = jnp.issubdtype(jnp.dtype(self.dtype), jnp.floating)
        except TypeError:
            floating = False
        if not floating:
            raise LaddError(f"dtype={self.dtype!r} is not a floating dtype; use e.g. 'float32' or 'bfloat16'")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def ffn_hidden_size(self) -> int:
        """The FFN's hidden width: hidden_size * mlp_ratio, or for SwiGLU two thirds of it rounded up to a
        multiple of 8 (transformers' `Dinov2SwiGLUFFN`; 4096 for ViT-g)."""
        width = int(self.hidden_size * self.mlp_ratio)
        return (int(width * 2 / 3) + 7) // 8 * 8 if self.use_swiglu_ffn else width

    @property
    def position_grid(self) -> int:
        """The side of the square patch grid the position embeddings were trained on."""
        return self.image_size // self.patch_size

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> Dinov2Config:
        """From a transformers config dict (config.json); absent fields take transformers' defaults. The compute
        dtype stays float32 (config.json's "dtype" is the stored weights' dtype): `dataclasses.replace` it."""
        return cls(**{k: config[k] for k in _HF_FIELDS if k in config})

    def to_hf(self) -> dict[str, Any]:
        """A dict transformers' `Dinov2Config` accepts, naming `Dinov2Model`."""
        out = {k: getattr(self, k) for k in _HF_FIELDS}
        return {"architectures": ["Dinov2Model"], "model_type": "dinov2", **out}


def bicubic_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] fp32 M such that M @ x resamples x along its first axis as torch's
    `interpolate(x, size=..., mode="bicubic", align_corners=False)` does (no antialias, also when shrinking).

    Step for step torch's CPU kernel and in its fp32 arithmetic, so the weights agree with torch's to a few fp32
    ulps (fp64 ones would differ by up to ~3e-6): source coordinate in / out * (i + 0.5) - 0.5, fraction t past
    its floor, the 4 taps floor - 1 .. floor + 2 weighted by the cubic convolution kernel, taps beyond an edge
    reading the edge sample."""
    f32, a = np.float32, np.float32(_CUBIC_A)
    near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # the kernel at distance x <= 1
    far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # the kernel at distance 1 < x < 2
    src = f32(in_size) / f32(out_size) * (np.arange(out_size, dtype=f32) + f32(0.5)) - f32(0.5)
    base = np.floor(src)
    t = src - base
    weights = np.stack([far(t + 1), near(t), near(1 - t), far((1 - t) + 1)], axis=1)
    taps = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3), 0, in_size - 1)
    matrix = np.zeros((out_size, in_size), f32)
    np.add.at(matrix, (np.arange(out_size)[:, None], taps), weights)
    return matrix


def interpolate_pos_encoding(position_embeddings: jax.Array, h: int, w: int) -> jax.Array:
    """[1, 1 + S * S, D] position embeddings (CLS first) -> [1, 1 + h * w, D] for an h x w patch grid, as
    transformers' `Dinov2Embeddings.interpolate_pos_encoding`: bicubic in fp32, returned in the input's dtype.
    The native grid returns them unchanged (transformers' early return; the resampling would be the identity)."""
    side = math.isqrt(position_embeddings.shape[1] - 1)
    if (h, w) == (side, side):
        return position_embeddings
    grid = position_embeddings[0, 1:].astype(jnp.float32).reshape(side, side, -1)
    rows, cols = (jnp.asarray(bicubic_resize_matrix(side, n)) for n in (h, w))
    grid = jnp.einsum("hi,ijd,wj->hwd", rows, grid, cols, precision=jax.lax.Precision.HIGHEST)
    patches = grid.reshape(1, h * w, -1).astype(position_embeddings.dtype)
    return jnp.concatenate([position_embeddings[:, :1], patches], axis=1)


class Dinov2Embeddings(nn.Module):
    """Patch embedding, optional mask tokens, CLS token and (resampled) position embeddings."""

    config: Dinov2Config

    @nn.compact
    def __call__(self, pixels: jax.Array, bool_masked_pos: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        b, dim, p = pixels.shape[0], cfg.hidden_size, cfg.patch_size
        conv = nn.Conv(
            dim,
            (p, p),
            strides=(p, p),
            padding="VALID",
            dtype=cfg.dtype,
            param_dtype=jnp.float32,
            name="patch_embeddings",
        )
        x = conv(pixels)
        h, w = x.shape[1:3]
        x = x.reshape(b, h * w, dim)
        mask_token = (
            self.param("mask_token", nn.initializers.zeros, (1, dim), jnp.float32) if cfg.use_mask_token else None
        )
        if bool_masked_pos is not None:
            if mask_token is None:
                raise LaddError("bool_masked_pos needs a mask token; this config has use_mask_token=False")
            if bool_masked_pos.shape != (b, h * w):
                raise LaddError(
                    f"bool_masked_pos must be [batch, {h * w}] (one per patch), got {bool_masked_pos.shape}"
                )
            x = jnp.where(bool_masked_pos[..., None].astype(bool), mask_token.astype(x.dtype), x)
        init = nn.initializers.truncated_normal(0.02)
        cls_token = self.param("cls_token", init, (1, 1, dim), jnp.float32)
        num_positions = cfg.position_grid**2 + 1
        position_embeddings = self.param("position_embeddings", init, (1, num_positions, dim), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls_token, (b, 1, dim)).astype(x.dtype), x], axis=1)
        return (x + interpolate_pos_encoding(position_embeddings, h, w)).astype(cfg.dtype)


class Dinov2Attention(nn.Module):
    config: Dinov2Config

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        b, length, _ = x.shape
        dense = functools.partial(nn.Dense, cfg.hidden_size, dtype=cfg.dtype, param_dtype=jnp.float32)
        split = lambda y: y.reshape(b, length, cfg.num_attention_heads, cfg.head_dim)
        q, k, v = (split(dense(use_bias=cfg.qkv_bias, name=n)(x)) for n in ("q_proj", "k_proj", "v_proj"))
        # The XLA implementation takes logits and softmax in fp32 whatever the compute dtype.
        out = jax.nn.dot_product_attention(q, k, v, scale=cfg.head_dim**-0.5)
        return dense(name="o_proj")(out.reshape(b, length, cfg.hidden_size))


class Dinov2MLP(nn.Module):
    """fc2(act(fc1(x))), or for SwiGLU weights_out(silu(gate) * up) with [gate, up] = weights_in(x), one fused
    projection as the checkpoints store it."""

    config: Dinov2Config

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        dense = lambda n, name: nn.Dense(n, dtype=cfg.dtype, param_dtype=jnp.float32, name=name)
        if cfg.use_swiglu_ffn:
            gate, up = jnp.split(dense(2 * cfg.ffn_hidden_size, "weights_in")(x), 2, axis=-1)
            return dense(cfg.hidden_size, "weights_out")(jax.nn.silu(gate) * up)
        h = HF_ACTIVATIONS[cfg.hidden_act](dense(cfg.ffn_hidden_size, "fc1")(x))
        return dense(cfg.hidden_size, "fc2")(h)


class Dinov2Layer(nn.Module):
    """x + ls1 * attn(norm1(x)), then x + ls2 * mlp(norm2(x)): a pre-norm block with per-channel layer scales."""

    config: Dinov2Config

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        eps = cfg.layer_norm_eps
        scale = lambda name: self.param(
            name, nn.initializers.constant(cfg.layerscale_value), (cfg.hidden_size,), jnp.float32
        ).astype(x.dtype)
        x = x + Dinov2Attention(cfg, name="attention")(torch_layer_norm(x, eps, "norm1")) * scale("layer_scale1")
        return x + Dinov2MLP(cfg, name="mlp")(torch_layer_norm(x, eps, "norm2")) * scale("layer_scale2")


class Dinov2(nn.Module):
    """transformers' `Dinov2Model` without the pooler (pooler_output is `last_hidden_state[:, 0]`)."""

    config: Dinov2Config

    @nn.compact
    def __call__(
        self, pixels: jax.Array, layers: Sequence[int] = (), bool_masked_pos: jax.Array | None = None
    ) -> jax.Array | tuple[jax.Array, tuple[jax.Array, ...]]:
        """pixels [B, H, W, C] -> last_hidden_state [B, 1 + h * w, D], or with `layers` non-empty
        (last_hidden_state, one [B, 1 + h * w, D] array per entry of `layers`).

        `layers` index transformers' `hidden_states` (`output_hidden_states=True`): 0 is the embeddings (CLS,
        patches and position embeddings, before any block) and k in 1..num_hidden_layers the output of the
        k-th block (encoder.layer.{k-1}), without the final layer norm; negative k count from the end, as in
        Python (-1 is the last block's output). `Dinov2Backbone`'s out_indices count the same way (its stage k),
        though it applies the final layer norm to them.
        `bool_masked_pos` [B, h * w] replaces the marked patches' embeddings with the mask token."""
        cfg = self.config
        n = cfg.num_hidden_layers
        if pixels.ndim != 4 or pixels.shape[-1] != cfg.num_channels:
            raise LaddError(f"pixels must be [batch, height, width, {cfg.num_channels}] (NHWC), got {pixels.shape}")
        if pixels.shape[1] % cfg.patch_size or pixels.shape[2] % cfg.patch_size:
            raise LaddError(
                f"image size {pixels.shape[1]}x{pixels.shape[2]} is not a multiple of the patch size "
                f"{cfg.patch_size}; resize or crop the image"
            )
        bad = [k for k in layers if not -(n + 1) <= k <= n]
        if bad:
            raise LaddError(f"layers {bad} are outside -{n + 1}..{n} (0 = embeddings, {n} = the last block)")
        x = Dinov2Embeddings(cfg, name="embeddings")(pixels, bool_masked_pos)
        hidden_states = [x]
        for i in range(n):
            x = Dinov2Layer(cfg, name=f"layer_{i}")(x)
            hidden_states.append(x)
        last = torch_layer_norm(x, cfg.layer_norm_eps, "layernorm")
        if not layers:
            return last
        return last, tuple(hidden_states[k] for k in layers)
