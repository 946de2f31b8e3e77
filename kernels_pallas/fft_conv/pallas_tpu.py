"""Pallas TPU (Mosaic) kernels: the FFT of the convolution as DFT-matrix matmuls (the Monarch /
FlashFFTConv decomposition), so the MXU does the transform. Also what the CPU interprets.

Status: tested in interpret mode and lowered to Mosaic MLIR on a CPU machine (tests/kernels);
never compiled or timed on a TPU, and there is no GPU kernel (no GPU was lent when this was
written): ``implementation=None`` never picks this path.

Decomposition. ``N = N1 * N2`` (a power of two >= 64, N1 <= N2 both >= 8). Write the time index
``t = n1 + N1 * n2`` and the frequency ``f = k2 + N2 * k1``. Then

    X[k2 + N2 k1] = sum_n1 F1[k1, n1] T[k2, n1] sum_n2 F2[k2, n2] x[n1 + N1 n2]

with ``F_M[a, b] = exp(-2 pi i a b / M)`` and twiddles ``T[k2, n1] = exp(-2 pi i n1 k2 / N)``:

1. for each n1: rows ``n1, n1 + N1, ...`` (a strided [N2, H] load) times F2 -> rows ``n1 +
   N1 k2`` of a scratch (strided store);
2. for each k2: the contiguous chunk of rows ``N1 k2 .. N1 k2 + N1 - 1`` times ``F1 * T[k2]``
   (the twiddles folded into the matrix: a row vector broadcast over F1's rows) -> the spectrum
   in "chunk order": row ``N1 k2 + k1`` holds frequency ``k2 + N2 k1``.

The inverse runs the same steps backwards with conjugate matrices. Spectra never leave this
chunk order: the kernel's spectrum is computed by the same kernel, so products match up.
Complex values are kept as separate float32 real/imaginary arrays, matmuls at HIGHEST precision.

Kernels (grid = (channel blocks, batch); channels on the 128 lanes, the sequence on sublanes):

* ``convolve``: frame the input (zeros around it, in VMEM: the padded signal never exists in
  HBM), forward steps, times the kernel's spectrum chunk by chunk right after step 2 (then the
  inverse step 2 on the same chunk), inverse step 1, write rows ``[offset, offset + L)``. One
  pass over HBM: the non-differentiated forward.
* ``spectrum`` / ``inverse``: the two halves, with the spectrum in HBM, for the ``custom_vjp``
  (the forward keeps the input's and the kernel's spectra for the gradients).

A program holds ~7 [N, block] float32 arrays in VMEM: N <= 8192 at 128 lanes (``vmem_bytes``).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from kernels_pallas.fft_conv import xla_fft
from kernels_pallas.fft_conv.reference import centre
from kernels_pallas.fft_conv.tuning import TpuBlocks, tpu_blocks

F32 = jnp.float32
#: Smallest transform: N1 = N2 = 8 (one sublane tile each way).
MIN_N = 64


def monarch_sizes(n_min: int) -> tuple[int, int]:
    """(N1, N2): the smallest power-of-two ``N = N1 * N2 >= n_min`` (at least 64) split as
    evenly as possible, N1 <= N2."""
    n = max(MIN_N, 1 << (max(n_min, 1) - 1).bit_length())
    n1 = 1 << (n.bit_length() - 1) // 2
    return n1, n // n1


def transform_length(length: int, taps: int, causal: bool) -> int:
    """N for a call: as ``xla_fft.fft_length`` requires, rounded up to a Monarch size."""
    c = centre(taps, causal)
    n1, n2 = monarch_sizes(length + max(taps - 1 - c, c))
    return n1 * n2


@functools.lru_cache(maxsize=None)
def _matrices(n1: int, n2: int) -> tuple[np.ndarray, ...]:
    """F1, F2 and the twiddle table T [N2, N1], each as (real, imaginary) float32."""
    def dft(m):
        a = np.arange(m)
        return np.exp(-2j * np.pi * np.outer(a, a) / m)

    twiddle = np.exp(-2j * np.pi * np.outer(np.arange(n2), np.arange(n1)) / (n1 * n2))
    out = []
    for z in (dft(n1), dft(n2), twiddle):
        out += [z.real.astype(np.float32), z.imag.astype(np.float32)]
    return tuple(out)


def _dot(a, b):
    return jnp.dot(a, b, preferred_element_type=F32, precision=lax.Precision.HIGHEST)


# ------------------------------------------------------------------------- kernel pieces
def _step1(src_ref, sr_ref, si_ref, f2r, f2i, n1, n2):
    """Scratch rows n1 + N1 k2 = sum_n2 F2[k2, n2] src[n1 + N1 n2] (src real)."""
    def body(a, carry):
        rows = pl.ds(a, n2, stride=n1)
        g = src_ref[rows, :]
        sr_ref[rows, :] = _dot(f2r, g)
        si_ref[rows, :] = _dot(f2i, g)
        return carry

    lax.fori_loop(0, n1, body, 0)


def _twiddled_f1(f1r, f1i, tr_ref, ti_ref, b):
    """F1 * T[b] (the row of twiddles broadcast over F1's rows), as (real, imaginary)."""
    tr, ti = tr_ref[pl.ds(b, 1), :], ti_ref[pl.ds(b, 1), :]
    return f1r * tr - f1i * ti, f1r * ti + f1i * tr


def _step2(sr, si, mr, mi):
    """(M @ s): the forward step 2 on one chunk."""
    return _dot(mr, sr) - _dot(mi, si), _dot(mr, si) + _dot(mi, sr)


def _step2_inverse(xr, xi, mr, mi):
    """(conj(M)^T @ x): the inverse step 2 on one chunk."""
    mr_t, mi_t = mr.T, mi.T
    return _dot(mr_t, xr) + _dot(mi_t, xi), _dot(mr_t, xi) - _dot(mi_t, xr)


def _step1_inverse(sr_ref, si_ref, dst_ref, f2r, f2i, n1, n2, scale):
    """dst[n1 + N1 n2] = Re(sum_k2 conj(F2)[n2, k2] s[n1 + N1 k2]) * scale."""
    def body(a, carry):
        rows = pl.ds(a, n2, stride=n1)
        dst_ref[rows, :] = (_dot(f2r, sr_ref[rows, :]) + _dot(f2i, si_ref[rows, :])) * scale
        return carry

    lax.fori_loop(0, n1, body, 0)


def _frame(x_ref, frame_ref, offset):
    frame_ref[...] = jnp.zeros(frame_ref.shape, F32)
    frame_ref[pl.ds(offset, x_ref.shape[0]), :] = x_ref[...].astype(F32)


def _chunk(b, n1):
    return pl.ds(pl.multiple_of(b * n1, n1), n1)


# -------------------------------------------------------------------------------- kernels
def _spectrum_kernel(x_ref, f1r_ref, f1i_ref, f2r_ref, f2i_ref, tr_ref, ti_ref, or_ref, oi_ref,
                     frame_ref, *, n1, n2, offset):
    _frame(x_ref, frame_ref, offset)
    f1r, f1i = f1r_ref[...], f1i_ref[...]
    _step1(frame_ref, or_ref, oi_ref, f2r_ref[...], f2i_ref[...], n1, n2)

    def body(b, carry):
        rows = _chunk(b, n1)
        mr, mi = _twiddled_f1(f1r, f1i, tr_ref, ti_ref, b)
        or_ref[rows, :], oi_ref[rows, :] = _step2(or_ref[rows, :], oi_ref[rows, :], mr, mi)
        return carry

    lax.fori_loop(0, n2, body, 0)


def _inverse_kernel(xr_ref, xi_ref, f1r_ref, f1i_ref, f2r_ref, f2i_ref, tr_ref, ti_ref, o_ref,
                    sr_ref, si_ref, frame_ref, *, n1, n2, offset):
    f1r, f1i = f1r_ref[...], f1i_ref[...]

    def body(b, carry):
        rows = _chunk(b, n1)
        mr, mi = _twiddled_f1(f1r, f1i, tr_ref, ti_ref, b)
        sr_ref[rows, :], si_ref[rows, :] = _step2_inverse(xr_ref[rows, :], xi_ref[rows, :],
                                                          mr, mi)
        return carry

    lax.fori_loop(0, n2, body, 0)
    _step1_inverse(sr_ref, si_ref, frame_ref, f2r_ref[...], f2i_ref[...], n1, n2,
                   1.0 / (n1 * n2))
    o_ref[...] = frame_ref[pl.ds(offset, o_ref.shape[0]), :]


def _convolve_kernel(x_ref, kr_ref, ki_ref, f1r_ref, f1i_ref, f2r_ref, f2i_ref, tr_ref, ti_ref,
                     o_ref, frame_ref, sr_ref, si_ref, *, n1, n2, offset):
    _frame(x_ref, frame_ref, 0)
    f1r, f1i = f1r_ref[...], f1i_ref[...]
    f2r, f2i = f2r_ref[...], f2i_ref[...]
    _step1(frame_ref, sr_ref, si_ref, f2r, f2i, n1, n2)

    def body(b, carry):
        rows = _chunk(b, n1)
        mr, mi = _twiddled_f1(f1r, f1i, tr_ref, ti_ref, b)
        xr, xi = _step2(sr_ref[rows, :], si_ref[rows, :], mr, mi)
        kr, ki = kr_ref[rows, :], ki_ref[rows, :]
        yr, yi = xr * kr - xi * ki, xr * ki + xi * kr
        sr_ref[rows, :], si_ref[rows, :] = _step2_inverse(yr, yi, mr, mi)
        return carry

    lax.fori_loop(0, n2, body, 0)
    _step1_inverse(sr_ref, si_ref, frame_ref, f2r, f2i, n1, n2, 1.0 / (n1 * n2))
    o_ref[...] = frame_ref[pl.ds(offset, o_ref.shape[0]), :]


# ------------------------------------------------------------------------------- wrappers
def channel_block(channels: int) -> int:
    """Lanes per program: 128 when it divides H, else all H channels in one block (a block dim
    equal to the array dim is always legal)."""
    return 128 if channels % 128 == 0 else channels


def vmem_bytes(n: int, length: int, channels: int) -> int:
    """VMEM of the largest kernel (``convolve``): double-buffered input/output and kernel
    spectrum blocks plus three [N, block] float32 scratch arrays."""
    lanes = -(-channel_block(channels) // 128) * 128
    return 4 * lanes * (2 * 2 * n + 3 * n + 2 * 2 * length)


def _call(kernel, inputs, out_rows, scratch, n, channels, interpret, blocks: TpuBlocks):
    """pallas_call over (channel blocks, batch). ``inputs`` are [B or 1, rows, H] float32 (a
    batch of 1 is shared by every program: the kernel's spectrum), followed by the DFT tables
    (whole blocks); outputs are [B, rows, H] for each of ``out_rows``; ``scratch`` [N, block]
    float32 VMEM arrays."""
    n1, n2 = monarch_sizes(n)
    tables = [jnp.asarray(m) for m in _matrices(n1, n2)]
    block = channel_block(channels)
    batch = max(x.shape[0] for x in inputs)

    def signal_spec(rows, x_batch):
        if x_batch == 1:  # the kernel's spectrum: one for the whole batch
            return pl.BlockSpec((None, rows, block), lambda h, b: (0, 0, h))
        return pl.BlockSpec((None, rows, block), lambda h, b: (b, 0, h))

    def table_spec(t):
        return pl.BlockSpec(t.shape, lambda h, b: (0, 0))

    in_specs = [signal_spec(x.shape[1], x.shape[0]) for x in inputs] + [
        table_spec(t) for t in tables]
    out_specs = [pl.BlockSpec((None, rows, block), lambda h, b: (b, 0, h))
                 for rows in out_rows]
    from jax.experimental.pallas import tpu as pltpu
    return pl.pallas_call(
        functools.partial(kernel, n1=n1, n2=n2),
        grid=(channels // block, batch),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=[jax.ShapeDtypeStruct((batch, rows, channels), F32) for rows in out_rows],
        scratch_shapes=[pltpu.VMEM((n, block), F32) for _ in range(scratch)],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel"),
            vmem_limit_bytes=blocks.vmem_limit_bytes),
        interpret=interpret,
    )(*inputs, *tables)


@dataclasses.dataclass(frozen=True)
class PallasSpectra:
    """``xla_fft.XlaSpectra``'s operations by the kernels above; a spectrum is a (real,
    imaginary) pair of float32 [B, N, H] arrays in chunk order. ``interpret`` as in
    ``kernels_pallas.core.pallas_target``."""
    interpret: Any = False

    def length(self, length: int, taps: int, causal: bool) -> int:
        return transform_length(length, taps, causal)

    def spectrum(self, x, n: int, offset: int = 0):
        kernel = functools.partial(_spectrum_kernel, offset=offset)
        return tuple(_call(kernel, [x.astype(F32)], [n, n], 1, n, x.shape[2],
                           self.interpret, tpu_blocks()))

    def multiply(self, a, b, conjugate_b: bool = False):
        (ar, ai), (br, bi) = a, b
        if conjugate_b:
            bi = -bi
        return ar * br - ai * bi, ar * bi + ai * br

    def sum_batch(self, a):
        return tuple(jnp.sum(x, axis=0, keepdims=True) for x in a)

    def inverse(self, a, n: int, offset: int, length: int):
        kernel = functools.partial(_inverse_kernel, offset=offset)
        return _call(kernel, list(a), [length], 3, n, a[0].shape[2], self.interpret,
                     tpu_blocks())[0]

    def convolve(self, x, k_spec, n: int, offset: int, length: int):
        kernel = functools.partial(_convolve_kernel, offset=offset)
        return _call(kernel, [x.astype(F32), *k_spec], [length], 3, n, x.shape[2],
                     self.interpret, tpu_blocks())[0]


def fft_conv_pallas(u, k, bias, pregate, postgate, causal, interpret):
    """``fft_conv`` by these kernels (arguments checked; optional ones may be None)."""
    return xla_fft.fft_conv_spectral(u, k, bias, pregate, postgate, causal,
                                     PallasSpectra(interpret))
