"""The LADD trainer on a tiny random SD3 teacher and its synthetic data: resume, preemption, damaged checkpoints,
the NaN guard, 1 device vs a simulated 8-device mesh, two processes, and export to diffusers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from cpu_devices import cpu_env

from ladd_jax.config_files import load_config_file
from ladd_jax.data.loader import Loader
from ladd_jax.errors import LaddError
from ladd_jax.models.mmdit import abstract_params
from ladd_jax.train import methods, sharding
from ladd_jax.train.checkpoint import read_meta, restore_params
from ladd_jax.train.export import student_config
from ladd_jax.train.loop import build, compile_step, make_loader, train_and_evaluate
from ladd_jax.train.runner import CompiledSteps
from ladd_jax.train.state import optimizer
from ladd_jax.train.writer import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(world: dict, method: str = "ladd", **overrides):
    """configs/METHOD.py:tiny on the tiny world, 4 steps of batch 8 with checkpoints at 2 and 4, small heads."""
    c = load_config_file(ROOT / "configs" / f"{method}.py", "tiny")
    c.teacher, c.data = str(world["teacher"]), str(world["data"])
    c.batch_size = 8  # what 8 devices split: the one-device side of the 8-device test is then the straight run
    c.total_steps, c.checkpoint_every, c.log_every = 4, 2, 1
    c.max_sequence_length = 8  # the world's synth length (LCM encodes the empty prompt with it)
    c.disc.hidden, c.disc.cond_dim, c.disc.norm_groups = 16, 16, 4
    for k, v in overrides.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return c


def saved_params(workdir: Path, step: int, name: str = "student") -> dict:
    _, meta = read_meta(workdir, step)
    return restore_params(workdir, step, name, abstract_params(student_config(meta)))


def logged_losses(workdir: Path) -> dict[int, tuple[float, float]]:
    """step -> (d_loss, g_loss) as last logged: a run resumed in a copy of another's workdir appends to its log."""
    return {r["step"]: (r["d_loss"], r["g_loss"]) for r in read_metrics(workdir)}


def assert_trees_equal(a, b, atol: float = 0.0) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


@pytest.fixture(scope="module")
def straight(world, tmp_path_factory) -> Path:
    """An uninterrupted 4-step run (checkpoints at 2 and 4)."""
    workdir = tmp_path_factory.mktemp("straight")
    train_and_evaluate(tiny_config(world), workdir)
    return workdir


def test_run_logs_checkpoints_and_learns_something(straight):
    rows = read_metrics(straight)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in (
        "d_loss_real",
        "d_loss_fake",
        "d_acc",
        "g_loss",
        "logits_real",
        "logits_fake",
        "g_grad_norm",
        "d_grad_norm",
        "step_time_s",
        "img_per_s",
    ):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert rows[-1]["d_grad_norm"] > 0 and rows[-1]["g_grad_norm"] > 0
    assert list((straight / "tb").iterdir()), "no TensorBoard event file"
    # The student moved away from the teacher it started as; its EMA (decay 0.9) moved less.
    from ladd_jax.convert.mmdit import load_mmdit

    _, teacher = load_mmdit(Path(read_meta(straight)[1]["config"]["teacher"]))

    def distance(params) -> float:
        pairs = zip(jax.tree.leaves(params), jax.tree.leaves(teacher), strict=True)
        return float(np.sqrt(sum(np.sum((np.asarray(a) - np.asarray(b)) ** 2) for a, b in pairs)))

    student, ema = saved_params(straight, 4), saved_params(straight, 4, "ema")
    assert 0 < distance(ema) < distance(student)
    state_dir = straight / "checkpoints" / "4" / "state"
    assert "teacher" not in json.dumps([p.name for p in state_dir.rglob("*")])


def test_offloaded_state_lives_in_host_memory_and_trains_the_same(world, straight, tmp_path):
    offload = ("ema", "g_opt", "d_opt")
    config = tiny_config(world, offload=offload)
    mesh = sharding.make_mesh(**config.mesh)
    loader = make_loader(config, mesh)
    spec = loader.element_spec
    loader.close()
    setup, _, _ = build(config, spec, mesh)
    kinds = {
        name: {x.sharding.memory_kind for x in jax.tree.leaves(getattr(setup.abstract_state, name))}
        for name in ("student", "disc", *offload)
    }
    assert kinds == dict(
        student={"device"}, disc={"device"}, ema={"pinned_host"}, g_opt={"pinned_host"}, d_opt={"pinned_host"}
    )
    assert "S(5)" in compile_step(setup, spec).as_text()  # host memory space in the compiled step
    # The straight run's step-2 checkpoint restored into host memory and continued: the same run as the straight one.
    shutil.copytree(straight, tmp_path, dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "checkpoints" / "4")
    train_and_evaluate(config, tmp_path)
    assert_trees_equal(saved_params(tmp_path, 4), saved_params(straight, 4))
    assert_trees_equal(saved_params(tmp_path, 4, "ema"), saved_params(straight, 4, "ema"))
    assert logged_losses(tmp_path) == logged_losses(straight)
    with pytest.raises(LaddError, match="config.offload names"):
        train_and_evaluate(tiny_config(world, offload=("student",)), tmp_path / "bad")


def test_sigterm_saves_then_resume_continues(world, straight, tmp_path, monkeypatch):
    """Preempted during step 3, the run saves that step; restarted, it resumes (data iterator included) and is the
    uninterrupted run: params, EMA and every step's losses."""
    calls = {"n": 0}
    original = Loader.__next__

    def next_then_preempt(self):
        calls["n"] += 1
        if calls["n"] == 3:  # the preemption notice arrives during step 3
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self)

    monkeypatch.setattr(Loader, "__next__", next_then_preempt)
    train_and_evaluate(tiny_config(world, checkpoint_every=100), tmp_path)
    assert read_meta(tmp_path)[0] == 3, "SIGTERM must save the step it stopped at"
    monkeypatch.setattr(Loader, "__next__", original)
    train_and_evaluate(tiny_config(world, checkpoint_every=100), tmp_path)
    assert_trees_equal(saved_params(tmp_path, 4), saved_params(straight, 4))
    assert_trees_equal(saved_params(tmp_path, 4, "ema"), saved_params(straight, 4, "ema"))
    assert logged_losses(tmp_path) == logged_losses(straight)


def test_damaged_latest_checkpoint_names_it_and_previous_restores(world, straight, tmp_path):
    """A damaged latest checkpoint is named with the step to restore instead; resumed from that one (the straight
    run's step 2, data iterator included), the run is the uninterrupted one: params, EMA and logged losses."""
    workdir = tmp_path / "w"
    shutil.copytree(straight, workdir)
    for f in (workdir / "checkpoints" / "4" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"\0garbage")
    with pytest.raises(LaddError, match=r"step 4.*restore_step=2"):
        train_and_evaluate(tiny_config(world), workdir)
    # Only the arrays' chunks cut short (their index intact): one line, not tensorstore's spec over many.
    shutil.rmtree(workdir / "checkpoints" / "4")
    shutil.copytree(straight / "checkpoints" / "4", workdir / "checkpoints" / "4")
    for f in (workdir / "checkpoints" / "4" / "state").glob("ocdbt.process_*/d/*"):
        f.write_bytes(f.read_bytes()[:10])
    with pytest.raises(LaddError, match=r"step 4.*restore_step=2") as damaged:
        train_and_evaluate(tiny_config(world), workdir)
    assert "\n" not in str(damaged.value), str(damaged.value)
    # The previous checkpoint still restores, and continuing from it reproduces step 4.
    shutil.rmtree(workdir / "checkpoints" / "4")
    train_and_evaluate(tiny_config(world), workdir)
    assert_trees_equal(saved_params(workdir, 4), saved_params(straight, 4))
    assert_trees_equal(saved_params(workdir, 4, "ema"), saved_params(straight, 4, "ema"))
    assert logged_losses(workdir) == logged_losses(straight)


def test_resume_with_other_heads_names_them_and_a_changed_config_is_warned(world, straight, tmp_path, caplog):
    """A checkpoint of other architectures is named as such, key by key, before its state is read (that restore
    fails on the shapes as on damage, whose advice would be to delete a good checkpoint); a changed training key is
    a warning that names it, the run's end (total_steps) is not."""
    workdir = tmp_path / "w"
    shutil.copytree(straight, workdir)
    with pytest.raises(LaddError, match=r"other architectures .*\(disc.hidden: 16 -> 8; checkpoint -> config\)"):
        train_and_evaluate(tiny_config(world, **{"disc.hidden": 8}), workdir)
    assert sorted(int(d.name) for d in (workdir / "checkpoints").iterdir()) == [2, 4]  # nothing touched
    shutil.rmtree(workdir / "checkpoints" / "4")
    with caplog.at_level("WARNING", logger="ladd_jax.train.runner"):
        train_and_evaluate(tiny_config(world, g_lr=2e-4, total_steps=3), workdir)
    warned = [r.getMessage() for r in caplog.records if "differs from its run's" in r.getMessage()]
    assert len(warned) == 1 and "g_lr: 0.0001 -> 0.0002" in warned[0] and "total_steps" not in warned[0], warned


def test_nan_guard_stops_and_keeps_last_good_checkpoint(world, straight, tmp_path):
    shutil.copytree(straight, tmp_path, dirs_exist_ok=True)  # its step-2 checkpoint, the last good one
    shutil.rmtree(tmp_path / "checkpoints" / "4")
    with pytest.raises(LaddError, match=r"non-finite.*last good checkpoint is step 2"):
        train_and_evaluate(tiny_config(world, g_lr=float("inf")), tmp_path)
    assert read_meta(tmp_path)[0] == 2


def test_frozen_heads_control_keeps_its_random_heads_and_moves_the_student(world, tmp_path):
    """The demo's control (disc.train=False, random output layers): no D step, yet a gradient for the student."""
    frozen = {"disc.train": False, "disc.output_init": "normal"}
    train_and_evaluate(tiny_config(world, total_steps=3, checkpoint_every=3, **frozen), tmp_path)
    rows = read_metrics(tmp_path)
    assert all("d_grad_norm" not in r for r in rows)  # no D step was taken
    assert all(r["g_grad_norm"] > 0 for r in rows)  # random output layers: the student gets a gradient
    assert len({round(r["logit_gap"], 6) for r in rows}) > 1  # the logits do depend on the inputs


def test_heads_take_their_own_adam_b1():
    """d_b1 gives the heads momentum while the student keeps b1 = 0: after one gradient and then a zero one, only
    the heads' optimiser still moves (its first moment remembers the gradient)."""
    config = load_config_file(ROOT / "configs" / "ladd.py", "tiny")
    config.b1, config.d_b1, config.lr_warmup_steps = 0.0, 0.9, 1
    params = {"w": jax.numpy.ones(3)}

    def second_update(tx):
        _, opt_state = tx.update({"w": jax.numpy.ones(3)}, tx.init(params), params)
        return tx.update({"w": jax.numpy.zeros(3)}, opt_state, params)[0]["w"]

    assert np.all(np.asarray(second_update(methods.second_network_optimizer(config))) < 0)
    assert np.all(np.asarray(second_update(optimizer(config.g_lr, config))) == 0)


def test_bad_config_errors(world, tmp_path):
    with pytest.raises(LaddError, match="config.teacher"):
        train_and_evaluate(tiny_config(world, teacher=""), tmp_path)
    with pytest.raises(LaddError, match="student.layers"):
        train_and_evaluate(tiny_config(world, **{"student.layers": (0,)}), tmp_path)  # must end with the last block
    with pytest.raises(LaddError, match="d_steps=0"):
        train_and_evaluate(tiny_config(world, d_steps=0), tmp_path)
    with pytest.raises(LaddError, match="needs 3 devices"):
        sharding.make_mesh(data=3)


def test_logical_sharding_rules():
    assert sharding.logical_axes("blocks_0_4/attn/to_q/kernel", 3) == ("layers", "embed", "heads")
    assert sharding.logical_axes("blocks_0_4/ff/proj_out/kernel", 3) == ("layers", "mlp", "embed")
    assert sharding.logical_axes("patch_embed/kernel", 4) == (None, None, "embed_in", "embed")
    assert sharding.logical_axes("blocks_0_4/attn/norm_q/scale", 2) == ("layers", None)


MESH_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {configs!r}); sys.path.insert(0, {tests!r})
    import jax
    from test_train import tiny_config
    from ladd_jax.train.loop import train_and_evaluate
    world = dict(teacher={teacher!r}, data={data!r})
    mesh = {{"mesh.data": {data_axis}, "mesh.fsdp": {fsdp}}}
    config = tiny_config(world, {method!r}, total_steps=2, **mesh, **{overrides!r})
    assert len(jax.devices()) == {devices}, jax.devices()
    train_and_evaluate(config, {workdir!r})
    """
)


def run_mesh(
    world: dict, workdir: Path, devices: int, data_axis: int, fsdp: int, method: str = "ladd", **overrides
) -> None:
    script = MESH_SCRIPT.format(
        method=method,
        overrides=overrides,
        configs=str(ROOT / "configs"),
        tests=str(ROOT / "tests"),
        teacher=str(world["teacher"]),
        data=str(world["data"]),
        data_axis=data_axis,
        fsdp=fsdp,
        devices=devices,
        workdir=str(workdir),
    )
    env = cpu_env(devices)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]


def test_eight_device_mesh_matches_one_device(world, straight, tmp_path):
    """Two steps on 8 devices (data 2 x FSDP 4) against the straight run's first two on this process's one device
    (its first steps do not depend on where it stops: test_damaged_latest_checkpoint_names_it_and_previous_restores)."""
    run_mesh(world, tmp_path / "eight", devices=8, data_axis=2, fsdp=4)
    one, eight = read_metrics(straight)[:2], read_metrics(tmp_path / "eight")
    for a, b in zip(one, eight, strict=True):
        for k in ("d_loss", "g_loss", "d_acc", "logits_real", "logits_fake"):
            np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)
    assert_trees_equal(saved_params(tmp_path / "eight", 2), saved_params(straight, 2), atol=1e-5)


TWO_PROCESS_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {configs!r}); sys.path.insert(0, {tests!r})
    from ladd_jax import distributed
    distributed.initialize(dict(coordinator_address="localhost:{port}", num_processes=2, process_id=int(sys.argv[1])))
    import jax
    from test_train import tiny_config
    from ladd_jax.train.loop import train_and_evaluate
    assert jax.process_count() == 2 and len(jax.devices()) == 2
    world = dict(teacher={teacher!r}, data={data!r})
    train_and_evaluate(tiny_config(world, total_steps=2), {workdir!r})
    """
)


@pytest.mark.slow  # 100 s; CI runs two processes in tests/test_distributed.py and tests/test_synth.py, and the
# sharded step on 8 devices above
def test_two_processes_train_and_checkpoint_together(world, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    script = TWO_PROCESS_SCRIPT.format(
        configs=str(ROOT / "configs"),
        tests=str(ROOT / "tests"),
        port=port,
        teacher=str(world["teacher"]),
        data=str(world["data"]),
        workdir=str(tmp_path),
    )
    env = cpu_env(1)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]  # process 0 logs
    params = saved_params(tmp_path, 2)  # the jointly written checkpoint restores
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


@pytest.mark.slow  # 52 s; CI checks the step picked per shape below and same-bucket batches (tests/test_loader.py)
def test_multi_aspect_run_compiles_once_per_bucket(bucket_world, tmp_path, capsys):
    """Six steps over two buckets (two blocks of 64x64 twice and 48x80 once, in a seeded order): the step is lowered and
    compiled once per bucket before the first step and never again; the sample grid has a labelled block per
    bucket."""
    import jax.monitoring
    from PIL import Image

    compiles = []

    def listen(event: str, seconds: float, **kw) -> None:
        if event == "/jax/core/compile/backend_compile_duration":  # fired on persistent-cache hits too
            compiles.append(kw["fun_name"])

    jax.monitoring.register_event_duration_secs_listener(listen)
    config = tiny_config(bucket_world, batch_size=4, total_steps=6, checkpoint_every=6, sample_every=6)
    config.sample_prompts, config.teacher_sample_steps, config.sample_steps = config.sample_prompts[:1], 2, (1,)
    original = Loader.__next__
    shapes = []

    def next_recording(self):
        batch = original(self)
        shapes.append(batch["latent"].shape[1:3])
        return batch

    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Loader, "__next__", next_recording)
            train_and_evaluate(config, tmp_path)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert sorted(shapes[:3]) == sorted(shapes[3:]) == [(12, 20), (16, 16), (16, 16)]
    assert compiles.count("jit(train_step)") == 2
    out = capsys.readouterr().out
    assert "compiled the LADD (latent 16x16x16) step" in out and "compiled the LADD (latent 12x20x16) step" in out
    assert [r["step"] for r in read_metrics(tmp_path)] == list(range(1, 7))
    grid = np.asarray(Image.open(tmp_path / "samples" / "0000006.png"))
    assert grid.shape == (12 + 64 + 12 + 48, 2 * 80, 3)  # label, 64x64 row (padded), label, 48x80 row


def test_compiled_steps_pick_by_shape_and_never_compile_a_new_one(capsys):
    class Compiled:  # stands in for a jax Compiled: records what it ran on
        def __init__(self, spec):
            self.hw = spec["latent"][0][:2]

        def __call__(self, state, batch, key):
            return self.hw, {}

        def memory_analysis(self):
            return None

        def cost_analysis(self):
            return {"flops": 1.0}

    specs = [{"latent": ((h, w, 4), np.float32), "pooled": ((8,), np.float32)} for h, w in ((2, 2), (1, 3))]
    made = []
    steps = CompiledSteps("X", lambda spec: made.append(spec) or Compiled(spec), specs)
    assert made == specs and "compiled the X (latent 1x3x4) step" in capsys.readouterr().out
    batch = lambda h, w: {"latent": np.zeros((5, h, w, 4)), "pooled": np.zeros((5, 8))}
    assert steps(None, batch(1, 3), None)[0] == (1, 3) and steps(None, batch(2, 2), None)[0] == (2, 2)
    with pytest.raises(LaddError, match="matches none of the compiled steps"):
        steps(None, batch(3, 1), None)
    assert len(made) == 2
