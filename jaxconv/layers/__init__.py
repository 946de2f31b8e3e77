"""Reusable building blocks shared by the model families."""

from jaxconv.layers.conv import (
    conv2d,
    dense,
    kaiming_normal_fan_out,
    loop_safe_conv,
    matmul_conv,
    torch_linear_init,
)
from jaxconv.layers.dtypes import COMPUTE_DTYPES, canonical_dtype
from jaxconv.layers.norm import BN_EPSILON, BN_MOMENTUM, batch_norm
from jaxconv.layers.regularization import DropPath, drop_path_rates

__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "COMPUTE_DTYPES",
    "DropPath",
    "batch_norm",
    "canonical_dtype",
    "conv2d",
    "dense",
    "drop_path_rates",
    "kaiming_normal_fan_out",
    "loop_safe_conv",
    "matmul_conv",
    "torch_linear_init",
]
from jaxconv.layers.depthwise import DepthwiseConv2D  # noqa: E402  (issue 5)

__all__ += ["DepthwiseConv2D"]
from jaxconv.layers.dcls import DclsDepthwiseConv2D  # noqa: E402  (issue 6)

__all__ += ["DclsDepthwiseConv2D"]
from jaxconv.layers import reparam  # noqa: E402  (issue 6: structural re-parameterization)
from jaxconv.layers.reparam import ConvBN, reparameterize  # noqa: E402

__all__ += ["ConvBN", "reparam", "reparameterize"]
from jaxconv.layers.eca import ECA, eca_kernel_size  # noqa: E402  (issue 6: ECA)

__all__ += ["ECA", "eca_kernel_size"]
from jaxconv.layers.attention import MultiHeadAttention, RelativePositionBias  # noqa: E402  (issue 7)

__all__ += ["MultiHeadAttention", "RelativePositionBias"]
from jaxconv.layers.neighborhood_attention import NeighborhoodAttention2D  # noqa: E402  (issue 7)

__all__ += ["NeighborhoodAttention2D"]
