"""``depthwise_conv2d``: the public function, argument checks, implementation dispatch, the
``custom_vjp`` of the Pallas path and the ``shard_map`` wrapper.

Paths (``implementation``):

* ``"xla"``: pure XLA. On CPU the formulations of ``xla_cpu.py`` (shifted multiply-adds or FFT,
  by kernel size; XLA:CPU's grouped convolution is ~50x slower); on GPU/TPU XLA's own
  convolution (``reference.py``), which cuDNN / the TPU emitter run well.
* ``"pallas"``: the Pallas kernels (``pallas_tpu.py`` on TPU, ``pallas_gpu.py`` on GPU),
  forward and backward; on CPU interpreted (``kernels_pallas.core.pallas_target``), which is a
  correctness path, not a speed path.
* ``None``: the fastest correct path known for the backend: ``"xla"`` on CPU; on GPU/TPU the
  Pallas kernel only on device kinds listed in ``tuning.AUTO_PALLAS_DEVICE_KINDS`` (none yet:
  the kernels have not been timed on hardware), else XLA's convolution. Shapes the TPU kernel
  cannot hold in VMEM also fall back to XLA's convolution.

Every path computes in float32 from the given inputs (bfloat16 is upcast exactly) and rounds
once to ``x.dtype``; padding is applied by ``lax.pad`` (so JAX differentiates it), and the
kernels only ever see a VALID convolution of the padded input. The Pallas kernels only do
stride 1: a stride-2 convolution is split into its stride-1 polyphase components (input
phase a reads rows a, a+2, ...; its sub-kernel is the taps whose offset has that parity), summed
in float32.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from kernels_pallas import core
from kernels_pallas.depthwise_conv2d import tuning, xla_cpu
from kernels_pallas.depthwise_conv2d.reference import depthwise_conv2d_reference

F32 = jnp.float32
#: Input dtypes the op accepts (the result has the input's dtype).
DTYPES = ("float32", "bfloat16")
#: Strides the op serves, per spatial dimension.
STRIDES = (1, 2)
#: Padding strings (as in ``lax.conv_general_dilated``); explicit ((lo, hi), (lo, hi)) also works.
PADDINGS = ("SAME", "VALID")


@dataclasses.dataclass(frozen=True)
class Geometry:
    """A checked call: shapes, per-dimension stride/dilation and explicit padding."""
    batch: int
    in_hw: tuple[int, int]
    channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[tuple[int, int], tuple[int, int]]

    @property
    def padded_hw(self) -> tuple[int, int]:
        return tuple(n + lo + hi for n, (lo, hi) in zip(self.in_hw, self.padding))

    @property
    def effective_kernel(self) -> tuple[int, int]:
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilation))

    @property
    def out_hw(self) -> tuple[int, int]:
        return tuple(xla_cpu.out_size(n, k, s, d) for n, k, s, d in
                     zip(self.padded_hw, self.kernel, self.stride, self.dilation))


def _pair(argument: str, value: Any, valid: tuple[int, ...] | None = None) -> tuple[int, int]:
    values = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        values = tuple(values)
    except TypeError:
        values = ()
    ok = len(values) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    if ok and valid is not None:
        ok = all(v in valid for v in values)
    if not ok:
        allowed = f"one of {list(valid)}" if valid else "a positive int"
        raise ValueError(f"{argument}={value!r} is not supported: give an int or a pair of ints, "
                         f"each {allowed}")
    return values


def _explicit_padding(padding, in_hw, kernel, stride, dilation):
    if isinstance(padding, str):
        if padding.upper() not in PADDINGS:
            raise ValueError(f"padding={padding!r} is not supported; valid values: "
                             f"{list(PADDINGS)} or explicit ((lo, hi), (lo, hi)) ints")
        effective = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
        return tuple(tuple(p) for p in lax.padtype_to_pads(in_hw, effective, stride,
                                                           padding.upper()))
    try:
        pads = tuple((lo, hi) for lo, hi in padding)
    except (TypeError, ValueError):
        pads = ()
    if len(pads) != 2 or not all(isinstance(v, int) and not isinstance(v, bool)
                                 for pair in pads for v in pair):
        raise ValueError(f"padding={padding!r} is not supported; valid values: "
                         f"{list(PADDINGS)} or explicit ((lo, hi), (lo, hi)) ints")
    return pads


def check_arguments(x, w, *, stride=1, padding="SAME", dilation=1, bias=None,
                    implementation=None) -> Geometry:
    """Validates a call (before anything is traced); returns its :class:`Geometry`.

    Raises ``ValueError`` naming the argument and its valid values.
    """
    core.check_implementation(implementation)
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"x must be [B, H, W, C] (4-D NHWC), got shape {jnp.shape(x)}")
    if jnp.dtype(x.dtype).name not in DTYPES:
        raise ValueError(f"x.dtype={jnp.dtype(x.dtype).name} is not supported; valid: "
                         f"{list(DTYPES)}")
    batch, height, width, channels = x.shape
    if getattr(w, "ndim", None) != 3 or w.shape[2] != channels or min(w.shape) < 1:
        raise ValueError(f"w must be [KH, KW, C] with C = x.shape[-1] = {channels}, got shape "
                         f"{jnp.shape(w)}")
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise ValueError(f"w.dtype={w.dtype} must be a floating dtype")
    if bias is not None and (getattr(bias, "shape", None) != (channels,)
                             or not jnp.issubdtype(bias.dtype, jnp.floating)):
        raise ValueError(f"bias must be None or a floating [C] = [{channels}] array, got shape "
                         f"{jnp.shape(bias)}")
    kernel = (int(w.shape[0]), int(w.shape[1]))
    stride = _pair("stride", stride, STRIDES)
    dilation = _pair("dilation", dilation)
    pads = _explicit_padding(padding, (height, width), kernel, stride, dilation)
    geometry = Geometry(batch, (height, width), channels, kernel, stride, dilation, pads)
    for axis, n, k in zip("HW", geometry.padded_hw, geometry.effective_kernel):
        if k > n:
            raise ValueError(f"kernel larger than the padded input along {axis}: effective "
                             f"kernel size {k} (KH/KW with dilation) > padded size {n}; reduce "
                             f"the kernel or dilation, or pad more")
    return geometry


def choose_implementation(implementation: str | None, geometry: Geometry, itemsize: int) -> str:
    """The path a call takes: "reference", "xla_cpu" or "pallas" (module docstring)."""
    plat = core.platform()
    if implementation == "xla":
        return "xla_cpu" if plat == "cpu" else "reference"
    if implementation == "pallas":
        if plat == "tpu" and not _fits_tpu_vmem(geometry, itemsize):
            raise ValueError(
                "implementation='pallas': this shape does not fit the TPU kernel's VMEM blocks "
                f"({_tpu_vmem(geometry, itemsize)} bytes > vmem_limit_bytes); use "
                "implementation=None or 'xla'")
        return "pallas"
    if plat == "cpu":
        return "xla_cpu"
    kind = core.device_kind()
    if any(kind.startswith(k) for k in tuning.AUTO_PALLAS_DEVICE_KINDS) and (
            plat != "tpu" or _fits_tpu_vmem(geometry, itemsize)):
        return "pallas"
    return "reference"


def _tpu_vmem(geometry: Geometry, itemsize: int) -> int:
    from kernels_pallas.depthwise_conv2d import pallas_tpu
    xp_shape = (1, *geometry.padded_hw, geometry.channels)
    return pallas_tpu.vmem_bytes(xp_shape, geometry.kernel, itemsize, geometry.dilation)


def _fits_tpu_vmem(geometry: Geometry, itemsize: int) -> bool:
    return _tpu_vmem(geometry, itemsize) <= tuning.tpu_blocks().vmem_limit_bytes


# ------------------------------------------------------------------------------ pallas path
def _kernels(target: str):
    """The kernel module of a target, imported on first use (Mosaic GPU costs ~1 s to import)."""
    if target == "tpu":
        from kernels_pallas.depthwise_conv2d import pallas_tpu
        return pallas_tpu
    from kernels_pallas.depthwise_conv2d import pallas_gpu
    return pallas_gpu


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _pallas_valid(xp, w, bias, dilation, out_dtype, target, interpret):
    """Stride-1 VALID depthwise correlation of the padded input, by the Pallas kernels."""
    return _kernels(target).conv_valid(xp, w, bias, dilation, out_dtype, interpret)


def _pallas_valid_fwd(xp, w, bias, dilation, out_dtype, target, interpret):
    y = _kernels(target).conv_valid(xp, w, bias, dilation, out_dtype, interpret)
    return y, (xp, w, bias)


def _pallas_valid_bwd(dilation, out_dtype, target, interpret, residuals, g):
    xp, w, bias = residuals
    kernels = _kernels(target)
    kh, kw = w.shape[:2]
    eff_h, eff_w = (kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1
    # dx: the full correlation of g with the flipped kernel, i.e. the same forward kernel on g
    # padded by the effective kernel size minus one on every side.
    g_full = jnp.pad(g, ((0, 0), (eff_h - 1, eff_h - 1), (eff_w - 1, eff_w - 1), (0, 0)))
    dx = kernels.conv_valid(g_full, jnp.flip(w, (0, 1)), jnp.zeros_like(bias), dilation,
                            xp.dtype, interpret)
    dw = kernels.kernel_grad(xp, g, (kh, kw), dilation, interpret)
    dbias = jnp.sum(g.astype(F32), axis=(0, 1, 2))
    return dx, dw.astype(w.dtype), dbias.astype(bias.dtype)


_pallas_valid.defvjp(_pallas_valid_fwd, _pallas_valid_bwd)


def _phases(k: int, stride: int, dilation: int):
    """Polyphase split of one dimension: [(input phase a, first tap, tap step, sub-dilation,
    offset of the first tap in the phase)]; taps of one phase have offsets p*d with the same
    residue a mod stride, evenly spaced in the phase's own (subsampled) coordinates."""
    step = stride // math.gcd(stride, dilation)
    out = []
    for first in range(min(step, k)):
        offset = first * dilation
        out.append((offset % stride, first, step, dilation // math.gcd(stride, dilation),
                    offset // stride))
    return out


def _pallas_path(xp, w, bias, geometry: Geometry, out_dtype):
    target, interpret = core.pallas_target()
    if geometry.stride == (1, 1):
        return _pallas_valid(xp, w, bias, geometry.dilation, jnp.dtype(out_dtype), target,
                             interpret)
    ho, wo = geometry.out_hw
    acc = jnp.zeros(xp.shape[:1] + (ho, wo, xp.shape[3]), F32) + bias.astype(F32)
    zero_bias = jnp.zeros_like(bias)
    for a_h, first_h, step_h, dil_h, off_h in _phases(geometry.kernel[0], geometry.stride[0],
                                                      geometry.dilation[0]):
        for a_w, first_w, step_w, dil_w, off_w in _phases(geometry.kernel[1], geometry.stride[1],
                                                          geometry.dilation[1]):
            w_sub = w[first_h::step_h, first_w::step_w]
            rows = ho + (w_sub.shape[0] - 1) * dil_h
            cols = wo + (w_sub.shape[1] - 1) * dil_w
            x_sub = xp[:, a_h::geometry.stride[0], a_w::geometry.stride[1]]
            x_sub = x_sub[:, off_h:off_h + rows, off_w:off_w + cols]
            acc = acc + _pallas_valid(x_sub, w_sub, zero_bias, (dil_h, dil_w), F32, target,
                                      interpret)
    return acc.astype(out_dtype)


# ----------------------------------------------------------------------------- public fn
def depthwise_conv2d(x, w, *, stride=1, padding="SAME", dilation=1, bias=None,
                     implementation: str | None = None):
    """Depthwise 2-D convolution (cross-correlation, like ``lax.conv_general_dilated``).

    Args:
      x: [B, H, W, C] float32 or bfloat16; B may be 0 (an empty result, zero gradients for
        w and bias, on every path).
      w: [KH, KW, C]: one KHxKW filter per channel, any KH, KW >= 1 (square or not; tested
        1..31) whose dilated size fits the padded input.
      stride: 1 or 2, or a pair.
      padding: 'SAME', 'VALID' or ((lo, hi), (lo, hi)), with ``lax.conv_general_dilated``'s
        meaning (for stride 2 'SAME' pads the extra row/column at the end).
      dilation: kernel (rhs) dilation, an int or a pair.
      bias: optional [C], added before the single rounding to ``x.dtype``.
      implementation: None (fastest known correct path), "xla" or "pallas" (module docstring
        of ``kernels_pallas.depthwise_conv2d.api``).

    Returns:
      [B, H_out, W_out, C] in ``x.dtype``; float32 accumulation on every path. Differentiable
      in x, w and bias (``jax.custom_vjp``; no forward-mode autodiff on the custom paths).
      On the "xla" path (FFT formulation included) a NaN/Inf in x makes exactly the outputs
      and kernel-gradient entries non-finite that ``lax.conv_general_dilated`` does, one in the
      incoming gradient exactly its input-gradient entries; a non-finite kernel tap reaches its
      whole channel (lax spares entries where it only meets padding; ``xla_cpu.py``).
    """
    geometry = check_arguments(x, w, stride=stride, padding=padding, dilation=dilation,
                               bias=bias, implementation=implementation)
    path = choose_implementation(implementation, geometry, jnp.dtype(x.dtype).itemsize)
    if geometry.batch == 0:  # nothing to compute; XLA's convolution handles empty arrays
        path = "reference"
    if path == "reference":
        return depthwise_conv2d_reference(x, w, stride=geometry.stride,
                                          padding=geometry.padding,
                                          dilation=geometry.dilation, bias=bias)
    padding_config = ((0, 0, 0), *((lo, hi, 0) for lo, hi in geometry.padding), (0, 0, 0))

    def run(x, w, bias):
        xp = lax.pad(x, jnp.zeros((), x.dtype), padding_config)
        if path == "xla_cpu":
            taps = geometry.kernel[0] * geometry.kernel[1]
            y = xla_cpu.conv_valid(xp, w, geometry.stride, geometry.dilation,
                                   *tuning.cpu_plan().choose(taps))
            if bias is not None:
                y = y + bias.astype(F32)
            return y.astype(x.dtype)
        if bias is None:
            bias = jnp.zeros((geometry.channels,), F32)
        return _pallas_path(xp, w, bias, geometry, x.dtype)

    if path == "pallas":
        return core.shard_batch(run, [x], [w, bias])
    return run(x, w, bias)
