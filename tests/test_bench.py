"""`ladd-jax bench` runs and reports its keys (benchmarks are never timed tests)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_MMDIT
from tokenizer_fixtures import write_tiny_sd3_folder

from ladd_jax import bench
from ladd_jax.cli import main
from ladd_jax.models.mmdit import MMDiTConfig

# configs/ladd.py:tiny with one small head on the last of the tiny teacher's 3 blocks: the bench's two jitted steps
# then compile in half the time.
ONE_HEAD_CONFIG = f"""
import sys

sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / "configs")!r})
import ladd


def get_config(arg=None):
    c = ladd.get_config("tiny")
    c.disc.feature_layers, c.disc.num_blocks = (2,), 1
    c.disc.hidden, c.disc.cond_dim, c.disc.norm_groups = 16, 16, 4
    return c
"""


def _report(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.slow  # 25 s; CI runs the pipeline bench and the LADD bench's report
def test_bench_mmdit_runs(capsys):
    assert main(["bench", "mmdit", "--steps", "1", "--no-torch", "--resolution", "32", "--batch", "1"]) == 0
    report = _report(capsys)
    for key in ("params", "jax_forward_s", "jax_forward_backward_s", "jax_forward_tflops"):
        assert key in report


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_sd3_folder(tmp_path_factory.mktemp("sd3") / "pipe", seed=0)


def test_bench_pipeline_runs(folder, capsys):
    argv = ["bench", "pipeline", "--model", str(folder), "--steps", "1", "--sampling-steps", "2"]
    assert main([*argv, "--resolution", "32", "--cfg", "3.0"]) == 0
    report = _report(capsys)
    assert report["resolution"] == 32 and report["sampling_steps"] == 2
    assert report["xla_flags"] == os.environ.get("XLA_FLAGS", "")
    for key in ("jax_first_call_s", "jax_s_per_image", "torch_first_call_s", "torch_s_per_image", "torch_over_jax"):
        assert key in report


def test_bench_pipeline_needs_a_model(capsys):
    assert main(["bench", "pipeline", "--no-torch"]) == 2
    assert "write_tiny_sd3_folder" in capsys.readouterr().err


@pytest.mark.slow  # 36 s; the step's correctness is tests/test_torch_ladd.py's
def test_bench_ladd_reports_jax_and_pytorch(capsys, monkeypatch, tmp_path):
    """A tiny MMDiT instead of the bench's small one (whose compiles take a minute here) at 32x32 pixels, one timed
    step each, PyTorch eager only (compiling takes minutes on a CPU)."""
    monkeypatch.setattr(bench, "SMALL", MMDiTConfig.from_diffusers(TINY_MMDIT))
    (tmp_path / "one_head.py").write_text(ONE_HEAD_CONFIG)
    config = f"{tmp_path / 'one_head.py'}:tiny"
    argv = ["bench", "ladd", "--config", config, "--resolution", "32", "--batch", "1", "--steps", "1"]
    assert main([*argv, "--no-torch-compile", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # --json: the JSON line alone
    report = json.loads(out[0])
    assert report["resolution"] == 32 and report["batch"] == 1 and report["feature_layers"] == 1
    assert report["step_gflop"] > 0
    for name in ("jax_grads", "jax_step", "torch_eager"):
        for key in ("ms", "img_per_s", "tflops"):
            assert report[f"{name}_{key}"] > 0, (name, key)
    assert report["torch_eager_over_jax"] > 0
    assert "torch_compile_ms" not in report and "torch_compile_error" not in report


def test_bench_ladd_needs_a_config_file(capsys):
    assert main(["bench", "ladd", "--config", "no/such/ladd.py:tiny", "--no-torch"]) == 2
    assert "no file no/such/ladd.py" in capsys.readouterr().err


@pytest.mark.slow  # 22 s; CI checks blockwise attention itself (tests/test_attention.py)
def test_bench_attention_runs(capsys):
    """At 1024 + 333 tokens: both implementations timed; blockwise plans fewer temporaries than the matrix."""
    assert main(["bench", "attention", "--steps", "1", "--resolution", "512", "--json"]) == 0
    report = _report(capsys)
    assert report["tokens"] == 32 * 32 + 333
    assert report["xla_fwd_bwd_s"] > 0 and report["blockwise_fwd_bwd_s"] > 0
    assert report["blockwise_temp_gib"] < report["xla_temp_gib"]


@pytest.mark.skipif(shutil.which("cc") is None, reason="launch/large_block_cache.sh compiles its shim with cc")
def test_large_block_cache_reuses_freed_blocks_instead_of_mapping_them_again():
    """The bench diagnostic's shim (README, "Benchmarks"): 20 allocations of 256 MiB, each written and freed, fault
    their pages in once under the shim and every time without it; realloc and small blocks still work."""
    program = (
        "import ctypes, resource\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.malloc.restype = libc.realloc.restype = ctypes.c_void_p\n"
        "libc.realloc.argtypes, libc.free.argtypes = (ctypes.c_void_p, ctypes.c_size_t), (ctypes.c_void_p,)\n"
        "size = 256 << 20\n"
        "for _ in range(20):\n"
        "    p = libc.malloc(size)\n"
        "    ctypes.memset(p, 1, size)\n"
        "    libc.free(ctypes.c_void_p(p))\n"
        "p = libc.malloc(size)\n"
        "ctypes.memset(p, 7, 64)\n"
        "q = libc.realloc(p, 2 * size)\n"
        "assert ctypes.string_at(q, 64) == bytes([7]) * 64\n"
        "libc.free(ctypes.c_void_p(q))\n"
        "small = [bytearray(1000) for _ in range(1000)]\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)\n"
    )
    script = Path(__file__).resolve().parents[1] / "launch" / "large_block_cache.sh"

    def faults(*prefix: str) -> int:
        run = subprocess.run([*prefix, sys.executable, "-c", program], capture_output=True, text=True, check=True)
        return int(run.stdout.split()[-1])

    pages = 20 * (256 << 20) // 4096
    assert faults() > 0.9 * pages  # glibc maps every block afresh
    assert faults("bash", str(script)) < 0.2 * pages  # the shim faults the first block's pages in, then reuses it


def test_gpu_toy_demo_refuses_a_cpu_only_jax_before_running_anything(tmp_path):
    """launch/gpu_toy_demo.sh times the toy demos on an accelerator: where JAX sees only the CPU it stops at once
    with one message naming the override, and starts no demo (its folders stay empty)."""
    script = Path(__file__).resolve().parents[1] / "launch" / "gpu_toy_demo.sh"
    env = {**os.environ, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"), "ALLOW_CPU": "0"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # its python3: this one
    run = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "no accelerator: jax sees only the CPU (ALLOW_CPU=1)" in run.stderr
    assert "jax" in run.stdout and " cpu " in run.stdout
    assert not any((tmp_path / "work").iterdir()) and not any((tmp_path / "out").iterdir())
