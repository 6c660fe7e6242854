"""Low-rank adapters (LoRA, Hu et al. 2021) on the MMDiT's block linear layers, as functions of param trees.

An adapter on a dense kernel W [in, out] is a pair a [in, r], b [r, out]; the adapted kernel is
W + (alpha / r) a @ b, which is peft's LoRA (`use_rslora=False`, no dropout, no bias) in Flax's [in, out]
layout. In a scanned block group the kernel is [layers, in, out] and the pair [layers, in, r], [layers, r, out].
The adapter tree mirrors the params: `lora["blocks_0_3"]["attn"]["to_q"] = {"lora_a": ..., "lora_b": ...}`.

The model itself is unchanged: a LoRA model is `MMDiT.apply({"params": merge(base, lora, spec.scale)}, ...)`.
Merging inside the jitted step costs one extra copy of the adapted kernels as activations; the base stays frozen
(outside every optimizer) and only the adapters are trained, saved and exported.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ladd_jax.errors import LaddError

LORA_KEYS = ("lora_a", "lora_b")


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """rank r, alpha (the update is scaled by alpha / r) and the adapted layers: Flax module paths inside a block,
    e.g. "attn/to_q" or "ff/proj_in"."""

    rank: int
    alpha: float
    targets: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.rank < 1:
            raise LaddError(f"LoRA rank {self.rank} must be at least 1")
        if not self.targets:
            raise LaddError("LoRA has no target layers; name some, e.g. attn.to_q, attn.to_k, attn.to_v")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def module_at(tree: dict, path: str) -> dict | None:
    """The subtree at a "/"-separated path, or None."""
    node = tree
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def set_at(tree: dict, path: str, value: Any) -> None:
    """Puts `value` at a "/"-separated path, making the dicts on the way."""
    *parents, last = path.split("/")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def adapted_modules(spec: LoraSpec, params: dict) -> list[str]:
    """The module paths ("blocks_0_3/attn/to_q") the spec adapts in `params`: every target in every block group
    that has it (the last block has no context output; only MMDiT-X's dual-attention blocks have attn2)."""
    groups = sorted(k for k in params if k.startswith("blocks_"))
    found = [f"{g}/{t}" for g in groups for t in spec.targets if module_at(params[g], t) is not None]
    if not found:  # a target this architecture lacks (attn2 outside MMDiT-X) is skipped; none at all is an error
        raise LaddError(f"none of the LoRA targets {list(spec.targets)} is a layer of this MMDiT's blocks")
    bad = [p for p in found if "kernel" not in module_at(params, p) or len(module_at(params, p)["kernel"].shape) != 3]
    if bad:
        raise LaddError(f"LoRA targets {bad} are not dense layers (a kernel [layers, in, out])")
    return found


def init_lora(spec: LoraSpec, params: dict, rng: jax.Array) -> dict:
    """Fresh adapters for `params` (arrays or ShapeDtypeStructs), as peft initialises them: a ~ kaiming-uniform
    (bound 1 / sqrt(in)), b = 0, so the adapted model starts exactly at the base."""
    out: dict = {}
    for k, path in enumerate(adapted_modules(spec, params)):
        layers, d_in, d_out = module_at(params, path)["kernel"].shape
        bound = 1.0 / np.sqrt(d_in)
        a = jax.random.uniform(jax.random.fold_in(rng, k), (layers, d_in, spec.rank), jnp.float32, -bound, bound)
        set_at(out, path, dict(lora_a=a, lora_b=jnp.zeros((layers, spec.rank, d_out), jnp.float32)))
    return out


def lora_paths(lora: dict, prefix: str = "") -> list[str]:
    """The module paths an adapter tree holds."""
    if set(lora) == set(LORA_KEYS):
        return [prefix]
    return [p for k, v in lora.items() for p in lora_paths(v, f"{prefix}/{k}" if prefix else k)]


def delta(adapter: dict, scale: float) -> jax.Array:
    """scale * a @ b per layer: [layers, in, out], in float32."""
    a, b = (jnp.asarray(adapter[k], jnp.float32) for k in LORA_KEYS)
    return scale * jnp.einsum("lir,lro->lio", a, b)


def _add(params: dict, lora: dict, sign: float, dtype: Any = None) -> dict:
    out = jax.tree.map(lambda x: x, params)  # a new tree: the input is left as it was
    for path in lora_paths(lora):
        module = module_at(out, path)
        if module is None or "kernel" not in module:
            raise LaddError(f"the adapter for {path} has no such dense layer in the params")
        kernel = module["kernel"]
        d = delta(module_at(lora, path), sign)
        if d.shape != kernel.shape:
            raise LaddError(f"the adapter for {path} makes {d.shape}, the kernel is {kernel.shape}")
        module["kernel"] = (jnp.asarray(kernel, jnp.float32) + d).astype(dtype or kernel.dtype)
    return out


def merge(params: dict, lora: dict, scale: float, dtype: Any = None) -> dict:
    """The adapted params: every adapted kernel W + scale * a @ b, summed in float32 and cast to `dtype` (default:
    W's own; a trainer with a bfloat16 base asks for float32, so that small updates are not rounded away)."""
    return _add(params, lora, scale, dtype)


def unmerge(params: dict, lora: dict, scale: float) -> dict:
    """The inverse of `merge` (exact up to float rounding)."""
    return _add(params, lora, -scale)
