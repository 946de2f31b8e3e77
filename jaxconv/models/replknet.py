"""RepLKNet (Ding, Zhang, Han, Ding 2022, Scaling Up Your Kernels to 31x31: Revisiting Large
Kernel Design in CNNs, arXiv:2203.06717).

A ConvNet of depthwise large kernels (31x31 in stage 1 of RepLKNet-31B) trained with a parallel
5x5 depthwise branch, each followed by BatchNorm, that re-parameterization merges into the large
kernel for inference (:func:`jaxconv.layers.reparam.reparameterize`). timm has no RepLKNet; the
parameter names follow the authors' PyTorch code (``stem.0.conv.weight`` ->
``stem_0/conv/kernel``, ``stages.2.blocks.5.large_kernel.lkb_origin.bn`` ->
``stages_2_blocks_5/large_kernel/lkb_origin/bn``; BatchNorm ``weight`` -> ``scale``).

Parameter layout (training form; ``batch_stats`` mirrors every ``bn``)::

    stem_0..stem_3                ConvBN (conv, bn): 3x3/2 dense, 3x3 dw, 1x1, 3x3/2 dw; ReLU
    stages_{s}_blocks_{2j}        RepLKBlock: prelkb_bn, pw1 (ConvBN 1x1, ReLU),
                                  large_kernel {lkb_origin, small_conv} (ConvBN dw KxK and 5x5),
                                  ReLU, pw2 (ConvBN 1x1); + shortcut
    stages_{s}_blocks_{2j+1}      ConvFFN: preffn_bn, pw1 (ConvBN 1x1, x4), GELU, pw2 (ConvBN)
    transitions_{s}_0, _1         ConvBN 1x1 (widen) and ConvBN 3x3/2 dw, each with ReLU
    norm, head                    BatchNorm, global average pool, Dense

Deploy form (``deploy=True``, what ``reparameterize`` returns): every ConvBN is one conv with a
bias (``conv``); ``large_kernel`` is one depthwise conv ``lkb_reparam`` (the 5x5 kernel
zero-padded into the large one); the pre-BNs are folded into the following 1x1 convs and
``norm`` into ``head`` (exact: a 1x1 conv / average pool mixes no positions). No BatchNorm is
left. The paper's parameter counts are of the inference structure.

Stage outputs (``intermediates/stage{i}``): the output of stage i, before the transition
(strides 4/8/16/32 with the ImageNet stem). Every depthwise conv is a
:class:`jaxconv.layers.DepthwiseConv2D`, whose ``implementation`` is the model field.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxconv.layers import DropPath, batch_norm, canonical_dtype, dense, drop_path_rates
from jaxconv.layers.conv import exact_gelu
from jaxconv.layers.depthwise import DepthwiseConv2D
from jaxconv.layers.reparam import (
    ConvBN,
    fold_batch_norm_into_next,
    pad_kernel,
)
from jaxconv.registry import register_model
from kernels_pallas import IMPLEMENTATIONS

__all__ = ["ConvFFN", "RepLKBlock", "RepLKNet", "ReparamLargeKernelConv"]

PAPER = ("Ding et al. 2022, Scaling Up Your Kernels to 31x31: Revisiting Large Kernel Design "
         "in CNNs, arXiv:2203.06717")
STEM_STRIDES = (1, 2, 4)


def _odd_kernel(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ValueError(f"{field} must be an odd positive int (so kernels centre), got "
                         f"{value!r}")
    return value


class ReparamLargeKernelConv(nn.Module):
    """Depthwise KxK conv-BN + depthwise small-kernel conv-BN, summed (the paper's Fig. 2);
    deploy: one depthwise KxK conv with bias, ``lkb_reparam``.

    The small branch exists only when ``small_kernel`` is not None and at most ``kernel_size``
    (as in the authors' code; a 3x3 large kernel in a kernel-size sweep has none).
    """

    kernel_size: int
    small_kernel: int | None = 5
    deploy: bool = False
    dtype: Any = jnp.float32
    implementation: str | None = None

    def __post_init__(self):
        _odd_kernel("kernel_size", self.kernel_size)
        if self.small_kernel is not None:
            _odd_kernel("small_kernel", self.small_kernel)
        super().__post_init__()

    @property
    def has_small_branch(self) -> bool:
        return self.small_kernel is not None and self.small_kernel <= self.kernel_size

    def _dw(self, kernel_size, name):
        return ConvBN(None, kernel_size, depthwise=True, deploy=self.deploy, dtype=self.dtype,
                      implementation=self.implementation, name=name)

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.deploy:
            return DepthwiseConv2D(self.kernel_size, dtype=self.dtype,
                                   implementation=self.implementation, name="lkb_reparam")(x)
        out = self._dw(self.kernel_size, "lkb_origin")(x, train)
        if self.has_small_branch:
            out = out + self._dw(self.small_kernel, "small_conv")(x, train)
        return out

    def deploy_variables(self, variables):
        # The ConvBN branches are already folded (conv with bias): pad and sum them.
        params = variables["params"]
        kernel = params["lkb_origin"]["conv"]["kernel"]
        bias = params["lkb_origin"]["conv"]["bias"]
        if self.has_small_branch:
            kernel = kernel + pad_kernel(params["small_conv"]["conv"]["kernel"],
                                         self.kernel_size)
            bias = bias + params["small_conv"]["conv"]["bias"]
        return {"params": {"lkb_reparam": {"kernel": kernel, "bias": bias}}}


def _fold_pre_bn(variables, bn_name: str, conv_name: str):
    """Deploy params of a block whose ``bn_name`` BatchNorm precedes the 1x1 ConvBN
    ``conv_name`` (already folded to a conv with bias): the BN goes into that conv."""
    params = dict(variables["params"])
    bn_params = params.pop(bn_name)
    conv = params[conv_name]["conv"]
    kernel, bias = fold_batch_norm_into_next(conv["kernel"], conv["bias"], bn_params,
                                             variables["batch_stats"][bn_name])
    params[conv_name] = {"conv": {"kernel": kernel, "bias": bias}}
    return {"params": params}


class RepLKBlock(nn.Module):
    """BN, 1x1 conv-BN-ReLU, large-kernel depthwise conv (re-parameterizable), ReLU,
    1x1 conv-BN, + shortcut (with drop path)."""

    dw_channels: int
    kernel_size: int
    small_kernel: int | None = 5
    drop_path_rate: float = 0.0
    deploy: bool = False
    dtype: Any = jnp.float32
    implementation: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = x
        if not self.deploy:
            out = batch_norm(train, dtype=self.dtype, name="prelkb_bn")(out)
        out = nn.relu(self._pw(self.dw_channels, "pw1")(out, train))
        out = ReparamLargeKernelConv(self.kernel_size, self.small_kernel, deploy=self.deploy,
                                     dtype=self.dtype, implementation=self.implementation,
                                     name="large_kernel")(out, train)
        out = self._pw(x.shape[-1], "pw2")(nn.relu(out), train)
        return x + DropPath(self.drop_path_rate)(out, deterministic=not train)

    def _pw(self, features, name):
        return ConvBN(features, 1, deploy=self.deploy, dtype=self.dtype, name=name)

    def deploy_variables(self, variables):
        return _fold_pre_bn(variables, "prelkb_bn", "pw1")


class ConvFFN(nn.Module):
    """BN, 1x1 conv-BN (x ``ffn_ratio``), GELU, 1x1 conv-BN, + shortcut (with drop path)."""

    internal_channels: int
    drop_path_rate: float = 0.0
    deploy: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = x
        if not self.deploy:
            out = batch_norm(train, dtype=self.dtype, name="preffn_bn")(out)
        out = ConvBN(self.internal_channels, 1, deploy=self.deploy, dtype=self.dtype,
                     name="pw1")(out, train)
        out = exact_gelu(out)  # PyTorch's nn.GELU (erf)
        out = ConvBN(x.shape[-1], 1, deploy=self.deploy, dtype=self.dtype, name="pw2")(out, train)
        return x + DropPath(self.drop_path_rate)(out, deterministic=not train)

    def deploy_variables(self, variables):
        return _fold_pre_bn(variables, "preffn_bn", "pw1")


class RepLKNet(nn.Module):
    """RepLKNet over NHWC inputs; returns float32 logits ``[B, num_classes]``.

    Fields:
      large_kernel_sizes, layers, channels: per stage, the depthwise kernel size, the number of
        (RepLKBlock, ConvFFN) pairs and the width.
      kernel_size: if set, every stage uses this large kernel (the knob of kernel-size sweeps);
        overrides ``large_kernel_sizes``.
      small_kernel: the parallel small depthwise kernel merged into the large one (None: none).
      dw_ratio: RepLKBlock's depthwise width / stage width. ffn_ratio: ConvFFN's expansion.
      stem_stride: total stride of the stem, 4 (the paper's, for 224x224), 2 or 1 (small
        images: the stride-2 convs of the stem become stride 1).
      num_classes, dtype (compute dtype; parameters float32), drop_path_rate (linear over the
        blocks, a RepLKBlock and its ConvFFN share one rate, as in the authors' code).
      implementation: depthwise conv path (None, "xla", "pallas"; see DepthwiseConv2D).
      deploy: the re-parameterized inference form (see the module docstring); build it with
        :func:`jaxconv.layers.reparam.reparameterize`.
    """

    large_kernel_sizes: Sequence[int] = (31, 29, 27, 13)
    layers: Sequence[int] = (2, 2, 18, 2)
    channels: Sequence[int] = (128, 256, 512, 1024)
    kernel_size: int | None = None
    small_kernel: int | None = 5
    dw_ratio: float = 1.0
    ffn_ratio: float = 4.0
    stem_stride: int = 4
    num_classes: int = 1000
    dtype: Any = jnp.float32
    drop_path_rate: float = 0.0
    implementation: str | None = None
    deploy: bool = False

    def __post_init__(self):
        for field in ("large_kernel_sizes", "layers", "channels"):
            value = getattr(self, field)
            try:
                value = tuple(value)
            except TypeError:
                value = ()
            if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                    for v in value):
                raise ValueError(f"{field} must be a non-empty sequence of positive ints, got "
                                 f"{getattr(self, field)!r}")
            object.__setattr__(self, field, value)
        if not len(self.large_kernel_sizes) == len(self.layers) == len(self.channels):
            raise ValueError(f"large_kernel_sizes {self.large_kernel_sizes}, layers "
                             f"{self.layers} and channels {self.channels} must have equal length")
        for k in self.large_kernel_sizes:
            _odd_kernel("large_kernel_sizes", k)
        if self.kernel_size is not None:
            _odd_kernel("kernel_size", self.kernel_size)
        if self.small_kernel is not None:
            _odd_kernel("small_kernel", self.small_kernel)
        for field in ("dw_ratio", "ffn_ratio"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{field} must be a positive number, got {value!r}")
        if self.stem_stride not in STEM_STRIDES:
            raise ValueError(f"stem_stride must be one of {list(STEM_STRIDES)}, got "
                             f"{self.stem_stride!r}")
        if (isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
                or self.num_classes <= 0):
            raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}")
        rate = self.drop_path_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"drop_path_rate must be a float in [0, 1), got {rate!r}")
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {list(IMPLEMENTATIONS)}, got "
                             f"{self.implementation!r}")
        if not isinstance(self.deploy, bool):
            raise ValueError(f"deploy must be a bool, got {self.deploy!r}")
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        super().__post_init__()

    @property
    def stage_kernel_sizes(self) -> tuple[int, ...]:
        if self.kernel_size is not None:
            return (self.kernel_size,) * len(self.layers)
        return self.large_kernel_sizes

    def _conv_bn(self, features, kernel_size, strides=1, *, depthwise=False, name):
        return ConvBN(features, kernel_size, strides, depthwise=depthwise, deploy=self.deploy,
                      dtype=self.dtype, implementation=self.implementation, name=name)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.asarray(x, self.dtype)
        width = self.channels[0]
        s0, s3 = (2 if self.stem_stride >= 2 else 1), (2 if self.stem_stride == 4 else 1)
        x = nn.relu(self._conv_bn(width, 3, s0, name="stem_0")(x, train))
        x = nn.relu(self._conv_bn(width, 3, depthwise=True, name="stem_1")(x, train))
        x = nn.relu(self._conv_bn(width, 1, name="stem_2")(x, train))
        x = nn.relu(self._conv_bn(width, 3, s3, depthwise=True, name="stem_3")(x, train))

        rates = drop_path_rates(self.drop_path_rate, sum(self.layers))
        first = 0
        last = len(self.layers) - 1
        for s, (n, width, k) in enumerate(zip(self.layers, self.channels,
                                              self.stage_kernel_sizes)):
            for j in range(n):
                x = RepLKBlock(int(width * self.dw_ratio), k, self.small_kernel,
                               rates[first + j], deploy=self.deploy, dtype=self.dtype,
                               implementation=self.implementation,
                               name=f"stages_{s}_blocks_{2 * j}")(x, train)
                x = ConvFFN(int(width * self.ffn_ratio), rates[first + j], deploy=self.deploy,
                            dtype=self.dtype, name=f"stages_{s}_blocks_{2 * j + 1}")(x, train)
            first += n
            self.sow("intermediates", f"stage{s}", x)
            if s < last:
                nxt = self.channels[s + 1]
                x = nn.relu(self._conv_bn(nxt, 1, name=f"transitions_{s}_0")(x, train))
                x = nn.relu(self._conv_bn(nxt, 3, 2, depthwise=True,
                                          name=f"transitions_{s}_1")(x, train))

        if not self.deploy:
            x = batch_norm(train, dtype=self.dtype, name="norm")(x)
        x = jnp.mean(x, axis=(1, 2))
        return jnp.asarray(dense(self.num_classes, dtype=self.dtype, name="head")(x),
                           jnp.float32)

    def deploy_variables(self, variables):
        """The final BatchNorm commutes with average pooling and folds into the head."""
        params = dict(variables["params"])
        kernel, bias = fold_batch_norm_into_next(params["head"]["kernel"], params["head"]["bias"],
                                                 params.pop("norm"),
                                                 variables["batch_stats"]["norm"])
        params["head"] = {"kernel": kernel, "bias": bias}
        return {**{c: t for c, t in variables.items() if c not in ("params", "batch_stats")},
                "params": params}


# --------------------------------------------------------------------------------- registry


@register_model(family="replknet", paper=PAPER, input_size=(224, 224, 3), num_classes=1000)
def replknet_31b(**overrides) -> RepLKNet:
    """RepLKNet-31B: kernels (31, 29, 27, 13), widths 128..1024, (2, 2, 18, 2) block pairs."""
    return RepLKNet(**overrides)


@register_model(family="replknet", paper=PAPER, input_size=(32, 32, 3), num_classes=10)
def replknet_tiny_cifar(**overrides) -> RepLKNet:
    """A 3-stage RepLKNet for 32x32 images (widths 32/64/128, one block pair each, stem
    stride 1, kernel 13 everywhere): the kernel-size sweep's model (override kernel_size)."""
    fields = dict(large_kernel_sizes=(13, 13, 13), layers=(1, 1, 1), channels=(32, 64, 128),
                  stem_stride=1, num_classes=10)
    return RepLKNet(**{**fields, **overrides})
