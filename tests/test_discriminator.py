"""The LADD discriminator heads: shapes, independence, conditioning, initial logits, jit, bf16, teacher features."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ladd_jax.errors import LaddError
from ladd_jax.models.discriminator import (
    Discriminator,
    DiscriminatorConfig,
    default_feature_layers,
    init_discriminator,
)
from ladd_jax.models.mmdit import MMDiT, MMDiTConfig

FEATURE_DIM, POOLED_DIM = 24, 12
CONFIG = DiscriminatorConfig(feature_layers=(0, 2), hidden=16, num_blocks=2, cond_dim=16, norm_groups=4)


def _inputs(batch=2, h=3, w=5, seed=0):
    rng = np.random.default_rng(seed)
    n = len(CONFIG.feature_layers)
    features = tuple(3.0 * rng.standard_normal((batch, h, w, FEATURE_DIM), np.float32) for _ in range(n))
    return features, rng.uniform(0, 1, batch).astype(np.float32), rng.standard_normal((batch, POOLED_DIM), np.float32)


def _perturbed(params, seed=1, scale=0.3):
    """Params as after some training: the zero-initialised output layers are no longer zero (numpy noise:
    jax.random over every leaf would cost a long compilation)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: x + scale * rng.standard_normal(x.shape, np.float32), params)


def _random_params(init, *args):
    """Random params of a module's shapes, without compiling its initialisers."""
    shapes = jax.eval_shape(init, jax.random.key(0), *args)["params"]
    return _perturbed(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes), scale=0.1)


@pytest.fixture(scope="module")
def params():
    return init_discriminator(CONFIG, jax.random.key(0), FEATURE_DIM, POOLED_DIM)


@functools.cache
def _jitted(config: DiscriminatorConfig):
    return jax.jit(lambda params, *args: Discriminator(config).apply({"params": params}, *args))


def _apply(params, *args, config=CONFIG):
    return _jitted(config)(params, *args)


@jax.jit
def _weighted_grad(params, weights, *args):
    """d/dparams of sum_i weights[i] * sum(logits_i): one compilation serves every gradient test."""
    return jax.grad(lambda p: sum(w * jnp.sum(x) for w, x in zip(weights, _apply(p, *args), strict=True)))(params)


def test_shapes_any_aspect_ratio(params):
    for h, w in [(3, 5), (6, 2)]:
        logits = _apply(params, *_inputs(h=h, w=w))
        assert len(logits) == len(CONFIG.feature_layers)
        assert all(x.shape == (2, h, w) and x.dtype == jnp.float32 for x in logits)
    assert sorted(params) == ["head_0", "head_2"]


def test_initial_logits_zero_but_trainable(params):
    features, t_hat, pooled = _inputs()
    logits = _apply(params, features, t_hat, pooled)
    assert not any(np.any(x) for x in logits)
    # Zero output layers still receive a gradient: the first D step moves them.
    grads = _weighted_grad(params, jnp.ones(2), features, t_hat, pooled)
    for head in grads.values():
        assert np.any(head["conv_out"]["kernel"]) and np.any(head["proj"]["kernel"])


def test_heads_are_independent(params):
    features, t_hat, pooled = _inputs()
    trained = _perturbed(params)
    # Each head reads only its own params and its own feature map.
    grads = _weighted_grad(trained, jnp.array([1.0, 0.0]), features, t_hat, pooled)
    assert not any(np.any(g) for g in jax.tree.leaves(grads["head_2"]))
    assert np.any(grads["head_0"]["conv_in"]["kernel"])
    other = (features[0], _inputs(seed=5)[0][1])
    a, b = _apply(trained, features, t_hat, pooled), _apply(trained, other, t_hat, pooled)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.allclose(a[1], b[1])
    # Their initial params differ (independent random init), beyond the zero-initialised output layers.
    k0, k2 = params["head_0"]["conv_in"]["kernel"], params["head_2"]["conv_in"]["kernel"]
    assert not np.allclose(k0, k2)


def test_conditioning_changes_logits(params):
    features, t_hat, pooled = _inputs()
    trained = _perturbed(params)
    base = _apply(trained, features, t_hat, pooled)
    other_t = _apply(trained, features, 1.0 - t_hat, pooled)
    other_pooled = _apply(trained, features, t_hat, -pooled)
    for b, ot, op in zip(base, other_t, other_pooled, strict=True):
        assert np.abs(b - ot).max() > 1e-3 and np.abs(b - op).max() > 1e-3


def test_bf16_compute_close_to_fp32(params):
    """(Every test runs the heads under jax.jit.)"""
    features, t_hat, pooled = _inputs()
    trained = _perturbed(params)
    fp32 = _apply(trained, features, t_hat, pooled)
    low = _apply(trained, features, t_hat, pooled, config=dataclasses.replace(CONFIG, dtype="bfloat16"))
    for e, lo in zip(fp32, low, strict=True):
        assert lo.dtype == jnp.float32
        assert np.linalg.norm(lo - e) / np.linalg.norm(e) < 3e-2  # measured 0.7-1e-2


def test_on_teacher_features():
    """The teacher's feature maps feed the heads directly, for a non-square latent."""
    cfg = MMDiTConfig(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=POOLED_DIM,
        out_channels=4,
        pos_embed_max_size=12,
    )
    layers = default_feature_layers(cfg.num_layers)
    dcfg = dataclasses.replace(CONFIG, feature_layers=layers)

    x, t, ctx, pooled = np.ones((2, 8, 12, 4)), np.full((2,), 0.5), np.ones((2, 5, 32)), np.ones((2, POOLED_DIM))
    teacher, heads = MMDiT(cfg), Discriminator(dcfg)
    teacher_params = _random_params(teacher.init, x, t, ctx, pooled)
    feature_shapes = [(2, 4, 6, cfg.hidden_size)] * len(layers)
    head_params = _random_params(heads.init, [np.zeros(s, np.float32) for s in feature_shapes], t, pooled)

    @jax.jit
    def teacher_then_heads(teacher_params, head_params):
        _, feats = teacher.apply({"params": teacher_params}, x, t, ctx, pooled, feature_layers=layers)
        return feats, heads.apply({"params": head_params}, feats, t, pooled)

    feats, logits = teacher_then_heads(teacher_params, head_params)
    assert [f.shape for f in feats] == feature_shapes
    assert [x.shape for x in logits] == [(2, 4, 6)] * len(layers)


def test_default_feature_layers():
    assert default_feature_layers(4) == (0, 1, 2, 3)
    assert default_feature_layers(24, stride=4) == (3, 7, 11, 15, 19, 23)
    assert default_feature_layers(5, stride=2) == (0, 2, 4)
    with pytest.raises(LaddError, match="stride"):
        default_feature_layers(4, stride=0)


def test_bad_inputs(params):
    features, t_hat, pooled = _inputs()
    with pytest.raises(LaddError, match="2 heads"):
        _apply(params, features[:1], t_hat, pooled)
    with pytest.raises(LaddError, match="empty"):
        DiscriminatorConfig(feature_layers=())
    with pytest.raises(LaddError, match="distinct"):
        DiscriminatorConfig(feature_layers=(1, 1))
    with pytest.raises(LaddError, match="norm_groups"):
        DiscriminatorConfig(feature_layers=(0,), hidden=30, norm_groups=8)
    with pytest.raises(LaddError, match="odd"):
        DiscriminatorConfig(feature_layers=(0,), kernel_size=2)
    with pytest.raises(LaddError, match="dtype"):
        DiscriminatorConfig(feature_layers=(0,), dtype="int8")
