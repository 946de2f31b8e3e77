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
    """Which pure-XLA formulation ``implementation="xla"`` (and ``None``) uses, by kernel
    length: the direct sum of shifted slices (``reference.direct_conv``; cost ~Lk per output)
    below the threshold, the FFT (cost ~log N per output, whatever Lk) from it on.
    ``forward_fft_min_taps`` applies to calls that are not differentiated,
    ``train_fft_min_taps`` to the forward and backward of differentiated ones (``custom_vjp``
    runs its forward rule only under differentiation). They differ because JAX's gradient of
    the direct sum is far slower than its forward, while the FFT's backward reuses the spectra.
    """
    forward_fft_min_taps: int
    train_fft_min_taps: int

    def __post_init__(self):
        _positive("XlaPlan", forward_fft_min_taps=self.forward_fft_min_taps,
                  train_fft_min_taps=self.train_fft_min_taps)
        if self.train_fft_min_taps > self.forward_fft_min_taps:
            raise ValueError("XlaPlan.train_fft_min_taps must be <= forward_fft_min_taps (a "
                             f"differentiated call uses the FFT whenever a plain one does), "
                             f"got {self.train_fft_min_taps} > {self.forward_fft_min_taps}")

    def choose(self, taps: int) -> tuple[bool, bool]:
        """(forward uses FFT, differentiated call uses FFT) for a kernel of ``taps`` taps."""
        return taps >= self.forward_fft_min_taps, taps >= self.train_fft_min_taps


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
XLA_PLANS = {"default": XlaPlan(forward_fft_min_taps=16, train_fft_min_taps=8)}


def xla_plan() -> XlaPlan:
    return lookup_tuning(XLA_PLANS)
