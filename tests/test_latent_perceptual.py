"""The ensembled latent perceptual distance (ladd_jax.models.latent_perceptual) and the toy feature net's trainer."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ladd_jax.errors import LaddError
from ladd_jax.models.latent_perceptual import (
    CONFIG_FILE,
    NO_AUGMENT,
    AugmentConfig,
    LatentFeatureConfig,
    LatentFeatureNet,
    init_latent_features,
    load_latent_features,
    perceptual_distance,
    save_latent_features,
)

TEACHER = Path(__file__).resolve().parents[1] / "ladd_jax" / "toy" / "assets" / "teacher"
TINY = LatentFeatureConfig(in_channels=4, channels=(8, 16), blocks=1, groups=4)
EVERY_AUGMENT = AugmentConfig(translate=2, cutout=0.25, flip=True)


@pytest.fixture(scope="module")
def params():
    """Random params drawn with numpy: a flax init compiles jax.random for seconds on a CPU (the smoke test
    below runs the real one)."""
    shapes = jax.eval_shape(functools.partial(init_latent_features, TINY), jax.random.key(0))
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.5, s.shape), jnp.float32), shapes)


@pytest.fixture(scope="module")
def latents():
    x, y = jax.random.normal(jax.random.key(1), (2, 3, 8, 8, 4))
    return x, y


_jit_distance = jax.jit(perceptual_distance, static_argnums=(0, 5, 6))


def distance(params, x, y, key=0, num_draws=4, augment=EVERY_AUGMENT):
    return np.asarray(_jit_distance(TINY, params, x, y, jax.random.key(key), num_draws, augment))


def test_zero_for_equal_inputs_under_augmentation(params, latents):
    """Each draw is applied to both inputs alike: were x and its copy augmented independently (another shift,
    cutout or flip), the distance of x to itself would be positive."""
    x, _ = latents
    assert distance(params, x, x).shape == (3,)
    np.testing.assert_allclose(distance(params, x, x), 0.0, atol=1e-6)


def test_symmetric_positive_and_deterministic(params, latents):
    x, y = latents
    d = distance(params, x, y)
    assert (d > 0).all()
    np.testing.assert_allclose(d, distance(params, y, x), rtol=1e-5)
    np.testing.assert_array_equal(d, distance(params, x, y))  # the same key: the same draws
    assert not np.allclose(d, distance(params, x, y, key=1))  # another key: other draws


def test_translated_input_is_at_a_distance(params, latents):
    x, _ = latents
    shifted = jnp.roll(x, 2, axis=2)
    assert (distance(params, x, shifted) > 0.01).all()


def test_matches_hand_computation_without_augmentation(params, latents):
    """sum over stages of mean over locations of the squared difference of unit channel vectors."""
    x, y = latents
    fx, fy = (LatentFeatureNet(TINY).apply({"params": params}, z) for z in (x, y))
    assert [f.shape for f in fx] == [(3, 8, 8, 8), (3, 4, 4, 16)]
    expected = np.zeros(3)
    for a, b in zip(fx, fy, strict=True):
        a, b = (np.asarray(f, np.float64) for f in (a, b))
        a = a / np.linalg.norm(a, axis=-1, keepdims=True)
        b = b / np.linalg.norm(b, axis=-1, keepdims=True)
        expected += np.square(a - b).sum(axis=-1).mean(axis=(1, 2))
    np.testing.assert_allclose(distance(params, x, y, augment=NO_AUGMENT), expected, rtol=1e-5)


def test_gradient_finite_and_nonzero_under_jit(params, latents):
    x, y = latents
    loss = lambda x: perceptual_distance(TINY, params, x, jax.lax.stop_gradient(y), jax.random.key(0), 4).mean()
    grad = np.asarray(jax.jit(jax.grad(loss))(x))
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0


def test_vmap_over_batches(params, latents):
    x, y = latents
    pairs = jnp.stack([x, y]), jnp.stack([y, x + 1.0])
    one = lambda a, b: perceptual_distance(TINY, params, a, b, jax.random.key(0), 4, EVERY_AUGMENT)
    batched = jax.jit(jax.vmap(one))(*pairs)
    for i in range(2):
        np.testing.assert_allclose(batched[i], distance(params, pairs[0][i], pairs[1][i]), rtol=1e-5)


def test_save_load_round_trip(params, latents, tmp_path):
    x, y = latents
    folder = save_latent_features(tmp_path / "net", TINY, params, {"note": "test"})
    config, loaded = load_latent_features(folder)
    assert config == TINY
    np.testing.assert_array_equal(distance(loaded, x, y), distance(params, x, y))
    assert json.loads((folder / CONFIG_FILE).read_text())["meta"] == {"note": "test"}
    with pytest.raises(LaddError, match="already exists"):
        save_latent_features(folder, TINY, params, {})


def test_clear_errors(params, tmp_path):
    with pytest.raises(LaddError, match="not a latent feature folder; write one with save_latent_features"):
        load_latent_features(tmp_path)
    other = save_latent_features(tmp_path / "other", TINY, params, {})
    wider = {"in_channels": 4, "channels": [8, 32], "blocks": 1, "groups": 4}  # the same names, other shapes
    (other / CONFIG_FILE).write_text(json.dumps({"config": wider, "meta": {}}))
    with pytest.raises(LaddError, match="other shapes"):
        load_latent_features(other)
    with pytest.raises(LaddError, match="multiple of groups"):
        LatentFeatureConfig(channels=(8, 12), groups=8)
    with pytest.raises(LaddError, match="no classifier head"):
        LatentFeatureNet(TINY).apply({"params": params}, jnp.zeros((1, 8, 8, 4)), method=LatentFeatureNet.classify)
    with pytest.raises(LaddError, match="cutout"):
        AugmentConfig(cutout=1.5)


def test_toy_training_smoke(tmp_path):
    """A few steps on a handful of renders, encoded by the shipped teacher's VAE: the loss goes down, the folder
    loads, and the command line refuses to overwrite it."""
    from ladd_jax.toy.latent_features import FeatureTrainConfig, main, train_latent_features

    train = FeatureTrainConfig(
        steps=60,
        batch_size=16,
        learning_rate=1e-2,
        warmup_steps=5,
        pool_size=16,
        eval_size=16,
        check_size=16,
        check_draws=1,
    )
    net = LatentFeatureConfig(channels=(8, 16), blocks=1, groups=4, head_hidden=16, head_grid=2)
    report = train_latent_features(TEACHER, tmp_path / "lf", train, net)
    assert report["loss_last"] < 0.5 * report["loss_first"]
    assert set(report["accuracy"]) == {"count", "axis", "shape", "color", "size", "all", "one_object", "two_objects"}
    config, _ = load_latent_features(tmp_path / "lf")
    assert config.in_channels == 16 and config.head_outputs > 0
    assert main(["--teacher", str(TEACHER), "--out", str(tmp_path / "lf")]) == 2
