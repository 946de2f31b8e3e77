"""Reusable building blocks shared by the model families."""

from jaxconv.layers import reparam
from jaxconv.layers.attention import MultiHeadAttention, RelativePositionBias
from jaxconv.layers.binary import BinaryConv2D
from jaxconv.layers.ckconv import CKConv, KernelNet
from jaxconv.layers.condconv import CondConv2D
from jaxconv.layers.conv import (
    conv2d,
    dense,
    kaiming_normal_fan_out,
    loop_safe_conv,
    matmul_conv,
    torch_linear_init,
)
from jaxconv.layers.dcls import DclsDepthwiseConv2D
from jaxconv.layers.depthwise import DepthwiseConv2D
from jaxconv.layers.dtypes import COMPUTE_DTYPES, canonical_dtype
from jaxconv.layers.dynamic_conv import DynamicConv, LightweightConv
from jaxconv.layers.eca import ECA, eca_kernel_size
from jaxconv.layers.hyena import HyenaFilter, HyenaOperator
from jaxconv.layers.long_conv import LongConv, SGConv
from jaxconv.layers.neighborhood_attention import NeighborhoodAttention2D
from jaxconv.layers.norm import BN_EPSILON, BN_MOMENTUM, batch_norm
from jaxconv.layers.regularization import DropPath, drop_path_rates
from jaxconv.layers.reparam import ConvBN, reparameterize
from jaxconv.layers.tcn import ByteNetBlock, DilatedConv1D, TCNBlock

__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "BinaryConv2D",
    "ByteNetBlock",
    "COMPUTE_DTYPES",
    "CKConv",
    "CondConv2D",
    "ConvBN",
    "DclsDepthwiseConv2D",
    "DepthwiseConv2D",
    "DilatedConv1D",
    "DropPath",
    "DynamicConv",
    "ECA",
    "HyenaFilter",
    "HyenaOperator",
    "KernelNet",
    "LightweightConv",
    "LongConv",
    "MultiHeadAttention",
    "NeighborhoodAttention2D",
    "RelativePositionBias",
    "TCNBlock",
    "SGConv",
    "batch_norm",
    "canonical_dtype",
    "conv2d",
    "dense",
    "drop_path_rates",
    "eca_kernel_size",
    "kaiming_normal_fan_out",
    "loop_safe_conv",
    "matmul_conv",
    "reparam",
    "reparameterize",
    "torch_linear_init",
]
