"""Long (FFT) convolution along a sequence: ``fft_conv(u, k, ...)`` (definition in ``api.py``)."""

from kernels_pallas.fft_conv.api import check_arguments, fft_conv
from kernels_pallas.fft_conv.reference import fft_conv_reference

__all__ = ["check_arguments", "fft_conv", "fft_conv_reference"]
