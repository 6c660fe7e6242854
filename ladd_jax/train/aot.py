"""Ahead-of-time check of the LADD step at full size: lower and compile it for an abstract teacher (an MMDiT
preset; no weights needed) on the devices present (simulated CPU devices for a pod-sized mesh), and report the
per-device memory XLA plans for it. Nothing is materialised and nothing runs."""

from __future__ import annotations

import time

import ml_collections

from ladd_jax.models.mmdit import MMDiTConfig, abstract_params
from ladd_jax.models.vae import VAEConfig
from ladd_jax.train import sharding
from ladd_jax.train.loop import build, compile_step
from ladd_jax.train.runner import memory_report, step_flops


def data_spec(config: ml_collections.ConfigDict, teacher: MMDiTConfig, resolution: int, clip_tokens: int) -> dict:
    """The loader's element_spec for `resolution`^2 images with stored text embeddings (shapes only)."""
    side = resolution // VAEConfig.preset("sd3").downscale
    return dict(
        latent=((side, side, teacher.in_channels), "float32"),
        context=((clip_tokens + config.max_sequence_length, teacher.joint_attention_dim), "float32"),
        pooled=((teacher.pooled_projection_dim,), "float32"),
    )


def aot_report(config: ml_collections.ConfigDict, preset: str, resolution: int = 1024, clip_tokens: int = 77) -> dict:
    teacher = MMDiTConfig.preset(preset)
    mesh = sharding.make_mesh(**config.mesh)
    spec = data_spec(config, teacher, resolution, clip_tokens)
    setup, _, _ = build(config, spec, mesh, (teacher, abstract_params(teacher)))
    start = time.perf_counter()
    compiled = compile_step(setup, spec)
    return dict(
        preset=preset,
        resolution=resolution,
        batch_size=config.batch_size,
        mesh=dict(mesh.shape),
        compile_s=round(time.perf_counter() - start, 1),
        tflops_per_device_step=(step_flops(compiled) or 0) / 1e12,
        **{k: round(v, 2) for k, v in memory_report(compiled).items()},
    )
