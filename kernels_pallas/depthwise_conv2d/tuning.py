"""Block sizes and formulation thresholds for depthwise_conv2d, per device kind.

Each config is a frozen dataclass that validates itself; tables map device-kind prefixes to
configs (``kernels_pallas.core.lookup_tuning``). Only the CPU entries are measured
(``python -m kernels_pallas.bench depthwise_conv2d``, results in kernels_pallas/results/);
the TPU and GPU entries are starting points chosen from the hardware limits noted beside them
and have never been timed: no kernel here has been compiled for a TPU or GPU yet.
"""
from __future__ import annotations

import dataclasses

from kernels_pallas.core import lookup_tuning


def _positive(owner: str, **fields: int) -> None:
    for name, value in fields.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}")


@dataclasses.dataclass(frozen=True)
class CpuPlan:
    """Which pure-XLA formulation the CPU path uses: FFT when the kernel has at least this many
    taps (KH*KW), else direct; ``forward_fft_min_taps`` for calls that are not differentiated,
    ``train_fft_min_taps`` for the forward and both gradients of differentiated calls.

    Direct: the forward and input gradient are one fused XLA loop each (KH*KW reads per output;
    XLA:CPU stops fusing them into one loop beyond ~96 taps, and then it gets much slower), the
    kernel gradient one variadic reduction with KH*KW sums. FFT: cost independent of the kernel
    size, and under differentiation the forward's input spectrum is reused by the kernel
    gradient.
    """
    forward_fft_min_taps: int
    train_fft_min_taps: int

    def __post_init__(self):
        _positive("CpuPlan", forward_fft_min_taps=self.forward_fft_min_taps,
                  train_fft_min_taps=self.train_fft_min_taps)

    def choose(self, taps: int) -> tuple[bool, bool]:
        """(forward uses FFT, differentiated call uses FFT) for a kernel of ``taps`` taps."""
        return taps >= self.forward_fft_min_taps, taps >= self.train_fft_min_taps


@dataclasses.dataclass(frozen=True)
class TpuBlocks:
    """Mosaic TPU kernel blocks: ``block_c`` channels (lanes) per program, output rows per
    program chosen so the float32 accumulator of a row block is at most ``acc_bytes``."""
    block_c: int = 128
    acc_bytes: int = 64 * 1024
    vmem_limit_bytes: int = 48 * 1024 * 1024

    def __post_init__(self):
        _positive("TpuBlocks", block_c=self.block_c, acc_bytes=self.acc_bytes,
                  vmem_limit_bytes=self.vmem_limit_bytes)
        if self.block_c % 128:
            raise ValueError(f"TpuBlocks.block_c must be a multiple of 128 (the lane width), "
                             f"got {self.block_c}")

    def block_h(self, out_w: int, channels: int) -> int:
        lanes = min(self.block_c, channels)
        sublane_rows = -(-out_w // 8) * 8
        return max(1, self.acc_bytes // (sublane_rows * -(-lanes // 128) * 128 * 4))


@dataclasses.dataclass(frozen=True)
class GpuBlocks:
    """Mosaic GPU kernel blocks. One warpgroup per program, one channel per CUDA lane (128
    channels per program); each lane keeps a ``block_h`` x ``block_w`` output tile in registers.
    The kernel gradient runs one program per (channel block, kernel row, ``dw_batch`` images)."""
    block_h: int = 2
    block_w: int = 16
    dw_block_w: int = 16
    dw_batch: int = 4

    def __post_init__(self):
        _positive("GpuBlocks", block_h=self.block_h, block_w=self.block_w,
                  dw_block_w=self.dw_block_w, dw_batch=self.dw_batch)
        if self.block_h * self.block_w > 128:
            raise ValueError("GpuBlocks.block_h * block_w must be <= 128 (float32 accumulators "
                             f"per lane), got {self.block_h} * {self.block_w}")


#: Measured on the 2-core CPU at (8, 56, 56, 128) float32 (``--cpu_plans 90/36,1/1,1000000/
#: 1000000``; rows in kernels_pallas/results/depthwise_conv2d_cpu.csv; the machine was shared,
#: repeated timings of one formulation varied by up to ~40%): forward alone, direct wins up to
#: 9x9 (9x9: 36-41 ms vs FFT 49 ms) and collapses past ~96 taps (13x13: 1.37 s vs FFT 71-82 ms);
#: forward+backward, direct wins at 5x5 (42 vs 78 ms), is even at 7x7 (100 vs 92-136 ms) and
#: loses from 9x9 on (273 vs 76-116 ms).
CPU_PLANS = {"default": CpuPlan(forward_fft_min_taps=90, train_fft_min_taps=36)}
#: 128-lane blocks; 64 KiB accumulators (16 vregs of 4 KiB); a 48 MiB VMEM limit, below the
#: 64 MiB per core of v7x (v5e/v6e have 128 MiB).
TPU_BLOCKS = {"default": TpuBlocks()}
#: Hopper: 2x16 float32 accumulators + a 2 x (16 + k - 1) input window per lane fit in the
#: 255-register budget for k <= 31 (untimed).
GPU_BLOCKS = {"default": GpuBlocks()}
#: Device kinds on which the benchmark showed the Pallas kernel beating XLA's convolution, so
#: that ``implementation=None`` picks it. Empty until a compiled run is recorded.
AUTO_PALLAS_DEVICE_KINDS: tuple[str, ...] = ()


def cpu_plan() -> CpuPlan:
    return lookup_tuning(CPU_PLANS)


def tpu_blocks() -> TpuBlocks:
    return lookup_tuning(TPU_BLOCKS)


def gpu_blocks() -> GpuBlocks:
    return lookup_tuning(GPU_BLOCKS)
