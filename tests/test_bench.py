"""`ladd-jax bench` runs and reports its keys (benchmarks are never timed tests)."""

from __future__ import annotations

import json

import pytest
from tokenizer_fixtures import write_tiny_sd3_folder

from ladd_jax.cli import main


def _report(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


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
    for key in ("jax_first_call_s", "jax_s_per_image", "torch_first_call_s", "torch_s_per_image", "torch_over_jax"):
        assert key in report


def test_bench_pipeline_needs_a_model(capsys):
    assert main(["bench", "pipeline", "--no-torch"]) == 2
    assert "write_tiny_sd3_folder" in capsys.readouterr().err
