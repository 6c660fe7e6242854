"""Benchmarks behind `ladd-jax bench`: figures for the README, never timed tests.

`mmdit`: forward and forward+backward of the Flax MMDiT, beside diffusers' PyTorch model on the same
config and the same device (the CPU here), with achieved TFLOP/s and, on a GPU, MFU.
`pipeline`: seconds per image of `SD3Pipeline` (text encoders, sampler with CFG, VAE decode) beside diffusers'
`StableDiffusion3Pipeline` on the same local folder, resolution, sampling steps and guidance scale.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ladd_jax.errors import LaddError
from ladd_jax.models.mmdit import MMDiT, MMDiTConfig, count_params, init_params

# A CPU-sized MMDiT with SD3's widths per head and real text-encoder widths.
SMALL = MMDiTConfig(num_layers=4, num_attention_heads=6, caption_projection_dim=384, pos_embed_max_size=64)
CONTEXT_LEN = 154  # 77 CLIP + 77 T5 tokens, as SD3 uses
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "TPU v5p": 459.0, "TPU v4": 275.0}


def mmdit_flops(config: MMDiTConfig, batch: int, h: int, w: int, ctx: int = CONTEXT_LEN) -> float:
    """Matmul FLOPs of one forward pass (2 per multiply-add), counted from the architecture."""
    d, p, c = config.hidden_size, config.patch_size, config.in_channels
    n = (h // p) * (w // p)
    t = n + ctx
    total = 2 * n * p * p * c * d + 2 * ctx * config.joint_attention_dim * d + 2 * n * d * p * p * config.out_channels
    for i in range(config.num_layers):
        pre_only = i == config.num_layers - 1
        total += 2 * n * 12 * d * d  # image stream: qkv, out, 4x MLP
        total += 2 * ctx * (3 * d * d if pre_only else 12 * d * d)
        total += 2 * 2 * t * t * d  # joint attention: scores and values
        if i in config.dual_attention_layers:
            total += 2 * n * 4 * d * d + 2 * 2 * n * n * d
    return float(batch * total)


def _time(fn: Callable, steps: int) -> tuple[float, float]:
    """(first call incl. compile, median of `steps` later calls) in seconds."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times))


def peak_tflops(device: jax.Device) -> float | None:
    kind = getattr(device, "device_kind", "")
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in kind), None)


def bench_mmdit(args: argparse.Namespace) -> dict:
    config = MMDiTConfig.preset(args.preset) if args.preset else SMALL
    config = dataclasses.replace(
        config, dtype=args.dtype or "float32", remat_policy=args.remat, attention_impl=args.attention
    )
    res = args.resolution or 256
    if res % 8:
        raise LaddError(f"--resolution {res} is not a multiple of 8 (the VAE factor)")
    batch = args.batch or 2
    hw = res // 8
    key = jax.random.key(0)
    params = jax.jit(init_params, static_argnums=(0, 2))(config, key, (hw, hw))
    x = jax.random.normal(key, (batch, hw, hw, config.in_channels))
    t = jnp.linspace(0.1, 0.9, batch)
    ctx = jax.random.normal(key, (batch, CONTEXT_LEN, config.joint_attention_dim))
    pooled = jax.random.normal(key, (batch, config.pooled_projection_dim))
    model = MMDiT(config)
    fwd = jax.jit(lambda p: model.apply({"params": p}, x, t, ctx, pooled))
    loss = lambda p: jnp.mean(jnp.square(model.apply({"params": p}, x, t, ctx, pooled)))
    fwd_bwd = jax.jit(jax.value_and_grad(loss))

    device = jax.devices()[0]
    flops = mmdit_flops(config, batch, hw, hw)
    result = {
        "device": getattr(device, "device_kind", str(device)),
        "config": args.preset or "small",
        "params": count_params(params),
        "resolution": res,
        "batch": batch,
        "dtype": config.dtype,
        "remat": config.remat_policy,
        "forward_gflop": flops / 1e9,
    }
    peak = peak_tflops(device)
    for name, fn, f in (
        ("forward", lambda: fwd(params), flops),
        ("forward_backward", lambda: fwd_bwd(params), 3 * flops),
    ):
        first, sec = _time(fn, args.steps)
        result[f"jax_{name}_s"] = sec
        result[f"jax_{name}_compile_s"] = first - sec
        result[f"jax_{name}_tflops"] = f / sec / 1e12
        if peak and config.dtype == "bfloat16":
            result[f"jax_{name}_mfu"] = f / sec / 1e12 / peak
    if not args.no_torch:
        result.update(_torch_mmdit(config, batch, hw, args.steps))
        for name in ("forward", "forward_backward"):
            result[f"torch_over_jax_{name}"] = result[f"torch_{name}_s"] / result[f"jax_{name}_s"]
    return result


def _torch_mmdit(config: MMDiTConfig, batch: int, hw: int, steps: int) -> dict:
    import torch
    from diffusers import SD3Transformer2DModel

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[config.dtype]
    model = SD3Transformer2DModel(**{k: v for k, v in config.to_diffusers().items() if k != "_class_name"})
    model = model.to(dtype)
    x = torch.randn(batch, config.in_channels, hw, hw, dtype=dtype)
    t = torch.linspace(100, 900, batch, dtype=dtype)
    ctx = torch.randn(batch, CONTEXT_LEN, config.joint_attention_dim, dtype=dtype)
    pooled = torch.randn(batch, config.pooled_projection_dim, dtype=dtype)

    def fwd():
        with torch.no_grad():
            return model(x, ctx, pooled, t).sample

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        out = model(x, ctx, pooled, t).sample.float().square().mean()
        out.backward()
        return out

    out = {}
    for name, fn in (("forward", fwd), ("forward_backward", fwd_bwd)):
        fn()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[f"torch_{name}_s"] = float(np.median(times))
    out["torch_threads"] = torch.get_num_threads()
    return out


PROMPT = "a photo of a cat sitting on the red sofa"


def bench_pipeline(args: argparse.Namespace) -> dict:
    from ladd_jax.pipeline import SD3Pipeline

    if not args.model:
        raise LaddError(
            "bench pipeline needs --model, a diffusers Stable Diffusion 3 folder; for a tiny random one run "
            '`python -c "from tests.tokenizer_fixtures import write_tiny_sd3_folder; '
            "write_tiny_sd3_folder('tiny_sd3')\"` from the repo root"
        )
    if args.sampling_steps < 1:
        raise LaddError(f"--sampling-steps {args.sampling_steps} must be at least 1")
    if args.steps < 1:
        raise LaddError(f"--steps {args.steps} must be at least 1")
    dtype = args.dtype or "float32"
    batch = args.batch or 1
    t0 = time.perf_counter()
    pipe = SD3Pipeline.from_pretrained(args.model, dtype=dtype)
    jax_load = time.perf_counter() - t0
    res = args.resolution or pipe.default_size
    pipe.check_size(res, res)
    prompts = [PROMPT] * batch
    call = dict(num_inference_steps=args.sampling_steps, guidance_scale=args.cfg, height=res, width=res)

    device = jax.devices()[0]
    result = {
        "device": getattr(device, "device_kind", str(device)),
        "model": str(args.model),
        "resolution": res,
        "batch": batch,
        "sampling_steps": args.sampling_steps,
        "cfg": args.cfg,
        "dtype": dtype,
        "jax_load_s": jax_load,
    }
    first, sec = _time(lambda: pipe(prompts, seed=0, output_type="np", **call), args.steps)
    result["jax_first_call_s"] = first
    result["jax_s_per_image"] = sec / batch
    if not args.no_torch:
        result.update(_torch_pipeline(args.model, dtype, prompts, call, args.steps))
        result["torch_over_jax"] = result["torch_s_per_image"] / result["jax_s_per_image"]
    return result


def _torch_pipeline(folder: str, dtype: str, prompts: list[str], call: dict, steps: int) -> dict:
    import torch
    from diffusers import StableDiffusion3Pipeline

    t0 = time.perf_counter()
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, dtype=getattr(torch, dtype))
    load = time.perf_counter() - t0
    pipe.set_progress_bar_config(disable=True)

    def fn():
        with torch.no_grad():
            return pipe(prompts, generator=torch.Generator().manual_seed(0), output_type="np", **call).images

    first, sec = _time(fn, steps)
    return {
        "torch_load_s": load,
        "torch_first_call_s": first,
        "torch_s_per_image": sec / len(prompts),
        "torch_threads": torch.get_num_threads(),
    }


BENCHES = {"mmdit": bench_mmdit, "pipeline": bench_pipeline}


def run(what: str, args: argparse.Namespace) -> dict:
    result = BENCHES[what](args)
    width = max(len(k) for k in result)
    for k, v in result.items():
        print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    print(json.dumps(result))
    return result
