"""All-CNN-C for CIFAR (``allcnn_c``): pooling replaced by strided convolutions.

Paper: Jost Tobias Springenberg, Alexey Dosovitskiy, Thomas Brox, Martin Riedmiller, 2014,
"Striving for Simplicity: The All Convolutional Net", arXiv:1412.6806 (Table 2, "All-CNN-C").

Nine convolutions, all with bias and ReLU: 3x3 96, 3x3 96, 3x3 96 stride 2 | 3x3 192, 3x3 192,
3x3 192 stride 2 | 3x3 192 (valid: 8 -> 6), 1x1 192, 1x1 num_classes; then global average
pooling over the 6x6 class maps gives the logits. Dropout (section 3.1): 20% on the input and
50% after each strided conv (the layers that replace pooling), train mode only. The 3x3 convs pad
1 except the seventh, which is valid as in the table's 6x6 global pooling. One deliberate change:
the table's ReLU on the class maps is off by default (``class_map_relu``, see :class:`AllCNN`).

Parameter layout: ``conv1`` .. ``conv9``, each ``kernel`` [kh, kw, in, out] and ``bias``.
No BatchNorm (2014). Stage outputs (``intermediates/stage{i}``) are the last map of each
resolution: conv2 (stride 1), conv5 (stride 2), the class maps of conv9 (stride 4).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxconv.layers import canonical_dtype, conv2d
from jaxconv.models.checks import check_rate, positive_ints
from jaxconv.models.nin import _he_normal
from jaxconv.registry import register_model

__all__ = ["AllCNN"]

# (kernel, output channels (None = num_classes), stride, padding) of conv1..conv9.
_LAYERS = (
    (3, 96, 1, 1), (3, 96, 1, 1), (3, 96, 2, 1),
    (3, 192, 1, 1), (3, 192, 1, 1), (3, 192, 2, 1),
    (3, 192, 1, 0), (1, 192, 1, 0), (1, None, 1, 0),
)
_STAGE_ENDS = {2: 0, 5: 1, 9: 2}   # conv index (from 1) -> stage


class AllCNN(nn.Module):
    """All-CNN-C over NHWC inputs (32x32 CIFAR); float32 logits ``[B, num_classes]``.

    Fields:
      num_classes, dtype (compute dtype; parameters are float32).
      input_dropout_rate: dropout on the input image in train mode (0.2 in the paper).
      dropout_rate: dropout after each strided conv in train mode (0.5 in the paper).
      class_map_relu: ReLU on the class maps before pooling, as in Table 2 (logits >= 0).
        Off by default: a class whose maps turn negative everywhere then has a constant 0 logit
        and no gradient, and the whole net can get stuck there (the digits32 smoke test sat at
        loss ln 10 from the first steps with it on); False pools the raw maps (signed logits).
    """

    num_classes: int = 10
    dtype: Any = jnp.float32
    input_dropout_rate: float = 0.2
    dropout_rate: float = 0.5
    class_map_relu: bool = False

    def __post_init__(self):
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        positive_ints("num_classes", (self.num_classes,))
        check_rate("input_dropout_rate", self.input_dropout_rate)
        check_rate("dropout_rate", self.dropout_rate)
        if not isinstance(self.class_map_relu, bool):
            raise ValueError(f"class_map_relu must be True or False, got {self.class_map_relu!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.asarray(x, self.dtype)
        if self.input_dropout_rate > 0:
            x = nn.Dropout(self.input_dropout_rate)(x, deterministic=not train)
        for i, (k, features, stride, pad) in enumerate(_LAYERS, start=1):
            x = conv2d(features or self.num_classes, k, stride, padding=pad, use_bias=True,
                       dtype=self.dtype, kernel_init=_he_normal, name=f"conv{i}")(x)
            if features is not None or self.class_map_relu:
                x = nn.relu(x)
            if i in _STAGE_ENDS:
                self.sow("intermediates", f"stage{_STAGE_ENDS[i]}", x)
            if stride == 2 and self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        return jnp.asarray(jnp.mean(x, axis=(1, 2)), jnp.float32)


@register_model(
    family="allcnn",
    paper="Springenberg et al. 2014, Striving for Simplicity: The All Convolutional Net, "
          "arXiv:1412.6806",
    input_size=(32, 32, 3), num_classes=10,
)
def allcnn_c(**overrides) -> AllCNN:
    """All-CNN-C for CIFAR (Springenberg et al. Table 2: strided convs, no pooling), 1.37M params."""
    return AllCNN(**overrides)
