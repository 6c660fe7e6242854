"""One LADD step's math in PyTorch, written independently of the JAX step so the two can check each other.

diffusers' `SD3Transformer2DModel` is the teacher and the student; the discriminator heads of
ladd_jax/models/discriminator.py are re-implemented here (`TorchDiscriminator`, weights converted from the JAX head
params by `heads_from_jax`), and so are the losses of ladd_jax/train/losses.py.

`LaddReference.gradients(batch, draws)` returns what `ladd_jax.train.steps.make_step_gradients` returns: the D loss
and its parts, the G loss, the heads' gradients of the D objective and the student's gradients of the G objective,
both taken at the given heads, before any update. That is the comparable point: the train step takes its G
gradient after the D updates, whose size depends on the optimiser; comparing gradients at one point keeps the
optimiser out of the comparison (at step 0 the two coincide anyway: the warm-up's first learning rate is 0).
The random numbers come from `ladd_jax.train.steps.step_draws` (`torch_inputs` converts them), so both
implementations see the same t, eps, t_hat, eps_real and eps_fake.

Modelled: the hinge and non-saturating losses. R1, the misaligned pairs, the distillation loss and an
unconditional discriminator (disc.text "empty") are not
(`LaddReference.from_config` refuses configs that use them). Precision: float32, or bfloat16 autocast with float32
params (the JAX models' mixed precision).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import SD3Transformer2DModel
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn

from ladd_jax.convert.params import flatten, unflatten
from ladd_jax.errors import LaddError
from ladd_jax.models.discriminator import NORM_EPS, TIME_EMBED_DIM, TIME_SCALE, DiscriminatorConfig
from ladd_jax.train.losses import LOSS_KINDS
from ladd_jax.train.steps import caption_blind

Tensors = dict[str, torch.Tensor]
AUTOCAST = {"float32": None, "bfloat16": torch.bfloat16}  # compute dtype -> autocast dtype (None: plain float32)

# ----------------------------------------------------------------------------------------------- discriminator


class ResBlock(nn.Module):
    """x + conv(SiLU(GroupNorm(x))), scaled by 1/sqrt(2)."""

    def __init__(self, config: DiscriminatorConfig):
        super().__init__()
        k = config.kernel_size
        self.norm = nn.GroupNorm(config.norm_groups, config.hidden, eps=NORM_EPS)
        self.conv = nn.Conv2d(config.hidden, config.hidden, k, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.conv(F.silu(self.norm(x)))) * (1 / math.sqrt(2))


class Head(nn.Module):
    """One head: features [B, h, w, D], t_hat [B], pooled [B, P] -> logits [B, h, w] (float32)."""

    def __init__(self, config: DiscriminatorConfig, feature_dim: int, pooled_dim: int):
        super().__init__()
        hidden = config.hidden
        self.num_blocks = config.num_blocks
        self.conv_in = nn.Conv2d(feature_dim, hidden, 1)
        for i in range(config.num_blocks):
            self.add_module(f"block_{i}", ResBlock(config))
        self.norm_out = nn.GroupNorm(config.norm_groups, hidden, eps=NORM_EPS)
        self.cond_1 = nn.Linear(TIME_EMBED_DIM + pooled_dim, config.cond_dim)
        self.cond_2 = nn.Linear(config.cond_dim, config.cond_dim)
        self.proj = nn.Linear(config.cond_dim, hidden)
        self.conv_out = nn.Conv2d(hidden, 1, 1)

    def forward(self, features: torch.Tensor, t_hat: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        h = F.layer_norm(features.float(), features.shape[-1:], eps=NORM_EPS)
        h = self.conv_in(h.permute(0, 3, 1, 2))
        for i in range(self.num_blocks):
            h = getattr(self, f"block_{i}")(h)
        h = F.silu(self.norm_out(h))
        t_emb = get_timestep_embedding(t_hat * TIME_SCALE, TIME_EMBED_DIM, flip_sin_to_cos=True, downscale_freq_shift=0)
        cond = self.cond_2(F.silu(self.cond_1(torch.cat([t_emb, pooled], dim=-1))))
        proj = self.proj(F.silu(cond))
        inner = torch.einsum("bchw,bc->bhw", h, proj).float()
        return self.conv_out(h)[:, 0].float() + inner / math.sqrt(h.shape[1])


class TorchDiscriminator(nn.ModuleDict):
    """One `Head` per feature layer, named `head_{layer}` like the JAX param tree."""

    def __init__(self, config: DiscriminatorConfig, feature_dim: int, pooled_dim: int):
        super().__init__({f"head_{i}": Head(config, feature_dim, pooled_dim) for i in config.feature_layers})
        self.feature_layers = config.feature_layers

    def forward(
        self, features: Sequence[torch.Tensor], t_hat: torch.Tensor, pooled: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        if len(features) != len(self.feature_layers):
            raise LaddError(f"{len(self.feature_layers)} heads but {len(features)} feature maps")
        return tuple(self[f"head_{i}"](f, t_hat, pooled) for i, f in zip(self.feature_layers, features, strict=True))


def _torch_name(path: str) -> str:
    *modules, leaf = path.split("/")
    return ".".join([*modules, {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)])


def _to_torch(path: str, x: np.ndarray) -> np.ndarray:
    """A JAX head param in PyTorch's layout: conv kernels [kh, kw, in, out] -> [out, in, kh, kw], dense [in, out]
    -> [out, in]."""
    if path.endswith("kernel"):
        return x.transpose(3, 2, 0, 1) if x.ndim == 4 else x.T
    return x


def _to_jax(path: str, x: np.ndarray) -> np.ndarray:
    if path.endswith("kernel"):
        return x.transpose(2, 3, 1, 0) if x.ndim == 4 else x.T
    return x


def heads_from_jax(config: DiscriminatorConfig, params: Mapping[str, Any]) -> TorchDiscriminator:
    """The JAX heads (`init_discriminator`'s params) as a float32 `TorchDiscriminator` with the same weights."""
    flat = {k: np.asarray(v, np.float32) for k, v in flatten(params).items()}
    first = f"head_{config.feature_layers[0]}"
    if f"{first}/conv_in/kernel" not in flat or f"{first}/cond_1/kernel" not in flat:
        raise LaddError(f"these are not the params of heads on feature_layers {config.feature_layers}: no {first}")
    feature_dim = flat[f"{first}/conv_in/kernel"].shape[2]
    pooled_dim = flat[f"{first}/cond_1/kernel"].shape[0] - TIME_EMBED_DIM
    module = TorchDiscriminator(config, feature_dim, pooled_dim)
    state = {_torch_name(k): torch.tensor(_to_torch(k, v)) for k, v in flat.items()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise LaddError(f"the JAX head params do not fit {config}: {e}") from None
    return module


def heads_to_jax(tensors: Mapping[str, torch.Tensor], like: Mapping[str, Any]) -> dict:
    """PyTorch-named head tensors (weights or their gradients) as a JAX param tree shaped like `like`."""
    flat = {}
    for path in flatten(like):
        name = _torch_name(path)
        if name not in tensors:
            raise LaddError(f"no tensor {name!r} (for the JAX param {path!r}); got {sorted(tensors)[:5]}, ...")
        flat[path] = _to_jax(path, tensors[name].detach().float().cpu().numpy())
    return unflatten(flat)


# ---------------------------------------------------------------------------------------------------- the step


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, *([1] * (x.ndim - 1)))


def add_noise(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(1 - t) x0 + t eps, t per sample."""
    t = _bcast(t, x0)
    return (1.0 - t) * x0 + t * eps


def denoise(x_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t - t v, t per sample."""
    return x_t - _bcast(t, x_t) * v


def _mean_over_heads(per_head: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([x.float().mean() for x in per_head]).mean()


def d_loss_parts(
    real: Sequence[torch.Tensor], fake: Sequence[torch.Tensor], kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "hinge":
        return _mean_over_heads([F.relu(1.0 - x) for x in real]), _mean_over_heads([F.relu(1.0 + x) for x in fake])
    return _mean_over_heads([F.softplus(-x) for x in real]), _mean_over_heads([F.softplus(x) for x in fake])


def g_loss(fake: Sequence[torch.Tensor], kind: str) -> torch.Tensor:
    if kind == "hinge":
        return -_mean_over_heads(fake)
    return _mean_over_heads([F.softplus(-x) for x in fake])


def teacher_features(
    model: SD3Transformer2DModel,
    x: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    pooled: torch.Tensor,
    layers: Sequence[int],
) -> tuple[torch.Tensor, ...]:
    """The image tokens after each block of `layers`, [B, h, w, D] (the layout of the JAX MMDiT's features):
    diffusers' forward pass up to the last of those blocks. `t` in [0, 1]."""
    b, _, height, width = x.shape
    p = model.config.patch_size
    hidden = model.pos_embed(x)
    temb = model.time_text_embed(t * 1000, pooled)
    context = model.context_embedder(context)
    feats = {}
    for i, block in enumerate(model.transformer_blocks[: max(layers) + 1]):
        context, hidden = block(hidden_states=hidden, encoder_hidden_states=context, temb=temb)
        if i in layers:
            feats[i] = hidden.reshape(b, height // p, width // p, hidden.shape[-1])
    return tuple(feats[i] for i in layers)


def torch_inputs(arrays: Mapping[str, Any], device: str | torch.device = "cpu") -> Tensors:
    """JAX-side arrays (a batch, `step_draws`' output) as float32 tensors on `device`, latents NHWC -> NCHW."""
    out = {}
    for k, v in arrays.items():
        x = torch.from_numpy(np.array(v, np.float32))
        out[k] = (x.permute(0, 3, 1, 2) if x.ndim == 4 else x).contiguous().to(device)
    return out


class LaddReference:
    """The step's networks and the gradients of one step; `compile()` swaps each network for its torch.compile'd
    self (the autograd calls between them stay eager)."""

    def __init__(
        self,
        teacher: SD3Transformer2DModel,
        student: SD3Transformer2DModel,
        heads: TorchDiscriminator,
        kind: str = "hinge",
        dtype: str = "float32",
    ):
        if kind not in LOSS_KINDS:
            raise LaddError(f"unknown GAN loss kind {kind!r}; use one of {LOSS_KINDS}")
        if dtype not in AUTOCAST:
            raise LaddError(f"dtype={dtype!r} is not supported by the PyTorch reference; use one of {sorted(AUTOCAST)}")
        if student is teacher:
            raise LaddError("the student must be its own module (e.g. copy.deepcopy(teacher)): the teacher is frozen")
        if max(heads.feature_layers) >= len(teacher.transformer_blocks):
            raise LaddError(
                f"heads on teacher blocks {heads.feature_layers}, but the teacher has {len(teacher.transformer_blocks)}"
            )
        teacher.requires_grad_(False)  # its params are constants, as in the JAX step
        student.requires_grad_(True)
        self.teacher, self.student, self.heads, self.kind, self.dtype = teacher, student, heads, kind, dtype
        self.features: Callable[..., tuple[torch.Tensor, ...]] = functools.partial(
            teacher_features, teacher, layers=heads.feature_layers
        )
        self.velocity: Callable[..., Any] = student
        self.logits: Callable[..., tuple[torch.Tensor, ...]] = heads

    @classmethod
    def from_config(
        cls,
        config: ml_collections.ConfigDict,
        teacher: SD3Transformer2DModel,
        student: SD3Transformer2DModel,
        heads: TorchDiscriminator,
    ) -> LaddReference:
        """The reference for a LADD config (configs/ladd.py); refuses the terms it does not model."""
        unmodelled = {k: config[k] for k in ("r1_gamma", "misaligned_weight", "distill_weight") if config[k]}
        if caption_blind(config):
            unmodelled["disc.text"] = config.disc.text
        if unmodelled:
            raise LaddError(
                f"the PyTorch reference does not model {unmodelled}; set them to 0 (disc.text to 'caption') to compare"
            )
        return cls(teacher, student, heads, config.loss, config.dtype)

    def compile(self, **options: Any) -> LaddReference:
        """Teacher features, student and heads swapped for their torch.compile'd selves (`options` go to
        torch.compile); the two autograd.grad calls between them stay eager, as dynamo does not trace them."""
        self.features = torch.compile(self.features, **options)
        self.velocity = torch.compile(self.student, **options)
        self.logits = torch.compile(self.heads, **options)
        return self

    def gradients(self, batch: Mapping[str, torch.Tensor], draws: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Losses (detached), `head_grads` and `student_grads` (by PyTorch param name) of one step; see the module
        docstring. `batch`: latent [B, C, H, W], context, pooled; `draws`: t, eps, t_hat, eps_real, eps_fake."""
        x0, ctx, pooled = batch["latent"], batch["context"], batch["pooled"]
        t, t_hat = draws["t"], draws["t_hat"]
        cast = AUTOCAST[self.dtype]
        with torch.autocast(x0.device.type, dtype=cast) if cast else contextlib.nullcontext():
            x_t = add_noise(x0, draws["eps"], t)
            x0_hat = denoise(x_t, self.velocity(x_t, ctx, pooled, t * 1000).sample.float(), t)

            # The teacher's pass on the fake samples runs once (as in the JAX step): D reads it detached, G through
            # its graph.
            fake = self.features(add_noise(x0_hat, draws["eps_fake"], t_hat), t_hat, ctx, pooled)

            # D: the heads on teacher features of real and (detached) fake samples; the teacher is a constant.
            with torch.no_grad():
                real = self.features(add_noise(x0, draws["eps_real"], t_hat), t_hat, ctx, pooled)
            fake_logits = self.logits(tuple(f.detach() for f in fake), t_hat, pooled)
            d_real, d_fake = d_loss_parts(self.logits(real, t_hat, pooled), fake_logits, self.kind)
            heads = dict(self.heads.named_parameters())
            head_grads = torch.autograd.grad(d_real + d_fake, list(heads.values()))

            # G: the same heads, the gradient reaching the student through the teacher's activations.
            g = g_loss(self.logits(fake, t_hat, pooled), self.kind)
            student = dict(self.student.named_parameters())
            student_grads = torch.autograd.grad(g, list(student.values()))
        return dict(
            d_loss_real=d_real.detach(),
            d_loss_fake=d_fake.detach(),
            d_loss=(d_real + d_fake).detach(),
            g_loss=g.detach(),
            head_grads=dict(zip(heads, head_grads, strict=True)),
            student_grads=dict(zip(student, student_grads, strict=True)),
        )
