"""Scaled dot-product attention, and a memory-efficient blockwise version of it in pure JAX.

`attention(q, k, v, impl, block_size)` with q [B, Lq, H, D], k and v [B, Lk, H, D] (jax.nn.dot_product_attention's
layout) is softmax(q k^T / sqrt(D)) v. `impl` None, "xla" or "cudnn" hands it to jax.nn.dot_product_attention;
"blockwise" computes it here, the flash-attention way, so that no [Lq, Lk] matrix ever exists:

- forward: queries in blocks of `block_size` (lax.map), and for each query block a scan over key/value blocks
  that keeps a running maximum m, a running normaliser l and an unnormalised output o (the online softmax);
  the output is o / l, and the log-sum-exp m + log l is saved for the backward pass;
- backward (a custom VJP, FlashAttention-2's recurrence): the probabilities of one (query block, key block) pair
  are recomputed from q, k and the saved log-sum-exp, dq accumulates over key blocks and dk, dv over query
  blocks; residuals are q, k, v, o and the log-sum-exp only.

The largest temporary is [B, H, block, block]. Sequence lengths need not be multiples of the block: the last
block is padded and padded keys get -inf scores. Scores, the softmax and the accumulators are float32 whatever
the inputs' dtype (bfloat16 inputs give bfloat16 outputs). Works under jit, vmap, scan and remat.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from ladd_jax.errors import LaddError

IMPLEMENTATIONS = (None, "xla", "cudnn", "blockwise")
DEFAULT_BLOCK_SIZE = 512  # a [B, H, 512, 512] float32 score tile: 24 heads -> 25 MB per sample


def check_settings(impl: str | None, block_size: int) -> None:
    """One clear error for an unknown implementation or a block size below 1."""
    if impl not in IMPLEMENTATIONS:
        raise LaddError(f"attention_impl={impl!r}: choose one of {', '.join(map(str, IMPLEMENTATIONS))}")
    if block_size < 1:
        raise LaddError(f"attention_block_size must be positive, got {block_size}")


def attention(
    q: jax.Array, k: jax.Array, v: jax.Array, impl: str | None = None, block_size: int = DEFAULT_BLOCK_SIZE
) -> jax.Array:
    """softmax(q k^T / sqrt(D)) v over [B, L, H, D] inputs, computed by `impl` (see the module docstring)."""
    check_settings(impl, block_size)
    if impl == "blockwise":
        return blockwise_attention(q, k, v, block_size)
    return jax.nn.dot_product_attention(q, k, v, implementation=impl)


def _pad(x: jax.Array, block: int) -> jax.Array:
    """[B, L, H, D] -> [n, B, block, H, D], zero-padded along L to a multiple of the block."""
    b, length, h, d = x.shape
    n = -(-length // block)
    x = jnp.pad(x, ((0, 0), (0, n * block - length), (0, 0), (0, 0)))
    return x.reshape(b, n, block, h, d).swapaxes(0, 1)


def _unpad(x: jax.Array, length: int) -> jax.Array:
    """The inverse of `_pad` (for [n, B, block, ...] blocks) back to [B, length, ...]."""
    n, b, block = x.shape[:3]
    return x.swapaxes(0, 1).reshape(b, n * block, *x.shape[3:])[:, :length]


def _scores(q_blk: jax.Array, k_blk: jax.Array, k_valid: jax.Array, scale: float) -> jax.Array:
    """[B, bq, H, D] x [B, bk, H, D] -> float32 [B, H, bq, bk] scaled scores; padded keys get -inf."""
    s = jnp.einsum("bqhd,bkhd->bhqk", q_blk, k_blk, preferred_element_type=jnp.float32) * scale
    return jnp.where(k_valid[None, None, None, :], s, -jnp.inf)


def _key_validity(lk: int, block: int) -> jax.Array:
    """[n, block] bool: whether each padded key position is a real key."""
    n = -(-lk // block)
    return (jnp.arange(n * block) < lk).reshape(n, block)


def _forward(q: jax.Array, k: jax.Array, v: jax.Array, block: int) -> tuple[jax.Array, jax.Array]:
    """Output [B, Lq, H, D] and log-sum-exp [B, H, Lq] (float32)."""
    check_settings("blockwise", block)  # for direct callers of blockwise_attention
    lq, lk, d = q.shape[1], k.shape[1], q.shape[-1]
    scale = 1.0 / math.sqrt(d)
    kb, vb, valid = _pad(k, block), _pad(v, block), _key_validity(lk, block)

    def query_block(q_blk):  # [B, bq, H, D]
        b, bq, h, _ = q_blk.shape
        init = (
            jnp.full((b, h, bq), -jnp.inf, jnp.float32),  # running max
            jnp.zeros((b, h, bq), jnp.float32),  # running normaliser
            jnp.zeros((b, h, bq, d), jnp.float32),  # unnormalised output
        )

        def step(carry, kv):
            m, norm, o = carry
            k_blk, v_blk, k_valid = kv
            s = _scores(q_blk, k_blk, k_valid, scale)
            m_new = jnp.maximum(m, s.max(-1))
            p = jnp.exp(s - m_new[..., None])
            correction = jnp.exp(m - m_new)
            pv = jnp.einsum("bhqk,bkhd->bhqd", p.astype(v_blk.dtype), v_blk, preferred_element_type=jnp.float32)
            return (m_new, norm * correction + p.sum(-1), o * correction[..., None] + pv), None

        (m, norm, o), _ = jax.lax.scan(step, init, (kb, vb, valid))
        return (o / norm[..., None]).transpose(0, 2, 1, 3).astype(q.dtype), m + jnp.log(norm)

    out, lse = jax.lax.map(query_block, _pad(q, block))  # [n, B, bq, H, D], [n, B, H, bq]
    lse = _unpad(lse.transpose(0, 1, 3, 2), lq).transpose(0, 2, 1)  # -> [B, H, Lq]
    return _unpad(out, lq), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, block_size: int = DEFAULT_BLOCK_SIZE) -> jax.Array:
    """Attention that never materialises the [Lq, Lk] matrix, forward or backward (module docstring)."""
    return _forward(q, k, v, block_size)[0]


def _fwd(q, k, v, block_size):
    out, lse = _forward(q, k, v, block_size)
    return out, (q, k, v, out, lse)


def _bwd(block_size, residuals, d_out):
    q, k, v, out, lse = residuals
    lq, lk, d = q.shape[1], k.shape[1], q.shape[-1]
    scale = 1.0 / math.sqrt(d)
    # delta_i = sum_j p_ij dp_ij = do_i . o_i: the softmax's Jacobian term, one number per query.
    delta = jnp.einsum("bqhd,bqhd->bhq", d_out.astype(jnp.float32), out.astype(jnp.float32))
    to_blocks = lambda x: _pad(x[..., None], block_size)[..., 0].transpose(0, 1, 3, 2)  # [B,H,L] -> [n,B,H,blk]
    qb, dob = _pad(q, block_size), _pad(d_out, block_size)
    lse_b, delta_b = to_blocks(lse.transpose(0, 2, 1)), to_blocks(delta.transpose(0, 2, 1))
    kb, vb, valid = _pad(k, block_size), _pad(v, block_size), _key_validity(lk, block_size)

    def query_block(dkv, qs):  # accumulates dk, dv over query blocks; returns this block's dq
        q_blk, do_blk, lse_blk, delta_blk = qs

        def key_block(dq, kv):
            k_blk, v_blk, k_valid = kv
            p = jnp.exp(_scores(q_blk, k_blk, k_valid, scale) - lse_blk[..., None])  # [B, H, bq, bk]
            dv = jnp.einsum("bhqk,bqhd->bkhd", p, do_blk, preferred_element_type=jnp.float32)
            dp = jnp.einsum("bqhd,bkhd->bhqk", do_blk, v_blk, preferred_element_type=jnp.float32)
            ds = p * (dp - delta_blk[..., None]) * scale
            dq = dq + jnp.einsum("bhqk,bkhd->bqhd", ds, k_blk, preferred_element_type=jnp.float32)
            dk = jnp.einsum("bhqk,bqhd->bkhd", ds, q_blk, preferred_element_type=jnp.float32)
            return dq, (dk, dv)

        dq, (dk, dv) = jax.lax.scan(key_block, jnp.zeros(q_blk.shape, jnp.float32), (kb, vb, valid))
        return (dkv[0] + dk, dkv[1] + dv), dq

    zeros = jnp.zeros(kb.shape, jnp.float32)
    (dk, dv), dq = jax.lax.scan(query_block, (zeros, zeros), (qb, dob, lse_b, delta_b))
    # Padded queries carry zero d_out and so contribute nothing to dk, dv; padded keys are cut off here.
    return _unpad(dq, lq).astype(q.dtype), _unpad(dk, lk).astype(k.dtype), _unpad(dv, lk).astype(v.dtype)


blockwise_attention.defvjp(_fwd, _bwd)
