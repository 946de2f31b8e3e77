"""The correctness oracle of :func:`kernels_pallas.flash_attention`: the explicit computation.

``softmax(scale * q k^T + bias, masked) v`` with every step in float32 (inputs upcast exactly,
``Precision.HIGHEST`` contractions), rounded once to ``q.dtype``. JAX differentiates it, so its
gradients (the bias's included, summed over the dimensions the bias broadcasts over) are the
oracle for the custom VJPs. The tests also check it against ``jax.nn.dot_product_attention``.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

F32 = jnp.float32


def causal_mask(q_len: int, kv_len: int):
    """[L, S] bool, True where query i may attend key j: j <= i (top-left aligned, as
    ``jax.nn.dot_product_attention(is_causal=True)``; with L > S the last rows see every key)."""
    return jnp.arange(kv_len)[None, :] <= jnp.arange(q_len)[:, None]


def flash_attention_reference(q, k, v, *, bias=None, causal: bool = False, scale=None):
    """Attention of q [B, L, H, D] over k, v [B, S, H, D]; bias additive [B|1, H|1, L, S]."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = jnp.einsum("blhd,bshd->bhls", q.astype(F32), k.astype(F32),
                   precision=lax.Precision.HIGHEST) * scale
    if bias is not None:
        s = s + bias.astype(F32)
    if causal:
        s = jnp.where(causal_mask(q.shape[1], k.shape[1]), s, -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)
    out = jnp.einsum("bhls,bshd->blhd", p, v.astype(F32), precision=lax.Precision.HIGHEST)
    return out.astype(q.dtype)
