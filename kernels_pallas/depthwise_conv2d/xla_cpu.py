"""The CPU fast path: depthwise convolution in plain XLA ops that XLA:CPU compiles well.

XLA:CPU lowers a grouped convolution to a slow loop nest (~0.6 GFLOP/s: a 31x31 kernel, forward
and backward at (8, 56, 56, 128), takes ~30 s), so on CPU the op is written in one of two
other formulations, chosen per kernel size by ``tuning.CpuPlan`` from measurements
(``python -m kernels_pallas.bench depthwise_conv2d``):

* **direct**: the sum over taps of shifted (strided) slices times the tap's weights. XLA fuses
  all KH*KW slices into one loop over the output, reading each input element from cache; cost
  grows with KH*KW, and beyond ~96 taps XLA no longer fuses it into one loop. The input
  gradient is the same sum over the zero-upsampled gradient with the flipped kernel; the kernel
  gradient is one variadic reduction computing the KH*KW sums in one pass.
* **fft**: correlation theorem on an FFT grid of at least the padded input size (the valid
  outputs never wrap around), rounded up to a 2-3-5-smooth size. Cost does not grow with the
  kernel. Backward reuses the forward's transforms: input gradient = irfft(G * W), kernel
  gradient = irfft(sum over the batch of X * conj(G)) (the batch is summed before the small
  inverse transform).

Both operate on the already padded input (``xp``), with stride and dilation, accumulate in
float32 and return float32; the caller adds the bias and rounds once. Gradients come from a
``jax.custom_vjp`` (JAX's own VJP of the direct sum was ~6x slower at 7x7). Measured choice
(2-core CPU, (8, 56, 56, 128), see tuning.CPU_PLANS): a forward alone is direct up to 9x9; a
differentiated call is direct up to 5x5 and FFT from 6x6 on (its FFT forward is slower alone,
but its input spectrum is reused by the kernel gradient).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

F32 = jnp.float32


def out_size(size: int, k: int, stride: int, dilation: int) -> int:
    """Output length of a VALID window of ``k`` taps (dilated) over ``size`` elements."""
    return (size - (k - 1) * dilation - 1) // stride + 1


def fft_size(n: int) -> int:
    """The smallest 2-3-5-smooth integer >= n (fast sizes for pocketfft/ducc)."""
    m = n
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def _geometry(xp_shape, w_shape, stride, dilation):
    _, hp, wp, _ = xp_shape
    kh, kw = w_shape[:2]
    ho = out_size(hp, kh, stride[0], dilation[0])
    wo = out_size(wp, kw, stride[1], dilation[1])
    return kh, kw, ho, wo


# ---------------------------------------------------------------------------------- direct
def direct_valid(xp, w, stride, dilation):
    """sum_{p,q} xp[:, i*s + p*d, j*s + q*d] * w[p, q] as one fused XLA loop (float32)."""
    kh, kw, ho, wo = _geometry(xp.shape, w.shape, stride, dilation)
    (sh, sw), (dh, dw) = stride, dilation
    x32, w32 = xp.astype(F32), w.astype(F32)
    batch, _, _, channels = xp.shape
    acc = None
    for p in range(kh):
        for q in range(kw):
            tap = lax.slice(x32, (0, p * dh, q * dw, 0),
                            (batch, p * dh + (ho - 1) * sh + 1, q * dw + (wo - 1) * sw + 1,
                             channels), (1, sh, sw, 1))
            term = tap * w32[p, q]
            acc = term if acc is None else acc + term
    return acc


def _upsample_pad(g, lo, hi, stride):
    """Zero-upsample g by ``stride`` (interior padding) and pad (lo, hi) on H and W."""
    zero = jnp.zeros((), g.dtype)
    return lax.pad(g, zero, ((0, 0, 0), (lo[0], hi[0], stride[0] - 1),
                             (lo[1], hi[1], stride[1] - 1), (0, 0, 0)))


def direct_input_grad(g, w, xp_shape, stride, dilation):
    """d(direct_valid)/d(xp) applied to g: the flipped-kernel correlation of the upsampled g."""
    _, hp, wp, _ = xp_shape
    kh, kw, ho, wo = _geometry(xp_shape, w.shape, stride, dilation)
    eff = ((kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1)
    covered = ((ho - 1) * stride[0] + 1, (wo - 1) * stride[1] + 1)
    # Rows/columns of xp past the last window (floor division) get zero gradient.
    rest = (hp - covered[0] - eff[0] + 1, wp - covered[1] - eff[1] + 1)
    g_up = _upsample_pad(g, (eff[0] - 1, eff[1] - 1), (eff[0] - 1 + rest[0],
                                                      eff[1] - 1 + rest[1]), stride)
    return direct_valid(g_up, jnp.flip(w, (0, 1)), (1, 1), dilation)


def direct_kernel_grad(xp, g, w_shape, stride, dilation):
    """dw[p, q] = sum over batch and output positions of tap (p, q) of xp times g (float32).

    One variadic XLA reduce with an operand per tap, so the KH*KW products are summed in one
    pass over xp and g (~2x faster than separate reductions); it reduces over W only, and the
    small [B, Ho, C] partial sums are added afterwards, which also keeps float32 round-off of the
    long sums down.
    """
    kh, kw, ho, wo = _geometry(xp.shape, w_shape, stride, dilation)
    (sh, sw), (dh, dw) = stride, dilation
    x32, g32 = xp.astype(F32), g.astype(F32)
    batch, _, _, channels = xp.shape
    products = []
    for p in range(kh):
        for q in range(kw):
            tap = lax.slice(x32, (0, p * dh, q * dw, 0),
                            (batch, p * dh + (ho - 1) * sh + 1, q * dw + (wo - 1) * sw + 1,
                             channels), (1, sh, sw, 1))
            products.append(tap * g32)
    zeros = tuple(jnp.zeros((), F32) for _ in products)
    partial = lax.reduce(tuple(products), zeros,
                         lambda a, b: tuple(u + v for u, v in zip(a, b)), (2,))
    return jnp.stack([jnp.sum(s, axis=(0, 1)) for s in partial]).reshape(kh, kw, channels)


# ------------------------------------------------------------------------------------- fft
def _fft_grid(xp_shape):
    return fft_size(xp_shape[1]), fft_size(xp_shape[2])


def _kernel_spectrum(w, grid, dilation):
    """rfft2 of the dilated kernel placed at the origin of the FFT grid: [N1, N2//2+1, C]."""
    kh, kw, channels = w.shape
    w_up = lax.pad(w.astype(F32), jnp.zeros((), F32),
                   ((0, grid[0] - (kh - 1) * dilation[0] - 1, dilation[0] - 1),
                    (0, grid[1] - (kw - 1) * dilation[1] - 1, dilation[1] - 1), (0, 0, 0)))
    return jnp.fft.rfft2(w_up, axes=(0, 1))


def _input_spectrum(xp, grid):
    return jnp.fft.rfft2(xp.astype(F32), s=grid, axes=(1, 2))


def _grad_spectrum(g, grid, stride, covered):
    g_up = _upsample_pad(g.astype(F32), (0, 0),
                         (grid[0] - covered[0], grid[1] - covered[1]), stride)
    return jnp.fft.rfft2(g_up, axes=(1, 2))


def fft_forward(x_spec, w_spec, grid, out_hw, stride):
    full = jnp.fft.irfft2(x_spec * jnp.conj(w_spec), s=grid, axes=(1, 2))
    ho, wo = out_hw
    return full[:, : (ho - 1) * stride[0] + 1: stride[0], : (wo - 1) * stride[1] + 1: stride[1]]


def fft_input_grad(g_spec, w_spec, grid, xp_hw):
    full = jnp.fft.irfft2(g_spec * w_spec, s=grid, axes=(1, 2))
    return full[:, : xp_hw[0], : xp_hw[1]]


def fft_kernel_grad(x_spec, g_spec, grid, w_shape, dilation):
    kh, kw = w_shape[:2]
    corr = jnp.fft.irfft2(jnp.sum(x_spec * jnp.conj(g_spec), axis=0), s=grid, axes=(0, 1))
    return corr[: (kh - 1) * dilation[0] + 1: dilation[0], : (kw - 1) * dilation[1] + 1:
                dilation[1]]


# ---------------------------------------------------------------------- non-finite values
# lax.conv_general_dilated makes an output entry non-finite exactly when its sum has a
# non-finite term; an FFT spreads one NaN over its whole grid. The FFT formulation therefore
# zeroes non-finite values first and afterwards sets to NaN the entries lax makes non-finite:
# those whose window holds a non-finite input (forward, kernel gradient) or incoming gradient
# (input gradient), found by running the same FFT on 0/1 indicator arrays (a count > 0.5; the
# round-off on small integer counts is far below that). A non-finite kernel tap or incoming
# gradient entry reaches every entry of its channel that sums over it: the whole channel of the
# output and input gradient (tap), of the kernel gradient (gradient entry). (lax spares the few
# entries where such a value only meets padding; the direct sums, which multiply the padding
# zeros, do not, and the FFT follows them.) The marking runs only when some value is non-finite
# (lax.cond). Non-finite results are NaN (lax may give +-Inf for an Inf input).
def _split_finite(a):
    """(a with non-finite entries zeroed, their float32 0/1 indicator, whether there is one)."""
    bad = ~jnp.isfinite(a)
    return jnp.where(bad, jnp.zeros((), a.dtype), a), bad.astype(F32), jnp.any(bad)


def _mark_nan(value, any_bad, counts):
    """value with NaN where ``counts()`` (evaluated only when ``any_bad``) exceeds 0.5."""
    return lax.cond(any_bad, lambda v: jnp.where(counts() > 0.5, jnp.nan, v), lambda v: v, value)


# ------------------------------------------------------------------------------ custom vjp
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv_valid(xp, w, stride, dilation, forward_fft, train_fft):
    """VALID depthwise correlation of the padded input ``xp`` (float32 result).

    ``forward_fft`` picks the formulation when the call is not differentiated, ``train_fft``
    the one of the forward and both gradients when it is (``jax.custom_vjp`` runs its forward
    rule only under differentiation). They differ because the best choice differs: a direct
    forward alone is cheap up to ~9x9, while under differentiation the FFT forward's spectrum is
    reused by the gradients. Non-finite values: section above.
    """
    return _forward(xp, w, stride, dilation, forward_fft)[0]


def _forward(xp, w, stride, dilation, use_fft):
    kh, kw, ho, wo = _geometry(xp.shape, w.shape, stride, dilation)
    if not use_fft:
        return direct_valid(xp, w, stride, dilation), None, None
    xc, x_bad, any_x = _split_finite(xp)
    wc, w_bad, any_w = _split_finite(w)
    grid = _fft_grid(xp.shape)
    x_spec, w_spec = _input_spectrum(xc, grid), _kernel_spectrum(wc, grid, dilation)
    y = fft_forward(x_spec, w_spec, grid, (ho, wo), stride)
    y = _mark_nan(y, any_x | any_w, lambda: jnp.sum(w_bad, axis=(0, 1)) + fft_forward(
        _input_spectrum(x_bad, grid), _kernel_spectrum(jnp.ones_like(w_bad), grid, dilation),
        grid, (ho, wo), stride))
    return y, x_spec, w_spec


def _conv_valid_fwd(xp, w, stride, dilation, forward_fft, train_fft):
    y, x_spec, w_spec = _forward(xp, w, stride, dilation, train_fft)
    # xp is kept even when its spectrum is: it is alive anyway (it is the op's input).
    return y, (xp, w, x_spec, w_spec)


def _conv_valid_bwd(stride, dilation, forward_fft, train_fft, residuals, g):
    xp, w, x_spec, w_spec = residuals
    if train_fft:
        kh, kw, ho, wo = _geometry(xp.shape, w.shape, stride, dilation)
        grid = _fft_grid(xp.shape)
        covered = ((ho - 1) * stride[0] + 1, (wo - 1) * stride[1] + 1)
        # The spectra of the zeroed input and kernel are the forward's.
        _, x_bad, any_x = _split_finite(xp)
        _, w_bad, any_w = _split_finite(w)
        gc, g_bad, any_g = _split_finite(g)
        g_spec = _grad_spectrum(gc, grid, stride, covered)
        dx = fft_input_grad(g_spec, w_spec, grid, xp.shape[1:3])
        dw = fft_kernel_grad(x_spec, g_spec, grid, w.shape, dilation)
        dx = _mark_nan(dx, any_g | any_w, lambda: jnp.sum(w_bad, axis=(0, 1)) + fft_input_grad(
            _grad_spectrum(g_bad, grid, stride, covered),
            _kernel_spectrum(jnp.ones_like(w_bad), grid, dilation), grid, xp.shape[1:3]))
        dw = _mark_nan(dw, any_x | any_g, lambda: jnp.sum(g_bad, axis=(0, 1, 2)) + fft_kernel_grad(
            _input_spectrum(x_bad, grid), _grad_spectrum(jnp.ones_like(g_bad), grid, stride,
                                                         covered), grid, w.shape, dilation))
    else:
        dx = direct_input_grad(g, w, xp.shape, stride, dilation)
        dw = direct_kernel_grad(xp, g, w.shape, stride, dilation)
    return dx.astype(xp.dtype), dw.astype(w.dtype)


conv_valid.defvjp(_conv_valid_fwd, _conv_valid_bwd)
