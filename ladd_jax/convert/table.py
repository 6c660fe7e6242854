"""Declarative conversion tables: rules relating named tensors of one layout to those of another.

A `Rule` relates source tensors to destination tensors through a `Hook` (rename, transpose, split or
fuse, swap halves), usable in both directions. Names may hold `{i}`, the layer index; such a rule is
expanded over the layers whose tags include all of `rule.when`. Applying a table is lazy: it maps a mapping of
`LazyTensor`s to another, and nothing is read until a destination tensor is loaded, which is what makes
tensor-by-tensor streaming conversion possible.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from ladd_jax.convert.safetensors_io import LazyTensor

Shape = tuple[int, ...]


class Hook:
    """n source arrays <-> m destination arrays; the identity by default."""

    def forward(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        return xs

    def backward(self, ys: list[np.ndarray]) -> list[np.ndarray]:
        return ys

    def forward_shapes(self, shapes: list[Shape]) -> list[Shape]:
        return shapes

    def backward_shapes(self, shapes: list[Shape]) -> list[Shape]:
        return shapes


@dataclasses.dataclass(frozen=True)
class Transpose(Hook):
    """Axis permutation, e.g. (1, 0) for torch Linear -> flax Dense, (2, 3, 1, 0) for Conv OIHW -> HWIO."""

    perm: tuple[int, ...]

    def _inv(self) -> tuple[int, ...]:
        return tuple(int(a) for a in np.argsort(self.perm))

    def forward(self, xs):
        return [np.transpose(xs[0], self.perm)]

    def backward(self, ys):
        return [np.transpose(ys[0], self._inv())]

    def forward_shapes(self, shapes):
        return [tuple(shapes[0][a] for a in self.perm)]

    def backward_shapes(self, shapes):
        return [tuple(shapes[0][a] for a in self._inv())]


@dataclasses.dataclass(frozen=True)
class Split(Hook):
    """One fused tensor (e.g. qkv) <-> `n` equal parts along axis 0."""

    n: int

    def forward(self, xs):
        return list(np.split(xs[0], self.n, axis=0))

    def backward(self, ys):
        return [np.concatenate(ys, axis=0)]

    def forward_shapes(self, shapes):
        (s,) = shapes
        return [(s[0] // self.n, *s[1:])] * self.n

    def backward_shapes(self, shapes):
        return [(sum(s[0] for s in shapes), *shapes[0][1:])]


class SwapHalves(Hook):
    """(a, b) <-> (b, a) along axis 0: shift/scale order differs between SD3's reference code and diffusers."""

    def forward(self, xs):
        a, b = np.split(xs[0], 2, axis=0)
        return [np.concatenate([b, a], axis=0)]

    backward = forward


LINEAR = Transpose((1, 0))
CONV2D = Transpose((2, 3, 1, 0))
IDENTITY = Hook()


@dataclasses.dataclass(frozen=True)
class Rule:
    src: tuple[str, ...]
    dst: tuple[str, ...]
    hook: Hook = IDENTITY
    when: frozenset[str] = frozenset()  # layer tags the rule needs (only for names holding {i})


def rule(
    src: str | Sequence[str], dst: str | Sequence[str], hook: Hook = IDENTITY, when: str | Sequence[str] = ()
) -> Rule:
    as_tuple = lambda x: (x,) if isinstance(x, str) else tuple(x)
    return Rule(as_tuple(src), as_tuple(dst), hook, frozenset(as_tuple(when)))


def expand(table: Iterable[Rule], layer_tags: Sequence[frozenset[str]]) -> list[Rule]:
    """Concrete rules: those with `{i}` repeated for each layer whose tags include all of `when`."""
    out = []
    for r in table:
        if not any("{i}" in n for n in r.src + r.dst):
            out.append(r)
            continue
        for i, tags in enumerate(layer_tags):
            if r.when <= tags:
                fmt = lambda names, i=i: tuple(n.format(i=i) for n in names)
                out.append(Rule(fmt(r.src), fmt(r.dst), r.hook))
    return out


@dataclasses.dataclass
class Applied:
    """The result of applying a table: destination tensors, plus what the source lacked or had too much."""

    tensors: dict[str, LazyTensor]
    missing: list[str]  # source names the rules needed and the source lacks
    unused: list[str]  # source names no rule consumed


def apply(rules: Sequence[Rule], source: Mapping[str, LazyTensor], reverse: bool = False) -> Applied:
    """Maps `source` (named like the rules' src, or like dst when `reverse`) through concrete `rules`."""
    out: dict[str, LazyTensor] = {}
    missing, used = [], set()
    for r in rules:
        ins, outs = (r.dst, r.src) if reverse else (r.src, r.dst)
        absent = [n for n in ins if n not in source]
        if absent:
            missing.extend(absent)
            continue
        used.update(ins)
        inputs = [source[n] for n in ins]
        shapes_fn = r.hook.backward_shapes if reverse else r.hook.forward_shapes
        try:
            shapes = shapes_fn([t.shape for t in inputs])
        except (IndexError, ValueError, TypeError):
            shapes = [()] * len(outs)  # a mis-shaped input; the shape check downstream names it
        origin = ", ".join(t.origin for t in inputs)
        for k, (name, shape) in enumerate(zip(outs, shapes, strict=True)):
            out[name] = LazyTensor(shape, inputs[0].dtype, _loader(r.hook, inputs, k, reverse), origin)
    unused = [n for n in source if n not in used]
    return Applied(out, missing, unused)


def _loader(hook: Hook, inputs: list[LazyTensor], k: int, reverse: bool) -> Callable[[], np.ndarray]:
    fn = hook.backward if reverse else hook.forward
    return lambda: fn([t.load() for t in inputs])[k]
