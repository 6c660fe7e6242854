"""Shared fixtures: tiny random PyTorch reference models (nothing is downloaded)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# One persistent compilation cache for the session and every subprocess it starts: the trainer tests compile
# the same LADD step in several runs and processes. Set before anything imports jax.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="ladd_jax_xla_cache_"))
# The tests' programs are small and compiled once or twice each: XLA:CPU's LLVM optimisation costs them more time
# than it saves (the suite 28 -> 22 minutes on a 2-core AMD EPYC); a result that depended on it would be a bug.
# Subprocesses keep it, except the `ladd-jax` runs that train or sample for long (tests/cpu_devices.py).
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
# For the same reason, XLA:CPU's older elemental emitters: the tiny regression step (with LADD's heads) compiled in
# 14 s instead of 21.5 (test_d2g_losses_by_hand 89 -> 74 s). An XLA that no longer knows the flag would abort every
# process that reads it, so a throw-away process asks first (workers inherit the answer with the environment).
if "--xla_cpu_use_fusion_emitters" not in os.environ["XLA_FLAGS"]:
    _legacy = "--xla_cpu_use_fusion_emitters=false"
    _probe = [sys.executable, "-c", "import jax; jax.devices()"]
    _env = {**os.environ, "XLA_FLAGS": _legacy, "JAX_PLATFORMS": "cpu"}
    if subprocess.run(_probe, env=_env, capture_output=True).returncode == 0:
        os.environ["XLA_FLAGS"] += f" {_legacy}"

import numpy as np
import pytest
from tokenizer_fixtures import randomize_, write_tiny_sd3_folder

TINY_MMDIT = dict(
    sample_size=16,
    patch_size=2,
    in_channels=4,
    num_layers=3,
    attention_head_dim=8,
    num_attention_heads=2,
    joint_attention_dim=32,
    caption_projection_dim=16,
    pooled_projection_dim=24,
    out_channels=4,
    pos_embed_max_size=12,
)
# The three SD3-family variants in miniature, and another patch size.
MMDIT_VARIANTS = {
    "sd3-medium": {},
    "sd3.5-large": {"qk_norm": "rms_norm"},
    "sd3.5-medium": {"qk_norm": "rms_norm", "dual_attention_layers": (0, 1), "num_layers": 4, "pos_embed_max_size": 16},
    "patch1": {"patch_size": 1, "dual_attention_layers": (1,)},
}


def tiny_sd3_transformer(variant: str, seed: int = 0):
    from diffusers import SD3Transformer2DModel

    model = SD3Transformer2DModel(**{**TINY_MMDIT, **MMDIT_VARIANTS[variant]}).eval()
    randomize_(model, seed)
    return model


@pytest.fixture(params=sorted(MMDIT_VARIANTS))
def variant(request) -> str:
    return request.param


def mmdit_inputs(model_config, batch: int = 2, h: int = 8, w: int = 12, ctx_len: int = 5, seed: int = 1):
    """NHWC numpy inputs (x, t in [0,1], context, pooled) for an MMDiT config (diffusers' or ours)."""
    rng = np.random.default_rng(seed)
    get = model_config.get if isinstance(model_config, dict) else lambda k: getattr(model_config, k)
    x = rng.standard_normal((batch, h, w, get("in_channels")), dtype=np.float32)
    t = rng.uniform(0.05, 0.95, batch).astype(np.float32)
    ctx = rng.standard_normal((batch, ctx_len, get("joint_attention_dim")), dtype=np.float32)
    pooled = rng.standard_normal((batch, get("pooled_projection_dim")), dtype=np.float32)
    return x, t, ctx, pooled


def torch_mmdit_forward(model, x, t, ctx, pooled) -> np.ndarray:
    """diffusers' output for NHWC numpy inputs, returned NHWC."""
    import torch

    with torch.no_grad():
        out = model(
            torch.from_numpy(x).permute(0, 3, 1, 2),
            torch.from_numpy(ctx),
            torch.from_numpy(pooled),
            torch.from_numpy(t) * 1000,
        ).sample
    return out.permute(0, 2, 3, 1).numpy()


# The toy world's two end-to-end files (the quick demo ~4.5 minutes, the heads alone ~3) go to the two xdist workers
# first: in collection order they started mid-suite, where the later one could end the suite with the other idle.
LONGEST_FIRST = ("test_demo.py", "test_ladd_game.py")


def pytest_collection_modifyitems(items: list) -> None:
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)  # stable: every other test keeps its order


def rel_err(a, b) -> float:
    """max |a - b| relative to the reference's scale (max |b|)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


TINY_SYNTH = dict(num_steps=2, cfg=2.0, height=64, width=64, max_sequence_length=8, batch_size=8)


def tiny_synth(teacher: Path, prompts: Path, out: Path, **overrides) -> dict:
    """`run_synth` with the tiny teacher's settings (`TINY_SYNTH`, any of them overridden); returns the manifest."""
    from ladd_jax.data.synth import run_synth

    return run_synth(model=str(teacher), prompts=str(prompts), out=str(out), **{**TINY_SYNTH, **overrides})


def _shared_dir(tmp_path_factory, worker_id: str, name: str) -> Path:
    """A folder for a session fixture that xdist's workers build once and share: under the session's common
    temporary root when the suite runs on several workers, the worker's own otherwise."""
    if worker_id == "master":  # one process (-n 0)
        return tmp_path_factory.mktemp(name)
    return tmp_path_factory.getbasetemp().parent / name


@pytest.fixture(scope="session")
def world(tmp_path_factory, worker_id) -> dict[str, Path]:
    """A tiny random teacher folder and 16 synthetic records it generated (2 Euler steps, CFG 2), shared by the
    trainer tests of the session (built once, by whichever worker asks first)."""
    from filelock import FileLock

    root = _shared_dir(tmp_path_factory, worker_id, "ladd_world")
    teacher, data = root / "teacher", root / "data"
    with FileLock(f"{root}.lock"):
        if not (root / "built").exists():
            shutil.rmtree(root, ignore_errors=True)  # a build that an earlier failure left half done
            root.mkdir(parents=True)
            write_tiny_sd3_folder(teacher)
            prompts = root / "prompts.txt"
            prompts.write_text("\n".join(f"a photo of thing {i}" for i in range(16)))
            tiny_synth(teacher, prompts, data)
            (root / "built").touch()
    return dict(teacher=teacher, data=data)


@pytest.fixture(scope="session")
def bucket_world(world, tmp_path_factory) -> dict[str, Path]:
    """The tiny teacher's records at two of the toy world's buckets, assigned by a column of the prompts file: 8
    prompts at 64x64, 4 at 48x80 (two buckets keep the compile-per-bucket test short)."""
    import json

    from ladd_jax.data.buckets import TOY_BUCKETS, format_bucket

    root = tmp_path_factory.mktemp("buckets")
    sizes = [TOY_BUCKETS[0]] * 8 + [TOY_BUCKETS[1]] * 4
    lines = [json.dumps({"prompt": f"a photo of thing {i}", "bucket": format_bucket(b)}) for i, b in enumerate(sizes)]
    (root / "prompts.jsonl").write_text("\n".join(lines))
    tiny_synth(
        world["teacher"],
        root / "prompts.jsonl",
        root / "data",
        height=None,
        width=None,
        batch_size=4,
        shard_size=5,
        buckets=",".join(format_bucket(b) for b in TOY_BUCKETS[:2]),
        bucket_column="bucket",
    )
    return dict(teacher=world["teacher"], data=root / "data")


@pytest.fixture(scope="session")
def latent_features(tmp_path_factory) -> str:
    """A tiny random latent feature network folder (the perceptual distance's: d2g's lpips loss, the anchor's)."""
    import jax

    from ladd_jax.models.latent_perceptual import LatentFeatureConfig, init_latent_features, save_latent_features

    folder = tmp_path_factory.mktemp("latent_features") / "net"
    config = LatentFeatureConfig(in_channels=16, channels=(8, 16), blocks=1, groups=4)
    save_latent_features(folder, config, init_latent_features(config, jax.random.key(1)), {})
    return str(folder)
