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


#: Measured on the 2-core CPU, float32, H = 64 (rows in kernels_pallas/results/fft_conv_cpu.csv,
#: "crossover" notes; ``--plans 1/1,1000000/1000000``; the machine was shared by ~7 jobs, load
#: average ~20, so single timings varied by 2x and more). Differentiated calls: the FFT won at
#: every kernel length tried, 2 .. 64 taps at L = 1024 and 8192 (at L = 8192: Lk = 2 99 vs 161 ms,
#: Lk = 4 53 vs 307 ms, Lk = 64 84 vs 3556 ms), because JAX's gradient of the direct sum is slow.
#: Plain forwards at B = 8, L = 4096: the two were within noise from 4 to 128 taps (FFT 86-144 ms,
#: direct 97-131 ms); at L = 1024, Lk = 2 the direct forward took 1.0 vs 1.8 ms. So: the direct
#: sum only for plain forwards of kernels under 4 taps.
XLA_PLANS = {"default": XlaPlan(forward_fft_min_taps=4, train_fft_min_taps=1)}


def xla_plan() -> XlaPlan:
    return lookup_tuning(XLA_PLANS)
