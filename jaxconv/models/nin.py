"""Network in Network for CIFAR-10 (``nin_cifar``).

Paper: Min Lin, Qiang Chen, Shuicheng Yan, 2013, "Network In Network", arXiv:1312.4400.

Three mlpconv blocks (a spatial conv followed by two 1x1 convs, the "micro MLP", every conv with
bias and ReLU), max pooling 3x3/2 after the first and average pooling 3x3/2 after the second,
each followed by dropout; the last mlpconv outputs one map per class and global average pooling
turns the maps into logits (no fully connected layer). Widths follow the authors' released
CIFAR-10 model (cuda-convnet/Caffe, referenced from the paper): 5x5 192 - 160 - 96 | 5x5 192 -
192 - 192 | 3x3 192 - 192 - num_classes; its pools are PyTorch's ``ceil_mode=True`` windows
(32 -> 16 -> 8), written here as (0, 1) padding, the average excluding the pad. The paper's
text calls both pools max pooling; the released model averages in the second. One deliberate
change: the released model's ReLU on the class maps is off by default (``class_map_relu``, see
:class:`NiN`).

Parameter layout: ``conv1 cccp1 cccp2 conv2 cccp3 cccp4 conv3 cccp5 cccp6`` (the released
model's layer names), each ``kernel`` [kh, kw, in, out] and ``bias``. No BatchNorm (2013).
Stage outputs (``intermediates/stage{i}``) are the three mlpconv outputs before pooling
(strides 1, 2, 4); the last one is the class maps.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxconv.layers import canonical_dtype, conv2d
from jaxconv.models.checks import check_rate, positive_ints
from jaxconv.registry import register_model

__all__ = ["NiN"]

#: He et al. 2015 normal init, fan_in mode: keeps the unnormalised ReLU stack's scale.
_he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")

# (name, kernel size, output channels) per mlpconv block; None = num_classes.
_BLOCKS = (
    (("conv1", 5, 192), ("cccp1", 1, 160), ("cccp2", 1, 96)),
    (("conv2", 5, 192), ("cccp3", 1, 192), ("cccp4", 1, 192)),
    (("conv3", 3, 192), ("cccp5", 1, 192), ("cccp6", 1, None)),
)


class NiN(nn.Module):
    """Network in Network over NHWC inputs (32x32 CIFAR); float32 logits ``[B, num_classes]``.

    Fields:
      num_classes, dtype (compute dtype; parameters are float32).
      dropout_rate: dropout after the first two pools in train mode (0.5 in the paper).
      class_map_relu: ReLU on the final class maps before pooling, as in the authors' model
        (logits are then >= 0). Off by default: a class whose maps turn negative everywhere
        then has a constant 0 logit and no gradient (see :class:`jaxconv.models.allcnn.AllCNN`);
        False pools the raw maps (signed logits).
    """

    num_classes: int = 10
    dtype: Any = jnp.float32
    dropout_rate: float = 0.5
    class_map_relu: bool = False

    def __post_init__(self):
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        positive_ints("num_classes", (self.num_classes,))
        check_rate("dropout_rate", self.dropout_rate)
        if not isinstance(self.class_map_relu, bool):
            raise ValueError(f"class_map_relu must be True or False, got {self.class_map_relu!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.asarray(x, self.dtype)
        ceil_pad = ((0, 1), (0, 1))
        for i, block in enumerate(_BLOCKS):
            for name, k, features in block:
                x = conv2d(features or self.num_classes, k, padding=k // 2, use_bias=True,
                           dtype=self.dtype, kernel_init=_he_normal, name=name)(x)
                if features is not None or self.class_map_relu:
                    x = nn.relu(x)
            self.sow("intermediates", f"stage{i}", x)
            if i == 0:
                x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=ceil_pad)
            elif i == 1:
                x = nn.avg_pool(x, (3, 3), strides=(2, 2), padding=ceil_pad,
                                count_include_pad=False)
            if i < 2 and self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        return jnp.asarray(jnp.mean(x, axis=(1, 2)), jnp.float32)


@register_model(family="nin", paper="Lin et al. 2013, Network In Network, arXiv:1312.4400",
                input_size=(32, 32, 3), num_classes=10)
def nin_cifar(**overrides) -> NiN:
    """Network in Network for CIFAR-10 (3 mlpconv blocks, global average pooling), 0.97M params."""
    return NiN(**overrides)
