"""Block sizes of the flash_attention Pallas kernels, per device kind; auto-dispatch tables.

Nothing here has been timed on a TPU or GPU: no session has had one for this op yet. The TPU
entry is the usual starting point (128x128 score tiles: 128 lanes, 16 float32 vregs of scores
per (8, 128) sublane group); the interpreter entry uses small blocks so that the CPU tests run
several blocks, padding and causal block skipping at small sizes.
"""
from __future__ import annotations

import dataclasses

from kernels_pallas.core import lookup_tuning


@dataclasses.dataclass(frozen=True)
class TpuBlocks:
    """Score-tile sizes: ``block_q`` query rows (sublanes) x ``block_k`` keys (lanes) per step,
    for the forward and both backward kernels. On a compiled TPU run ``block_k`` must be a
    multiple of 128 unless the (padded) key length is smaller than it (the kernel then uses one
    key block of the whole padded length)."""
    block_q: int = 128
    block_k: int = 128
    vmem_limit_bytes: int = 48 * 1024 * 1024
    #: Broadcast bias: largest [B, H, L, S] float32 dS array the dq kernel writes for XLA to sum;
    #: beyond it a reduction kernel (two more matmuls per tile, O(bias) memory) does the sum.
    dbias_tiles_max_bytes: int = 256 * 1024 * 1024

    def __post_init__(self):
        for name in ("block_q", "block_k", "vmem_limit_bytes", "dbias_tiles_max_bytes"):
            value = getattr(self, name)
            least = 0 if name == "dbias_tiles_max_bytes" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"TpuBlocks.{name} must be an int >= {least}, got {value!r}")
        for name in ("block_q", "block_k"):
            if getattr(self, name) % 8:
                raise ValueError(f"TpuBlocks.{name} must be a multiple of 8 (the sublane "
                                 f"count), got {getattr(self, name)}")


#: Compiled TPU kernels (untimed starting point; see the module docstring).
TPU_BLOCKS = {"default": TpuBlocks()}
#: Interpreted kernels on CPU (tests): small tiles, so small inputs span several blocks.
INTERPRET_BLOCKS = TpuBlocks(block_q=16, block_k=16)
#: TPU device kinds on which a benchmark showed the Pallas kernel beating XLA (``None`` picks it
#: there). Empty: never timed on a TPU.
AUTO_PALLAS_DEVICE_KINDS: tuple[str, ...] = ()
#: GPU device kinds on which a benchmark showed cuDNN beating XLA for the calls it takes.
#: Empty: never timed on a GPU in this repo.
AUTO_CUDNN_DEVICE_KINDS: tuple[str, ...] = ()


def tpu_blocks(interpret) -> TpuBlocks:
    """The blocks of a Pallas call: the interpreter's on CPU, else the device kind's entry."""
    if interpret:
        return INTERPRET_BLOCKS
    return lookup_tuning(TPU_BLOCKS)
