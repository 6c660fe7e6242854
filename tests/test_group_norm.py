"""ladd_jax.models.group_norm against torch.nn.GroupNorm (the VAE's and the heads' reference) and flax's params."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ladd_jax.errors import LaddError
from ladd_jax.models.group_norm import GroupNorm

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("shape", [(3, 5, 7, 16), (2, 9, 32), (4, 8)])
def test_equals_torch_group_norm(shape):
    rng = np.random.default_rng(0)
    # A large mean beside a small spread: the one-pass E[x^2] - E[x]^2 would lose its digits here.
    x = (rng.normal(size=shape) * 0.1 + 30.0).astype(np.float32)
    scale, bias = rng.normal(size=shape[-1]).astype(np.float32), rng.normal(size=shape[-1]).astype(np.float32)
    ref = torch.nn.GroupNorm(4, shape[-1], eps=1e-6)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(scale))
        ref.bias.copy_(torch.from_numpy(bias))
        want = ref(torch.from_numpy(np.moveaxis(x, -1, 1).copy())).numpy()
    got = GroupNorm(4, 1e-6).apply({"params": {"scale": scale, "bias": bias}}, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), np.moveaxis(want, 1, -1), rtol=0, atol=1e-4)


def test_params_are_flax_group_norms_and_dtype_is_kept():
    x = jnp.ones((2, 4, 4, 8), jnp.bfloat16)
    params = GroupNorm(2).init(jax.random.key(0), x)
    flax_params = nn.GroupNorm(num_groups=2).init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, flax_params)
    assert GroupNorm(2).apply(params, x).dtype == jnp.bfloat16


def test_channels_that_do_not_split_are_one_clear_error():
    with pytest.raises(LaddError, match="last axis must split evenly"):
        GroupNorm(3).init(jax.random.key(0), jnp.ones((2, 4, 8)))
