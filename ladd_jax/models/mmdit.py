"""The MMDiT of the Stable Diffusion 3 family (SD3-medium, SD3.5-large, SD3.5-medium / MMDiT-X) in Flax linen.

Numerically the same function as diffusers' `SD3Transformer2DModel`, in NHWC and flow time:
`MMDiT(config).apply({"params": p}, x, t, context, pooled)` with x [B,H,W,C] latents, t [B] in [0, 1]
(the x1000 of SD3 happens inside), context [B,L,joint_attention_dim], pooled [B,pooled_projection_dim]
-> velocity [B,H,W,C]. With `feature_layers=(i, ...)` it also returns the image-token features that
those blocks output, as [B,h,w,D] maps (the LADD discriminator's input), from the same forward pass.

Blocks are grouped into runs of identical structure (MMDiT-X dual-attention blocks, plain blocks, the
last block whose context stream is "pre-only"); each run is one `nn.scan`, so a 38-block model compiles
as fast as a 3-block one. A run's params carry a leading layer axis.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ladd_jax.errors import LaddError
from ladd_jax.models.attention import DEFAULT_BLOCK_SIZE, attention
from ladd_jax.models.attention import check_settings as check_attention_settings

_DIFFUSERS_FIELDS = (
    "sample_size",
    "patch_size",
    "in_channels",
    "num_layers",
    "attention_head_dim",
    "num_attention_heads",
    "joint_attention_dim",
    "caption_projection_dim",
    "pooled_projection_dim",
    "out_channels",
    "pos_embed_max_size",
    "dual_attention_layers",
    "qk_norm",
)


@dataclasses.dataclass(frozen=True)
class MMDiTConfig:
    """Architecture (the fields of diffusers' config) plus how to compute it (dtype, remat, attention)."""

    sample_size: int = 128
    patch_size: int = 2
    in_channels: int = 16
    num_layers: int = 24
    attention_head_dim: int = 64
    num_attention_heads: int = 24
    joint_attention_dim: int = 4096
    caption_projection_dim: int = 1536
    pooled_projection_dim: int = 2048
    out_channels: int = 16
    pos_embed_max_size: int = 192
    dual_attention_layers: tuple[int, ...] = ()
    qk_norm: str | None = None  # None or "rms_norm"
    # Not SD3's: the sincos table is computed for hidden_size / pos_embed_tiles channels and tiled to the width, so
    # a model widened by copying channels (models/net2wider.py) keeps its origin's positions. Saved in config.json only
    # when not 1; diffusers reads the table from the checkpoint's pos_embed buffer, so it runs such a model as is.
    pos_embed_tiles: int = 1
    # Computation only; not part of the checkpoint.
    dtype: str = "float32"  # activations and matmuls; params stay fp32
    remat_policy: str = "none"  # "none", "full", or a jax.checkpoint_policies name, e.g. "dots_saveable"
    # None, "xla", "cudnn" (jax.nn.dot_product_attention) or "blockwise" (models/attention.py: never holds the
    # [L, L] matrix, for accelerators without cuDNN and for honest XLA:CPU memory plans).
    attention_impl: str | None = None
    attention_block_size: int = DEFAULT_BLOCK_SIZE  # "blockwise" only: queries and keys per block

    def __post_init__(self):
        object.__setattr__(self, "dual_attention_layers", tuple(int(i) for i in self.dual_attention_layers))
        if self.qk_norm not in (None, "rms_norm"):
            raise LaddError(f"qk_norm={self.qk_norm!r} is not supported; use None or 'rms_norm'")
        if self.caption_projection_dim != self.hidden_size:
            raise LaddError(
                f"caption_projection_dim ({self.caption_projection_dim}) must equal num_attention_heads x "
                f"attention_head_dim ({self.hidden_size}): the context stream shares the blocks' width"
            )
        bad = [i for i in self.dual_attention_layers if not 0 <= i < self.num_layers]
        if bad:
            raise LaddError(f"dual_attention_layers {bad} are outside 0..{self.num_layers - 1}")
        if self.pos_embed_tiles < 1 or self.hidden_size % (4 * self.pos_embed_tiles):
            raise LaddError(
                f"pos_embed_tiles={self.pos_embed_tiles} must be >= 1 and divide the width {self.hidden_size} into "
                "tiles of a multiple of 4 channels (the sincos table's sin and cos of two axes)"
            )
        check_attention_settings(self.attention_impl, self.attention_block_size)
        if self.remat_policy not in ("none", "full") and not hasattr(jax.checkpoint_policies, self.remat_policy):
            raise LaddError(f"remat_policy={self.remat_policy!r}: use 'none', 'full' or a jax.checkpoint_policies name")

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> MMDiTConfig:
        """The released models: "sd3-medium", "sd3.5-large", "sd3.5-medium"."""
        if name not in PRESETS:
            raise LaddError(f"unknown MMDiT preset {name!r}; choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    @classmethod
    def from_diffusers(cls, config: dict[str, Any], **overrides: Any) -> MMDiTConfig:
        """From diffusers' `SD3Transformer2DModel` config.json (unknown keys such as _class_name are ignored)."""
        fields = {k: config[k] for k in (*_DIFFUSERS_FIELDS, "pos_embed_tiles") if k in config}
        if fields.get("out_channels") is None:
            fields["out_channels"] = config.get("in_channels", cls.in_channels)
        return cls(**fields, **overrides)

    def to_diffusers(self) -> dict[str, Any]:
        out = {"_class_name": "SD3Transformer2DModel"}
        out.update({k: getattr(self, k) for k in _DIFFUSERS_FIELDS})
        out["dual_attention_layers"] = list(self.dual_attention_layers)
        if self.pos_embed_tiles != 1:
            out["pos_embed_tiles"] = self.pos_embed_tiles
        return out

    def layer_tags(self) -> list[frozenset[str]]:
        """What each block holds: the conversion tables pick their rules by these tags."""
        tags = []
        for i in range(self.num_layers):
            t = {"dual_attention" if i in self.dual_attention_layers else "single_attention"}
            t.add("context_pre_only" if i == self.num_layers - 1 else "context_full")
            if self.qk_norm:
                t.add("qk_norm")
            tags.append(frozenset(t))
        return tags

    def block_groups(self) -> list[tuple[str, int, int]]:
        """Runs of consecutive blocks with the same structure: (param name, first layer, end layer)."""
        tags = self.layer_tags()
        groups, start = [], 0
        for i in range(1, self.num_layers + 1):
            if i == self.num_layers or tags[i] != tags[start]:
                groups.append((f"blocks_{start}_{i}", start, i))
                start = i
        return groups


PRESETS = {
    "sd3-medium": MMDiTConfig(),
    "sd3.5-large": MMDiTConfig(num_layers=38, num_attention_heads=38, caption_projection_dim=2432, qk_norm="rms_norm"),
    "sd3.5-medium": MMDiTConfig(pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm"),
}


def sincos_pos_embed(config: MMDiTConfig, rows: slice | None = None, cols: slice | None = None) -> np.ndarray:
    """diffusers' `get_2d_sincos_pos_embed` (fp32 grid, fp64 frequencies) over the pos_embed_max_size grid,
    or over the given rows and columns of it: [n_rows * n_cols, D] (a table of D / pos_embed_tiles channels, tiled)."""
    m, dim = config.pos_embed_max_size, config.hidden_size // config.pos_embed_tiles
    pos = np.arange(m, dtype=np.float32) / np.float32(m / (config.sample_size // config.patch_size))

    def one_axis(p: np.ndarray) -> np.ndarray:
        omega = np.arange(dim // 4, dtype=np.float64) / (dim / 4.0)
        out = np.outer(p.astype(np.float64), 1.0 / 10000**omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1).astype(np.float32)

    # The embedding is separable: the first half of the channels encodes the column, the second the row
    # (diffusers' meshgrid(w, h, indexing="xy")).
    emb_c, emb_r = one_axis(pos[cols or slice(None)]), one_axis(pos[rows or slice(None)])
    grid = np.concatenate(
        [
            np.broadcast_to(emb_c[None], (len(emb_r), *emb_c.shape)),
            np.broadcast_to(emb_r[:, None], (len(emb_r), *emb_c.shape)),
        ],
        axis=-1,
    )
    return np.tile(grid.reshape(-1, dim), (1, config.pos_embed_tiles))


def cropped_pos_embed(config: MMDiTConfig, h: int, w: int) -> np.ndarray:
    """The centre h x w crop of the pos_embed_max_size grid, as SD3 uses it: [h*w, D]."""
    m = config.pos_embed_max_size
    if h > m or w > m:
        raise LaddError(f"a latent of {h}x{w} patches exceeds pos_embed_max_size={m}; use a smaller resolution")
    top, left = (m - h) // 2, (m - w) // 2
    return sincos_pos_embed(config, slice(top, top + h), slice(left, left + w))


def timestep_embedding(t: jax.Array, dim: int = 256, max_period: float = 10000.0) -> jax.Array:
    """diffusers' `Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)`: [cos, sin]."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """LayerNorm without affine params, in fp32."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1 + scale[:, None]) + shift[:, None]


class RMSNorm(nn.Module):
    """Per-head RMSNorm of SD3.5's q and k (eps 1e-6, statistics in fp32)."""

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + self.eps)
        return (x32 * scale).astype(x.dtype)


def _dense(features: int, dtype, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name)


class Modulation(nn.Module):
    """adaLN: SiLU -> Linear -> `n` chunks of width `dim`."""

    n: int
    dim: int
    dtype: Any

    @nn.compact
    def __call__(self, c: jax.Array) -> list[jax.Array]:
        return jnp.split(_dense(self.n * self.dim, self.dtype, "linear")(nn.silu(c)), self.n, axis=-1)


class MLPEmbed(nn.Module):
    """Linear -> SiLU -> Linear: the timestep and pooled-text embedders."""

    dim: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return _dense(self.dim, self.dtype, "linear_2")(nn.silu(_dense(self.dim, self.dtype, "linear_1")(x)))


class FeedForward(nn.Module):
    dim: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.gelu(_dense(4 * self.dim, self.dtype, "proj_in")(x), approximate=True)
        return _dense(self.dim, self.dtype, "proj_out")(x)


class Attention(nn.Module):
    """Self-attention over image tokens, joint with context tokens when `joint` (image tokens first)."""

    config: MMDiTConfig
    joint: bool
    context_out: bool  # the context stream gets an output projection (all blocks but the pre-only last)

    def _heads(self, proj: str, norm: str | None, x: jax.Array) -> jax.Array:
        cfg = self.config
        y = _dense(cfg.hidden_size, cfg.dtype, proj)(x)
        y = y.reshape(*y.shape[:-1], cfg.num_attention_heads, cfg.attention_head_dim)
        return RMSNorm(name=norm)(y) if cfg.qk_norm and norm else y

    @nn.compact
    def __call__(self, x: jax.Array, ctx: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
        cfg = self.config
        q, k, v = self._heads("to_q", "norm_q", x), self._heads("to_k", "norm_k", x), self._heads("to_v", None, x)
        n = x.shape[1]
        if self.joint:
            q = jnp.concatenate([q, self._heads("add_q_proj", "norm_added_q", ctx)], axis=1)
            k = jnp.concatenate([k, self._heads("add_k_proj", "norm_added_k", ctx)], axis=1)
            v = jnp.concatenate([v, self._heads("add_v_proj", None, ctx)], axis=1)
        out = attention(q, k, v, cfg.attention_impl, cfg.attention_block_size)
        out = out.reshape(*out.shape[:2], cfg.hidden_size)
        x_out = _dense(cfg.hidden_size, cfg.dtype, "to_out")(out[:, :n])
        ctx_out = _dense(cfg.hidden_size, cfg.dtype, "to_add_out")(out[:, n:]) if self.context_out else None
        return x_out, ctx_out


def constrain_tokens(x: jax.Array) -> jax.Array:
    """Pins a [B, L, D] activation's batch axis to the mesh axes that flax's logical rules give "activation_batch"
    (train/sharding.py sets them while a sharded step is traced; without them this is a no-op). Without it XLA's
    propagation inside the scanned blocks may follow the FSDP-sharded weights and keep whole-batch activations
    on every device."""
    return nn.with_logical_constraint(x, ("activation_batch", None, None))


class JointBlock(nn.Module):
    """One MMDiT block as a scan body: ((x, ctx, features), slot, temb) -> ((x, ctx, features), None).

    `features` [n + 1, B, L, D] holds the image-token outputs of the blocks asked for: this block writes its
    output into row `slot` (row n, a scratch row, when it is not asked for). A carried buffer instead of a scan
    output keeps n block outputs, not one per block of the run. The block itself (`block`) is rematerialised
    per `config.remat_policy`; the buffer update is outside the remat, so the buffer is never saved per block.
    """

    config: MMDiTConfig
    dual_attention: bool
    context_pre_only: bool

    def __call__(self, carry: tuple[jax.Array, jax.Array, jax.Array], slot: jax.Array, temb: jax.Array):
        x, ctx, features = carry
        cfg = self.config
        compute = JointBlock.block
        if cfg.remat_policy != "none":
            policy = None if cfg.remat_policy == "full" else getattr(jax.checkpoint_policies, cfg.remat_policy)
            compute = nn.remat(compute, policy=policy, prevent_cse=False)
        x, ctx = compute(self, constrain_tokens(x), constrain_tokens(ctx), temb)
        if features.shape[0]:  # a zero-row buffer: this run collects nothing
            features = jax.lax.dynamic_update_index_in_dim(features, x.astype(features.dtype), slot, 0)
        return (x, ctx, features), None

    @nn.compact
    def block(self, x: jax.Array, ctx: jax.Array, temb: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        dim, dt = cfg.hidden_size, cfg.dtype
        mods = Modulation(9 if self.dual_attention else 6, dim, dt, name="norm1")(temb)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods[:6]
        if self.context_pre_only:
            c_scale, c_shift = Modulation(2, dim, dt, name="norm1_context")(temb)  # diffusers' order
            ctx_in = modulate(layer_norm(ctx), c_shift, c_scale)
        else:
            c_shift_msa, c_scale_msa, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = Modulation(
                6, dim, dt, name="norm1_context"
            )(temb)
            ctx_in = modulate(layer_norm(ctx), c_shift_msa, c_scale_msa)

        x_norm = layer_norm(x)
        attn, ctx_attn = Attention(cfg, joint=True, context_out=not self.context_pre_only, name="attn")(
            modulate(x_norm, shift_msa, scale_msa), ctx_in
        )
        x = x + gate_msa[:, None] * attn
        if self.dual_attention:
            shift_msa2, scale_msa2, gate_msa2 = mods[6:]
            attn2, _ = Attention(cfg, joint=False, context_out=False, name="attn2")(
                modulate(x_norm, shift_msa2, scale_msa2)
            )
            x = x + gate_msa2[:, None] * attn2
        x = x + gate_mlp[:, None] * FeedForward(dim, dt, name="ff")(modulate(layer_norm(x), shift_mlp, scale_mlp))

        if not self.context_pre_only:
            ctx = ctx + c_gate_msa[:, None] * ctx_attn
            ff_ctx = FeedForward(dim, dt, name="ff_context")(modulate(layer_norm(ctx), c_shift_mlp, c_scale_mlp))
            ctx = ctx + c_gate_mlp[:, None] * ff_ctx
        return x, ctx


class MMDiT(nn.Module):
    config: MMDiTConfig

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        t: jax.Array,
        context: jax.Array,
        pooled: jax.Array,
        feature_layers: Sequence[int] = (),
    ) -> jax.Array | tuple[jax.Array, tuple[jax.Array, ...]]:
        cfg = self.config
        dt, dim, p = cfg.dtype, cfg.hidden_size, cfg.patch_size
        b, height, width, _ = x.shape
        if height % p or width % p:
            raise LaddError(f"latent size {height}x{width} is not divisible by the patch size {p}")
        bad = [i for i in feature_layers if not 0 <= i < cfg.num_layers]
        if bad:
            raise LaddError(f"feature_layers {bad} are outside 0..{cfg.num_layers - 1}")
        h, w = height // p, width // p

        tokens = nn.Conv(dim, (p, p), strides=(p, p), padding="VALID", dtype=dt, name="patch_embed")(x)
        pos = jnp.asarray(cropped_pos_embed(cfg, h, w))
        tokens = (tokens.reshape(b, h * w, dim) + pos).astype(dt)

        temb = MLPEmbed(dim, dt, name="time_embed")(timestep_embedding(t * 1000.0))
        temb = temb + MLPEmbed(dim, dt, name="text_embed")(pooled)
        ctx = _dense(dim, dt, "context_embedder")(context)

        wanted = sorted(set(feature_layers))
        features = jnp.zeros((len(wanted) + 1 if wanted else 0, b, h * w, dim), tokens.dtype)
        slots = jnp.asarray([wanted.index(i) if i in wanted else len(wanted) for i in range(cfg.num_layers)])
        tags = cfg.layer_tags()
        for name, start, stop in cfg.block_groups():
            scan = nn.scan(
                JointBlock,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(0, nn.broadcast),
                length=stop - start,
            )
            block = scan(cfg, "dual_attention" in tags[start], "context_pre_only" in tags[start], name=name)
            (tokens, ctx, features), _ = block((tokens, ctx, features), slots[start:stop], temb)

        scale, shift = Modulation(2, dim, dt, name="norm_out")(temb)  # diffusers' order
        out = _dense(p * p * cfg.out_channels, dt, "proj_out")(modulate(layer_norm(tokens), shift, scale))
        out = out.reshape(b, h, w, p, p, cfg.out_channels).transpose(0, 1, 3, 2, 4, 5)
        out = out.reshape(b, height, width, cfg.out_channels).astype(jnp.float32)
        if not feature_layers:
            return out
        return out, tuple(features[wanted.index(i)].reshape(b, h, w, dim) for i in feature_layers)


def with_extra_inputs(config: MMDiTConfig, params: dict, extra: int) -> tuple[MMDiTConfig, dict]:
    """The model made to take `extra` more input channels (conditioning latents concatenated to x on the channel
    axis, as inpainting and editing models take them), their patch-embedding weights zero: its output equals the
    original's whatever the extra channels hold, the usual start for fine-tuning a conditioned model from a base."""
    if extra < 1:
        raise LaddError(f"extra input channels must be at least 1, got {extra}")
    kernel = params["patch_embed"]["kernel"]  # [p, p, in, D]
    zeros = jnp.zeros((*kernel.shape[:2], extra, kernel.shape[3]), kernel.dtype)
    widened = dict(params, patch_embed=dict(params["patch_embed"], kernel=jnp.concatenate([kernel, zeros], 2)))
    return dataclasses.replace(config, in_channels=config.in_channels + extra), widened


def init_params(config: MMDiTConfig, rng: jax.Array, latent_hw: tuple[int, int] | None = None) -> dict:
    """Randomly initialised params (fp32), e.g. for a student trained from scratch or for tests."""
    return MMDiT(config).init(rng, *example_inputs(config, latent_hw))["params"]


def abstract_params(config: MMDiTConfig) -> dict:
    """The param tree as shapes only (`jax.eval_shape`): nothing is materialised."""
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0), (config.patch_size, config.patch_size)))


def example_inputs(config: MMDiTConfig, latent_hw: tuple[int, int] | None = None, batch: int = 1):
    """Zero inputs of the right shapes: x [B,H,W,C], t [B], context [B,L,4096-ish], pooled [B,P]."""
    hh, ww = latent_hw or (config.sample_size, config.sample_size)
    return (
        jnp.zeros((batch, hh, ww, config.in_channels), jnp.float32),
        jnp.zeros((batch,), jnp.float32),
        jnp.zeros((batch, 8, config.joint_attention_dim), jnp.float32),
        jnp.zeros((batch, config.pooled_projection_dim), jnp.float32),
    )


def count_params(tree: Any) -> int:
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))
