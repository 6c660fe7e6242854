"""Device mesh and logical-axis sharding for the trainer (maxtext's scheme, made declarative).

Every param gets logical axis names from `PARAM_AXES`, a table of (path regex, names) read top to bottom; the
names map to mesh axes through `LOGICAL_RULES` (overridable from the config). A mesh axis is dropped for a
dimension it does not divide, so any model shape works on any mesh: that dimension is then replicated.

Mesh axes: "data" (pure data parallel), "fsdp" (data parallel with params, gradients and optimizer state
sharded), "tensor" (Megatron-style: attention heads and MLP hidden units split). The mesh uses Auto axes on
purpose: the models carry no sharding annotations, so XLA's propagation places the activations from the
param, batch and constraint shardings given here.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ladd_jax.convert.params import flatten, unflatten
from ladd_jax.errors import LaddError

MESH_AXES = ("data", "fsdp", "tensor")

# Param path regex -> logical names of its trailing dims (the scanned layer axis, if any, is added in front).
# Dense kernels are [in, out]; column-parallel layers split "out" over heads/mlp, row-parallel ones split "in".
PARAM_AXES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"(to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj)/kernel$", ("embed", "heads")),
    (r"(to_q|to_k|to_v|add_q_proj|add_k_proj|add_v_proj)/bias$", ("heads",)),
    (r"(to_out|to_add_out)/kernel$", ("heads", "embed")),
    (r"proj_in/kernel$", ("embed", "mlp")),
    (r"proj_in/bias$", ("mlp",)),
    (r"ff(_context)?/proj_out/kernel$", ("mlp", "embed")),
    (r"norm1(_context)?/linear/kernel$", ("embed", "mlp")),
    (r"norm1(_context)?/linear/bias$", ("mlp",)),
    (r"/kernel$", ("embed_in", "embed")),  # every other dense/conv kernel: FSDP on its output features
)
# Logical name -> mesh axes. "batch" is the leading axis of every data array.
LOGICAL_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),
    "embed": ("fsdp",),
    "embed_in": (),
    "heads": ("tensor",),
    "mlp": ("tensor",),
    "layers": (),
}


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh over all devices; one size may be -1 (the rest)."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [int(data), int(fsdp), int(tensor)]
    if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise LaddError(f"mesh sizes data={data} fsdp={fsdp} tensor={tensor}: use positive sizes and at most one -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise LaddError(f"{len(devices)} devices do not divide by the fixed mesh sizes (product {known})")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise LaddError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs {math.prod(sizes)} devices, "
            f"{len(devices)} are present; set one of mesh.data/mesh.fsdp/mesh.tensor to -1"
        )
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_axes(path: str, ndim: int) -> tuple[str | None, ...]:
    """The logical names of a param's dims, from `PARAM_AXES`; None for dims no rule names. A LoRA pair
    (models/lora.py) takes its kernel's names, the rank axis unnamed: a [.., in, r], b [.., r, out]."""
    module, _, leaf = path.rpartition("/")
    if leaf in ("lora_a", "lora_b"):
        *lead, d_in, d_out = logical_axes(f"{module}/kernel", ndim)
        return (*lead, d_in, None) if leaf == "lora_a" else (*lead, None, d_out)
    scanned = path.startswith("blocks_")
    names: tuple[str | None, ...] = ()
    for pattern, axes in PARAM_AXES:
        if re.search(pattern, path):
            names = axes
            break
    inner = ndim - scanned
    names = names[-inner:] if inner and len(names) >= inner else (None,) * (inner - len(names)) + names
    return (("layers",) if scanned else ()) + names


def spec_for(shape: Sequence[int], names: Sequence[str | None], mesh: Mesh, rules: Mapping[str, Sequence[str]]) -> P:
    """PartitionSpec for `shape`: each logical name's mesh axes, minus the ones that do not divide that dim
    or that an earlier dim already uses."""
    used: set[str] = set()
    out = []
    for size, name in zip(shape, names, strict=True):
        axes = []
        for axis in rules.get(name, ()) if name else ():
            n = mesh.shape[axis]
            if n > 1 and axis not in used and size % (n * math.prod(mesh.shape[a] for a in axes)) == 0:
                axes.append(axis)
        used.update(axes)
        out.append(tuple(axes) if len(axes) > 1 else (axes[0] if axes else None))
    return P(*out)


def param_shardings(params: Any, mesh: Mesh, rules: Mapping[str, Sequence[str]] | None = None) -> Any:
    """NamedShardings for a param tree (arrays or ShapeDtypeStructs) by `PARAM_AXES` and the logical rules."""
    rules = {**LOGICAL_RULES, **(rules or {})}
    flat = flatten(params)
    specs = {k: spec_for(v.shape, logical_axes(k, len(v.shape)), mesh, rules) for k, v in flat.items()}
    return unflatten({k: NamedSharding(mesh, s) for k, s in specs.items()})


def batch_sharding(mesh: Mesh, ndim: int, rules: Mapping[str, Sequence[str]] | None = None) -> NamedSharding:
    """Leading (batch) axis split over the "batch" rule's mesh axes, the rest replicated."""
    axes = tuple(a for a in {**LOGICAL_RULES, **(rules or {})}["batch"] if mesh.shape[a] > 1)
    lead = axes if len(axes) > 1 else (axes[0] if axes else None)
    return NamedSharding(mesh, P(lead, *([None] * (ndim - 1))))


def batch_size_multiple(mesh: Mesh, rules: Mapping[str, Sequence[str]] | None = None) -> int:
    """The global batch must be a multiple of this (the devices the batch axis is split over)."""
    return int(np.prod([mesh.shape[a] for a in {**LOGICAL_RULES, **(rules or {})}["batch"]]))


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules: Mapping[str, Sequence[str]] | None = None) -> Iterator[None]:
    """While a step is traced: the models' logical activation constraints ("activation_batch") map to the batch
    rule's mesh axes of `mesh`."""
    axes = tuple(a for a in {**LOGICAL_RULES, **(rules or {})}["batch"] if mesh.shape[a] > 1) or None
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), nn.logical_axis_rules((("activation_batch", axes),)):
        yield


def sharded_trace(fn: Callable, mesh: Mesh) -> Callable:
    """`fn` traced under `activation_rules(mesh)` (wrap a step before jax.jit)."""

    @functools.wraps(fn)
    def traced(*args: Any) -> Any:
        with activation_rules(mesh):
            return fn(*args)

    return traced


def constrain_batch(x: jax.Array, mesh: Mesh) -> jax.Array:
    """Inside jit: pin an activation's batch axis to the data axes (keeps XLA from gathering it)."""
    return jax.lax.with_sharding_constraint(x, batch_sharding(mesh, x.ndim))


# The state parts `config.offload` may keep in host memory (each is only read by its own update).
OFFLOADABLE = ("ema", "g_opt", "d_opt")
HOST_MEMORY = "pinned_host"


def state_shardings(
    models: Any,
    state: Any,
    mesh: Mesh,
    rules: Mapping[str, Sequence[str]] | None = None,
    offload: Sequence[str] = (),
) -> Any:
    """Shardings of a TrainState (arrays or abstract): params by `PARAM_AXES`, optimizer moments like their
    params, step counters replicated; the parts named in `offload` in host memory, sharded the same way."""
    bad = sorted(set(offload) - set(OFFLOADABLE))
    if bad:
        raise LaddError(f"config.offload names {bad}; the state parts that can live in host memory are {OFFLOADABLE}")
    replicated = NamedSharding(mesh, P())
    student = param_shardings(state.student, mesh, rules)
    disc = param_shardings(state.disc, mesh, rules)

    def opt(tx: Any, opt_state: Any, like: Any) -> Any:
        return optax.tree_map_params(tx, lambda _, s: s, opt_state, like, transform_non_params=lambda _: replicated)

    parts = dict(ema=student, g_opt=opt(models.g_tx, state.g_opt, student), d_opt=opt(models.d_tx, state.d_opt, disc))
    for name in offload:
        parts[name] = jax.tree.map(lambda s: s.with_memory_kind(HOST_MEMORY), parts[name])
    return state.replace(step=replicated, student=student, disc=disc, **parts)


def on_device(tree: Any) -> Any:
    """Inside jit: `tree` in device memory (a no-op for arrays already there; offloaded state parts are copied)."""
    return jax.tree.map(lambda x: jax.device_put(x, jax.memory.Space.Device), tree)
