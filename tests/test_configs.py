"""The config files' `VARIANT-OPTION` arguments (configs/d2g.py's losses, configs/dmd.py's recipes) on every
configs/ladd.py variant, SD3's dashed names included, the demo's recipes, and how the trainer commands take a config
(their errors and their --help)."""

from __future__ import annotations

import pytest

from ladd_jax.config_files import load_config_file
from ladd_jax.errors import LaddError
from ladd_jax.toy.demo import RECIPES, ROOT, DemoConfig, load_ladd_config, run_demo

CONFIGS = ROOT / "configs"
VARIANTS = ("sd3-medium", "sd3.5-large", "sd3.5-medium", "tiny", "toy")


@pytest.mark.parametrize("variant", VARIANTS)
def test_d2g_losses_on_every_variant(variant):
    for arg, weights in (
        (variant, (1.0, 0.0, 0.0)),
        (f"{variant}-lpips", (0.0, 1.0, 0.0)),
        (f"{variant}-gan", (0.0, 1.0, 0.1)),
    ):
        c = load_config_file(CONFIGS / "d2g.py", arg)
        assert c.variant == variant and c.method == "d2g", arg
        assert (c.regression.mse_weight, c.regression.perceptual_weight, c.adv_weight) == weights, arg


@pytest.mark.parametrize("variant", VARIANTS)
def test_dmd_recipes_on_every_variant(variant):
    dmd2, anchored = (load_config_file(CONFIGS / "dmd.py", a) for a in (variant, f"{variant}-anchored"))
    assert dmd2.variant == anchored.variant == variant and dmd2.method == anchored.method == "dmd"
    assert (dmd2.adv_weight, dmd2.anchor_weight) == (0.0, 0.0)
    assert (anchored.adv_weight, anchored.anchor_weight) == (0.1, 0.1)  # LADD's heads and DMD's anchor beside DMD


def test_anchored_toy_recipe_is_the_measured_one():
    """configs/dmd.py:toy-anchored is launch/toy_anchor.sh's fa10_4800 run (8-9 of the 10 student targets at three
    seeds): DMD's toy config with those overrides, nothing else changed."""
    measured = load_config_file(CONFIGS / "dmd.py", "toy")
    overrides = dict(adv_weight=0.1, batch_size=8, d_steps=2, g_lr=3e-4, ema_decay=0.99, lr_decay="cosine")
    measured.update(overrides, anchor_weight=0.1, total_steps=4800)
    measured.dmd.fake_score_lr = 1e-3
    assert load_config_file(CONFIGS / "dmd.py", "toy-anchored").to_dict() == measured.to_dict()


def test_unknown_variant_or_option_names_both_lists():
    for file, arg, options in (("d2g.py", "toy-lpipz", "mse"), ("dmd.py", "sd3-medium-anchord", "anchored")):
        with pytest.raises(
            LaddError, match=rf"unknown LADD config variant .*'sd3-medium'.*optionally followed by .*'{options}'"
        ):
            load_config_file(CONFIGS / file, arg)


def test_demo_recipes_have_heads_for_their_control(tmp_path):
    """The control freezes the heads at random: a recipe without them (adv_weight 0) would make it the same run."""
    for name, recipe in RECIPES.items():
        assert load_ladd_config(recipe.variant, recipe.file).adv_weight > 0, name
    with pytest.raises(LaddError, match=r"unknown demo recipe 'dmd'; choose one of \['anchored-mix', 'ladd'\]"):
        run_demo(tmp_path / "out", DemoConfig(recipe="dmd"))
    assert not (tmp_path / "out").exists()  # refused before anything is made


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--config", "no/such.py:toy"], "no file no/such.py"),
        (["train", "--config", f"{CONFIGS / 'ladd.py'}:nope"], "unknown LADD config variant 'nope'"),
        (["train", "--config", f"{CONFIGS / 'ladd.py'}:toy", "--config.batch_sise=4"], "did you mean batch_size?"),
        (["train", f"--config={CONFIGS / 'ladd.py'}:toy", "--config.disc.nokey=1"], "its keys here: cond_dim"),
        (["train", "--config", f"{CONFIGS / 'ladd.py'}:toy", "--config.seed.x=1"], "seed is a value, not a group"),
        (["train", "--config", f"{CONFIGS / 'pretrain.py'}:toy"], "needs a distillation config"),
        (["pretrain", "--config", f"{CONFIGS / 'dmd.py'}:toy"], "this one is for `ladd-jax train`"),
        (["aot", "--config", f"{CONFIGS / 'dpo.py'}:toy"], "`ladd-jax aot` needs a distillation config"),
    ],
)
def test_trainer_commands_give_one_clear_error_for_a_bad_config(args, expected, tmp_path, capsys):
    """A missing config file, an unknown variant or key, or another trainer's config: one line naming the argument
    and the fix (absl and ml_collections alone print a traceback, or an error holding one)."""
    from ladd_jax.cli import main

    assert main([*args, "--workdir", str(tmp_path)] if args[0] != "aot" else args) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_trainer_commands_help_lists_their_flags(capsys):
    from ladd_jax.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "usage: ladd-jax train --config configs/ladd.py:VARIANT --workdir W" in out
    assert all(f in out for f in ("--config FILE:VARIANT", "--config.KEY=VALUE", "--workdir", "--coordinator_address"))


@pytest.mark.parametrize("file", ["ladd.py", "add.py", "lcm.py", "d2g.py", "dmd.py"])
def test_every_shipped_config_passes_the_run_check(file):
    from ladd_jax.train.runner import check_run_config

    for variant in VARIANTS:
        check_run_config(load_config_file(CONFIGS / file, variant))
    for file, variants in (("pretrain.py", ("toy", "toy-polish-4", "toy-edit", "tiny")), ("dpo.py", ("toy", "tiny"))):
        for variant in variants:
            check_run_config(load_config_file(CONFIGS / file, variant))


@pytest.mark.parametrize(
    "command, config, override, expected",
    [
        ("train", "ladd.py:toy", "--config.total_steps=0", "config.total_steps must be at least 1, got 0"),
        ("train", "ladd.py:toy", "--config.log_every=0", "config.log_every must be at least 1, got 0"),
        ("train", "ladd.py:toy", "--config.eval_every=-5", "config.eval_every must be 0 (never) or a number"),
        ("train", "ladd.py:toy", "--config.g_lr=-1e-4", "must be 0 (frozen) or more, got {'g_lr': -0.0001}"),
        ("train", "dmd.py:toy", "--config.dmd.fake_score_lr=-1.0", "got {'dmd.fake_score_lr': -1.0}"),
        ("train", "ladd.py:toy", "--config.ema_decay=1.5", "config.ema_decay must be in [0, 1]"),
        ("train", "ladd.py:toy", "--config.seed=-1", "config.seed must be a non-negative integer"),
        ("pretrain", "pretrain.py:toy", "--config.lr=-0.001", "got {'lr': -0.001}"),
        ("dpo", "dpo.py:toy", "--config.checkpoint_every=0", "config.checkpoint_every must be at least 1, got 0"),
    ],
)
def test_trainers_refuse_unusable_steps_rates_and_ema_before_writing(
    command, config, override, expected, tmp_path, capsys
):
    """A negative rate would train uphill without a word, a zero interval divide by zero at the first step, a
    negative seed fail in numpy after the teacher is loaded: each is one line, and the workdir is not made."""
    from ladd_jax.cli import main

    workdir = tmp_path / "w"
    assert main([command, "--config", str(CONFIGS / config), override, "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not workdir.exists()


def test_an_unwritable_workdir_is_one_clear_error(capsys):
    from ladd_jax.cli import main

    assert main(["train", "--config", f"{CONFIGS / 'ladd.py'}:toy", "--workdir", "/proc/x"]) == 2
    err = capsys.readouterr().err
    assert "cannot write the workdir /proc/x (No such file or directory); choose another --workdir" in err, err
