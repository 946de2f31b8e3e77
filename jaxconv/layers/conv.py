"""Convolution and dense factories with PyTorch-compatible padding and initialisation.

Padding is explicit and symmetric (``kernel_size // 2`` on each side, PyTorch's convention), not
XLA's ``'SAME'``: for stride 2 on even inputs ``'SAME'`` pads (0, 1) where PyTorch pads (1, 1),
which would break weight parity with timm/torchvision.

:func:`loop_safe_conv` is a drop-in for ``lax.conv_general_dilated`` for convolutions that run
inside a loop body (``nn.scan``). XLA:CPU rewrites convolutions with non-canonical dimension
orders (the ones JAX's backward pass emits) into its fast NHWC/HWIO form only in the entry
computation, so inside a while loop the backward convs fall back to a naive loop nest
(jax-ml/jax#12868). ``python -m jaxconv.analysis.scan_conv_bench`` on a 2-core CPU (jax 0.10.2),
ResNet-20 train step, batch 32: unrolled 0.27 s, scanned with JAX's VJP 2.79 s, scanned with
``loop_safe_conv`` 0.22 s. ``loop_safe_conv`` has a custom VJP whose backward on CPU is
written with NHWC/HWIO convolutions and explicit transposes (same result); on other platforms
it is JAX's own VJP. The cost: like every ``jax.custom_vjp`` function it does not support
forward-mode autodiff (``jax.jvp``, ``jax.jacfwd``, forward-over-reverse HVPs).

:func:`matmul_conv`, another drop-in for ``lax.conv_general_dilated``, computes the convolutions
XLA:CPU is slowest at (3x3 on maps of a few pixels, large unpadded kernels) as one matmul.

:func:`cpu_conv`, the drop-in the :func:`conv2d` factory uses, is the CPU path chosen per call
(GPU/TPU keep ``lax.conv_general_dilated`` unchanged): XLA:CPU's grouped convolution runs at
~0.6 GFLOP/s, so grouped convs become one dense conv with a block-diagonal kernel (or one
matmul per tap for many groups), and matmul_conv's cases a matmul (``python -m
jaxconv.analysis.conv_cpu_bench`` measures them beside XLA).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

#: He et al. 2015 normal init, fan_out mode (timm / torchvision ResNet convs).
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
#: PyTorch's default ``nn.Linear`` weight init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

_NHWC = ("NHWC", "HWIO", "NHWC")


def _plain_conv(x, w, strides, padding, precision):
    return lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=_NHWC, precision=precision
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, padding, precision):
    return _plain_conv(x, w, strides, padding, precision)


def _conv_fwd(x, w, strides, padding, precision):
    return _plain_conv(x, w, strides, padding, precision), (x, w)


def _canonical_grads(strides, padding, precision, x, w, g):
    """Input and kernel gradients of a 2-D NHWC/HWIO conv, using NHWC/HWIO convs only."""
    dx_padding, dw_padding = [], []
    for k, size, out, s, (lo, _) in zip(w.shape[:2], x.shape[1:3], g.shape[1:3], strides, padding):
        before = k - 1 - lo
        dx_padding.append((before, size + k - 1 - ((out - 1) * s + 1) - before))
        # Crop the high side so the kernel gradient has exactly k taps.
        dw_padding.append((lo, k + (out - 1) * s - size - lo))
    w_t = jnp.flip(w, (0, 1)).swapaxes(2, 3)  # HWIO -> flipped HWOI, read as HWIO
    dx = lax.conv_general_dilated(
        g, w_t, (1, 1), dx_padding, lhs_dilation=strides, dimension_numbers=_NHWC,
        precision=precision,
    )
    # Kernel gradient: channels in play the batch, the batch plays the features.
    dw = lax.conv_general_dilated(
        x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), (1, 1), dw_padding,
        rhs_dilation=strides, dimension_numbers=_NHWC, precision=precision,
    )
    return dx, dw.transpose(1, 2, 0, 3).astype(w.dtype)


def _conv_bwd(strides, padding, precision, residuals, g):
    x, w = residuals

    def canonical(x, w, g):
        return _canonical_grads(strides, padding, precision, x, w, g)

    def stock(x, w, g):
        return jax.vjp(lambda a, b: _plain_conv(a, b, strides, padding, precision), x, w)[1](g)

    return lax.platform_dependent(x, w, g, cpu=canonical, default=stock)


_conv.defvjp(_conv_fwd, _conv_bwd)


def loop_safe_conv(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    preferred_element_type=None,
):
    """``lax.conv_general_dilated`` whose CPU backward stays fast inside loops (module doc).

    Serves 2-D NHWC/HWIO convolutions with explicit padding, no dilation and no groups; any
    other call goes to ``lax.conv_general_dilated`` unchanged.
    """
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    served = (
        lhs.ndim == 4
        and not isinstance(padding, str)
        and all(d in (None, 1) for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
        and feature_group_count == 1
        and preferred_element_type is None
        and (dimension_numbers is None
             or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc)
    )
    if not served:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count=feature_group_count, precision=precision,
            preferred_element_type=preferred_element_type,
        )
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _conv(lhs, rhs, tuple(int(s) for s in window_strides), padding, precision)


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def conv2d(
    features: int,
    kernel_size: int | tuple[int, int],
    strides: int | tuple[int, int] = 1,
    *,
    padding: Any = None,
    use_bias: bool = False,
    dtype: Any = jnp.float32,
    kernel_init=kaiming_normal_fan_out,
    loop_safe: bool = False,
    feature_group_count: int = 1,
    name: str | None = None,
) -> nn.Conv:
    """NHWC convolution, float32 parameters, symmetric padding ``kernel_size // 2`` by default.

    ``kernel_size`` / ``strides``: an int (square) or (h, w); ``padding``: None (the default
    above), an int or (ph, pw) padded on both sides of each axis, explicit ((lo, hi), (lo, hi))
    pairs, or ``'VALID'`` / ``'SAME'``. Computes with :func:`cpu_conv` (on CPU its faster
    formulations, elsewhere ``lax.conv_general_dilated``); ``loop_safe=True`` with
    :func:`loop_safe_conv` instead (for convs inside ``nn.scan``; it serves dense convs only).
    ``feature_group_count`` > 1: a grouped conv (kernel [kh, kw, Cin/G, features]), on CPU
    through :func:`cpu_conv`'s fast path. The module is a plain ``nn.Conv``, so parameter
    trees are the same as a direct ``nn.Conv`` with these arguments.
    """
    kernel = _pair(kernel_size)
    if padding is None:
        padding = (kernel[0] // 2, kernel[1] // 2)
    if not isinstance(padding, str):
        if isinstance(padding, int) or (len(padding) == 2
                                        and all(isinstance(p, int) for p in padding)):
            padding = tuple((p, p) for p in _pair(padding))
        else:
            padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return nn.Conv(
        features,
        kernel,
        strides=_pair(strides),
        padding=padding,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kernel_init,
        feature_group_count=feature_group_count,
        conv_general_dilated=loop_safe_conv if loop_safe else cpu_conv,
        name=name,
    )


#: XLA options for CPU compiles of train steps: YNNPACK (XLA:CPU's library fusions) keeps the
#: dots and reductions but not the convolutions, which go to XLA's Eigen convolution. A 3x3
#: conv's kernel gradient as a YNNPACK fusion cost 1.3-2.6x the process CPU time of Eigen's
#: at ResNet-20/50 shapes (forward and input gradient equal); whole train steps: resnet20 b128
#: 1.19x wall / 1.18x CPU time, resnet50 b16 128px 1.11x / 1.04x (load ~3), convnext_tiny and
#: mobilenetv1_100 1.00x (load ~4); turning YNNPACK off entirely cost resnet50 1.6x more. Measured on the loaded 2-core CPU (jax 0.10.2) with ``python -m
#: experiments.profile_cpu --compare``. Inference (quiet machine, interleaved): resnet20 b128
#: 1.28x, resnet50 1.09x, mobilenetv1_100 1.14x, convnext_tiny 1.00x; so the training loop's
#: train and eval steps, ``experiments.evaluate`` and ``experiments.bench`` all compile with
#: them. Not applied by this module (options are per compile:
#: ``jax.jit(step, compiler_options=cpu_compiler_options())``).
CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type":
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE",
}


def cpu_compiler_options() -> dict | None:
    """:data:`CPU_COMPILER_OPTIONS` when the default backend is the CPU, else None (GPU/TPU
    compiles keep XLA's defaults); pass to ``jax.jit(..., compiler_options=...)``."""
    return dict(CPU_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else None


def recompute_on_cpu(fn):
    """``jax.checkpoint(fn)`` when the default backend is the CPU, else ``fn`` unchanged.

    For cheap elementwise functions of one large activation (exact GELU): the backward pass then
    recomputes them from their input instead of reading the intermediates the forward saved
    (erfc's ``exp(-x^2)``, the CDF: three arrays the size of the MLP's hidden map), which on a
    CPU costs more memory traffic than the arithmetic. Same values; forward-mode autodiff works.
    """
    return jax.checkpoint(fn) if jax.default_backend() == "cpu" else fn


def exact_gelu(x):
    """``torch.nn.GELU()`` (the erf form, ``nn.gelu(x, approximate=False)``), recomputed in the
    backward pass on CPU (:func:`recompute_on_cpu`). The zoo's exact GELUs all use it."""
    return recompute_on_cpu(functools.partial(nn.gelu, approximate=False))(x)


def recompute_module_on_cpu(cls: type[nn.Module]) -> type[nn.Module]:
    """``nn.remat(cls)`` (the module's backward recomputes its forward from the input) when the
    default backend is the CPU, else ``cls``. The returned class keeps ``cls``'s name, so
    automatically named instances keep their parameter paths (``BatchNorm_0``, not
    ``CheckpointBatchNorm_0``). Used for BatchNorm and LayerNorm: their backward then reads the
    input and the per-channel statistics instead of the saved normalized map. Measured, 2-core
    CPU (jax 0.10.2), interleaved train steps in one process: mobilenetv1_100 b16 128px 1.12x,
    resnet50 1.07x (BatchNorm); convnext_tiny 1.09x (LayerNorm and GELU, with
    :func:`recompute_on_cpu`); with every LayerNorm and exact GELU of the model recomputed:
    unireplknet_a b16 128px 1.11x, coatnet_0_224 b4 224px 1.13x.
    """
    if jax.default_backend() != "cpu":
        return cls
    if cls not in _RECOMPUTED:
        wrapped = nn.remat(cls)
        wrapped.__name__ = wrapped.__qualname__ = cls.__name__
        _RECOMPUTED[cls] = wrapped
    return _RECOMPUTED[cls]


#: Module class -> its renamed ``nn.remat`` class (built once per class).
_RECOMPUTED: dict = {}


def dense(features: int, *, dtype: Any = jnp.float32, name: str | None = None) -> nn.Dense:
    """Dense layer with bias, float32 parameters, PyTorch-default kernel init and zero bias."""
    return nn.Dense(
        features, dtype=dtype, param_dtype=jnp.float32, kernel_init=torch_linear_init,
        dot_general=flat_dot_general, name=name
    )


def flat_matmul(x, w, precision=None):
    """``x @ w`` for an [..., K] ``x`` and a [K, N] ``w``, computed on ``x`` read as one
    [rows, K] matrix (a free reshape).

    Why: the transpose of ``jnp.matmul`` on a 4-D activation contracts three dimensions for the
    weight gradient (``'bhwc,bhwo->co'``); XLA:CPU's dot canonicalisation then lays the gradient
    out transposed with a loop fusion that runs at ~1.3 GB/s (12 ms for a 16 MB activation). On
    2-D operands the same gradient is one dot contracting one dimension, which XLA:CPU computes
    without the copy. Measured, 2-core CPU (jax 0.10.2), train images/s of the whole step:
    mobilenetv1_100 b16 128px 1.28x, resnet50 1.25x (``python -m experiments.profile_cpu``).
    Same values; a reshape on GPU/TPU, so used on every platform.
    """
    return flat_dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


def flat_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                     **kwargs):
    """``lax.dot_general`` for ``nn.Dense(dot_general=...)``: a dense layer on [..., K] inputs
    contracts as one 2-D dot (:func:`flat_matmul`'s reason); other contractions are unchanged."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    if (lhs.ndim > 2 and rhs.ndim == 2 and tuple(lhs_contract) == (lhs.ndim - 1,)
            and tuple(rhs_contract) == (0,) and not lhs_batch and not rhs_batch):
        lead = lhs.shape[:-1]
        out = lax.dot_general(lhs.reshape(-1, lhs.shape[-1]), rhs, (((1,), (0,)), ((), ())),
                              precision=precision, preferred_element_type=preferred_element_type,
                              **kwargs)
        return out.reshape(*lead, rhs.shape[1])
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                           preferred_element_type=preferred_element_type, **kwargs)


#: Output maps up to this many pixels are convolved as a matmul by :func:`matmul_conv`.
MATMUL_CONV_MAX_PIXELS = 16


def _matmul_serves(lhs_shape, rhs_shape, strides, pads) -> bool:
    """Whether :func:`matmul_conv` computes this stride/padding as a matmul (its docstring)."""
    kh, kw = rhs_shape[:2]
    (top, bottom), (left, right) = pads
    out_h = lhs_shape[1] + top + bottom - kh + 1
    out_w = lhs_shape[2] + left + right - kw + 1
    unpadded = pads == ((0, 0), (0, 0))
    return (tuple(strides) == (1, 1) and out_h > 0 and out_w > 0
            and min(v for pair in pads for v in pair) >= 0
            and (unpadded or out_h * out_w <= MATMUL_CONV_MAX_PIXELS))


def matmul_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count=1, precision=None,
                preferred_element_type=None):
    """``lax.conv_general_dilated`` computed as one matmul where XLA:CPU's convolution is slow.

    Serves NHWC/HWIO convolutions with stride 1 and no dilation or groups that are either
    unpadded (VGG's 7x7 / 1x1 pre-logits convs) or have at most
    :data:`MATMUL_CONV_MAX_PIXELS` output pixels (3x3 convs on 4x4 .. 1x1 maps): the (padded)
    input's kh x kw windows are laid side by side (a reshape when the window is the whole map)
    and multiplied by the kernel read as a [kh*kw*Cin, Cout] matrix. Same result; other calls
    go to ``lax.conv_general_dilated`` unchanged. Measured on the 2-core CPU (jax 0.10.2):

    * a 3x3 conv 512 -> 512 on 2x2 maps, batch 32: 0.77 s forward / 1.56 s forward+backward as a
      convolution (0.8 GFLOP/s), 0.011 s / 0.032 s as a matmul; break-even at 8x8 maps;
    * VGG-16's head (batch 2): 5.7 s as convs, 0.87 s as matmuls. XLA fuses the large 7x7 conv
      into its neighbours' loop fusion and runs it naively; vgg16 at 224 took 11 s instead of
      ~1 s like vgg16_bn, whose BatchNorms happen to prevent that fusion.
    """
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
    if isinstance(padding, str):
        pads = ((0, 0), (0, 0)) if padding == "VALID" else None
    else:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    served = (
        lhs.ndim == 4 and pads is not None and tuple(window_strides) == (1, 1)
        and all(d in (None, 1) for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
        and feature_group_count == 1 and preferred_element_type is None
        and (dimension_numbers is None
             or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc)
    )
    served = served and _matmul_serves(lhs.shape, rhs.shape, (1, 1), pads)
    if not served:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count=feature_group_count, precision=precision,
            preferred_element_type=preferred_element_type)
    kh, kw, cin, cout = rhs.shape
    batch, h, w, _ = lhs.shape
    (top, bottom), (left, right) = pads
    out_h, out_w = h + top + bottom - kh + 1, w + left + right - kw + 1
    if pads != ((0, 0), (0, 0)):
        lhs = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
        h, w = h + top + bottom, w + left + right
    if (out_h, out_w) == (1, 1) and (kh, kw) == (h, w):
        windows = lhs.reshape(batch, 1, 1, h * w * cin)
    elif (kh, kw) == (1, 1):
        windows = lhs
    else:  # HWC order of the taps, matching the kernel's HWIO reshape
        windows = jnp.concatenate(
            [lhs[:, i:i + out_h, j:j + out_w, :] for i in range(kh) for j in range(kw)], -1)
    return flat_matmul(windows, rhs.reshape(kh * kw * cin, cout), precision)


# ------------------------------------------------------------------------------- cpu_conv
def _conv_pads(padding, in_hw, kernel, strides, dilation):
    """Explicit ((lo, hi), (lo, hi)) for a padding string or pairs."""
    if isinstance(padding, str):
        effective = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
        return tuple(tuple(p) for p in lax.padtype_to_pads(in_hw, effective, strides, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def taps_conv(x, w, strides, pads, dilation=(1, 1), groups=1, precision=None):
    """NHWC/HWIO convolution as one matmul per kernel tap: ``sum_{p,q} view_{p,q}(x) @ w[p, q]``.

    ``view_{p,q}`` is the strided slice of the padded input that tap (p, q) reads (so rhs
    dilation and stride are just offsets and steps); with ``groups`` > 1 each tap is a matmul
    batched over the groups. JAX's transpose of it computes the kernel gradient as one
    ``einsum('bhwc,bhwo->co')`` per tap, which is what makes :func:`cpu_conv` fast.
    """
    kh, kw, cin_g, cout = w.shape
    batch = x.shape[0]
    xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), *((lo, hi, 0) for lo, hi in pads),
                                             (0, 0, 0)))
    (sh, sw), (dh, dw) = strides, dilation
    ho = (xp.shape[1] - (kh - 1) * dh - 1) // sh + 1
    wo = (xp.shape[2] - (kw - 1) * dw - 1) // sw + 1
    acc = None
    for p in range(kh):
        for q in range(kw):
            view = lax.slice(xp, (0, p * dh, q * dw, 0),
                             (batch, p * dh + (ho - 1) * sh + 1, q * dw + (wo - 1) * sw + 1,
                              xp.shape[3]), (1, sh, sw, 1))
            if groups == 1:
                term = flat_matmul(view, w[p, q], precision)
            else:
                # Rows flattened, as in flat_matmul: the kernel gradient contracts one dim.
                term = jnp.einsum("mgc,cgo->mgo",
                                  view.reshape(batch * ho * wo, groups, cin_g),
                                  w[p, q].reshape(cin_g, groups, cout // groups),
                                  precision=precision).reshape(batch, ho, wo, cout)
            acc = term if acc is None else acc + term
    return acc


def strided_pointwise_conv(x, w, strides, precision=None):
    """An unpadded 1x1 NHWC/HWIO convolution with stride (sh, sw) as the strided slice of
    the input it reads times the [Cin, Cout] kernel (ResNet's downsample shortcuts). XLA:CPU
    computes the kernel gradient of the strided conv as a convolution with rhs dilation at
    ~2 GFLOP/s; as the transpose of this matmul it is one plain matmul. Measured (2-core CPU,
    load 3-5, jax 0.10.2): forward + both gradients 1.2-1.7x less CPU time at ResNet-50's
    shortcut shapes; the resnet50 b16 128px train step 1.12x wall / 1.13x CPU time (``python -m
    experiments.profile_cpu --model resnet50 --compare --compare_without
    strided_pointwise_conv``)."""
    batch, h, wd, c = x.shape
    sh, sw = strides
    view = lax.slice(x, (0, 0, 0, 0), (batch, (h - 1) // sh * sh + 1, (wd - 1) // sw * sw + 1, c),
                     (1, sh, sw, 1))
    return flat_matmul(view, w.reshape(w.shape[2], w.shape[3]), precision)


#: Grouped convolutions with up to this many groups run as one dense convolution with a
#: block-diagonal kernel (G times the FLOPs at XLA's dense rate); more groups as taps_conv.
#: Measured (conv_cpu_bench, 2-core CPU, loaded): 3x3 at (16, 32, 32, 64), 8 groups, forward +
#: both gradients 6.4 s as XLA's grouped conv, 0.57 s as taps, 0.30 s block-diagonal; 32
#: groups at 128 channels 64 s / 1.5 s / 1.1 s; 64 groups of 1 channel 0.12 / 0.16 / 0.06 s.
BLOCK_DIAGONAL_MAX_GROUPS = 64


def block_diagonal_kernel(w, groups):
    """The dense [KH, KW, Cin, Cout] kernel equal to a grouped conv's [KH, KW, Cin/G, Cout] one:
    input group i feeds only output group i, every other block is zero."""
    kh, kw, cin_g, cout = w.shape
    blocks = w.reshape(kh, kw, cin_g, groups, cout // groups)
    dense = jnp.einsum("hwcgo,ig->hwicgo", blocks, jnp.eye(groups, dtype=w.dtype))
    return dense.reshape(kh, kw, groups * cin_g, cout)


def cpu_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
             dimension_numbers=None, feature_group_count=1, precision=None,
             preferred_element_type=None):
    """``lax.conv_general_dilated`` with the CPU path of the module docstring, per call.

    On CPU, for 2-D NHWC/HWIO convolutions without lhs dilation or ``preferred_element_type``:
    the calls :func:`matmul_conv` serves are a matmul, unpadded strided 1x1 convs
    :func:`strided_pointwise_conv`'s slice and matmul; grouped convolutions are one dense
    convolution with :func:`block_diagonal_kernel` (up to :data:`BLOCK_DIAGONAL_MAX_GROUPS`
    groups) or :func:`taps_conv`; dense ones stay XLA's (its kernel gradient measured 1.7-4x
    faster than taps_conv's per-tap matmuls at every ResNet/ConvNeXt/MobileNet shape tried, see
    ``conv_cpu_bench``). All plain JAX, so forward- and reverse-mode autodiff both work; same
    values within float32 round-off. Every other call, and every call on GPU/TPU, is
    ``lax.conv_general_dilated`` unchanged.
    """
    def stock():
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count=feature_group_count, precision=precision,
            preferred_element_type=preferred_element_type)

    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    served = (
        jax.default_backend() == "cpu" and lhs.ndim == 4
        and all(d in (None, 1) for d in tuple(lhs_dilation or ()))
        and preferred_element_type is None
        and (dimension_numbers is None
             or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc)
    )
    if not served:
        return stock()
    strides = tuple(int(s) for s in window_strides)
    dilation = tuple(int(d) for d in (rhs_dilation or (1, 1)))
    pads = _conv_pads(padding, lhs.shape[1:3], rhs.shape[:2], strides, dilation)
    if feature_group_count == 1 and dilation == (1, 1) and _matmul_serves(
            lhs.shape, rhs.shape, strides, pads):
        return matmul_conv(lhs, rhs, strides, pads, precision=precision)
    if (feature_group_count == 1 and rhs.shape[:2] == (1, 1) and strides != (1, 1)
            and pads == ((0, 0), (0, 0))):
        return strided_pointwise_conv(lhs, rhs, strides, precision)
    if feature_group_count == 1:
        return stock()
    if feature_group_count <= BLOCK_DIAGONAL_MAX_GROUPS:
        return lax.conv_general_dilated(
            lhs, block_diagonal_kernel(rhs, feature_group_count), strides, pads,
            rhs_dilation=dilation, dimension_numbers=_NHWC, precision=precision)
    return taps_conv(lhs, rhs, strides, pads, dilation, feature_group_count, precision)
