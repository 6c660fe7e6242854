"""The toy world's pixel feature network (ladd_jax.toy.pixel_features): a tiny Dinov2 trained on scene labels and
saved as a plain transformers Dinov2 folder."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ladd_jax.convert.dinov2 import load_dinov2
from ladd_jax.models.dinov2 import Dinov2, Dinov2Config
from ladd_jax.toy.pixel_features import REPORT_FILE, PixelTrainConfig, main, train_pixel_features

TEACHER = Path(__file__).resolve().parents[1] / "ladd_jax" / "toy" / "assets" / "teacher"
# 64 px in 16 px patches: 4 x 4 tokens, one block; the shipped default is larger (8 x 8 tokens, 4 blocks).
TINY = Dinov2Config(
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    mlp_ratio=2,
    image_size=64,
    patch_size=16,
    layerscale_value=0.1,
    use_mask_token=False,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """A few steps on a handful of train-split renders (module scope: one compilation for every test)."""
    folder = tmp_path_factory.mktemp("pixel") / "pf"
    train = PixelTrainConfig(steps=100, batch_size=16, learning_rate=1e-2, warmup_steps=5, pool_size=16, eval_size=16)
    return folder, train_pixel_features(TEACHER, folder, train, TINY)


def test_training_lowers_the_loss_and_reports(trained):
    folder, report = trained
    assert report["loss_last"] < 0.6 * report["loss_first"]
    assert set(report["accuracy"]) == {"count", "axis", "shape", "color", "size", "all", "one_object", "two_objects"}
    saved = json.loads((folder / REPORT_FILE).read_text())
    assert saved["report"] == report and saved["train"]["seed"] == 11
    assert report["num_params"] == sum(np.size(p) for p in jax.tree.leaves(load_dinov2(folder)[1]))


def test_folder_is_a_transformers_dinov2_with_the_same_function(trained):
    """Only the backbone is saved: transformers loads the folder (report file beside it) without missing or
    unexpected keys and computes our Flax model's last hidden state."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    folder, _ = trained
    config, params = load_dinov2(folder)
    assert config == TINY
    assert "head" not in params
    model, info = transformers.Dinov2Model.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    pixels = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    ours = np.asarray(Dinov2(config).apply({"params": params}, jnp.asarray(pixels)))
    with torch.no_grad():
        theirs = model.eval()(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2)).last_hidden_state.numpy()
    assert ours.shape == theirs.shape == (2, 1 + 16, 16)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())


def test_refuses_to_overwrite_and_bad_input(trained, capsys):
    folder, _ = trained
    assert main(["--teacher", str(TEACHER), "--out", str(folder)]) == 2
    assert "already exists: remove it or pass --overwrite" in capsys.readouterr().err
    assert main(["--teacher", str(folder), "--out", str(folder.parent / "other")]) == 2
    assert "toy_world.json" in capsys.readouterr().err
    assert main(["--teacher", str(TEACHER), "--out", str(folder.parent / "other"), "--steps", "0"]) == 2
    assert "PixelTrainConfig.steps must be at least 1" in capsys.readouterr().err
