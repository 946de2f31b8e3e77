"""MobileNet v1 with timm's structure and names (``mobilenetv1_100``) and the paper's widths.

Paper: Andrew G. Howard, Menglong Zhu, Bo Chen, Dmitry Kalenichenko, Weijun Wang, Tobias
Weyand, Marco Andreetto, Hartwig Adam, 2017, "MobileNets: Efficient Convolutional Neural
Networks for Mobile Vision Applications", arXiv:1704.04861.

Body (paper Table 1): a 3x3/2 conv (32), then 13 depthwise-separable blocks (3x3 depthwise conv
BN ReLU6, 1x1 pointwise conv BN ReLU6) of widths 64, 128x2, 256x2, 512x6, 1024x2, global
average pooling and a linear classifier. As in timm: ReLU6 (the TF-slim release; the paper
writes ReLU), symmetric padding 1 (PyTorch; TF pads 'SAME'), and the blocks grouped into timm's
five stages (strides 2..32), whose outputs are sown as ``intermediates/stage{i}``.

The two multipliers of the paper (section 3.3, 3.4):
  * width multiplier alpha: the ``width_multiplier`` field; every layer's channels are
    ``alpha * c`` rounded to a multiple of 8 as timm does (exact for alpha = 0.25/0.5/0.75/1,
    registered as ``mobilenetv1_025/050/075/100``; timm itself registers only ``_100``/``_125``).
  * resolution multiplier rho: the model is fully convolutional with global pooling, so rho is
    simply the input size; :func:`resolution` gives ``224 * rho`` (the paper's 224/192/160/128
    are rho = 1, 6/7, 5/7, 4/7). Parameters do not depend on it; mult-adds scale with rho^2.

Parameter layout (``batch_stats`` mirrors the BatchNorms), 1:1 with timm's state_dict::

    conv_stem, bn1                        stem (timm ``conv_stem``, ``bn1``)
    blocks_{s}_{b}/conv_dw, bn1,          block b of stage s (timm ``blocks.{s}.{b}.conv_dw``...):
                  conv_pw, bn2            depthwise kernel [3, 3, C], pointwise [1, 1, C, C']
    classifier                            linear (kernel [C, num_classes], bias)
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxconv.layers import (DepthwiseConv2D, batch_norm, canonical_dtype, conv2d, dense,
                            kaiming_normal_fan_out)
from jaxconv.registry import register_model

__all__ = ["DepthwiseSeparable", "MobileNetV1", "resolution", "round_channels"]

#: (blocks, width, stride of the first block) per timm stage (paper Table 1).
STAGES = ((1, 64, 1), (2, 128, 2), (2, 256, 2), (6, 512, 2), (2, 1024, 2))
STEM_WIDTH = 32
#: The paper's input sizes (Table 7): rho = 1, 6/7, 5/7, 4/7 of 224.
PAPER_RESOLUTIONS = (224, 192, 160, 128)

#: He-normal over the 3x3 taps of one channel (fan_in = 9: DepthwiseConv2D calls it with the
#: grouped shape [3, 3, 1, C]; timm's fan_out // groups is the same 9).
_depthwise_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def round_channels(channels: int, multiplier: float, divisor: int = 8) -> int:
    """``channels * multiplier`` rounded to a multiple of ``divisor`` (timm's make_divisible:
    to nearest, at least ``divisor``, and never more than 10% below the exact value)."""
    exact = channels * multiplier
    rounded = max(divisor, int(exact + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * exact else rounded


def resolution(rho: float) -> int:
    """Input side for resolution multiplier ``rho`` in (0, 1]: ``round(224 * rho)``."""
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0 < rho <= 1:
        raise ValueError(f"rho (resolution multiplier) must be in (0, 1], got {rho!r}")
    return int(round(224 * rho))


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv (stride) - BN - ReLU6 - 1x1 pointwise conv - BN - ReLU6, no shortcut
    (timm ``DepthwiseSeparableConv`` with ``pw_act``, ``noskip``)."""

    features: int
    strides: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        # Padding 1 on both sides (PyTorch's), also at stride 2.
        x = DepthwiseConv2D(3, strides=self.strides, use_bias=False, dtype=self.dtype,
                            kernel_init=_depthwise_init, name="conv_dw")(x)
        x = nn.relu6(batch_norm(train, dtype=self.dtype, name="bn1")(x))
        # The pointwise conv is a matmul over pixels: conv2d's cpu_conv computes it as one on
        # CPU (XLA:CPU runs 1x1 convs on the small late-stage maps far slower; see
        # jaxconv.layers.matmul_conv).
        x = conv2d(self.features, 1, padding="VALID", dtype=self.dtype,
                   kernel_init=kaiming_normal_fan_out, name="conv_pw")(x)
        return nn.relu6(batch_norm(train, dtype=self.dtype, name="bn2")(x))


class MobileNetV1(nn.Module):
    """MobileNet v1 over NHWC inputs; returns float32 logits ``[B, num_classes]``.

    Fields:
      width_multiplier: the paper's alpha (channels of every layer scaled, rounded to 8).
      num_classes, dtype (compute dtype; parameters are float32).
      drop_rate: dropout before the classifier (timm's default 0).
      drop_path_rate: must be 0 (no residual branches); present for the common API.
    """

    width_multiplier: float = 1.0
    num_classes: int = 1000
    dtype: Any = jnp.float32
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self):
        alpha = self.width_multiplier
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
            raise ValueError(f"width_multiplier must be a positive float (the paper uses 0.25, "
                             f"0.5, 0.75, 1.0), got {alpha!r}")
        n = self.num_classes
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"num_classes must be a positive int, got {n!r}")
        rate = self.drop_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"drop_rate must be a float in [0, 1), got {rate!r}")
        if self.drop_path_rate != 0:
            raise ValueError(f"drop_path_rate must be 0.0 for MobileNet v1 (no residual branches "
                             f"to drop), got {self.drop_path_rate!r}; use drop_rate for dropout")
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        super().__post_init__()

    def block_for(self, stage: int):
        """The block class of ``stage`` (called as ``cls(features, strides=, dtype=, name=)``);
        variants override this (e.g. CondConv's pointwise convs in the late stages)."""
        return DepthwiseSeparable

    def widths(self) -> tuple[int, ...]:
        """Channels of the stem and of each stage after width scaling."""
        return tuple(round_channels(c, self.width_multiplier)
                     for c in (STEM_WIDTH, *(w for _, w, _ in STAGES)))

    @nn.compact
    def __call__(self, x, train: bool = False):
        stem_width, *stage_widths = self.widths()
        x = jnp.asarray(x, self.dtype)
        x = conv2d(stem_width, 3, 2, dtype=self.dtype, name="conv_stem")(x)
        x = nn.relu6(batch_norm(train, dtype=self.dtype, name="bn1")(x))
        for s, ((blocks, _, stride), width) in enumerate(zip(STAGES, stage_widths)):
            for b in range(blocks):
                x = self.block_for(s)(width, strides=stride if b == 0 else 1, dtype=self.dtype,
                                      name=f"blocks_{s}_{b}")(x, train)
            self.sow("intermediates", f"stage{s}", x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
        x = dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
        return jnp.asarray(x, jnp.float32)


# --------------------------------------------------------------------------------- registry


def _register():
    return register_model(
        family="mobilenet",
        paper="Howard et al. 2017, MobileNets: Efficient Convolutional Neural Networks for "
              "Mobile Vision Applications, arXiv:1704.04861",
        input_size=(224, 224, 3),
        num_classes=1000,
    )


@_register()
def mobilenetv1_100(**overrides) -> MobileNetV1:
    """1.0 MobileNet-224 (timm structure and names), 4,231,976 params."""
    return MobileNetV1(**{"width_multiplier": 1.0, **overrides})


@_register()
def mobilenetv1_075(**overrides) -> MobileNetV1:
    """0.75 MobileNet (width multiplier 0.75; timm-style), 2,585,560 params."""
    return MobileNetV1(**{"width_multiplier": 0.75, **overrides})


@_register()
def mobilenetv1_050(**overrides) -> MobileNetV1:
    """0.5 MobileNet (width multiplier 0.5; timm-style), 1,331,592 params."""
    return MobileNetV1(**{"width_multiplier": 0.5, **overrides})


@_register()
def mobilenetv1_025(**overrides) -> MobileNetV1:
    """0.25 MobileNet (width multiplier 0.25; timm-style), 470,072 params."""
    return MobileNetV1(**{"width_multiplier": 0.25, **overrides})
