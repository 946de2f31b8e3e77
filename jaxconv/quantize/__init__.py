"""Quantization (PTQ, QAT, data-free calibration) on google's qwix, and deploy export."""

from jaxconv.quantize.fold import find_conv_bn_pairs, fold_batch_norms, prepare_for_quantization
from jaxconv.quantize.ptq import QuantizedModel, calibrate, clip_range, quantize, xla_routing
from jaxconv.quantize.schemes import (
    BITS,
    CALIBRATIONS,
    GRANULARITIES,
    SCHEMES,
    QuantConfig,
    get_scheme,
)

__all__ = ["BITS", "CALIBRATIONS", "GRANULARITIES", "QuantConfig", "QuantizedModel", "SCHEMES",
           "calibrate", "clip_range", "find_conv_bn_pairs", "fold_batch_norms", "get_scheme",
           "prepare_for_quantization", "quantize", "xla_routing"]
