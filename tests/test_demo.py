"""The toy-world demo, shortened (`ladd-jax demo --quick`): the whole system from the shipped toy checkpoints,
with the report's structure checked and the 1-step student measured against its initialisation and against the
frozen-heads control."""

from __future__ import annotations

import json

import pytest
from cpu_devices import run_optimised_cli

from ladd_jax.cli import main
from ladd_jax.errors import LaddError
from ladd_jax.toy.demo import QUICK, DemoConfig, run_demo


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """`ladd-jax demo --quick` as a user runs it, in a subprocess with XLA:CPU's optimisation on: it trains and
    samples enough for optimised code to repay its compile time (tests/conftest.py turns it off elsewhere)."""
    out = tmp_path_factory.mktemp("demo")
    run_optimised_cli("demo", "--quick", "--out", str(out))
    return out


def rows_of(report) -> dict:
    rows = json.loads((report / "metrics.json").read_text())["rows"]
    return {(r["model"], r["steps"], r["cfg"]): r for r in rows}


def test_report_files_and_structure(report):
    for name in ("report.md", "report.html", "metrics.json", "curves.png", "grid_0.png", "grid_1.png"):
        assert (report / name).stat().st_size > 0, name
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["seconds"] > 0
    phases = metrics["phase_seconds"]  # where the minutes went, in the order the parts ran
    assert list(phases) == ["setup", "synthesis", "LADD", "control", "evaluation", "report"]
    assert all(v > 0 for v in phases.values()) and sum(phases.values()) == pytest.approx(metrics["seconds"], rel=1e-3)
    for key in ("teacher", "student", "control"):
        assert metrics[key].startswith("/"), key  # absolute paths of the folders used
    rows, cfg = rows_of(report), DemoConfig().cfg
    assert {("student", n, 1.0) for n in (1, 2, 4)} <= set(rows)
    assert {("control", n, 1.0) for n in (1, 2, 4)} <= set(rows)
    assert {("teacher", n, cfg) for n in (1, 2, 4, QUICK["synth_steps"])} <= set(rows)
    for r in rows.values():
        for split in ("train", "test"):
            assert r[f"fd_{split}"] >= 0 and 0 <= r[f"alignment_{split}"] <= 1
    assert set(metrics["real_renders"]) == {"train", "test"}
    assert metrics["targets"] and all(
        set(t) == {"target", "split", "value", "bound", "holds"} for t in metrics["targets"]
    )
    md = (report / "report.md").read_text()
    assert f"(setup {phases['setup']:.0f} s, synthesis" in md
    assert "| student | 1 | 1 |" in md and "| control | 1 | 1 |" in md and "What you are looking at" in md
    logged = [json.loads(line) for line in (report / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "eval/fd_1step" in r] == [0, 6, 12]  # the curve points
    assert all("logit_gap" in r for r in logged if "d_acc" in r)


def test_student_one_step_beats_its_initialisation_and_the_frozen_heads_control(report):
    """The student starts as the teacher; the teacher's 1-step, no-CFG samples are its initial 1-step samples.
    The control ran the same number of steps with frozen random heads."""
    rows = rows_of(report)
    for split in ("train", "test"):
        student = rows[("student", 1, 1.0)][f"fd_{split}"]
        assert student < rows[("teacher", 1, 1.0)][f"fd_{split}"], split
        assert student < rows[("control", 1, 1.0)][f"fd_{split}"], split


def test_unwritable_output_folder_is_one_clear_error(capsys):
    with pytest.raises(LaddError, match="cannot write the demo's output folder /proc/x"):
        run_demo("/proc/x", DemoConfig(**QUICK))
    assert main(["demo", "--out", "/proc/x", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "cannot write the demo's output folder /proc/x" in err and "Traceback" not in err


def test_non_positive_ladd_steps_is_one_clear_error(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "o"), "--ladd-steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "--ladd-steps must be at least 1, got 0" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # checked before anything is written


@pytest.mark.slow
def test_multi_aspect_demo_measures_every_bucket_at_its_size(tmp_path):
    from PIL import Image

    result = run_demo(tmp_path, DemoConfig(**QUICK, multi_aspect=True, control=False))
    assert list(result["buckets"]) == ["64x64", "48x80", "80x48"]
    assert result["buckets"]["64x64"]["rows"] == result["rows"]  # the square bucket is the main table
    for name, measured in result["buckets"].items():
        assert [(r["model"], r["steps"]) for r in measured["rows"]] == [
            (r["model"], r["steps"]) for r in result["rows"]
        ]
        for r in measured["rows"]:
            for split in ("train", "test"):
                assert r[f"fd_{split}"] >= 0 and 0 <= r[f"alignment_{split}"] <= 1
        assert all(measured["real_renders"][split]["alignment"] >= 0.9 for split in ("train", "test")), name
    md = (tmp_path / "report.md").read_text()
    assert "## Per bucket" in md and "**48x80** (height x width)" in md and "grid_buckets.png" in md
    # The 48x80 grids: a real render, then every row, each column one 48x80 sample drawn at twice its size.
    files = [line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![48x80, ")]
    assert len(files) == 2 * QUICK["grid_prompts"], md
    assert Image.open(tmp_path / files[0]).width == 2 * 80 * (len(result["rows"]) + 1)
