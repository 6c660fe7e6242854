"""The toy-world demo, shortened (`ladd-jax demo --quick`): the whole system from the shipped toy checkpoints,
with the report's structure checked and the student's 1-step FD measured against its initialisation."""

from __future__ import annotations

import json

import pytest

from ladd_jax.toy.demo import QUICK, DemoConfig, run_demo


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    run_demo(out, DemoConfig(**QUICK))
    return out


def test_report_files_and_structure(report):
    for name in ("report.md", "report.html", "metrics.json", "curves.png", "grid_0.png"):
        assert (report / name).stat().st_size > 0, name
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(metrics) == {"rows", "seconds"} and metrics["seconds"] > 0
    rows = {(r["model"], r["steps"], r["cfg"]): r for r in metrics["rows"]}
    assert {("student", n, 1.0) for n in (1, 2, 4)} <= set(rows)
    assert {("teacher", n, QUICK_CFG) for n in (1, 2, 4, QUICK["synth_steps"])} <= set(rows)
    for r in metrics["rows"]:
        assert set(r) == {"model", "steps", "cfg", "fd", "alignment"}
        assert r["fd"] >= 0 and 0 <= r["alignment"] <= 1
    assert "| student | 1 | 1 |" in (report / "report.md").read_text()


QUICK_CFG = DemoConfig().cfg


def test_student_one_step_improves_on_its_initialisation(report):
    """The student starts as the teacher; the teacher's 1-step, no-CFG samples are its initial 1-step samples."""
    rows = {(r["model"], r["steps"], r["cfg"]): r for r in json.loads((report / "metrics.json").read_text())["rows"]}
    assert rows[("student", 1, 1.0)]["fd"] < rows[("teacher", 1, 1.0)]["fd"]
