"""`ladd-jax evaluate`: exported students measured beside the toy teacher. The shipped teacher folder is itself a
valid pipeline folder, so it stands in for a student ("a"), and a deeper and wider student made of its blocks (the
repeats starting as the identity, every channel copied) for another ("b"); both compute the teacher's function, so
each must reproduce the teacher's 1-step no-CFG row."""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import pytest

from ladd_jax.cli import main
from ladd_jax.errors import LaddError
from ladd_jax.toy import evaluate
from ladd_jax.toy.evaluate import ASSETS, EvalConfig, parse_students, run_evaluate
from ladd_jax.toy.report import row_label

TEACHER = ASSETS / "teacher"
TINY = EvalConfig(eval_prompts=8, reference_images=32, grid_prompts=1, grid_seeds=1, student_steps=(1,), synth_steps=2)


@pytest.fixture(scope="module")
def bigger_student(tmp_path_factory):
    from ladd_jax.convert.mmdit import load_mmdit
    from ladd_jax.export import export_student
    from ladd_jax.models.net2wider import wider
    from ladd_jax.train.student import select_layers

    config, params = select_layers(*load_mmdit(TEACHER / "transformer"), (0, 0, 1, 2, 2, 3))
    config, params = wider(config, params, 2, jax.random.key(0), noise=0.1)
    return export_student(TEACHER, config, params, tmp_path_factory.mktemp("bigger") / "student")


@pytest.fixture(scope="module")
def report(tmp_path_factory, bigger_student):
    out = tmp_path_factory.mktemp("evaluate")
    run_evaluate(out, {"a": TEACHER, "b": bigger_student}, config=TINY)
    return out


def rows_of(report) -> dict:
    rows = json.loads((report / "metrics.json").read_text())["rows"]
    return {(r["model"], r["steps"], r["cfg"], r["sampler"]): r for r in rows}


def test_report_files_rows_and_paths(report):
    for name in ("report.md", "report.html", "metrics.json", "grid_0.png", "grid_1.png"):
        assert (report / name).stat().st_size > 0, name
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["teacher"] == str(TEACHER.resolve()) and metrics["evaluator"].startswith("/")
    assert metrics["students"]["a"] == str(TEACHER.resolve()) and metrics["students"]["b"].startswith("/")
    assert metrics["settings"]["eval_prompts"] == TINY.eval_prompts
    rows = rows_of(report)
    assert set(rows) == {
        ("teacher", 2, 3.0, "euler"),
        ("teacher", 1, 3.0, "student schedule"),
        ("teacher", 1, 1.0, "student schedule"),
        ("a", 1, 1.0, "student schedule"),
        ("b", 1, 1.0, "student schedule"),
    }
    for r in [*rows.values(), *({f"{k}_{s}": v for k, v in m.items()} for s, m in metrics["real_renders"].items())]:
        for key, value in r.items():
            if key.startswith(("fd_", "alignment_")):
                assert math.isfinite(value) and value >= 0, (r, key)
    md = (report / "report.md").read_text()
    assert "| a | 1 | 1 |" in md and "| b | 1 | 1 |" in md and "| real renders (floor) |" in md
    assert "What you are looking at" in md and "](grid_1.png)" in md and "Targets" not in md
    assert "Where alignment is lost" in md and "| a | 1 | 1 | " in md.split("Where alignment is lost")[1]
    assert "Which shapes" in md and "| cross |" in md.split("Which shapes")[1]
    for r in rows.values():
        assert r["attributes_train"]["all"] == r["alignment_train"] and "shape" in r["attributes_test"]
        assert set(r["shapes_train"]) == {"circle", "square", "triangle", "cross", "small", "large"}
    page = (report / "report.html").read_text()
    assert page.count("<tbody") == 12  # teacher, a, b, the floor: one group per model, in each of three tables
    assert "src='grid_0.png'" in page


def test_teacher_as_student_reproduces_the_teachers_one_step_row(report):
    """Same noise, same function (the weights loaded from a folder again; for "b" in a deeper, wider model sampled by
    its own architecture), same sampler: anything else is a wiring bug."""
    rows = rows_of(report)
    teacher = rows[("teacher", 1, 1.0, "student schedule")]
    for name in ("a", "b"):
        student = rows[(name, 1, 1.0, "student schedule")]
        for split in ("train", "test"):
            assert student[f"alignment_{split}"] == teacher[f"alignment_{split}"], (name, split)
            assert student[f"fd_{split}"] == pytest.approx(teacher[f"fd_{split}"], rel=1e-5), (name, split)
    assert teacher["fd_train"] != rows[("teacher", 1, 3.0, "student schedule")]["fd_train"]  # CFG does matter


def test_cli_wires_students_and_settings(monkeypatch, tmp_path, capsys):
    calls = []

    def fake(out, students, teacher, evaluator, config):
        calls.append((out, students, teacher, evaluator, config))
        row = dict(model="x", steps=1, cfg=1.0, sampler="student schedule")
        row.update(fd_train=1.0, alignment_train=0.5, fd_test=2.0, alignment_test=0.25)
        real = {s: dict(fd=0.5, alignment=1.0) for s in ("train", "test")}
        return dict(rows=[row], real_renders=real, seconds=1.0)

    monkeypatch.setattr(evaluate, "run_evaluate", fake)
    argv = ["evaluate", "--student", f"x={tmp_path}", "--student", str(TEACHER), "--out", str(tmp_path / "o")]
    assert main([*argv, "--quick", "--eval-prompts", "10", "--seed", "3"]) == 0
    ((out, students, teacher, evaluator, config),) = calls
    assert students == {"x": tmp_path, "teacher": TEACHER} and teacher == TEACHER
    assert evaluator == ASSETS / "evaluator" and out == str(tmp_path / "o")
    assert (config.eval_prompts, config.synth_steps, config.seed) == (10, evaluate.QUICK["synth_steps"], 3)
    printed = capsys.readouterr().out
    assert "real renders (floor)" in printed and "report:" in printed


def test_parse_students_names():
    assert parse_students(["a=/x/y", "/p/q"]) == {"a": Path("/x/y"), "q": Path("/p/q")}
    assert parse_students(["/p/q=r"]) == {"q=r": Path("/p/q=r")}  # a folder whose name holds "="
    with pytest.raises(LaddError, match="two students are named 'q'.*--student NAME=DIR"):
        parse_students(["/p/q", "/r/q"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--student", "a=/x", "--student", "a=/y"], "two students are named 'a'"),
        (["--student", str(TEACHER)], "is named 'teacher', the name of the teacher's own rows"),
        (["--student", "a=/nonexistent"], "the student 'a': /nonexistent is not an SD3 pipeline folder"),
        (["--student", f"a={TEACHER}", "--teacher", "/nonexistent"], "the teacher /nonexistent is not an SD3"),
        (["--student", f"a={TEACHER}", "--eval-prompts", "1"], "--eval-prompts must be at least 2"),
    ],
)
def test_bad_input_is_one_clear_error(argv, message, tmp_path, capsys):
    assert main(["evaluate", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # checked before anything is written


def test_unwritable_output_folder_is_one_clear_error():
    with pytest.raises(LaddError, match="cannot write the evaluation's output folder /proc/x"):
        run_evaluate("/proc/x", {"a": TEACHER}, config=TINY)


def test_student_of_another_shape_is_one_clear_error(tmp_path):
    from tokenizer_fixtures import write_tiny_sd3_folder

    from ladd_jax.pipeline import SD3Pipeline

    other = write_tiny_sd3_folder(tmp_path / "other", with_t5=False)
    with pytest.raises(LaddError, match="student 'other'.*other shapes than the teacher's.*--teacher DIR"):
        evaluate.load_student(SD3Pipeline.from_pretrained(TEACHER), "other", other)


def test_a_student_is_labelled_by_its_own_name_even_real():
    """A student named "real" (a real-data run) keeps its name in the grids; only the renders' column says render."""
    assert row_label(dict(model="real", steps=1, cfg=1.0)) == "real 1 step"
    assert row_label(dict(model="teacher", steps=4, cfg=3.0)) == "teacher 4 steps, CFG 3"


def test_training_curves_draw_fd_on_a_log_scale(tmp_path, monkeypatch):
    """The FD panel (1979 -> 230 for the student, up to 3300 for the control) is logarithmic, so the student's last
    stretch and the teacher's line stay apart; the accuracy, logit-gap and alignment panels stay linear, the gap even
    where it is positive and spans decades as here."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ladd_jax.toy.report import training_curves

    runs = {}
    for name, fds in (("LADD", (1979.0, 305.0, 230.0)), ("control", (1979.0, 2800.0, 3300.0))):
        runs[name] = tmp_path / name
        runs[name].mkdir()
        rows = [
            {"step": step, "d_acc": 0.6, "logit_gap": gap, "eval/fd_1step": fd, "eval/alignment_1step": 0.2}
            for step, gap, fd in zip((0, 25, 50), (0.03, 0.5, 2.0), fds, strict=True)
        ]
        (runs[name] / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to read its axes
    out = training_curves(runs, {"eval/fd_1step": [("teacher", 153.0)]}, tmp_path / "curves.png")
    assert out.stat().st_size > 0
    assert [ax.get_yscale() for ax in figures[0].axes] == ["linear", "linear", "log", "linear"]
    monkeypatch.undo()
    plt.close(figures[0])
