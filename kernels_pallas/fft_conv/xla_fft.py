"""The XLA path: the convolution by ``rfft`` at a padded length, with a ``custom_vjp`` whose
backward reuses the forward's spectra, and the bookkeeping that keeps non-finite values local.

Convolution theorem: with ``N >= L + max(Lk - 1 - c, c)`` (``c`` the kernel's centre,
``reference.py``) the circular convolution of ``v`` and ``k`` zero-padded to ``N`` equals the
linear one at the outputs ``[c, c + L)`` we keep, so ``y = irfft(V * K)[c : c + L]``. The
transposes are circular correlations at the same ``N``: ``dv = irfft(W * conj(K))[:L]`` and
``dk = irfft(sum_b W * conj(V))[:Lk]``, with ``W`` the spectrum of the output cotangent placed at
offset ``c``. All FFT math is float32 (``rfft`` rejects bfloat16).

Non-finite locality: an FFT spreads one NaN/Inf over the whole sequence, while the direct sum
confines it to the outputs whose window holds it. So non-finite entries are zeroed before the
FFT and exactly those outputs are set to NaN afterwards, found by counting the non-finite
entries in each output's window with a cumulative sum (O(L), only run when there is one).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kernels_pallas.depthwise_conv2d.xla_cpu import fft_size
from kernels_pallas.fft_conv.reference import centre, fft_conv_reference

F32 = jnp.float32


def fft_length(length: int, kernel_len: int, causal: bool) -> int:
    """The padded FFT length: the smallest 2-3-5-smooth ``N >= L + Lk - 1 - c`` (no wrap-around
    reaches the kept outputs) and ``>= L + c`` (they fit in the frame: for an even two-sided
    kernel ``c = Lk / 2`` is one more than ``Lk - 1 - c``)."""
    c = centre(kernel_len, causal)
    return fft_size(length + max(kernel_len - 1 - c, c))


# ------------------------------------------------------------------------ non-finite masks
def window_count(bad, axis: int, offset: int, width: int, out_len: int):
    """``out[m] = sum of bad[i] for i in [m + offset, m + offset + width) within [0, n)``, along
    ``axis`` (int32), by differences of one cumulative sum."""
    n = bad.shape[axis]
    counts = jnp.cumsum(bad.astype(jnp.int32), axis=axis)
    zero = jnp.zeros_like(lax.slice_in_dim(counts, 0, 1, axis=axis))
    counts = jnp.concatenate([zero, counts], axis=axis)
    m = np.arange(out_len)
    lo = np.clip(m + offset, 0, n)
    hi = np.clip(m + offset + width, 0, n)
    return jnp.take(counts, hi, axis=axis) - jnp.take(counts, lo, axis=axis)


def _nonfinite(x):
    bad = ~jnp.isfinite(x)
    return bad, jnp.where(bad, 0.0, x)


def _mark(y, hit):
    """y with NaN where ``hit()`` is true; ``hit`` only runs when ``any`` says there is one."""
    return jnp.where(hit(), jnp.nan, y)


def _masked(y, any_bad, hit):
    return lax.cond(any_bad, lambda y: _mark(y, hit), lambda y: y, y)


def forward_hits(bad_v, bad_k, causal: bool):
    """[B, L, H] bool: outputs whose window holds a non-finite ``v`` entry or a non-finite tap
    of ``k`` (a tap reaches every output where it lands inside the sequence)."""
    length, taps = bad_v.shape[1], bad_k.shape[1]
    c = centre(taps, causal)
    from_v = window_count(bad_v, 1, c - taps + 1, taps, length) > 0
    from_k = window_count(bad_k, 1, c - length + 1, length, length) > 0  # [H, L]
    return from_v | from_k.T[None]


def input_grad_hits(bad_w, bad_k, causal: bool):
    """[B, L, H] bool: entries of dv = conv^T(w) that sum a non-finite w or k entry."""
    length, taps = bad_w.shape[1], bad_k.shape[1]
    c = centre(taps, causal)
    from_w = window_count(bad_w, 1, -c, taps, length) > 0
    from_k = window_count(bad_k, 1, c - length + 1, length, length) > 0  # reversed in t
    return from_w | jnp.flip(from_k, 1).T[None]


def kernel_grad_hits(bad_w, bad_v, taps: int, causal: bool):
    """[H, Lk] bool: taps of dk whose sum over batch and time meets a non-finite w or v."""
    length = bad_w.shape[1]
    c = centre(taps, causal)
    w_count = jnp.sum(bad_w, axis=0, dtype=jnp.int32)  # [L, H]; the windows are the same per b
    v_count = jnp.sum(bad_v, axis=0, dtype=jnp.int32)
    from_w = window_count(w_count, 0, -c, length, taps) > 0
    from_v = jnp.flip(window_count(v_count, 0, c - taps + 1, length, taps) > 0, 0)
    return (from_w | from_v).T


# ------------------------------------------------------------------------------- spectra
class XlaSpectra:
    """The spectral operations of the convolution, by XLA's ``rfft`` (a spectrum is a complex
    [B, N // 2 + 1, H] array). ``pallas_tpu.PallasSpectra`` has the same methods with its own
    spectrum layout, so the ``custom_vjp`` below serves both paths."""

    def length(self, length: int, taps: int, causal: bool) -> int:
        return fft_length(length, taps, causal)

    def spectrum(self, x, n: int, offset: int = 0):
        """Spectrum of float32 ``x`` [B, L', H] placed at ``offset`` in a length-``n`` frame."""
        x = jnp.pad(x, ((0, 0), (offset, n - offset - x.shape[1]), (0, 0)))
        return jnp.fft.rfft(x, axis=1)

    def multiply(self, a, b, conjugate_b: bool = False):
        return a * (jnp.conj(b) if conjugate_b else b)

    def sum_batch(self, a):
        return jnp.sum(a, axis=0, keepdims=True)

    def inverse(self, a, n: int, offset: int, length: int):
        """Rows ``[offset, offset + length)`` of the inverse transform (float32 [B, length, H])."""
        return lax.slice_in_dim(jnp.fft.irfft(a, n=n, axis=1), offset, offset + length, axis=1)

    def convolve(self, x, k_spec, n: int, offset: int, length: int):
        """``inverse(spectrum(x) * k_spec)``: the forward when it is not differentiated."""
        return self.inverse(self.multiply(self.spectrum(x, n), k_spec), n, offset, length)


XLA = XlaSpectra()


# ---------------------------------------------------------------------------- custom_vjp
def _gate(u, pregate):
    v = u.astype(F32)
    return v if pregate is None else v * pregate.astype(F32)


def _kernel_spectrum(spectra, k0, n):
    return spectra.spectrum(k0.T[None], n)  # [1, ., H]: broadcasts over the batch


def _skip(z, bias, v):
    return z if bias is None else z + bias.astype(F32) * v


def _post(z, postgate):
    return z if postgate is None else z * postgate.astype(F32)


def _conv(u, k, bias, pregate, postgate, causal, spectra, direct_forward):
    """The forward alone: one fused convolution (no spectrum kept), or the direct sum when
    that is faster for a forward (``tuning.XlaPlan``)."""
    if direct_forward:
        return fft_conv_reference(u, k, causal=causal, bias=bias, pregate=pregate,
                                  postgate=postgate)
    length, taps = u.shape[1], k.shape[1]
    n, c = spectra.length(length, taps, causal), centre(taps, causal)
    v = _gate(u, pregate)
    bad_v, v0 = _nonfinite(v)
    bad_k, k0 = _nonfinite(k.astype(F32))
    z = spectra.convolve(v0, _kernel_spectrum(spectra, k0, n), n, c, length)
    z = _masked(z, jnp.any(bad_v) | jnp.any(bad_k), lambda: forward_hits(bad_v, bad_k, causal))
    return _post(_skip(z, bias, v), postgate).astype(u.dtype)


def _conv_fwd(u, k, bias, pregate, postgate, causal, spectra, direct_forward):
    length, taps = u.shape[1], k.shape[1]
    n, c = spectra.length(length, taps, causal), centre(taps, causal)
    v = _gate(u, pregate)
    bad_v, v0 = _nonfinite(v)
    bad_k, k0 = _nonfinite(k.astype(F32))
    v_spec, k_spec = spectra.spectrum(v0, n), _kernel_spectrum(spectra, k0, n)
    z = spectra.inverse(spectra.multiply(v_spec, k_spec), n, c, length)
    z = _masked(z, jnp.any(bad_v) | jnp.any(bad_k), lambda: forward_hits(bad_v, bad_k, causal))
    z = _skip(z, bias, v)
    y = _post(z, postgate)
    # z (before the post-gate) is what the post-gate's gradient needs; the spectra are reused
    # by both gradients.
    return y.astype(u.dtype), (u, k, bias, pregate, postgate, v_spec, k_spec,
                               None if postgate is None else z)


def _conv_bwd(causal, spectra, direct_forward, residuals, g):
    u, k, bias, pregate, postgate, v_spec, k_spec, z = residuals
    length, taps = u.shape[1], k.shape[1]
    n, c = spectra.length(length, taps, causal), centre(taps, causal)
    g = g.astype(F32)
    w = g if postgate is None else g * postgate.astype(F32)
    v = _gate(u, pregate)
    bad_w, w0 = _nonfinite(w)
    bad_v, bad_k = ~jnp.isfinite(v), ~jnp.isfinite(k)
    # The output cotangent placed at offset c: both transposes are then correlations at 0.
    w_spec = spectra.spectrum(w0, n, c)
    dv = spectra.inverse(spectra.multiply(w_spec, k_spec, conjugate_b=True), n, 0, length)
    dv = _masked(dv, jnp.any(bad_w) | jnp.any(bad_k), lambda: input_grad_hits(bad_w, bad_k,
                                                                             causal))
    dk = spectra.inverse(spectra.sum_batch(spectra.multiply(w_spec, v_spec, conjugate_b=True)),
                         n, 0, taps)[0].T
    dk = _masked(dk, jnp.any(bad_w) | jnp.any(bad_v),
                 lambda: kernel_grad_hits(bad_w, bad_v, taps, causal))
    dbias = None
    if bias is not None:
        dv = dv + bias.astype(F32) * w
        dbias = jnp.sum(w * v, axis=(0, 1)).astype(bias.dtype)
    dpost = None if postgate is None else (g * z).astype(postgate.dtype)
    dpre = None if pregate is None else (dv * u.astype(F32)).astype(pregate.dtype)
    du = dv if pregate is None else dv * pregate.astype(F32)
    return du.astype(u.dtype), dk.astype(k.dtype), dbias, dpre, dpost


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def fft_conv_spectral(u, k, bias, pregate, postgate, causal, spectra, direct_forward=False):
    """``fft_conv`` through the spectral operations of ``spectra`` (``XLA`` or a Pallas one);
    arguments already checked, optional ones may be None. ``direct_forward``: a call that is
    not differentiated takes the direct sum instead."""
    return _conv(u, k, bias, pregate, postgate, causal, spectra, direct_forward)


fft_conv_spectral.defvjp(_conv_fwd, _conv_bwd)
