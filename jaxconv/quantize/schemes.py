"""Quantization schemes: weight bits, weight granularity, activation calibration.

A scheme is a :class:`QuantConfig`; the named ones (``--scheme`` of ``experiments.quantize``)
are in :data:`SCHEMES`. Every field is checked when the config is made, so a bad value fails
before any model is built, naming the valid choices.
"""
from __future__ import annotations

import dataclasses

from jaxconv.models.checks import check_choice

__all__ = ["ACT_BITS", "BITS", "CALIBRATIONS", "GRANULARITIES", "QuantConfig", "SCHEMES",
           "get_scheme"]

#: Weight bit widths. Activations are always int8 (qwix's conv needs int8 x int8 operands;
#: 4-bit weights are stored as int4 and computed in an int8 container, values in [-7, 7]).
BITS = (8, 4)
ACT_BITS = 8
#: per_channel: one scale per output channel (the whitepaper's recommendation);
#: per_tensor: one scale per layer ("per-layer" in the whitepaper).
GRANULARITIES = ("per_channel", "per_tensor")
#: Static per-tensor activation ranges from the calibration batches: the largest |x|, a
#: percentile of |x|, or the clip that minimises the quantization MSE of each batch.
CALIBRATIONS = ("absmax", "percentile", "mse")


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """``bits``: weight bits (8 or 4); ``granularity``: weight scales; ``calibration``:
    activation ranges; ``percentile``: for ``calibration="percentile"``, in (50, 100]."""

    bits: int = 8
    granularity: str = "per_channel"
    calibration: str = "absmax"
    percentile: float = 99.99

    def __post_init__(self):
        check_choice("bits", self.bits, BITS)
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("calibration", self.calibration, CALIBRATIONS)
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)) \
                or not 50 < self.percentile <= 100:
            raise ValueError(f"percentile must be a number in (50, 100], got {self.percentile!r}")

    @property
    def name(self) -> str:
        return f"int{self.bits}_{self.granularity}"


#: The named schemes: int{bits}_{granularity}.
SCHEMES = {QuantConfig(b, g).name: QuantConfig(b, g) for b in BITS for g in GRANULARITIES}


def get_scheme(name: str, calibration: str = "absmax", percentile: float = 99.99) -> QuantConfig:
    """The named scheme with the given activation calibration; ValueError names the schemes."""
    if name not in SCHEMES:
        raise ValueError(f"scheme must be one of {sorted(SCHEMES)}, got {name!r}")
    return dataclasses.replace(SCHEMES[name], calibration=calibration, percentile=percentile)
