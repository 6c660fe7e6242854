"""Blockwise (flash-style) attention against jax.nn.dot_product_attention: values, gradients, bf16, any length and
block size, under jit/scan/remat inside the MMDiT, and no [Lq, Lk] array anywhere in its program."""

from __future__ import annotations

import dataclasses

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_MMDIT, mmdit_inputs, rel_err

from ladd_jax.errors import LaddError
from ladd_jax.models.attention import attention
from ladd_jax.models.mmdit import MMDiT, MMDiTConfig


def _qkv_ct(lq: int, lk: int, dtype=jnp.float32, seed: int = 0):
    ks = jax.random.split(jax.random.key(seed), 4)
    q = 2 * jax.random.normal(ks[0], (2, lq, 3, 16))  # scale 2: peaked softmaxes test the running max
    k = 2 * jax.random.normal(ks[1], (2, lk, 3, 16))
    v = jax.random.normal(ks[2], (2, lk, 3, 16))
    cotangent = jax.random.normal(ks[3], (2, lq, 3, 16))
    return *(x.astype(dtype) for x in (q, k, v)), cotangent


def _value_and_grads(impl, block, q, k, v, cotangent):
    def f(q, k, v):
        out = attention(q, k, v, impl, block)
        return jnp.sum(out.astype(jnp.float32) * cotangent), out

    (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)
    return out, grads


@pytest.mark.parametrize("lq,lk,block", [(37, 53, 8), (64, 64, 64), (10, 7, 512), (33, 33, 1), (96, 40, 32)])
def test_blockwise_equals_reference_fp32(lq, lk, block):
    """Lengths that are and are not multiples of the block, blocks larger than the sequence, block 1."""
    inputs = _qkv_ct(lq, lk)
    ref_out, ref_grads = _value_and_grads(None, block, *inputs)
    out, grads = _value_and_grads("blockwise", block, *inputs)
    assert out.shape == ref_out.shape
    assert rel_err(out, ref_out) <= 1e-5
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        assert rel_err(g, r) <= 1e-5, name


def test_blockwise_bf16_tolerance():
    """bf16 inputs: float32 scores and accumulators, bf16 output; documented tolerance 1% of the output's scale
    (the reference computed in fp32 from the same bf16 inputs)."""
    q, k, v, cotangent = _qkv_ct(45, 45, jnp.bfloat16)
    as32 = lambda x: x.astype(jnp.float32)
    ref_out, ref_grads = _value_and_grads(None, 16, as32(q), as32(k), as32(v), cotangent)
    out, grads = _value_and_grads("blockwise", 16, q, k, v, cotangent)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    assert rel_err(out, ref_out) <= 1e-2
    for g, r in zip(grads, ref_grads, strict=True):
        assert rel_err(g, r) <= 2e-2


def _arrays_in(jaxpr) -> list[tuple[int, ...]]:
    """Shapes of every value a jaxpr and its sub-jaxprs (scan, map, custom_vjp, remat bodies) compute."""
    shapes = []
    for eqn in jaxpr.eqns:
        shapes += [tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape")]
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            shapes += _arrays_in(sub)
    return shapes


def test_blockwise_never_holds_the_attention_matrix():
    """Forward and backward: no value with both a query-length and a key-length axis; the reference has one."""
    lq, lk, block = 300, 280, 64
    q, k, v, cotangent = _qkv_ct(lq, lk)

    def program(impl):
        f = lambda q, k, v: jnp.sum(attention(q, k, v, impl, block) * cotangent)
        return jax.make_jaxpr(jax.grad(f, argnums=(0, 1, 2)))(q, k, v).jaxpr

    holds_matrix = lambda shapes: any(lq in s and lk in s for s in shapes)
    assert holds_matrix(_arrays_in(program("xla")))
    shapes = _arrays_in(program("blockwise"))
    assert not holds_matrix(shapes)
    assert max(np.prod(s) for s in shapes) < 2 * 3 * lq * 16 * 2  # nothing bigger than a few [B, L, H, D] arrays


@pytest.mark.parametrize("remat_policy", ["none", pytest.param("full", marks=pytest.mark.slow)])
def test_mmdit_blockwise_equals_default(remat_policy):
    """The whole MMDiT (joint image + context attention inside nn.scan, with remat) and its parameter gradients."""
    config = MMDiTConfig(**{**TINY_MMDIT, "num_layers": 2, "qk_norm": "rms_norm"})
    x, t, ctx, pooled = mmdit_inputs(config)  # 4 x 6 image tokens + 5 context tokens: 29, not a block multiple
    params = MMDiT(config).init(jax.random.key(0), x, t, ctx, pooled)["params"]
    blockwise = dataclasses.replace(
        config, attention_impl="blockwise", attention_block_size=8, remat_policy=remat_policy
    )

    # Jitted (the config is static): op-by-op dispatch of the scanned blocks would take a minute on a CPU.
    forward = jax.jit(lambda p, cfg: MMDiT(cfg).apply({"params": p}, x, t, ctx, pooled), static_argnums=1)
    grad = jax.jit(jax.grad(lambda p, cfg: jnp.mean(jnp.square(forward(p, cfg)))), static_argnums=1)
    assert rel_err(forward(params, blockwise), forward(params, config)) <= 1e-5
    g, g_ref = grad(params, blockwise), grad(params, config)
    for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref), strict=True):
        assert rel_err(a, b) <= 1e-4


def test_bad_attention_settings():
    with pytest.raises(LaddError, match="attention_impl='flash'"):
        MMDiTConfig(**TINY_MMDIT, attention_impl="flash")
    with pytest.raises(LaddError, match="attention_block_size must be positive"):
        MMDiTConfig(**TINY_MMDIT, attention_impl="blockwise", attention_block_size=0)
    q, k, v, _ = _qkv_ct(4, 4)
    with pytest.raises(LaddError, match="attention_block_size must be positive"):
        attention(q, k, v, "blockwise", 0)
