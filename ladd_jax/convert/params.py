"""Between flat tensor mappings and Flax param trees: flatten, validate against the model, materialise."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np
from tqdm import tqdm

from ladd_jax.convert.safetensors_io import LazyTensor
from ladd_jax.convert.table import Applied, Rule, apply
from ladd_jax.errors import LaddError

Shape = tuple[int, ...]


def flatten(tree: Mapping) -> dict[str, object]:
    """{"a": {"b": x}} -> {"a/b": x}."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        out["/".join(str(k.key) for k in path)] = leaf
    return out


def unflatten(flat: Mapping[str, object]) -> dict:
    tree: dict = {}
    for name, leaf in flat.items():
        node = tree
        *parents, last = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    return tree


def abstract_shapes(abstract_params: Mapping) -> dict[str, Shape]:
    """Shapes of a `jax.eval_shape` param tree, flattened."""
    return {k: tuple(v.shape) for k, v in flatten(abstract_params).items()}


def validate(applied: Applied, expected: Mapping[str, Shape], what: str, ignore: Sequence[str] = ()) -> None:
    """One error listing every missing, unexpected and mis-shaped tensor, or nothing."""
    missing = list(applied.missing) + [n for n in expected if n not in applied.tensors and not applied.missing]
    unexpected = [n for n in applied.unused if n not in ignore]
    unexpected += [t.origin for n, t in applied.tensors.items() if n not in expected]
    misshaped = [
        f"{t.origin}: got {t.shape}, the model expects {expected[n]} (as {n})"
        for n, t in applied.tensors.items()
        if n in expected and tuple(t.shape) != tuple(expected[n])
    ]
    if not (missing or unexpected or misshaped):
        return
    lines = [f"{what} does not match the model its config describes:"]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            lines.append(f"  {len(items)} {title}:")
            lines.extend(f"    {x}" for x in items)
    lines.append("Check that the checkpoint and its config belong together (same model variant), or re-export it.")
    raise LaddError("\n".join(lines))


def materialize(tensors: Mapping[str, LazyTensor], dtype=np.float32, desc: str = "loading") -> dict[str, np.ndarray]:
    """Loads each tensor once, casting to `dtype` (exact for bf16/fp16 -> fp32)."""
    bar = tqdm(tensors.items(), desc=desc, unit="tensor", leave=False, disable=len(tensors) < 50)
    return {name: np.asarray(t.load(), dtype=dtype) for name, t in bar}


def to_lazy(flat: Mapping[str, object], dtype=None) -> dict[str, LazyTensor]:
    """Lazy views of in-memory (numpy or jax) arrays, optionally cast to `dtype` when loaded."""

    def one(name, x):
        target = np.dtype(dtype or x.dtype)
        return LazyTensor(tuple(x.shape), target, lambda: np.asarray(x).astype(target, copy=False), name)

    return {name: one(name, x) for name, x in flat.items()}


def load_params(
    source: Mapping[str, LazyTensor],
    rules: Sequence[Rule],
    abstract_params: Mapping,
    what: str,
    ignore: Sequence[str] = (),
) -> dict:
    """Source tensors (PyTorch names) -> a Flax param tree shaped like `abstract_params`, fp32, validated first."""
    applied = apply(rules, source)
    validate(applied, abstract_shapes(abstract_params), what, ignore)
    return unflatten(materialize(applied.tensors))


def export_params(params: Mapping, rules: Sequence[Rule], dtype=None) -> dict[str, LazyTensor]:
    """A Flax param tree -> lazy PyTorch-named tensors, in the table's order, optionally cast to `dtype`."""
    applied = apply(rules, to_lazy(flatten(params), dtype), reverse=True)
    if applied.missing or applied.unused:
        raise LaddError(f"params do not match the conversion table: missing {applied.missing}, extra {applied.unused}")
    return applied.tensors


def check_params(params: Mapping, abstract: Mapping, what: str) -> None:
    """Fails listing every param whose name or shape is not the model's."""
    have = {k: tuple(np.shape(v)) for k, v in flatten(params).items()}
    want = abstract_shapes(abstract)
    bad = [f"missing {k}" for k in want if k not in have]
    bad += [f"unexpected {k}" for k in have if k not in want]
    bad += [f"{k}: {have[k]}, expected {want[k]}" for k in want if k in have and have[k] != want[k]]
    if bad:
        raise LaddError(f"params do not match the {what} their config describes:\n  " + "\n  ".join(bad))
