"""The CLIP text encoders of Stable Diffusion 3 (CLIP-L and OpenCLIP-bigG) in Flax linen.

Numerically the same function as transformers' `CLIPTextModelWithProjection`:
`CLIPTextEncoder(config).apply({"params": p}, input_ids)` with input_ids [B,L] int32 -> a `CLIPTextOutput`
holding every layer's output (`hidden_states`, embeddings first, as transformers' `output_hidden_states=True`
gives them; SD3 takes `hidden_states[-2]`), `last_hidden_state` (after the final layer norm) and
`text_embeds` (the pooled token, projected). Params are fp32; `dtype` sets the compute dtype, while layer
norms and softmax always run in fp32.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from ladd_jax.errors import LaddError

# transformers' ACT2FN names -> jax functions ("gelu" is the exact erf form, "gelu_new" the tanh one).
HF_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def check_attention_layout(hidden_act: str, hidden_size: int, num_attention_heads: int) -> None:
    """The checks a transformers encoder config shares: an activation we implement, and heads that split the
    width evenly."""
    if hidden_act not in HF_ACTIVATIONS:
        raise LaddError(f"hidden_act={hidden_act!r} is not supported; use one of {sorted(HF_ACTIVATIONS)}")
    if hidden_size % num_attention_heads:
        raise LaddError(f"hidden_size ({hidden_size}) is not a multiple of num_attention_heads ({num_attention_heads})")


_HF_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "projection_dim",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "hidden_act",
    "layer_norm_eps",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)

_PRESETS: dict[str, dict[str, Any]] = {
    # openai/clip-vit-large-patch14 text tower, as SD3's text_encoder/config.json ships it.
    "clip-l": dict(
        hidden_size=768,
        intermediate_size=3072,
        projection_dim=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        hidden_act="quick_gelu",
    ),
    # laion/CLIP-ViT-bigG-14-laion2B-39B-b160k text tower, as SD3's text_encoder_2/config.json ships it.
    "clip-g": dict(
        hidden_size=1280,
        intermediate_size=5120,
        projection_dim=1280,
        num_hidden_layers=32,
        num_attention_heads=20,
        hidden_act="gelu",
    ),
}


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """The architecture fields of transformers' `CLIPTextConfig` (same names, same defaults)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    bos_token_id: int | None = 49406
    eos_token_id: int = 49407  # 2 selects transformers' legacy pooling (argmax of the ids)
    pad_token_id: int | None = 1

    def __post_init__(self):
        check_attention_layout(self.hidden_act, self.hidden_size, self.num_attention_heads)
        if not isinstance(self.eos_token_id, int) or isinstance(self.eos_token_id, bool):
            raise LaddError(f"eos_token_id must be one integer, got {self.eos_token_id!r}")
        if not isinstance(self.projection_dim, int):
            raise LaddError(f"projection_dim must be an integer for a model with projection, got {self.projection_dim}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def preset(cls, name: str) -> CLIPTextConfig:
        """SD3's text encoders: "clip-l" (CLIP ViT-L/14) or "clip-g" (OpenCLIP bigG/14)."""
        if name not in _PRESETS:
            raise LaddError(f"unknown CLIP preset {name!r}; choose one of {sorted(_PRESETS)}")
        # SD3's configs keep the pre-#24773 token ids (eos 2 -> pooling at the argmax of the ids).
        return cls(**_PRESETS[name], bos_token_id=0, eos_token_id=2, pad_token_id=1)

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> CLIPTextConfig:
        """From a transformers config dict (config.json); absent fields take transformers' defaults."""
        return cls(**{k: config[k] for k in _HF_FIELDS if k in config})

    def to_hf(self) -> dict[str, Any]:
        """A dict transformers' `CLIPTextConfig` accepts, naming `CLIPTextModelWithProjection`."""
        out = {k: getattr(self, k) for k in _HF_FIELDS}
        return {"architectures": ["CLIPTextModelWithProjection"], "model_type": "clip_text_model", **out}


@flax.struct.dataclass
class CLIPTextOutput:
    """What `CLIPTextModelWithProjection` returns with `output_hidden_states=True`, plus the pooled token."""

    hidden_states: tuple[jax.Array, ...]  # num_hidden_layers + 1 arrays [B,L,D]: embeddings, then each layer
    last_hidden_state: jax.Array  # [B,L,D], after final_layer_norm
    pooler_output: jax.Array  # [B,D], last_hidden_state at the pooled (eos) position
    text_embeds: jax.Array  # [B,projection_dim]


def torch_layer_norm(x: jax.Array, eps: float, name: str) -> jax.Array:
    """torch.nn.LayerNorm in fp32 (two-pass variance), cast back to x's dtype."""
    y = nn.LayerNorm(epsilon=eps, dtype=jnp.float32, use_fast_variance=False, name=name)(x.astype(jnp.float32))
    return y.astype(x.dtype)


class CLIPAttention(nn.Module):
    config: CLIPTextConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        b, length, _ = x.shape
        dense = functools.partial(nn.Dense, cfg.hidden_size, dtype=self.dtype, param_dtype=jnp.float32)
        split = lambda y: y.reshape(b, length, cfg.num_attention_heads, cfg.head_dim)
        q, k, v = (split(dense(name=n)(x)) for n in ("q_proj", "k_proj", "v_proj"))
        # The XLA implementation takes logits and softmax in fp32 whatever the compute dtype.
        out = jax.nn.dot_product_attention(q, k, v, scale=cfg.head_dim**-0.5, is_causal=True)
        return dense(name="out_proj")(out.reshape(b, length, cfg.hidden_size))


class CLIPMLP(nn.Module):
    config: CLIPTextConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        h = nn.Dense(cfg.intermediate_size, dtype=self.dtype, param_dtype=jnp.float32, name="fc1")(x)
        h = HF_ACTIVATIONS[cfg.hidden_act](h)
        return nn.Dense(cfg.hidden_size, dtype=self.dtype, param_dtype=jnp.float32, name="fc2")(h)


class CLIPEncoderLayer(nn.Module):
    config: CLIPTextConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        eps = self.config.layer_norm_eps
        x = x + CLIPAttention(self.config, self.dtype, name="self_attn")(torch_layer_norm(x, eps, "layer_norm1"))
        return x + CLIPMLP(self.config, self.dtype, name="mlp")(torch_layer_norm(x, eps, "layer_norm2"))


class CLIPTextEncoder(nn.Module):
    """transformers' `CLIPTextModelWithProjection` (causal text transformer, eos pooling, projection)."""

    config: CLIPTextConfig
    dtype: Any = jnp.float32  # compute dtype; params stay fp32

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> CLIPTextOutput:
        cfg = self.config
        length = input_ids.shape[-1]
        if input_ids.ndim != 2:
            raise LaddError(f"input_ids must be [batch, length], got shape {input_ids.shape}")
        if length > cfg.max_position_embeddings:
            raise LaddError(
                f"sequence length {length} exceeds max_position_embeddings ({cfg.max_position_embeddings}); "
                "truncate the tokens"
            )
        embed = lambda n, name: nn.Embed(
            n, cfg.hidden_size, embedding_init=nn.initializers.normal(0.02), dtype=jnp.float32, name=name
        )
        x = embed(cfg.vocab_size, "token_embedding")(input_ids)
        x = (x + embed(cfg.max_position_embeddings, "position_embedding")(jnp.arange(length))[None]).astype(self.dtype)
        hidden_states = [x]
        for i in range(cfg.num_hidden_layers):
            x = CLIPEncoderLayer(cfg, self.dtype, name=f"layers_{i}")(x)
            hidden_states.append(x)
        last = torch_layer_norm(x, cfg.layer_norm_eps, "final_layer_norm")
        pooled = last[jnp.arange(last.shape[0]), pool_index(input_ids, cfg.eos_token_id)]
        proj = nn.Dense(
            cfg.projection_dim, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32, name="text_projection"
        )
        text_embeds = proj(pooled)
        return CLIPTextOutput(tuple(hidden_states), last, pooled, text_embeds)


def pool_index(input_ids: jax.Array, eos_token_id: int) -> jax.Array:
    """transformers' pooled position per sequence: eos_token_id 2 (the legacy configs SD3 ships) -> argmax of
    the ids (the eot token has the highest id); otherwise the first position holding eos_token_id (0 if none)."""
    ids = input_ids.astype(jnp.int32)
    if eos_token_id == 2:
        return jnp.argmax(ids, axis=-1)
    return jnp.argmax((ids == eos_token_id).astype(jnp.int32), axis=-1)
