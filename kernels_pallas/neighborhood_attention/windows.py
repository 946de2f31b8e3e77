"""Window geometry shared by the tiled XLA path and the Pallas kernels (no dilation: callers
regroup dilated inputs first, see ``api.regrouped``).

Along one dimension of length n with odd kernel k, query i attends keys
``window_start(i) .. window_start(i) + k - 1`` (non-causal: ``clip(i - k//2, 0, n - k)``,
NATTEN's inward-shifted window) or ``max(0, i - k + 1) .. i`` (causal). Both starts are
non-decreasing in i and grow by at most 1 per step, so the keys of the T queries a..a+T-1 lie in
``[window_start(a), window_start(a) + T + k - 1)``: one contiguous key region per query tile.
Conversely the queries that attend key j form a contiguous range (:func:`query_range`).

Every function works on Python ints, NumPy arrays and traced jnp scalars alike (only
``minimum``/``maximum``/``where`` of the array module passed as ``xp``).
"""
from __future__ import annotations

import numpy as np


def window_start(i, n: int, k: int, causal: bool, xp=np):
    if causal:
        return xp.maximum(i - (k - 1), 0)
    return xp.minimum(xp.maximum(i - k // 2, 0), n - k)


def window_end(i, n: int, k: int, causal: bool, xp=np):
    """One past the last key of query i."""
    if causal:
        return i + 1
    return window_start(i, n, k, causal, xp) + k


def query_range(j, n: int, k: int, causal: bool, xp=np):
    """(first, last + 1) of the queries whose window holds key j."""
    if causal:
        return j, xp.minimum(j + k, n)
    half = k // 2
    first = xp.where(j < k, 0, j - half)
    last = xp.where(j >= n - k, n - 1, j + half)
    return first, last + 1


def region(n: int, k: int, tile: int) -> int:
    """Length of the key region of a query tile: tile + k - 1, at most n."""
    return min(tile + k - 1, n)
