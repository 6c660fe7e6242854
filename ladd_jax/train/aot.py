"""Ahead-of-time check of the LADD step at full size: lower and compile it for an abstract teacher (an MMDiT
preset; no weights needed) on the devices present (simulated CPU devices for a pod-sized mesh), and report the
per-device memory XLA plans for it, part by part, beside a hand calculation. Nothing is materialised and nothing
runs. With a device's memory it says whether the step fits and searches the largest per-device batch that does.

XLA:CPU has no bf16 matmul: it computes bf16 dots in float32, so activations in its plan can be up to twice what a
GPU or TPU holds; parameters and optimizer state are exact.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import jax
import ml_collections

from ladd_jax.data.records import MISMATCH_FIELDS, TEXT_FIELDS
from ladd_jax.errors import LaddError
from ladd_jax.models.mmdit import MMDiTConfig, abstract_params
from ladd_jax.models.vae import VAEConfig
from ladd_jax.train import sharding
from ladd_jax.train.loop import build, compile_step
from ladd_jax.train.memory import GIB, hand_estimate, host_bytes, largest_buffers, plan_bytes, state_breakdown
from ladd_jax.train.methods import batch_fields
from ladd_jax.train.runner import step_flops

# The share of a device's memory a step may plan for: the rest goes to the runtime, the allocator's
# fragmentation and the loader's prefetched batches.
USABLE_FRACTION = 0.9
MAX_SEARCH_BATCH = 1024  # per device: the search stops doubling here


def data_spec(config: ml_collections.ConfigDict, teacher: MMDiTConfig, resolution: int, clip_tokens: int) -> dict:
    """The loader's element_spec for `resolution`^2 images with stored text embeddings (shapes only)."""
    side = resolution // VAEConfig.preset("sd3").downscale
    spec = dict(
        latent=((side, side, teacher.in_channels), "float32"),
        context=((clip_tokens + config.max_sequence_length, teacher.joint_attention_dim), "float32"),
        pooled=((teacher.pooled_projection_dim,), "float32"),
    )
    if MISMATCH_FIELDS[0] in batch_fields(config):  # hard misaligned pairs: a second caption's embeddings
        spec |= {mismatch: spec[text] for mismatch, text in zip(MISMATCH_FIELDS, TEXT_FIELDS, strict=True)}
    return spec


def compile_plan(
    config: ml_collections.ConfigDict,
    teacher: MMDiTConfig,
    resolution: int,
    clip_tokens: int = 77,
    buffers: int = 8,
) -> dict[str, Any]:
    """One compiled plan: XLA's bytes, the state's parts, the `buffers` largest buffers and the hand calculation."""
    mesh = sharding.make_mesh(**config.mesh)
    spec = data_spec(config, teacher, resolution, clip_tokens)
    setup, _, _ = build(config, spec, mesh, (teacher, abstract_params(teacher)))
    start = time.perf_counter()
    compiled = compile_step(setup, spec)
    batch_shards = sharding.batch_size_multiple(mesh)
    param_shards = mesh.size // mesh.shape.get("data", 1)
    return dict(
        resolution=resolution,
        batch_size=config.batch_size,
        per_device_batch=config.batch_size / batch_shards,
        mesh=dict(mesh.shape),
        remat_policy=config.remat_policy,
        attention_impl=config.attention_impl or "default",
        compile_s=round(time.perf_counter() - start, 1),
        tflops_per_device_step=(step_flops(compiled) or 0) / 1e12,
        **plan_bytes(compiled, host_bytes(setup.abstract_state)),
        state_bytes=state_breakdown(setup.abstract_state, setup.frozen["teacher"]),
        largest_buffers=largest_buffers(compiled, buffers),
        hand_bytes=hand_estimate(
            config,
            teacher,
            setup.models.student.config,
            spec["latent"][0][0],
            spec["context"][0][0],
            batch_shards,
            param_shards,
        ),
    )


def largest_fitting_batch(
    config: ml_collections.ConfigDict, teacher: MMDiTConfig, resolution: int, budget: float
) -> tuple[int, dict[str, Any] | None]:
    """The largest per-device batch whose planned peak is within `budget` bytes (0 if even 1 is not), with its
    plan: doubling from 1, then bisection between the last fit and the first miss (one compile per try)."""
    shards = sharding.batch_size_multiple(sharding.make_mesh(**config.mesh))

    def plan(per_device: int) -> dict[str, Any]:
        trial = copy.deepcopy(config)
        trial.batch_size = per_device * shards
        return compile_plan(trial, teacher, resolution)

    fit, fit_plan, miss = 0, None, None
    b = 1
    while b <= MAX_SEARCH_BATCH:
        p = plan(b)
        if p["device_peak_bytes"] > budget:
            miss = b
            break
        fit, fit_plan, b = b, p, 2 * b
    while miss is not None and miss - fit > 1:
        mid = (fit + miss) // 2
        p = plan(mid)
        if p["device_peak_bytes"] <= budget:
            fit, fit_plan = mid, p
        else:
            miss = mid
    return fit, fit_plan


def aot_report(
    config: ml_collections.ConfigDict,
    teacher: MMDiTConfig,
    resolution: int = 1024,
    device_memory: float | None = None,
    name: str = "",
) -> dict[str, Any]:
    """The plan for `config` with an abstract `teacher` (and, given a device's memory in bytes, the verdict and
    the largest per-device batch that fits)."""
    check_resolution(resolution)
    report = dict(model=name, devices=jax.device_count(), **compile_plan(config, teacher, resolution))
    if device_memory:
        budget = USABLE_FRACTION * device_memory
        best, best_plan = largest_fitting_batch(config, teacher, resolution, budget)
        report["verdict"] = dict(
            device_memory_bytes=device_memory,
            budget_bytes=budget,
            fits=report["device_peak_bytes"] <= budget,
            largest_per_device_batch=best,
            peak_bytes_at_largest=best_plan and best_plan["device_peak_bytes"],
        )
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a few readable tables (GiB per device)."""
    g = lambda b: f"{b / GIB:8.2f} GiB"
    lines = [
        f"{report['model']} at {report['resolution']}^2, global batch {report['batch_size']} "
        f"({report['per_device_batch']:g} per device), mesh {report['mesh']}, remat {report['remat_policy']}, "
        f"attention {report['attention_impl']}; compiled in {report['compile_s']} s, "
        f"{report['tflops_per_device_step']:.2f} TFLOP per device per step",
        "XLA's plan per device:",
        *(f"  {k:13s}{g(report[k])}" for k in ("args_bytes", "temp_bytes", "alias_bytes", "peak_bytes")),
        *([offload_line(report)] if report["offloaded_bytes"] else []),
        "the state's parts per device (inside args):",
        *(f"  {k:13s}{g(v)}" for k, v in report["state_bytes"].items()),
        "by hand per device:",
        *(f"  {k:24s}{g(v)}" for k, v in report["hand_bytes"].items()),
        "largest buffers (a buffer inside the scanned blocks is reused by every block):",
        *(f"  {g(r['bytes'])}  {r['value']:28s} {r['op'][-100:]}" for r in report["largest_buffers"]),
    ]
    if "verdict" in report:
        v = report["verdict"]
        lines.append(
            f"on a device of {v['device_memory_bytes'] / 1e9:g} GB ({USABLE_FRACTION:.0%} usable: "
            f"{v['budget_bytes'] / GIB:.1f} GiB): {'fits' if v['fits'] else 'does NOT fit'}; largest per-device "
            f"batch that fits: {v['largest_per_device_batch']}"
        )
    return "\n".join(lines)


def offload_line(report: dict[str, Any]) -> str:
    """The offloaded state and the device's peak (estimated where the backend plans one memory space)."""
    estimated = " (XLA:CPU plans both memories as one: the peak minus the offloaded state)"
    return (
        f"  state in host memory (config.offload): {report['offloaded_bytes'] / GIB:.2f} GiB; on the device: peak "
        f"{report['device_peak_bytes'] / GIB:.2f} GiB" + (estimated if report["host_args_bytes"] == 0 else "")
    )


def check_resolution(resolution: int) -> None:
    if resolution <= 0 or resolution % 16:
        raise LaddError(f"--resolution {resolution}: use a positive multiple of 16 (VAE factor 8 x patch 2)")
