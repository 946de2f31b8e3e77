"""The correctness oracle: the convolution as a direct sum over the kernel's taps.

    y[b, t, h] = sum over s in [0, Lk) with 0 <= t + c - s < L of  k[h, s] * v[b, t + c - s, h]

with ``c = 0`` (causal) or ``c = Lk // 2`` (two-sided), ``v = pregate * u``, then
``y = postgate * (y + bias * v)`` (see ``api.py``). Only taps that land inside the sequence are
summed (no zero padding is multiplied by the kernel), so a NaN/Inf reaches exactly the outputs
whose window holds it: this is the non-finite footprint every other path must keep.

It is also the ``"direct"`` formulation the op uses for short kernels: each tap is one shifted
slice times a weight, which XLA fuses into one loop over the output (Lk reads per output).
Long kernels go through a ``lax.scan`` over taps (same sum, O(Lk) sequential steps), which keeps
the trace small; it is meant for tests and as a baseline, not for speed.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

F32 = jnp.float32
#: Kernels up to this many taps are summed as unrolled slices; longer ones with ``lax.scan``.
UNROLL_MAX_TAPS = 64


def centre(kernel_len: int, causal: bool) -> int:
    """Index of the kernel tap applied at lag 0: 0 (causal) or ``Lk // 2`` (two-sided)."""
    return 0 if causal else kernel_len // 2


def direct_conv(v, k, causal: bool):
    """The bare convolution sum of float32 ``v`` [B, L, H] and ``k`` [H, Lk] (float32 out)."""
    batch, length, channels = v.shape
    taps = k.shape[1]
    c = centre(taps, causal)
    v, k = v.astype(F32), k.astype(F32)
    # Padded so that tap s reads the slice starting at Lk - 1 - s; the taps that fall on the
    # padding are removed with a select rather than multiplied by zero (0 * Inf = NaN).
    vp = jnp.pad(v, ((0, 0), (taps - 1 - c, c), (0, 0)))
    t = jnp.arange(length)[:, None]

    def tap(s, k_s):
        x = lax.dynamic_slice_in_dim(vp, taps - 1 - s, length, axis=1)
        inside = (t + c - s >= 0) & (t + c - s < length)
        return jnp.where(inside, x * k_s, 0.0)

    if taps <= UNROLL_MAX_TAPS:
        y = tap(0, k[:, 0])
        for s in range(1, taps):
            y = y + tap(s, k[:, s])
        return y

    def step(acc, xs):
        s, k_s = xs
        return acc + tap(s, k_s), None

    y, _ = lax.scan(step, jnp.zeros((batch, length, channels), F32),
                    (jnp.arange(taps), k.T))
    return y


def fft_conv_reference(u, k, *, causal: bool = True, bias=None, pregate=None, postgate=None):
    """``fft_conv``'s definition (``api.py``) computed directly in float32; ``u.dtype`` out."""
    v = u.astype(F32)
    if pregate is not None:
        v = v * pregate.astype(F32)
    y = direct_conv(v, k, causal)
    if bias is not None:
        y = y + bias.astype(F32) * v
    if postgate is not None:
        y = y * postgate.astype(F32)
    return y.astype(u.dtype)


__all__ = ["centre", "direct_conv", "fft_conv_reference"]
