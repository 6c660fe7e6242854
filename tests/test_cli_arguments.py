"""Bad command-line values are one clear error before any work, not a traceback from deep inside a run: every
command's `--seed` (the toy world's prompts, the buckets and the loader's order are numpy draws, which take no negative
seed), the benches' and `aot`'s counts, and destinations in which nothing can be written."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from ladd_jax.cli import build_parser, main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _commands_with_a_seed() -> dict[str, argparse.ArgumentParser]:
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: sub
        for name, sub in subparsers.choices.items()
        if any("--seed" in action.option_strings for action in sub._actions)
    }


def test_the_commands_that_draw_from_a_seed_are_found():
    assert {"demo", "evaluate", "synth", "encode-real", "sample", "toy-components", "toy-evaluator"} <= set(
        _commands_with_a_seed()
    )


@pytest.mark.parametrize("command", sorted(_commands_with_a_seed()))
def test_a_negative_seed_is_one_clear_error(command, capsys):
    parser = _commands_with_a_seed()[command]
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--seed", "-1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --seed: a seed is a non-negative integer, got -1: pass 0 or more" in err, err
    with pytest.raises(SystemExit):
        parser.parse_args(["--seed", "x"])
    assert "a seed is a non-negative integer, got 'x'" in capsys.readouterr().err
    seed_action = next(a for a in parser._actions if "--seed" in a.option_strings)
    assert seed_action.type("0") == 0 and seed_action.type("7") == 7


def test_the_demo_refuses_a_negative_seed_before_writing_anything(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(tmp_path / "o"), "--seed", "-1"])
    assert exit_info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["bench", "mmdit", "--steps", "0", "--no-torch"], "--steps 0 must be at least 1"),
        (["bench", "attention", "--steps", "-1"], "--steps -1 must be at least 1"),
        (["aot", "--config", f"{CONFIGS / 'ladd.py'}:tiny", "--devices", "0"], "--devices must be at least 1"),
        # /proc: os.access lets root write there, yet no file or folder can be made in it.
        (["toy-evaluator", "--out", "/proc/x"], "cannot write /proc/x: folder /proc is not writable"),
        (
            ["sample", "--model", "m", "--prompt", "a cat", "--out", "/proc/x/grid.png"],
            "cannot write the grid's folder",
        ),
    ],
)
def test_counts_and_destinations_that_no_run_can_use(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("module", ["ladd_jax.toy.items", "ladd_jax.toy.preferences", "ladd_jax.toy.conditioned_eval"])
def test_the_toy_modules_commands_end_a_bad_input_in_one_line(module, tmp_path):
    """The `python -m` commands the launch scripts run report a LaddError as `ladd-jax` does: exit status 2 and
    one line, no traceback."""
    import subprocess
    import sys

    args = {
        "ladd_jax.toy.items": ["--kind", "inpaint", "--world", "/nonexistent", "--split", "train", "--num", "4"],
        "ladd_jax.toy.preferences": ["--teacher", "/nonexistent"],
        "ladd_jax.toy.conditioned_eval": ["--kind", "inpaint", "--teacher", "/nonexistent", "--items", "train=/no"],
    }[module]
    run = subprocess.run(
        [sys.executable, "-m", module, *args, "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [run.stderr.strip()] and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.startswith(f"python -m {module}: error: ") and "/nonexistent" in run.stderr, run.stderr
    assert not (tmp_path / "o").exists()  # refused before anything is made
