"""The correctness oracle: neighborhood attention as a dense masked softmax over all tokens.

Every other path of :func:`kernels_pallas.neighborhood_attention` must give this function's
answer, forward and gradients (tests/kernels). It builds the full [N, N] neighbourhood mask and
relative-position-bias index (N = L in 1-D, X*Y in 2-D) with NumPy at trace time, straight from
NATTEN's window rule (dilation included, no regrouping), so it also checks the other paths'
regrouping. O(N^2) time and memory: the "naive" baseline of the benchmark.
"""
from __future__ import annotations

import numpy as np

import jax
import jax.numpy as jnp
from jax import lax

F32 = jnp.float32


def window_1d(length: int, kernel_size: int, dilation: int, causal: bool):
    """NATTEN's neighbourhood along one dimension.

    Returns ``(mask, rel)``, both [length, length] (query, key): ``mask`` says whether the
    query attends the key, ``rel`` is the key's index into that dimension's relative-position
    bias axis (``key_group_index - query_group_index + kernel_size - 1``; clipped to
    [0, 2k-2] where the mask is False). Positions split into ``dilation`` interleaved groups
    (position mod dilation); inside its group of length n, query j attends the k consecutive
    members starting at ``clip(j - k // 2, 0, n - k)`` (the window shifts inward at the borders
    and is never zero-padded), or, when causal, members ``max(0, j - k + 1) .. j``.
    """
    pos = np.arange(length)
    group, index = pos % dilation, pos // dilation
    group_len = (length - group + dilation - 1) // dilation
    if causal:
        lo = np.maximum(index - kernel_size + 1, 0)
        hi = index
    else:
        lo = np.clip(index - kernel_size // 2, 0, group_len - kernel_size)
        hi = lo + kernel_size - 1
    same_group = group[:, None] == group[None, :]
    key_index = index[None, :]
    mask = same_group & (key_index >= lo[:, None]) & (key_index <= hi[:, None])
    rel = np.clip(key_index - index[:, None] + kernel_size - 1, 0, 2 * kernel_size - 2)
    return mask, rel


def neighborhood_mask_and_bias_index(spatial, kernel_size, dilation, causal):
    """[N, N] mask and per-dimension rel indices ([N, N] each) for 1-D or 2-D ``spatial``."""
    masks, rels = zip(*(window_1d(n, k, d, c) for n, k, d, c in
                        zip(spatial, kernel_size, dilation, causal)))
    if len(spatial) == 1:
        return masks[0], rels
    (mx, my), (rx, ry) = masks, rels
    n = spatial[0] * spatial[1]
    mask = (mx[:, None, :, None] & my[None, :, None, :]).reshape(n, n)
    rel_x = np.broadcast_to(rx[:, None, :, None], (*spatial, *spatial)).reshape(n, n)
    rel_y = np.broadcast_to(ry[None, :, None, :], (*spatial, *spatial)).reshape(n, n)
    return mask, (rel_x, rel_y)


def _tuple(value, ndim):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * ndim


def neighborhood_attention_reference(q, k, v, *, kernel_size, dilation=1, is_causal=False,
                                     rpb=None, scale=None):
    """Neighborhood attention of 1-D [B, L, H, D] or 2-D [B, X, Y, H, D] q/k/v (NATTEN's rule).

    Float32 softmax and accumulation from the given inputs (bfloat16 upcast exactly); the
    result is rounded once to ``q.dtype``. ``rpb``: [H, 2k-1] or [H, 2kx-1, 2ky-1], added to
    the logits. No argument checking: call through the public function for that.
    """
    ndim = q.ndim - 3
    spatial = q.shape[1:1 + ndim]
    kernel_size, dilation = _tuple(kernel_size, ndim), _tuple(dilation, ndim)
    causal = _tuple(is_causal, ndim)
    batch, heads, dim = q.shape[0], q.shape[-2], q.shape[-1]
    n = int(np.prod(spatial))
    scale = 1.0 / np.sqrt(dim) if scale is None else scale
    mask, rels = neighborhood_mask_and_bias_index(spatial, kernel_size, dilation, causal)
    qf, kf, vf = (t.reshape(batch, n, heads, dim).astype(F32) for t in (q, k, v))
    logits = jnp.einsum("bqhd,bkhd->bhqk", qf, kf, precision=lax.Precision.HIGHEST) * scale
    if rpb is not None:
        bias = rpb.astype(F32)[(slice(None), *rels)]  # [H, N, N]
        logits = logits + bias[None]
    logits = jnp.where(mask, logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, vf, precision=lax.Precision.HIGHEST)
    return out.reshape(q.shape).astype(q.dtype)
