"""Formulation thresholds and Pallas block sizes for fft_conv, per device kind.

Tables map device-kind prefixes to validated frozen dataclasses
(``kernels_pallas.core.lookup_tuning``). Only the CPU entry is measured (``python -m
kernels_pallas.bench fft_conv``, rows in kernels_pallas/results/fft_conv_cpu.csv); the TPU/GPU
entries are starting points from the hardware limits noted beside them, never timed.
"""
from __future__ import annotations

import dataclasses

from kernels_pallas.core import lookup_tuning


def _positive(owner: str, **fields: int) -> None:
    for name, value in fields.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}")


@dataclasses.dataclass(frozen=True)
class XlaPlan:
    """Which pure-XLA formulation ``implementation="xla"`` uses: the direct sum of shifted slices
    (``reference.direct_conv``; cost ~Lk per output) for kernels shorter than ``fft_min_taps``
    taps, else the FFT (cost ~log N per output, independent of Lk)."""
    fft_min_taps: int

    def __post_init__(self):
        _positive("XlaPlan", fft_min_taps=self.fft_min_taps)

    def use_fft(self, taps: int) -> bool:
        return taps >= self.fft_min_taps


#: Placeholder until the CPU crossover is measured.
XLA_PLANS = {"default": XlaPlan(fft_min_taps=16)}


def xla_plan() -> XlaPlan:
    return lookup_tuning(XLA_PLANS)
