"""The Flax MMDiT against diffusers' SD3Transformer2DModel: outputs, features, sizes, dtypes, remat."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import mmdit_inputs, rel_err, tiny_sd3_transformer, torch_mmdit_forward

from ladd_jax.convert.mmdit import load_mmdit
from ladd_jax.errors import LaddError
from ladd_jax.models.mmdit import MMDiT, MMDiTConfig, abstract_params, count_params

PRESET_COUNTS = {"sd3-medium": 2_028_328_000, "sd3.5-large": 8_056_627_520, "sd3.5-medium": 2_243_171_520}


@pytest.fixture
def converted(variant, tmp_path):
    model = tiny_sd3_transformer(variant)
    model.save_pretrained(tmp_path)
    config, params = load_mmdit(tmp_path)
    return model, config, params


@pytest.mark.parametrize("shape", [(2, 8, 12), (3, 12, 8), (1, 12, 12)])
def test_matches_diffusers(converted, shape):
    model, config, params = converted
    batch, h, w = shape
    x, t, ctx, pooled = mmdit_inputs(config, batch, h, w)
    ref = torch_mmdit_forward(model, x, t, ctx, pooled)
    out = jax.jit(MMDiT(config).apply)({"params": params}, x, t, ctx, pooled)
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= 1e-4


def test_features_are_block_outputs(converted):
    """feature_layers returns each chosen block's image-token output, as [B, h, w, D] maps."""
    model, config, params = converted
    x, t, ctx, pooled = mmdit_inputs(config)
    captured = {}
    hooks = [
        blk.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k, o[1].numpy()))
        for k, blk in enumerate(model.transformer_blocks)
    ]
    ref_out = torch_mmdit_forward(model, x, t, ctx, pooled)
    for h in hooks:
        h.remove()
    layers = tuple(range(config.num_layers))[::-1]  # any order, all groups
    apply = functools.partial(MMDiT(config).apply, feature_layers=layers)
    out, feats = jax.jit(apply)({"params": params}, x, t, ctx, pooled)  # compiled: op by op took twice as long
    assert rel_err(out, ref_out) <= 1e-4
    p = config.patch_size
    for layer, f in zip(layers, feats, strict=True):
        assert f.shape == (2, 8 // p, 12 // p, config.hidden_size)
        assert rel_err(f.reshape(2, -1, config.hidden_size), captured[layer]) <= 1e-4


@pytest.mark.parametrize("name", sorted(PRESET_COUNTS))
def test_preset_parameter_counts(name):
    """Through jax.eval_shape: nothing is materialised. Equal to diffusers' count on the meta device."""
    config = MMDiTConfig.preset(name)
    assert count_params(abstract_params(config)) == PRESET_COUNTS[name]
    from diffusers import SD3Transformer2DModel

    with torch.device("meta"):
        ref = SD3Transformer2DModel(**{k: v for k, v in config.to_diffusers().items() if k != "_class_name"})
    assert sum(p.numel() for p in ref.parameters()) == PRESET_COUNTS[name]


def test_bf16_compute_close_to_fp32(converted):
    """bf16 activations/matmuls (params fp32): documented tolerance 3% of the output's scale."""
    _, config, params = converted
    x, t, ctx, pooled = mmdit_inputs(config)
    # Compiled: op by op took twice as long.
    out32 = jax.jit(MMDiT(config).apply)({"params": params}, x, t, ctx, pooled)
    out16 = jax.jit(MMDiT(dataclasses.replace(config, dtype="bfloat16")).apply)({"params": params}, x, t, ctx, pooled)
    assert out16.dtype == jnp.float32
    assert rel_err(out16, out32) <= 3e-2


@pytest.mark.parametrize("policy", ["dots_saveable", pytest.param("full", marks=pytest.mark.slow)])
def test_remat_changes_nothing_numerically(policy):
    config = MMDiTConfig(**{**_tiny_fields(), "num_layers": 2, "qk_norm": "rms_norm"})
    params = MMDiT(config).init(jax.random.key(0), *map(jnp.asarray, mmdit_inputs(config)))["params"]
    x, t, ctx, pooled = mmdit_inputs(config)

    def loss(p, cfg):
        return jnp.mean(jnp.square(MMDiT(cfg).apply({"params": p}, x, t, ctx, pooled)))

    grad = jax.jit(jax.grad(loss), static_argnums=1)  # compiled: op-by-op remat gradients took a minute on CI
    g0 = grad(params, config)
    g1 = grad(params, dataclasses.replace(config, remat_policy=policy))
    for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_block_groups_follow_structure():
    config = MMDiTConfig.preset("sd3.5-medium")
    assert config.block_groups() == [("blocks_0_13", 0, 13), ("blocks_13_23", 13, 23), ("blocks_23_24", 23, 24)]
    assert MMDiTConfig.preset("sd3-medium").block_groups() == [("blocks_0_23", 0, 23), ("blocks_23_24", 23, 24)]


def test_bad_inputs_and_configs():
    config = MMDiTConfig(**_tiny_fields())
    params = abstract_params(config)
    x, t, ctx, pooled = mmdit_inputs(config, h=7, w=8)
    with pytest.raises(LaddError, match="not divisible by the patch size"):
        jax.eval_shape(lambda p: MMDiT(config).apply({"params": p}, x, t, ctx, pooled), params)
    x, t, ctx, pooled = mmdit_inputs(config, h=26, w=8)
    with pytest.raises(LaddError, match="exceeds pos_embed_max_size"):
        jax.eval_shape(lambda p: MMDiT(config).apply({"params": p}, x, t, ctx, pooled), params)
    with pytest.raises(LaddError, match="feature_layers"):
        x, t, ctx, pooled = mmdit_inputs(config)
        jax.eval_shape(lambda p: MMDiT(config).apply({"params": p}, x, t, ctx, pooled, feature_layers=(9,)), params)
    with pytest.raises(LaddError, match="caption_projection_dim"):
        MMDiTConfig(**{**_tiny_fields(), "caption_projection_dim": 20})
    with pytest.raises(LaddError, match="unknown MMDiT preset"):
        MMDiTConfig.preset("sd4")


def _tiny_fields():
    from conftest import TINY_MMDIT

    return dict(TINY_MMDIT)
