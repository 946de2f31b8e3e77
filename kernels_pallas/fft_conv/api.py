"""``fft_conv``: the public function, argument checks and implementation dispatch.

Definition (``u`` [B, L, H], ``k`` [H, Lk] with 1 <= Lk <= L, ``c`` the kernel's centre)::

    v = pregate * u                                       (v = u without a pre-gate)
    z[b, t, h] = sum_{s = 0 .. Lk-1, 0 <= t + c - s < L}  k[h, s] * v[b, t + c - s, h]
    y = postgate * (z + bias[h] * v)                      (y = z + bias * v without a post-gate)

* causal (``causal=True``, the default): ``c = 0``, so ``y[t]`` sees ``u[t], u[t-1], ...,
  u[t-Lk+1]``: ``y[b,t,h] = sum_{s=0..min(t, Lk-1)} k[h,s] u[b,t-s,h]``.
* two-sided (``causal=False``): a centred kernel, ``c = Lk // 2``: tap ``k[h, Lk//2]`` is lag 0,
  taps ``s < Lk//2`` weigh the future ``u[t + (Lk//2 - s)]`` and taps ``s > Lk//2`` the past.
  For odd Lk the kernel is symmetric about its middle tap (Lk//2 taps each side); for even Lk
  there is one more tap on the future side (like ``numpy.fft.fftshift``'s centre, and like
  ``lax.conv_general_dilated`` with the kernel flipped and ``padding="SAME"``).

Inputs beyond the sequence are absent, not zeros: only taps that land inside ``[0, L)`` are
summed, so a NaN/Inf in ``u``, the gates or ``k`` makes exactly the outputs (and gradients)
whose sum contains it non-finite, on every path (``xla_fft.py`` explains how the FFT keeps that).

Paths (``implementation``):

* ``"xla"``: pure XLA; per ``tuning.XlaPlan`` (by kernel length, separately for plain and
  differentiated calls) the direct sum of shifted slices for short kernels
  (``reference.direct_conv``, differentiated by JAX) or the FFT (``xla_fft.py``: ``rfft`` at
  a 2-3-5-smooth length ``N >= L + max(Lk - 1 - c, c)``, float32 math, ``custom_vjp`` reusing
  the forward's spectra).
* ``"pallas"``: the FFT as DFT-matrix matmuls in Pallas TPU kernels (``pallas_tpu.py``: the
  Monarch / FlashFFTConv decomposition; interpreted on CPU), through the same ``custom_vjp``;
  transforms up to N = 8192 (VMEM); no GPU kernel yet. Under a mesh, per batch shard.
* ``None``: the fastest correct XLA formulation for the backend, as measured (``tuning.py``);
  never Pallas (its kernels have not been timed on hardware).

Every path computes in float32 and rounds once to ``u.dtype``; gradients come back in each
argument's dtype.
"""
from __future__ import annotations

import jax.numpy as jnp

from kernels_pallas import core
from kernels_pallas.fft_conv import tuning, xla_fft
from kernels_pallas.fft_conv.reference import fft_conv_reference

#: dtypes ``u`` may have (the output has ``u``'s dtype).
DTYPES = ("float32", "bfloat16")


def _is_float(x) -> bool:
    return jnp.issubdtype(x.dtype, jnp.floating)


def check_arguments(u, k, *, causal=True, bias=None, pregate=None, postgate=None,
                    implementation=None) -> None:
    """Validates a call before anything is traced; raises ``ValueError`` naming the argument,
    what was wrong and what is valid."""
    core.check_implementation(implementation)
    if not isinstance(causal, bool):
        raise ValueError(f"causal={causal!r} must be a bool (True: causal, False: two-sided)")
    if getattr(u, "ndim", None) != 3:
        raise ValueError(f"u must be [B, L, H] (3-D, channels last), got shape {jnp.shape(u)}")
    if jnp.dtype(u.dtype).name not in DTYPES:
        raise ValueError(f"u.dtype={jnp.dtype(u.dtype).name} is not supported; valid: "
                         f"{list(DTYPES)}")
    _, length, channels = u.shape
    if length < 1:
        raise ValueError(f"u must have a sequence length L >= 1, got shape {u.shape}")
    if getattr(k, "ndim", None) != 2 or k.shape[0] != channels:
        raise ValueError(f"k must be [H, Lk] with H = u.shape[-1] = {channels}, got shape "
                         f"{jnp.shape(k)}")
    if not 1 <= k.shape[1] <= length:
        raise ValueError(f"kernel length Lk = k.shape[1] = {k.shape[1]} must be in [1, L] = "
                         f"[1, {length}] (L = u.shape[1]); truncate or pad the kernel")
    if not _is_float(k):
        raise ValueError(f"k.dtype={k.dtype} must be a floating dtype")
    if bias is not None and (getattr(bias, "shape", None) != (channels,) or not _is_float(bias)):
        raise ValueError(f"bias must be None or a floating [H] = [{channels}] array, got shape "
                         f"{jnp.shape(bias)} and dtype {getattr(bias, 'dtype', type(bias))}")
    for name, gate in (("pregate", pregate), ("postgate", postgate)):
        if gate is not None and (getattr(gate, "shape", None) != u.shape or not _is_float(gate)):
            raise ValueError(f"{name} must be None or a floating array of u's shape "
                             f"[B, L, H] = {list(u.shape)}, got shape {jnp.shape(gate)} and "
                             f"dtype {getattr(gate, 'dtype', type(gate))}")


def choose_implementation(implementation: str | None, length: int, taps: int,
                          channels: int = 128, causal: bool = True) -> str:
    """The path a call takes: "direct", "fft", "fft_train" (pure XLA: the direct sum, the FFT,
    or the FFT under differentiation and the direct sum otherwise) or "pallas"; raises for a
    Pallas call it cannot serve."""
    if implementation == "pallas":
        target, _ = core.pallas_target()
        if target != "tpu":
            raise ValueError("implementation='pallas': fft_conv has only a TPU kernel (run on "
                             "TPU, or interpreted on CPU), no GPU kernel yet; use "
                             "implementation=None or 'xla'")
        from kernels_pallas.fft_conv import pallas_tpu
        n = pallas_tpu.transform_length(length, taps, causal)
        need = pallas_tpu.vmem_bytes(n, length, channels)
        if need > tuning.tpu_blocks().vmem_limit_bytes:
            raise ValueError(
                f"implementation='pallas': L={length}, Lk={taps} needs a transform of N={n}, "
                f"whose blocks do not fit the TPU kernel's VMEM ({need} bytes > "
                f"vmem_limit_bytes={tuning.tpu_blocks().vmem_limit_bytes}; N <= 8192 fits at "
                "128 channels per block); use implementation=None or 'xla'")
        return "pallas"
    forward_fft, train_fft = tuning.xla_plan().choose(taps)
    return "fft" if forward_fft else "fft_train" if train_fft else "direct"


def fft_conv(u, k, *, causal: bool = True, bias=None, pregate=None, postgate=None,
             implementation: str | None = None):
    """Long convolution along the sequence axis, channels last (module docstring: definition).

    Args:
      u: [B, L, H] float32 or bfloat16.
      k: [H, Lk] floating, 1 <= Lk <= L: one kernel per channel.
      causal: True (``y[t]`` depends on ``u[<= t]``) or False (two-sided, centred kernel).
      bias: optional [H], the skip term ``bias * v``.
      pregate, postgate: optional [B, L, H]: ``postgate * (conv(pregate * u) + bias * pregate
        * u)``.
      implementation: None (fastest known correct path), "xla" or "pallas".

    Returns:
      [B, L, H] in ``u.dtype`` (float32 math, one rounding). Differentiable in every array
      argument (reverse mode).
    """
    check_arguments(u, k, causal=causal, bias=bias, pregate=pregate, postgate=postgate,
                    implementation=implementation)
    batch, length, channels = u.shape
    if batch == 0 or channels == 0:
        return jnp.zeros(u.shape, u.dtype)
    path = choose_implementation(implementation, length, k.shape[1], channels, causal)
    if path == "direct":
        # The reference is the direct sum; JAX differentiates it.
        return fft_conv_reference(u, k, causal=causal, bias=bias, pregate=pregate,
                                  postgate=postgate)
    if path in ("fft", "fft_train"):
        return xla_fft.fft_conv_spectral(u, k, bias, pregate, postgate, causal, xla_fft.XLA,
                                         path == "fft_train")
    from kernels_pallas.fft_conv import pallas_tpu
    _, interpret = core.pallas_target()
    # Under a mesh the kernels run per batch shard; the optional gates travel with u.
    gates = [g for g in (pregate, postgate) if g is not None]

    def run(u, *rest):
        gate_values = iter(rest[:len(gates)])
        pre = None if pregate is None else next(gate_values)
        post = None if postgate is None else next(gate_values)
        k, bias = rest[len(gates):]
        return pallas_tpu.fft_conv_pallas(u, k, bias, pre, post, causal, interpret)

    return core.shard_batch(run, [u, *gates], [k, bias])
