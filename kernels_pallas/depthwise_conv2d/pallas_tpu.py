"""Pallas TPU (Mosaic) kernels: stride-1 VALID depthwise correlation with dilation, and its
kernel gradient. Also the kernels the CPU runs in interpret mode.

Status: tested in interpret mode (generic ``interpret=True`` and ``pltpu.InterpretParams``) and
lowered to Mosaic MLIR on a CPU machine (tests/kernels); never compiled or timed on a TPU.

Layout: NHWC with channels on the 128 lanes and W on the sublanes. Grid = (channel blocks,
batch, output-row blocks). Each program gets, through a ``pl.Element`` block on H (overlapping
windows: the input rows of an output-row block plus the (KH-1)*dilation halo), the whole padded
width and ``block_c`` channels in VMEM, and accumulates ``block_h`` output rows in float32 values
(at most ``TpuBlocks.acc_bytes``, so they stay in vregs): a ``fori_loop`` over kernel rows, an
unrolled loop over kernel columns, each tap one (block_h, W_out, block_c) multiply-add on the
VPU. Weights of a channel block stay resident across the batch and row axes (their block index
only changes with the outermost grid axis).

Kernel gradient: same grid and input blocks, plus the output gradient's block; the (KH, KW,
block_c) float32 result block is revisited across batch and rows ("arbitrary" axes) and each tap
adds its reduction over the block.

Stride 2 never reaches these kernels: the caller splits a strided convolution into stride-1
phases (api.py), so every kernel here reads contiguous rows and columns.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.depthwise_conv2d.tuning import TpuBlocks, tpu_blocks

F32 = jnp.float32


def channel_blocks(channels: int, block_c: int) -> tuple[int, int]:
    """(lanes per program, padded channel count). Fewer than 128 channels: one block of all of
    them (a block dim equal to the array dim is always legal); otherwise 128-multiples, padding
    the channels up when they are not one."""
    if channels < 128:
        return channels, channels
    padded = -(-channels // 128) * 128
    block = max(b for b in range(128, min(block_c, padded) + 1, 128) if padded % b == 0)
    return block, padded


def _pad_to(x, shape):
    return jnp.pad(x, [(0, t - s) for s, t in zip(x.shape, shape)])


def _layout(xp_shape, kernel, dilation, blocks: TpuBlocks):
    _, hp, wp, channels = xp_shape
    kh, kw = kernel
    ho, wo = hp - (kh - 1) * dilation[0], wp - (kw - 1) * dilation[1]
    block_c, c_pad = channel_blocks(channels, blocks.block_c)
    block_h = min(blocks.block_h(wo, block_c), ho)
    n_h = -(-ho // block_h)
    return ho, wo, block_c, c_pad, block_h, n_h


def _compiler_params(blocks, semantics):
    return pltpu.CompilerParams(dimension_semantics=semantics,
                                vmem_limit_bytes=blocks.vmem_limit_bytes)


def vmem_bytes(xp_shape, w_shape, itemsize, dilation, blocks: TpuBlocks | None = None) -> int:
    """VMEM the forward kernel's double-buffered blocks need (to refuse shapes that do not fit)."""
    blocks = blocks or tpu_blocks()
    kh, kw = w_shape[:2]
    _, wo, block_c, _, block_h, _ = _layout(xp_shape, (kh, kw), dilation, blocks)
    rows_in = block_h + (kh - 1) * dilation[0]
    x_block = rows_in * xp_shape[2] * block_c * itemsize
    out_block = block_h * wo * block_c * itemsize
    return 2 * (x_block + out_block + kh * kw * block_c * 4 + block_c * 4)


def _input_rows_spec(rows_in, width, block_c, block_h):
    """Overlapping row windows (output rows plus halo) of one image and channel block.

    Mosaic TPU wants all dims of an element-indexed block to be ``pl.Element``: the index map
    returns element offsets for each, and the kernel sees a leading batch dim of 1.
    """
    return pl.BlockSpec(
        (pl.Element(1), pl.Element(rows_in), pl.Element(width), pl.Element(block_c)),
        lambda c, b, h: (b, h * block_h, 0, c * block_c))


def conv_valid(xp, w, bias, dilation, out_dtype, interpret, blocks: TpuBlocks | None = None):
    """y[b, i, j] = bias + sum_{p,q} xp[b, i + p*dh, j + q*dw] * w[p, q] (float32 accumulation)."""
    blocks = blocks or tpu_blocks()
    batch, hp, wp, channels = xp.shape
    kh, kw = w.shape[:2]
    dh, dw = dilation
    ho, wo, block_c, c_pad, block_h, n_h = _layout(xp.shape, (kh, kw), dilation, blocks)
    rows_in = block_h + (kh - 1) * dh
    xp = _pad_to(xp, (batch, n_h * block_h + (kh - 1) * dh, wp, c_pad))
    w = _pad_to(w.astype(F32), (kh, kw, c_pad))
    bias = _pad_to(bias.astype(F32), (c_pad,)).reshape(1, c_pad)

    def kernel(x_ref, w_ref, b_ref, o_ref):
        acc = jnp.broadcast_to(b_ref[...].reshape(1, 1, block_c), (block_h, wo, block_c))

        def kernel_row(p, acc):
            w_row = w_ref[pl.ds(p, 1), :, :]  # (1, KW, block_c)
            for q in range(kw):
                taps = x_ref[0, pl.ds(p * dh, block_h), pl.ds(q * dw, wo), :].astype(F32)
                acc = acc + taps * w_row[:, q:q + 1, :]
            return acc

        acc = lax.fori_loop(0, kh, kernel_row, acc)
        o_ref[...] = acc.astype(o_ref.dtype)

    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((batch, n_h * block_h, wo, c_pad), out_dtype),
        grid=(c_pad // block_c, batch, n_h),
        in_specs=[
            _input_rows_spec(rows_in, wp, block_c, block_h),
            pl.BlockSpec((kh, kw, block_c), lambda c, b, h: (0, 0, c)),
            pl.BlockSpec((1, block_c), lambda c, b, h: (0, c)),
        ],
        out_specs=pl.BlockSpec((None, block_h, wo, block_c), lambda c, b, h: (b, h, 0, c)),
        compiler_params=_compiler_params(blocks, ("parallel", "parallel", "parallel")),
        interpret=interpret,
        name="depthwise_conv2d_fwd",
    )(xp, w, bias)
    return out[:, :ho, :, :channels]


def kernel_grad(xp, g, kernel, dilation, interpret, blocks: TpuBlocks | None = None):
    """dw[p, q] = sum_{b,i,j} xp[b, i + p*dh, j + q*dw] * g[b, i, j], float32 [KH, KW, C]."""
    blocks = blocks or tpu_blocks()
    batch, hp, wp, channels = xp.shape
    kh, kw = kernel
    dh, dw = dilation
    ho, wo, block_c, c_pad, block_h, n_h = _layout(xp.shape, kernel, dilation, blocks)
    rows_in = block_h + (kh - 1) * dh
    xp = _pad_to(xp, (batch, n_h * block_h + (kh - 1) * dh, wp, c_pad))
    g = _pad_to(g, (batch, n_h * block_h, wo, c_pad))  # zero rows add nothing

    def kernel_fn(x_ref, g_ref, o_ref):
        @pl.when((pl.program_id(1) == 0) & (pl.program_id(2) == 0))
        def _init():
            o_ref[...] = jnp.zeros(o_ref.shape, F32)

        grad = g_ref[...].astype(F32)

        def kernel_row(p, carry):
            for q in range(kw):
                taps = x_ref[0, pl.ds(p * dh, block_h), pl.ds(q * dw, wo), :].astype(F32)
                partial = jnp.sum(taps * grad, axis=(0, 1), keepdims=True)  # (1, 1, block_c)
                o_ref[pl.ds(p, 1), pl.ds(q, 1), :] += partial
            return carry

        lax.fori_loop(0, kh, kernel_row, 0)

    out = pl.pallas_call(
        kernel_fn,
        out_shape=jax.ShapeDtypeStruct((kh, kw, c_pad), F32),
        grid=(c_pad // block_c, batch, n_h),
        in_specs=[
            _input_rows_spec(rows_in, wp, block_c, block_h),
            pl.BlockSpec((None, block_h, wo, block_c), lambda c, b, h: (b, h, 0, c)),
        ],
        out_specs=pl.BlockSpec((kh, kw, block_c), lambda c, b, h: (0, 0, c)),
        compiler_params=_compiler_params(blocks, ("parallel", "arbitrary", "arbitrary")),
        interpret=interpret,
        name="depthwise_conv2d_dw",
    )(xp, g)
    return out[:, :, :channels]
