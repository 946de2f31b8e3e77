"""The "xla" path: tiled neighbourhood attention in plain XLA, differentiated by JAX.

Canonical layout [B, X, Y, H, D] without dilation (1-D inputs arrive as X = 1; dilated inputs
are regrouped by ``api.regrouped``). Queries are cut into Tx x Ty tiles; the keys of a tile's
windows lie in one (Tx + kx - 1) x (Ty + ky - 1) region (``windows`` module docstring), gathered
once per tile with static indices. Each tile then does dense attention against its region with
the exact neighbourhood mask (and the relative-position bias) applied, so the work is
N * region instead of N^2 of the dense masked reference, and nothing of size N^2 exists. This
is the blocked form of NATTEN's "unfused" kernels, with matmuls instead of per-query gathers.

Float32 from the given inputs (bfloat16 upcast exactly), like the reference.
"""
from __future__ import annotations

import numpy as np

import jax
import jax.numpy as jnp
from jax import lax

from kernels_pallas.neighborhood_attention import windows

F32 = jnp.float32


def dim_tables(n: int, k: int, causal: bool, tile: int):
    """Static tiling of one dimension: (tile, tiles, region, query pos [tiles, tile],
    key pos [tiles, region], window lo/hi of each query [tiles, tile])."""
    tile = min(tile, n)
    tiles = -(-n // tile)
    width = windows.region(n, k, tile)
    first = np.arange(tiles) * tile
    start = np.minimum(windows.window_start(first, n, k, causal), n - width)
    qpos = first[:, None] + np.arange(tile)[None]
    clipped = np.minimum(qpos, n - 1)  # padded queries borrow the last query's window
    lo = windows.window_start(clipped, n, k, causal)
    hi = windows.window_end(clipped, n, k, causal)
    kpos = start[:, None] + np.arange(width)[None]
    return tile, tiles, width, qpos, kpos, lo, hi


def attention(q, k, v, rpb, *, kernel_size, causal, scale, tiles):
    """q, k, v: [B, X, Y, H, D]; rpb None or [H, 2kx-1, 2ky-1]; ``tiles`` = (Tx, Ty)."""
    batch, nx, ny, heads, dim = q.shape
    tx, ntx, wx, qx, kx, lox, hix = dim_tables(nx, kernel_size[0], causal[0], tiles[0])
    ty, nty, wy, qy, ky, loy, hiy = dim_tables(ny, kernel_size[1], causal[1], tiles[1])
    qf, kf, vf = (t.astype(F32) for t in (q, k, v))
    qf = jnp.pad(qf, ((0, 0), (0, ntx * tx - nx), (0, nty * ty - ny), (0, 0), (0, 0)))
    qf = qf.reshape(batch, ntx, tx, nty, ty, heads, dim)
    # Key regions: [B, ntx, wx, nty, wy, H, D], gathered with static indices.
    kg = kf[:, kx][:, :, :, ky]
    vg = vf[:, kx][:, :, :, ky]
    logits = jnp.einsum("bxuyvhd,bxwyzhd->bhxyuvwz", qf, kg,
                        precision=lax.Precision.HIGHEST) * scale
    # Position tables go in as small int32 vectors; the [tiles, tile, region] index and mask
    # arrays are built in the graph (as NumPy constants they would reach ~100 MB at 32K x 2K).
    qx, kx, lox, hix, qy, ky, loy, hiy = (jnp.asarray(a, jnp.int32) for a in
                                          (qx, kx, lox, hix, qy, ky, loy, hiy))
    if rpb is not None:
        relx = jnp.clip(kx[:, None, :] - qx[:, :, None] + kernel_size[0] - 1, 0,
                        2 * kernel_size[0] - 2)  # [ntx, tx, wx]
        rely = jnp.clip(ky[:, None, :] - qy[:, :, None] + kernel_size[1] - 1, 0,
                        2 * kernel_size[1] - 2)  # [nty, ty, wy]
        bias = jnp.take(rpb.astype(F32), relx, axis=1)        # [H, ntx, tx, wx, 2ky-1]
        bias = jnp.take(bias, rely, axis=4)                   # [H, ntx, tx, wx, nty, ty, wy]
        logits = logits + bias.transpose(0, 1, 4, 2, 5, 3, 6)[None]
    mask_x = (kx[:, None, :] >= lox[:, :, None]) & (kx[:, None, :] < hix[:, :, None])
    mask_y = (ky[:, None, :] >= loy[:, :, None]) & (ky[:, None, :] < hiy[:, :, None])
    mask = (mask_x[:, None, :, None, :, None]
            & mask_y[None, :, None, :, None, :])  # [ntx, nty, tx, ty, wx, wy]
    logits = jnp.where(mask, logits, -jnp.inf)
    shape = logits.shape
    probs = jax.nn.softmax(logits.reshape(*shape[:-2], wx * wy), axis=-1).reshape(shape)
    out = jnp.einsum("bhxyuvwz,bxwyzhd->bxuyvhd", probs, vg, precision=lax.Precision.HIGHEST)
    out = out.reshape(batch, ntx * tx, nty * ty, heads, dim)[:, :nx, :ny]
    return out.astype(q.dtype)


def flops_per_token_ratio(spatial, kernel_size, tiles) -> float:
    """How many more logits this path computes than the exact neighbourhood (bench note)."""
    work = 1.0
    for n, k, t in zip(spatial, kernel_size, tiles):
        t = min(t, n)
        work *= (-(-n // t) * t * windows.region(n, k, t)) / (n * k)
    return work

