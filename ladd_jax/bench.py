"""Benchmarks behind `ladd-jax bench`: figures for the README, never timed tests.

`mmdit`: forward and forward+backward of the Flax MMDiT, beside diffusers' PyTorch model on the same
config and the same device (the CPU here), with achieved TFLOP/s and, on a GPU, MFU.
`pipeline`: seconds per image of `SD3Pipeline` (text encoders, sampler with CFG, VAE decode) beside diffusers'
`StableDiffusion3Pipeline` on the same local folder, resolution, sampling steps and guidance scale.
`ladd`: one LADD step (ladd_jax/train/steps.py) jitted, beside its PyTorch reference (ladd_jax/torch_ref) eager and
torch.compile'd, on the same MMDiT, heads, batch and draws, with achieved TFLOP/s and, on a GPU in bfloat16, MFU.
`attention`: one attention layer's forward + backward, "xla" beside "blockwise" (models/attention.py): time and
the temporaries XLA plans.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ladd_jax.errors import LaddError
from ladd_jax.models.attention import attention
from ladd_jax.models.mmdit import MMDiT, MMDiTConfig, count_params, init_params

# A CPU-sized MMDiT with SD3's widths per head and real text-encoder widths.
SMALL = MMDiTConfig(num_layers=4, num_attention_heads=6, caption_projection_dim=384, pos_embed_max_size=64)
CONTEXT_LEN = 154  # 77 CLIP + 77 T5 tokens, as SD3 uses
SD3_TEXT_TOKENS = 333  # 77 CLIP + 256 T5 tokens: SD3's default max_sequence_length
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
    return _time_rounds({"": fn}, steps)[""]


def _time_rounds(fns: dict[str, Callable], steps: int) -> dict[str, tuple[float, float]]:
    """`_time` of each fn, their later calls in `steps` rounds of one call each: on a machine whose speed drifts
    (a shared CPU), the fns compared see the same conditions instead of one stretch each."""
    first, times = {}, {name: [] for name in fns}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        first[name] = time.perf_counter() - t0
    for _ in range(steps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    return {name: (first[name], float(np.median(times[name]))) for name in fns}


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


def jaxpr_flops(jaxpr: Any) -> float:
    """Matmul and convolution FLOPs (2 per multiply-add) of a traced function, a scan's body counted `length` times.

    Why not XLA's cost analysis of the compiled step: it counts a while loop's body once, and the MMDiT's blocks
    are a scan (measured: half the FLOPs of the 4-block SMALL forward). A while loop (unknown trip count) counts
    once here too, a cond its costliest branch.
    """
    total = 0.0
    for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contracting)
        elif name == "conv_general_dilated":  # each output: (in features / groups) x kernel window multiply-adds
            rhs = eqn.invars[1].aval.shape
            window = math.prod(rhs) / rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * window
        else:
            subs = [jaxpr_flops(j) for j in _sub_jaxprs(eqn.params)]
            if name == "cond":
                total += max(subs, default=0.0)
            else:
                total += eqn.params["length"] * sum(subs) if name == "scan" else sum(subs)
    return total


def _sub_jaxprs(params: dict) -> list:
    from jax.extend.core import ClosedJaxpr, Jaxpr

    found = []
    for value in params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, (ClosedJaxpr, Jaxpr)):
                found.append(v)
    return found


def load_ladd_config(spec: str) -> Any:
    """`PATH:VARIANT` of a LADD config file (configs/ladd.py:tiny), as `ladd-jax train --config` reads it."""
    from ladd_jax.config_files import load_config_file

    path, _, variant = spec.partition(":")
    return load_config_file(path, variant)


def bench_ladd(args: argparse.Namespace) -> dict:
    """The jitted LADD train step and `make_step_gradients` (the step without its updates: what the PyTorch
    reference computes, so `torch_*_over_jax` compares equal work), beside the reference eager and compiled.
    On a CPU the eager reference and the two JAX functions are timed in rounds of one call each (`_time_rounds`),
    then torch.compile; on a GPU PyTorch runs first and alone (see below)."""
    from ladd_jax.models.discriminator import init_discriminator
    from ladd_jax.train import sharding
    from ladd_jax.train.loop import DTYPES
    from ladd_jax.train.state import init_state, make_models
    from ladd_jax.train.steps import jit_train_step, make_step_gradients, make_train_step, step_draws

    config = load_ladd_config(args.config)
    config.dtype, config.remat_policy, config.attention_impl = args.dtype or "float32", args.remat, args.attention
    teacher = MMDiTConfig.preset(args.preset) if args.preset else SMALL
    res, batch = args.resolution or 256, args.batch or 2
    if res % (8 * teacher.patch_size):
        raise LaddError(f"--resolution {res} is not a multiple of {8 * teacher.patch_size} (VAE factor x patch size)")
    if config.teacher_dtype == "bfloat16" and config.dtype != "bfloat16" and not args.no_torch:
        raise LaddError("a bfloat16 teacher (config teacher_dtype) needs --dtype bfloat16 for the PyTorch reference")
    hw = res // 8
    models = make_models(config, teacher, teacher)
    mesh = sharding.make_mesh(devices=jax.devices()[:1])  # one device, as the PyTorch side
    key = jax.random.key(0)
    rng = np.random.default_rng(0)
    shapes = dict(
        latent=(batch, hw, hw, teacher.in_channels),
        context=(batch, CONTEXT_LEN, teacher.joint_attention_dim),
        pooled=(batch, teacher.pooled_projection_dim),
    )
    data = {k: rng.standard_normal(s, dtype=np.float32) for k, s in shapes.items()}
    draws = jax.device_get(step_draws(config, jnp.zeros((), jnp.int32), key, shapes["latent"]))
    heads = init_discriminator(models.disc.config, key, teacher.hidden_size, teacher.pooled_projection_dim)

    device = jax.devices()[0]
    peak = peak_tflops(device) if config.dtype == "bfloat16" else None
    flops = _ladd_flops(config, teacher, heads, shapes, mesh)
    result = {
        "device": getattr(device, "device_kind", str(device)),
        "config": args.preset or "small",
        "ladd_config": args.config,
        "params": count_params(jax.eval_shape(lambda: init_params(teacher, key, (hw, hw)))),
        "head_params": count_params(heads),
        "feature_layers": len(models.feature_layers),
        "loss": config.loss,
        "resolution": res,
        "batch": batch,
        "dtype": config.dtype,
        "remat": config.remat_policy,
        "attention": config.attention_impl or "default",
        "step_gflop": flops["gradients"] / 1e9,
        "train_step_gflop": flops["train_step"] / 1e9,
    }

    def report(name: str, first: float, sec: float, f: float) -> None:
        result[f"{name}_ms"] = sec * 1e3
        if name != "torch_eager":  # the first call minus a later one: compilation (eager has none to speak of)
            result[f"{name}_compile_s"] = first - sec
        result[f"{name}_img_per_s"] = batch / sec
        result[f"{name}_tflops"] = f / sec / 1e12
        if peak:
            result[f"{name}_mfu"] = f / sec / 1e12 / peak

    # On a GPU, PyTorch runs first and alone (XLA keeps the memory it once used; PyTorch's caching allocator gives
    # it back). On a CPU its eager step is timed in rounds with the JAX steps (`_time_rounds`).
    reference = None if args.no_torch else _torch_reference(config, teacher, models.disc.config, heads, data, draws)
    if reference is not None and reference.device != "cpu":
        _time_torch(reference, args, result, report, flops["gradients"], eager=True)
        reference.release()
        reference = None

    # Placed and jitted as the trainer does (loop.build, steps.jit_train_step): the step's outputs then have the
    # shardings of its inputs, so the next call neither reshards nor recompiles.
    cast = DTYPES[config.teacher_dtype]
    make_teacher = lambda k: jax.tree.map(lambda x: x.astype(cast), init_params(teacher, k, (hw, hw)))
    make_state = lambda k, h: init_state(models, init_params(teacher, k, (hw, hw)), h)
    state_sharding = sharding.state_shardings(models, jax.eval_shape(make_state, key, heads), mesh)
    teacher_sharding = sharding.param_shardings(jax.eval_shape(make_teacher, key), mesh)
    batch_sharding = {k: sharding.batch_sharding(mesh, len(s)) for k, s in shapes.items()}
    teacher_params = jax.jit(make_teacher, out_shardings=teacher_sharding)(key)
    state = [jax.jit(make_state, out_shardings=state_sharding)(key, heads)]  # a list: each step donates it
    data, draws = jax.device_put(data, batch_sharding), jax.device_put(draws)
    gradients = jax.jit(make_step_gradients(config, models, mesh))
    grads = lambda: gradients(state[0].student, state[0].disc, teacher_params, data, draws)
    train_step = jit_train_step(
        make_train_step(config, models, mesh), state_sharding, dict(teacher=teacher_sharding), batch_sharding, mesh
    )

    def step() -> Any:
        state[0], metrics = train_step(state[0], dict(teacher=teacher_params), data, key)
        return metrics

    fns = dict(jax_grads=grads, jax_step=step)
    if reference is not None:
        fns = dict(torch_eager=reference.call, **fns)
    for name, times in _time_rounds(fns, args.steps).items():
        report(name, *times, flops["train_step" if name == "jax_step" else "gradients"])
    if reference is not None:
        _time_torch(reference, args, result, report, flops["gradients"], eager=False)
        reference.release()
    for name in ("torch_eager", "torch_compile"):
        if f"{name}_ms" in result:
            result[f"{name}_over_jax"] = result[f"{name}_ms"] / result["jax_grads_ms"]
    return result


def _ladd_flops(config: Any, teacher: MMDiTConfig, heads: Any, shapes: dict, mesh: Any) -> dict[str, float]:
    """`jaxpr_flops` of the gradients and of the train step, traced with XLA attention and no remat: the model's
    FLOPs, the same whichever attention kernel runs and without recomputation (the usual MFU convention)."""
    from ladd_jax.train.state import init_state, make_models
    from ladd_jax.train.steps import make_step_gradients, make_train_step, step_draws

    plain = copy.deepcopy(config)
    plain.attention_impl, plain.remat_policy = "xla", "none"
    models = make_models(plain, teacher, teacher)
    params = jax.eval_shape(lambda: init_params(teacher, jax.random.key(0), shapes["latent"][1:3]))
    data = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}
    draws = jax.eval_shape(lambda: step_draws(plain, jnp.zeros((), jnp.int32), jax.random.key(0), shapes["latent"]))
    state = jax.eval_shape(functools.partial(init_state, models), params, heads)
    key = jax.eval_shape(lambda: jax.random.key(0))
    gradients = jax.make_jaxpr(make_step_gradients(plain, models, mesh))(params, heads, params, data, draws)
    train_step = jax.make_jaxpr(make_train_step(plain, models, mesh))(state, dict(teacher=params), data, key)
    return {"gradients": jaxpr_flops(gradients), "train_step": jaxpr_flops(train_step)}


@dataclasses.dataclass
class _TorchLadd:
    """The PyTorch reference step on the bench's weights, batch and draws: `call()` runs one step's gradients."""

    reference: Any
    batch: dict
    noise: dict
    device: str

    def call(self) -> None:
        import torch

        self.reference.gradients(self.batch, self.noise)
        if self.device == "cuda":
            torch.cuda.synchronize()

    def release(self) -> None:
        """Drops the models and compiled graphs, and hands GPU memory back (for XLA)."""
        import gc

        import torch

        self.reference, self.batch, self.noise = None, {}, {}
        torch.compiler.reset()  # compiled graphs hold on to the models
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _torch_reference(
    config: Any, teacher: MMDiTConfig, heads_config: Any, heads: Any, data: dict, draws: dict
) -> _TorchLadd:
    import torch
    from diffusers import SD3Transformer2DModel

    from ladd_jax.torch_ref.ladd_step import LaddReference, heads_from_jax, torch_inputs

    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # initialised where it runs: a CPU init of a 2B-param model takes minutes
        t_model = SD3Transformer2DModel(**{k: v for k, v in teacher.to_diffusers().items() if k != "_class_name"})
    s_model = copy.deepcopy(t_model)
    if config.teacher_dtype == "bfloat16":  # as the JAX teacher's params; autocast computes in bfloat16 either way
        t_model = t_model.to(torch.bfloat16)
    reference = LaddReference.from_config(config, t_model, s_model, heads_from_jax(heads_config, heads).to(device))
    return _TorchLadd(reference, torch_inputs(data, device), torch_inputs(draws, device), device)


def _time_torch(
    torch_ladd: _TorchLadd, args: argparse.Namespace, result: dict, report: Callable, flops: float, eager: bool
) -> None:
    """Times the reference alone: eager (when `eager`) and, unless --no-torch-compile, torch.compile'd (a failure
    to compile is reported, not raised: it needs a C++ compiler or Triton)."""
    import torch

    if eager:
        report("torch_eager", *_time(torch_ladd.call, args.steps), flops)
    if not args.no_torch_compile:
        try:
            torch_ladd.reference.compile()
            report("torch_compile", *_time(torch_ladd.call, args.steps), flops)
        except Exception as e:  # whatever the toolchain raises, the eager figures stand
            result["torch_compile_error"] = f"{type(e).__name__}: {str(e).strip()[:300]}"
    result["torch_device"] = torch_ladd.device
    result["torch_threads"] = torch.get_num_threads()


def bench_attention(args: argparse.Namespace) -> dict:
    """Forward + backward of one attention layer with the preset's heads at the resolution's token count (image
    tokens + SD3's 333 text tokens), "xla" (the [L, L] matrix materialised) beside "blockwise": median seconds and
    the temporaries XLA plans for each."""
    config = MMDiTConfig.preset(args.preset or "sd3-medium")
    res = args.resolution or 1024
    tokens = (res // 8 // config.patch_size) ** 2 + SD3_TEXT_TOKENS
    batch, dtype = args.batch or 1, jnp.dtype(args.dtype or "float32")
    shape = (batch, tokens, config.num_attention_heads, config.attention_head_dim)
    q, k, v = (jax.random.normal(jax.random.key(i), shape, dtype) for i in range(3))
    result = dict(preset=args.preset or "sd3-medium", tokens=tokens, batch=batch, dtype=str(dtype))
    for impl in ("xla", "blockwise"):
        loss = lambda q, k, v, impl=impl: jnp.sum(attention(q, k, v, impl).astype(jnp.float32))
        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        compiled = step.lower(q, k, v).compile()
        first, median = _time(lambda step=step: step(q, k, v), args.steps)
        result[f"{impl}_fwd_bwd_s"] = median
        result[f"{impl}_first_call_s"] = first
        result[f"{impl}_temp_gib"] = compiled.memory_analysis().temp_size_in_bytes / 2**30
    result["blockwise_over_xla_time"] = result["blockwise_fwd_bwd_s"] / result["xla_fwd_bwd_s"]
    return result


BENCHES = {"mmdit": bench_mmdit, "pipeline": bench_pipeline, "ladd": bench_ladd, "attention": bench_attention}


def run(what: str, args: argparse.Namespace) -> dict:
    """Runs a bench; prints a table and then the JSON line, or the JSON line alone with --json. The figures name the
    XLA flags they ran under: XLA:CPU's choice of dot kernels moves them by 10-20% (README "Benchmarks")."""
    if args.steps < 1:  # the timed calls: none would make every figure NaN
        raise LaddError(f"--steps {args.steps} must be at least 1")
    result = {**BENCHES[what](args), "xla_flags": os.environ.get("XLA_FLAGS", "")}
    if not getattr(args, "json", False):
        width = max(len(k) for k in result)
        for k, v in result.items():
            print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    print(json.dumps(result))
    return result
