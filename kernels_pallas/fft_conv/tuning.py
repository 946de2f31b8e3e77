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


@dataclasses.dataclass(frozen=True)
class TpuBlocks:
    """Mosaic TPU kernel limits (``pallas_tpu.py``): the VMEM a program may use. Channels go
    128 lanes per program; the transform length sets the rest (``pallas_tpu.vmem_bytes``)."""
    vmem_limit_bytes: int = 48 * 1024 * 1024

    def __post_init__(self):
        _positive("TpuBlocks", vmem_limit_bytes=self.vmem_limit_bytes)


#: 48 MiB: below the 64 MiB per core of v7x (v5e/v6e have 128 MiB). Untimed.
TPU_BLOCKS = {"default": TpuBlocks()}


def tpu_blocks() -> TpuBlocks:
    return lookup_tuning(TPU_BLOCKS)


#: Placeholder until the CPU crossover is measured.
XLA_PLANS = {"default": XlaPlan(fft_min_taps=16)}


def xla_plan() -> XlaPlan:
    return lookup_tuning(XLA_PLANS)
