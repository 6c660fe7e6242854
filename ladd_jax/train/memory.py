"""Per-device memory of a compiled LADD step: what XLA planned, what each part of the state holds, the largest
buffers with the computation each belongs to, and a hand calculation to hold them against.

XLA's plan (`compiled.memory_analysis()`) splits memory into arguments (the state, the teacher, the batch), outputs
(the new state, mostly aliased onto the arguments by donation) and temporaries (activations saved for the backward
pass, gradients, optimizer-update scratch, attention). `largest_buffers` reads the per-device program after
partitioning (`compiled.as_text()`) for the biggest values and the op each comes from (e.g. ".../attn/..."), which is
how a materialised [L, L] attention matrix or a block that was not rematerialised shows itself.
"""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import ml_collections
import numpy as np

from ladd_jax.errors import LaddError
from ladd_jax.models.mmdit import MMDiTConfig, abstract_params, count_params
from ladd_jax.train.sharding import HOST_MEMORY

GIB = 2.0**30
_ITEMSIZE = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "s16": 2, "u16": 2}
_DEVICE_UNITS = {"gb": 1e9, "gib": GIB, "tb": 1e12, "tib": 2.0**40}


def device_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of arrays or ShapeDtypeStructs with shardings (its shards' sizes)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) else leaf.shape
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


def state_breakdown(abstract_state: Any, teacher_params: Any) -> dict[str, int]:
    """Per-device bytes of each part of the training state and of the frozen teacher."""
    s = abstract_state
    return dict(
        student=device_bytes(s.student),
        student_ema=device_bytes(s.ema),
        student_adam=device_bytes(s.g_opt),
        heads=device_bytes(s.disc),
        heads_adam=device_bytes(s.d_opt),
        teacher=device_bytes(teacher_params),
    )


def host_bytes(abstract_state: Any) -> int:
    """Per-device bytes of the state parts kept in host memory (config.offload)."""
    on_host = [x for x in jax.tree.leaves(abstract_state) if x.sharding.memory_kind == HOST_MEMORY]
    return device_bytes(on_host)


def plan_bytes(compiled: Any, offloaded: int = 0) -> dict[str, int]:
    """XLA's per-device plan: arguments, outputs, temporaries, aliased (donated) and the peak they imply; with
    `offloaded` bytes of state in host memory, `device_peak_bytes` is what stays on the device.

    XLA:CPU plans host and device memory as one space (its `host_*` sizes are 0), so its arguments include the
    offloaded state; there the device peak is estimated as the peak minus those bytes. That holds while the peak
    is in the forward/backward passes: an offloaded part comes to the device only for its update at the step's end,
    when the activations are freed. Backends that split the spaces report host arguments apart (`host_args_bytes`),
    and their peak is already the device's."""
    m = compiled.memory_analysis()
    if m is None:
        raise LaddError("this backend gives no memory analysis; run `ladd-jax aot` on CPU (simulated devices)")
    out = dict(
        args_bytes=int(m.argument_size_in_bytes),
        output_bytes=int(m.output_size_in_bytes),
        temp_bytes=int(m.temp_size_in_bytes),
        alias_bytes=int(m.alias_size_in_bytes),
        host_args_bytes=int(getattr(m, "host_argument_size_in_bytes", 0)),
        offloaded_bytes=offloaded,
    )
    out["peak_bytes"] = out["args_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    one_space = out["host_args_bytes"] == 0
    out["device_peak_bytes"] = out["peak_bytes"] - (offloaded if one_space else 0)
    return out


_HLO_VALUE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\w+)\[([\d,]*)\]")
_OP_NAME = re.compile(r'op_name="([^"]+)"')


def largest_buffers(compiled: Any, count: int = 8) -> list[dict[str, Any]]:
    """The `count` biggest values of the per-device program: bytes, dtype[shape] and the op they come from.

    Parameters and the state appear too (as arguments); a value inside a loop body (the scanned blocks) is one
    buffer reused by every iteration, so the list says where memory goes, not a sum."""
    rows = []
    for line in compiled.as_text().splitlines():
        match = _HLO_VALUE.match(line)
        if not match or match.group(2) not in _ITEMSIZE:
            continue
        name, dtype, dims = match.groups()
        shape = [int(d) for d in dims.split(",") if d]
        op = _OP_NAME.search(line)
        rows.append(
            dict(
                bytes=math.prod(shape) * _ITEMSIZE[dtype],
                value=f"{dtype}[{','.join(map(str, shape))}]",
                op=op.group(1) if op else name,
            )
        )
    rows.sort(key=lambda r: -r["bytes"])
    seen, top = set(), []
    for r in rows:  # one row per (shape, op): fusions repeat the same value under several names
        if (r["value"], r["op"]) not in seen:
            seen.add((r["value"], r["op"]))
            top.append(r)
        if len(top) == count:
            break
    return top


def hand_estimate(
    config: ml_collections.ConfigDict,
    teacher: MMDiTConfig,
    student: MMDiTConfig,
    latent_side: int,
    text_tokens: int,
    batch_shards: int,
    param_shards: int,
) -> dict[str, float]:
    """What a LADD step should need per device, by hand (bytes), for comparison with XLA's plan.

    Parameters: teacher params in `teacher_dtype`; student params, EMA and two Adam moments in float32; all split
    over `param_shards`. Activations, per sample on this device, in the compute dtype: with full remat a
    backward pass keeps each block's input (image + text tokens x width) for the student's pass and the teacher's
    pass in the G step (without remat, everything a block computes), plus the teacher's feature maps for the
    heads (real and fake, and the fake again in G), plus one block's recomputation (about 12 block-widths of
    q, k, v, attention output and the 4x MLP) and its attention scores: [heads, L, L] in float32 for
    materialised attention (x3: probabilities, their gradient and the scores' gradient), [heads, block, block]
    for blockwise."""
    per_device = max(config.batch_size // batch_shards, 1)
    act = 2 if config.dtype == "bfloat16" else 4
    teacher_item = 2 if config.teacher_dtype == "bfloat16" else 4
    image_tokens = (latent_side // teacher.patch_size) ** 2
    tokens = image_tokens + text_tokens
    width = teacher.hidden_size
    boundary = per_device * tokens * width * act
    if config.attention_impl == "blockwise":
        side = min(config.attention_block_size, tokens)
        scores = 3 * per_device * teacher.num_attention_heads * side * side * 4
    else:
        scores = 3 * per_device * teacher.num_attention_heads * tokens * tokens * 4
    one_block = 12 * boundary + scores
    # Full remat keeps a block's input; otherwise (roughly) everything a block computes stays for the backward.
    per_block = boundary if config.remat_policy == "full" else one_block
    n_features = len(config.disc.feature_layers) or len(range(0, teacher.num_layers, config.disc.feature_stride))
    out = dict(
        teacher_params=_param_count(teacher) * teacher_item / param_shards,
        student_params_ema_adam=_param_count(student) * 4 * 4 / param_shards,
        saved_activations=(student.num_layers + teacher.num_layers) * per_block,
        feature_maps=3 * n_features * per_device * image_tokens * width * act,
        one_block_recompute=one_block,
    )
    out["total"] = sum(out.values())
    return out


def _param_count(cfg: MMDiTConfig) -> int:
    return count_params(abstract_params(cfg))


def parse_device_memory(text: str) -> float:
    """'80GB' (1e9 bytes per GB, as accelerators are sold), '16GiB', '1.5TB' -> bytes."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]+)\s*", text or "")
    unit = match and _DEVICE_UNITS.get(match.group(2).lower())
    if not unit:
        raise LaddError(f"--device-memory {text!r}: write a size with its unit, e.g. 80GB (H100), 141GB, 16GiB")
    return float(match.group(1)) * unit
