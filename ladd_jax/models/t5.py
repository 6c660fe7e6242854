"""The T5 v1.1 encoder of Stable Diffusion 3 (T5-XXL) in Flax linen.

Numerically the same function as transformers' `T5EncoderModel`:
`T5Encoder(config).apply({"params": p}, input_ids, attention_mask=None)` with input_ids [B,L] int32 and an
optional attention_mask [B,L] (1 = attend) -> last_hidden_state [B,L,d_model]. The relative position bias
(bidirectional buckets) is computed once, from the bias table transformers keeps in block 0, and shared by
every block; queries are not scaled by 1/sqrt(d_kv). Params are fp32; `dtype` sets the compute dtype, while
RMS norms, attention logits and softmax always run in fp32.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ladd_jax.errors import LaddError
from ladd_jax.models.clip import HF_ACTIVATIONS

_HF_FIELDS = (
    "vocab_size",
    "d_model",
    "d_kv",
    "d_ff",
    "num_layers",
    "num_heads",
    "relative_attention_num_buckets",
    "relative_attention_max_distance",
    "layer_norm_epsilon",
    "feed_forward_proj",
    "pad_token_id",
    "eos_token_id",
)

_PRESETS: dict[str, dict[str, Any]] = {
    # google/t5-v1_1-xxl, as SD3's text_encoder_3/config.json ships it (encoder only).
    "t5-xxl": dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu"),
}


@dataclasses.dataclass(frozen=True)
class T5Config:
    """The encoder's fields of transformers' `T5Config` (same names, same defaults)."""

    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"  # "relu" (T5) or "gated-gelu" (T5 v1.1), generally "[gated-]ACT"
    pad_token_id: int | None = 0
    eos_token_id: int | None = 1

    def __post_init__(self):
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or self.dense_act_fn not in HF_ACTIVATIONS:
            raise LaddError(
                f"feed_forward_proj={self.feed_forward_proj!r} is not supported; use 'ACT' or 'gated-ACT' with ACT "
                f"one of {sorted(HF_ACTIVATIONS)}"
            )

    @property
    def is_gated_act(self) -> bool:
        return self.feed_forward_proj.split("-")[0] == "gated"

    @property
    def dense_act_fn(self) -> str:
        # As transformers: "gated-gelu" means the tanh approximation, for backwards compatibility.
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else self.feed_forward_proj.split("-")[-1]

    @classmethod
    def preset(cls, name: str) -> T5Config:
        """SD3's third text encoder: "t5-xxl" (the encoder of google/t5-v1_1-xxl)."""
        if name not in _PRESETS:
            raise LaddError(f"unknown T5 preset {name!r}; choose one of {sorted(_PRESETS)}")
        return cls(**_PRESETS[name])

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> T5Config:
        """From a transformers config dict (config.json); absent fields take transformers' defaults."""
        return cls(**{k: config[k] for k in _HF_FIELDS if k in config})

    def to_hf(self) -> dict[str, Any]:
        """A dict transformers' `T5Config` accepts, naming `T5EncoderModel`."""
        out = {k: getattr(self, k) for k in _HF_FIELDS}
        return {
            "architectures": ["T5EncoderModel"],
            "model_type": "t5",
            **out,
            "is_encoder_decoder": False,
            "use_cache": False,
        }


def relative_position_buckets(query_length: int, key_length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """transformers' bidirectional `T5Attention._relative_position_bucket` of (key - query), [Lq, Lk] int32.

    Static shapes make this a trace-time constant; computed in float32 as torch does, so the truncation to
    integer buckets agrees at the boundaries.
    """
    relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
    num_buckets //= 2
    buckets = (relative > 0).astype(np.int64) * num_buckets
    distance = np.abs(relative)
    max_exact = num_buckets // 2
    with np.errstate(divide="ignore"):
        scaled = (
            np.log(distance.astype(np.float32) / np.float32(max_exact))
            / np.float32(math.log(max_distance / max_exact))
            * np.float32(num_buckets - max_exact)
        )
    large = max_exact + np.where(distance < max_exact, 0, scaled).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return (buckets + np.where(distance < max_exact, distance, large)).astype(np.int32)


class T5LayerNorm(nn.Module):
    """RMS norm without mean subtraction or bias; the variance in fp32."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (scale * y).astype(x.dtype)


class T5Attention(nn.Module):
    config: T5Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array, mask: jax.Array | None) -> jax.Array:
        cfg = self.config
        b, length, _ = x.shape
        dense = functools.partial(nn.Dense, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32)
        split = lambda y: y.reshape(b, length, cfg.num_heads, cfg.d_kv)
        q, k, v = (split(dense(cfg.num_heads * cfg.d_kv, name=n)(x)) for n in ("q", "k", "v"))
        # T5 folds the scale into its init: no 1/sqrt(d_kv). The fp32 bias joins fp32 logits before softmax.
        out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=1.0)
        return dense(cfg.d_model, name="o")(out.reshape(b, length, cfg.num_heads * cfg.d_kv))


class T5FeedForward(nn.Module):
    config: T5Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        dense = functools.partial(nn.Dense, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32)
        act = HF_ACTIVATIONS[cfg.dense_act_fn]
        if cfg.is_gated_act:
            h = act(dense(cfg.d_ff, name="wi_0")(x)) * dense(cfg.d_ff, name="wi_1")(x)
        else:
            h = act(dense(cfg.d_ff, name="wi")(x))
        return dense(cfg.d_model, name="wo")(h)


def _clamp_fp16(x: jax.Array) -> jax.Array:
    # transformers' guard against fp16 overflow in T5, kept so fp16 compute matches it.
    if x.dtype != jnp.float16:
        return x
    top = jnp.finfo(jnp.float16).max
    limit = jnp.where(jnp.isinf(x).any(), top - 1000, top).astype(x.dtype)
    return jnp.clip(x, -limit, limit)


class T5Block(nn.Module):
    config: T5Config
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array, mask: jax.Array | None) -> jax.Array:
        eps = self.config.layer_norm_epsilon
        h = T5LayerNorm(eps, name="attention_norm")(x)
        x = _clamp_fp16(x + T5Attention(self.config, self.dtype, name="attention")(h, bias, mask))
        h = T5LayerNorm(eps, name="ff_norm")(x)
        return _clamp_fp16(x + T5FeedForward(self.config, self.dtype, name="ff")(h))


class T5Encoder(nn.Module):
    """transformers' `T5EncoderModel`: token embedding, pre-norm blocks with a shared relative bias, final norm."""

    config: T5Config
    dtype: Any = jnp.float32  # compute dtype; params stay fp32

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        if input_ids.ndim != 2:
            raise LaddError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise LaddError(f"attention_mask has shape {attention_mask.shape}, input_ids {input_ids.shape}")
        length = input_ids.shape[1]
        embed = nn.Embed(cfg.vocab_size, cfg.d_model, embedding_init=nn.initializers.normal(1.0), name="shared")
        x = embed(input_ids).astype(self.dtype)
        table = nn.Embed(
            cfg.relative_attention_num_buckets,
            cfg.num_heads,
            embedding_init=nn.initializers.normal(cfg.d_model**-0.5),
            name="relative_attention_bias",
        )
        buckets = relative_position_buckets(
            length, length, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
        )
        bias = jnp.transpose(table(jnp.asarray(buckets)), (2, 0, 1))[None].astype(jnp.float32)  # [1,H,L,L]
        mask = None if attention_mask is None else attention_mask.astype(bool)[:, None, None, :]
        for i in range(cfg.num_layers):
            x = T5Block(cfg, self.dtype, name=f"block_{i}")(x, bias, mask)
        return T5LayerNorm(cfg.layer_norm_epsilon, name="final_layer_norm")(x)
