"""A wider MMDiT made by copying channels computes its origin's function, in Flax and, exported, in diffusers."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import mmdit_inputs, rel_err, tiny_sd3_transformer, torch_mmdit_forward

from ladd_jax.convert.mmdit import load_mmdit, save_mmdit
from ladd_jax.errors import LaddError
from ladd_jax.models.mmdit import MMDiT, MMDiTConfig
from ladd_jax.models.net2wider import wider


def test_wider_model_computes_the_same_function_and_exports_to_diffusers(variant, tmp_path):
    from diffusers import SD3Transformer2DModel

    tiny_sd3_transformer(variant).save_pretrained(tmp_path / "src")
    config, params = load_mmdit(tmp_path / "src")
    inputs = mmdit_inputs(config)
    apply = jax.jit(lambda c, p: MMDiT(c).apply({"params": p}, *inputs, feature_layers=(0,)), static_argnums=0)
    want, (features,) = apply(config, params)

    wide_config, wide = wider(config, params, 3, jax.random.key(0), noise=0.1)
    assert wide_config.hidden_size == 3 * config.hidden_size
    assert wide_config.attention_head_dim == config.attention_head_dim
    got, (wide_features,) = apply(wide_config, wide)
    assert rel_err(got, want) < 1e-5
    # The residual stream holds three copies of the original's channels.
    for copy in np.split(np.asarray(wide_features), 3, axis=-1):
        assert rel_err(copy, features) < 1e-5
    # The copies' input weights differ (their symmetry is broken) and sum to the original's.
    kernel = np.asarray(params["proj_out"]["kernel"])
    parts = np.split(np.asarray(wide["proj_out"]["kernel"]), 3, axis=0)
    assert not np.allclose(parts[0], parts[1])
    np.testing.assert_allclose(sum(parts), kernel, rtol=1e-5, atol=1e-6)

    # Exported, diffusers reads the tiled position table from the checkpoint and computes the same output.
    save_mmdit(wide_config, wide, tmp_path / "wide")
    reloaded_config, _ = load_mmdit(tmp_path / "wide")
    assert reloaded_config == wide_config
    model = SD3Transformer2DModel.from_pretrained(tmp_path / "wide").eval()
    assert rel_err(torch_mmdit_forward(model, *inputs), got) < 1e-4


def test_bad_factor_and_tiles():
    config = MMDiTConfig(num_layers=2, num_attention_heads=2, attention_head_dim=8, caption_projection_dim=16)
    with pytest.raises(LaddError, match="positive integer"):
        wider(config, {}, 0, jax.random.key(0), 0.1)
    with pytest.raises(LaddError, match="pos_embed_tiles=3"):
        MMDiTConfig(num_attention_heads=2, attention_head_dim=8, caption_projection_dim=16, pos_embed_tiles=3)
