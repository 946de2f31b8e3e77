"""Tile sizes for neighborhood_attention, per device kind.

Each config is a frozen dataclass that validates itself; tables map device-kind prefixes to
configs (``kernels_pallas.core.lookup_tuning``). The CPU entry of the XLA path is measured
(``python -m kernels_pallas.bench neighborhood_attention --quick``); the Pallas entries are
starting points from the hardware limits noted beside them and have never been timed: no kernel
here has been compiled for a TPU or GPU yet.
"""
from __future__ import annotations

import dataclasses

from kernels_pallas.core import lookup_tuning


def _positive(owner: str, **fields: int) -> None:
    for name, value in fields.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}")


@dataclasses.dataclass(frozen=True)
class XlaTiles:
    """Query tiles of the tiled XLA path: ``tile_1d`` queries per tile in 1-D, ``tile_2d`` x
    ``tile_2d`` in 2-D. Each tile attends a (tile + k - 1)-long key region, so the logits
    computed are (tile + k - 1) / k times the exact neighbourhood's per dim: small tiles waste
    less, large tiles make larger matmuls. ``min_tile_fraction``: the 1-D tile is at least
    kernel_size // this (so a 2K window is not cut into 32-query tiles)."""
    tile_1d: int = 64
    tile_2d: int = 8
    min_tile_fraction: int = 4

    def __post_init__(self):
        _positive("XlaTiles", tile_1d=self.tile_1d, tile_2d=self.tile_2d,
                  min_tile_fraction=self.min_tile_fraction)

    def tiles(self, ndim: int, kernel_size: tuple[int, ...]) -> tuple[int, int]:
        if ndim == 1:
            return 1, max(self.tile_1d, kernel_size[-1] // self.min_tile_fraction)
        return self.tile_2d, self.tile_2d


@dataclasses.dataclass(frozen=True)
class PallasBlocks:
    """Pallas kernel blocks: queries per program ``block_q`` (1-D) / ``block_qx`` x
    ``block_qy`` (2-D) and keys per online-softmax step ``block_k`` / ``block_kx`` x
    ``block_ky``. The fastest-varying (Y / 1-D) block sizes must be multiples of 8 (TPU
    sublanes) unless they cover the whole (padded) dimension."""
    block_q: int = 128
    block_k: int = 128
    block_qx: int = 8
    block_qy: int = 8
    block_kx: int = 8
    block_ky: int = 8

    def __post_init__(self):
        _positive("PallasBlocks", block_q=self.block_q, block_k=self.block_k,
                  block_qx=self.block_qx, block_qy=self.block_qy, block_kx=self.block_kx,
                  block_ky=self.block_ky)
        for name in ("block_q", "block_k", "block_qy", "block_ky"):
            if getattr(self, name) % 8:
                raise ValueError(f"PallasBlocks.{name} must be a multiple of 8 (TPU sublanes), "
                                 f"got {getattr(self, name)}")

    def blocks(self, ndim: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """((query block x, y), (key block x, y)) in the canonical 2-D layout (1-D: X = 1)."""
        if ndim == 1:
            return (1, self.block_q), (1, self.block_k)
        return (self.block_qx, self.block_qy), (self.block_kx, self.block_ky)


#: Measured on the 2-core CPU (shared, load ~10: +-50% noise), float32 forward / fwd+bwd ms,
#: ``--xla_tiles 32/4,64/8,128/14,256/28``: 56x56 7x7: 72/149, 36/141, 71/212, 394/816;
#: 56x56 13x13: 61/358, 84/340, 269/568, 557/992; 1-D 4096 window 255: 144/448, 72/373,
#: 153/467, 141/626. 64/8 is best or within noise of it everywhere.
XLA_TILES = {"default": XlaTiles()}
#: 128-query x 128-key tiles in 1-D (one MXU tile; the f32 logits block is 64 KiB), 8x8 query
#: x 8x8 key tiles in 2-D (64 x 64 logits). Untimed.
PALLAS_BLOCKS = {"default": PallasBlocks()}
#: Device kinds on which the benchmark showed the Pallas kernels beating the XLA path, so that
#: ``implementation=None`` picks them. Empty until a compiled run is recorded.
AUTO_PALLAS_DEVICE_KINDS: tuple[str, ...] = ()


def xla_tiles() -> XlaTiles:
    return lookup_tuning(XLA_TILES)


def pallas_blocks() -> PallasBlocks:
    return lookup_tuning(PALLAS_BLOCKS)
