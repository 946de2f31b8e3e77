"""Large-kernel depthwise 2-D convolution: ``depthwise_conv2d(x, w, ...)`` (see ``api.py``)."""

from kernels_pallas.depthwise_conv2d.api import check_arguments, depthwise_conv2d
from kernels_pallas.depthwise_conv2d.reference import depthwise_conv2d_reference

__all__ = ["check_arguments", "depthwise_conv2d", "depthwise_conv2d_reference"]
