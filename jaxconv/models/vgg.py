"""VGG: ImageNet models with timm's structure and names, and two CIFAR variants.

Paper: Karen Simonyan, Andrew Zisserman, 2015 (ICLR), "Very Deep Convolutional Networks for
Large-Scale Image Recognition", arXiv:1409.1556 (configurations A, B, D, E = VGG-11/13/16/19).
CIFAR variants:
  * ``vgg16_bn_cifar``: Hao Li, Asim Kadav, Igor Durdanovic, Hanan Samet, Hans Peter Graf, 2017
    (ICLR), "Pruning Filters for Efficient ConvNets", arXiv:1608.08710, section 4.1 / Table 2:
    the 13 convs of VGG-16 with BatchNorm, then Linear 512 - BN - ReLU - Linear 10, no dropout;
    in the PyTorch form of Liu et al.'s re-implementation (Rethinking the Value of Network
    Pruning, arXiv:1810.05270): no conv bias, no last max pool, 2x2 average pooling.
  * ``vgg19_bn_cifar``: Zhuang Liu, Jianguo Li, Zhiqiang Shen, Gao Huang, Shoumeng Yan, Changshui
    Zhang, 2017 (ICCV), "Learning Efficient Convolutional Networks through Network Slimming",
    arXiv:1708.06519: the 16 convs of VGG-19 (no conv bias) with BatchNorm, no last max pool,
    global average pooling and one Linear 512 -> 10.

Structure: ``stages`` of 3x3 convs (+ BatchNorm) + ReLU, each stage closed by a 2x2 max pool
(``pool_last=False`` leaves the last one out), then a head:
  * ``imagenet``: timm's ``ConvMlp`` pre-logits (the paper's FC-4096 layers as a 7x7 conv and a
    1x1 conv, ReLU, dropout after the first) and global average pooling + dropout + linear.
    As in timm, a final map smaller than 7x7 is adaptive-average-pooled up to 7x7 first, and a
    larger one gives a spatial map that the head averages (the paper's dense evaluation).
  * ``linear``: global average pooling + linear (Liu et al.).
  * ``bn_mlp``: global average pooling + linear(``head_width``) + BN + ReLU + linear (Li et al.).

Parameter layout (``batch_stats`` mirrors the BatchNorms), 1:1 with timm's state_dict keys
(Flax ``features_{i}`` <-> timm ``features.{i}``, ``/`` <-> ``.``)::

    features_{i}        conv (kernel 3x3xCinxCout, bias unless conv_bias=False) or its BatchNorm;
                        i is the layer's index in timm's ``features`` nn.Sequential, which also
                        counts ReLUs and max pools (vgg11: 0 3 6 8 11 13 16 18; vgg11_bn: conv 0,
                        bn 1, conv 4, bn 5, ...)
    pre_logits/fc1      imagenet head: 7x7 conv 512 -> head_width (timm pre_logits.fc1)
    pre_logits/fc2      imagenet head: 1x1 conv head_width -> head_width
    head/fc             the classifier (kernel [C, num_classes], bias); bn_mlp also has
    head/fc1, head/bn   its hidden layer

Stage outputs (after each stage's max pool; strides 2/4/8/16/32 for the ImageNet models) are
sown as ``intermediates/stage{i}``. timm's ``features_only`` taps differ: they are taken before
each max pool (strides 1..16) plus the final pooled map.

Speed note: the pre-logits convs and the 3x3 convs on maps of at most 4x4 are computed as
matmuls on CPU (:func:`jaxconv.layers.conv2d`'s ``cpu_conv`` picks
:func:`jaxconv.layers.matmul_conv`, same results): XLA:CPU runs them 10-70x slower as
convolutions.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxconv.layers import batch_norm, canonical_dtype, conv2d, kaiming_normal_fan_out
from jaxconv.registry import register_model

__all__ = ["VGG", "ConvMlp", "adaptive_avg_pool"]

HEADS = ("imagenet", "linear", "bn_mlp")

#: Convolution widths per stage (Simonyan & Zisserman 2015, Table 1, configurations A/B/D/E).
STAGES = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}

#: timm's classifier init (VGG._initialize_weights): N(0, 0.01) weights, zero bias.
_linear_init = nn.initializers.normal(0.01)


def _pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out, in] averaging matrix of PyTorch's adaptive average pooling along one axis.

    Output i averages inputs floor(i * in / out) .. ceil((i + 1) * in / out) - 1.
    """
    matrix = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start, end = (i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool(x, output_size: tuple[int, int]):
    """``torch.nn.functional.adaptive_avg_pool2d`` for NHWC ``x`` (static shapes)."""
    (h, w), (out_h, out_w) = x.shape[1:3], output_size
    if (h, w) == (out_h, out_w):
        return x
    rows = jnp.asarray(_pool_matrix(h, out_h), x.dtype)
    cols = jnp.asarray(_pool_matrix(w, out_w), x.dtype)
    return jnp.einsum("oh,bhwc,pw->bopc", rows, x, cols)


def _conv3x3(features: int, use_bias: bool, dtype, name: str) -> nn.Conv:
    """:func:`jaxconv.layers.conv2d`'s 3x3 conv (padding 1, He fan-out init); on CPU a matmul
    on maps of at most 16 output pixels (:func:`jaxconv.layers.matmul_conv`)."""
    return conv2d(features, 3, padding=1, use_bias=use_bias, dtype=dtype,
                  kernel_init=kaiming_normal_fan_out, name=name)


class ConvMlp(nn.Module):
    """The paper's two FC-4096 layers as convolutions (timm ``ConvMlp``): 7x7 conv (no padding),
    ReLU, dropout, 1x1 conv, ReLU. Inputs smaller than 7x7 are adaptive-average-pooled to 7x7.
    On CPU the convs are computed by :func:`jaxconv.layers.matmul_conv`."""

    features: int = 4096
    kernel_size: int = 7
    drop_rate: float = 0.0
    dtype: Any = jnp.float32

    def _conv(self, kernel_size: int, name: str) -> nn.Conv:
        return conv2d(self.features, kernel_size, padding="VALID", use_bias=True,
                      dtype=self.dtype, kernel_init=kaiming_normal_fan_out, name=name)

    @nn.compact
    def __call__(self, x, train: bool = False):
        k = self.kernel_size
        if x.shape[1] < k or x.shape[2] < k:
            x = adaptive_avg_pool(x, (max(k, x.shape[1]), max(k, x.shape[2])))
        x = nn.relu(self._conv(k, "fc1")(x))
        x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
        return nn.relu(self._conv(1, "fc2")(x))


class _Head(nn.Module):
    """Global average pooling, [fc1-BN-ReLU], dropout, classifier (timm ``head``)."""

    num_classes: int
    hidden: int | None = None
    drop_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.mean(x, axis=(1, 2))
        if self.hidden is not None:
            x = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=jnp.float32,
                         kernel_init=_linear_init, name="fc1")(x)
            x = nn.relu(batch_norm(train, dtype=self.dtype, name="bn")(x))
        x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                        kernel_init=_linear_init, name="fc")(x)


class VGG(nn.Module):
    """VGG over NHWC inputs; returns float32 logits ``[B, num_classes]``.

    Fields:
      stages: conv widths per stage (:data:`STAGES` has the paper's configurations).
      use_batch_norm: BatchNorm after every conv (timm's ``*_bn`` models).
      conv_bias: convs have a bias (timm: always, also with BatchNorm).
      pool_last: close the last stage with a max pool too.
      head: ``imagenet`` | ``linear`` | ``bn_mlp`` (module docstring).
      head_width: hidden width of the imagenet / bn_mlp head (4096 / 512).
      num_classes, dtype (compute dtype; parameters are float32).
      drop_rate: classifier dropout (timm's placement: after pre_logits' first layer and before
        the final linear). timm's default is 0; the paper trained with 0.5.
      drop_path_rate: must be 0 (VGG has no residual branches); present for the common API.
    """

    stages: Sequence[Sequence[int]] = STAGES[16]
    use_batch_norm: bool = False
    conv_bias: bool = True
    pool_last: bool = True
    head: str = "imagenet"
    head_width: int = 4096
    num_classes: int = 1000
    dtype: Any = jnp.float32
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self):
        try:
            stages = tuple(tuple(int(w) for w in stage) for stage in self.stages)
        except (TypeError, ValueError):
            stages = ()
        if not stages or any(not s or min(s) <= 0 for s in stages):
            raise ValueError(f"stages must be non-empty sequences of positive conv widths, "
                             f"got {self.stages!r}")
        object.__setattr__(self, "stages", stages)
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {list(HEADS)}, got {self.head!r}")
        for field in ("head_width", "num_classes"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{field} must be a positive int, got {value!r}")
        rate = self.drop_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"drop_rate must be a float in [0, 1), got {rate!r}")
        if self.drop_path_rate != 0:
            raise ValueError(f"drop_path_rate must be 0.0 for VGG (no residual branches to "
                             f"drop), got {self.drop_path_rate!r}; use drop_rate for dropout")
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.asarray(x, self.dtype)
        index = 0  # position in timm's features nn.Sequential
        for stage, widths in enumerate(self.stages):
            for width in widths:
                x = _conv3x3(width, self.conv_bias, self.dtype, f"features_{index}")(x)
                index += 1
                if self.use_batch_norm:
                    x = batch_norm(train, dtype=self.dtype, name=f"features_{index}")(x)
                    index += 1
                x = nn.relu(x)
                index += 1
            if self.pool_last or stage < len(self.stages) - 1:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                index += 1
            self.sow("intermediates", f"stage{stage}", x)

        hidden = None
        if self.head == "imagenet":
            x = ConvMlp(self.head_width, drop_rate=self.drop_rate, dtype=self.dtype,
                        name="pre_logits")(x, train)
        elif self.head == "bn_mlp":
            hidden = self.head_width
        x = _Head(self.num_classes, hidden, self.drop_rate, self.dtype, name="head")(x, train)
        return jnp.asarray(x, jnp.float32)


# --------------------------------------------------------------------------------- registry

_PAPER = ("Simonyan & Zisserman 2015, Very Deep Convolutional Networks for Large-Scale Image "
          "Recognition, arXiv:1409.1556")
_LI_PAPER = "Li et al. 2017, Pruning Filters for Efficient ConvNets, arXiv:1608.08710"
_LIU_PAPER = ("Liu et al. 2017, Learning Efficient Convolutional Networks through Network "
              "Slimming, arXiv:1708.06519")


def _imagenet(depth: int, bn: bool, overrides: dict) -> VGG:
    return VGG(**{"stages": STAGES[depth], "use_batch_norm": bn, **overrides})


def _register_imagenet():
    return register_model(family="vgg", paper=_PAPER, input_size=(224, 224, 3), num_classes=1000)


@_register_imagenet()
def vgg11(**overrides) -> VGG:
    """VGG-11 (configuration A; timm structure), 132,863,336 params."""
    return _imagenet(11, False, overrides)


@_register_imagenet()
def vgg11_bn(**overrides) -> VGG:
    """VGG-11 with BatchNorm (timm structure), 132,868,840 params."""
    return _imagenet(11, True, overrides)


@_register_imagenet()
def vgg13(**overrides) -> VGG:
    """VGG-13 (configuration B; timm structure), 133,047,848 params."""
    return _imagenet(13, False, overrides)


@_register_imagenet()
def vgg13_bn(**overrides) -> VGG:
    """VGG-13 with BatchNorm (timm structure), 133,053,736 params."""
    return _imagenet(13, True, overrides)


@_register_imagenet()
def vgg16(**overrides) -> VGG:
    """VGG-16 (configuration D; timm structure), 138,357,544 params."""
    return _imagenet(16, False, overrides)


@_register_imagenet()
def vgg16_bn(**overrides) -> VGG:
    """VGG-16 with BatchNorm (timm structure), 138,365,992 params."""
    return _imagenet(16, True, overrides)


@_register_imagenet()
def vgg19(**overrides) -> VGG:
    """VGG-19 (configuration E; timm structure), 143,667,240 params."""
    return _imagenet(19, False, overrides)


@_register_imagenet()
def vgg19_bn(**overrides) -> VGG:
    """VGG-19 with BatchNorm (timm structure), 143,678,248 params."""
    return _imagenet(19, True, overrides)


@register_model(family="vgg", paper=_LI_PAPER, input_size=(32, 32, 3), num_classes=10)
def vgg16_bn_cifar(**overrides) -> VGG:
    """VGG-16-BN for CIFAR (Li et al. 2017: 13 conv-BN, FC 512-BN, FC 10), 14,987,722 params."""
    defaults = dict(stages=STAGES[16], use_batch_norm=True, conv_bias=False, pool_last=False,
                    head="bn_mlp", head_width=512, num_classes=10)
    return VGG(**{**defaults, **overrides})


@register_model(family="vgg", paper=_LIU_PAPER, input_size=(32, 32, 3), num_classes=10)
def vgg19_bn_cifar(**overrides) -> VGG:
    """VGG-19-BN for CIFAR (Liu et al. 2017: 16 conv-BN, no last pool, FC 10), 20,035,018 params."""
    defaults = dict(stages=STAGES[19], use_batch_norm=True, conv_bias=False, pool_last=False,
                    head="linear", num_classes=10)
    return VGG(**{**defaults, **overrides})
