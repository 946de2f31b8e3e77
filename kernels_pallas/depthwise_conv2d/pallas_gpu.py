"""Pallas Mosaic GPU kernels (Hopper and newer): stride-1 VALID depthwise correlation with
dilation, and its kernel gradient.

Status: tested on CPU under the Mosaic GPU interpreter and lowered to Mosaic GPU MLIR for the
``cuda`` platform on a CPU machine (tests/kernels); never compiled to PTX, run or timed on a GPU.

Why Mosaic GPU and not Triton: JAX develops Pallas on GPU through Mosaic GPU. In JAX 0.10 it is
already the default Pallas GPU lowering (``jax_pallas_use_mosaic_gpu`` defaults to True), the
Triton lowering is maintained best-effort and deprecated as of JAX 0.11 (the version on the
project's GPU machine), and ``jax.experimental.pallas.ops.gpu`` is deprecated in favour of
tokamax. Mosaic GPU also comes with an interpreter (``InterpretGPUParams``) that lets these
kernels be tested on CPU. Kernels use ``plgpu.kernel`` (``pl.pallas_call`` for Mosaic GPU is
deprecated in JAX 0.10). The cost: Hopper (sm_90) or newer only; there is no Ampere path
(``implementation=None`` uses XLA's convolution there, as on every GPU until a measured entry
in ``tuning.AUTO_PALLAS_DEVICE_KINDS`` says otherwise).

Design (no Tensor Core work: a depthwise convolution has no reduction over channels, so it is
FMA work on the CUDA cores, the classic one-channel-per-thread scheme): one Pallas thread (a
warpgroup, 128 CUDA lanes) per program; channels are padded to a multiple of 128 and every
array in the kernel has shape (128,), so lane t always holds channel t of the block (the
``WG_STRIDED`` layout with vector size 1) and no data ever moves between lanes. Each lane keeps
a ``block_h`` x ``block_w`` tile of float32 accumulators in registers; a ``fori_loop`` over
kernel rows loads that row's weights and the ``block_h`` x (``block_w`` + (KW-1)*dilation)
input window once from global memory (coalesced: a warp reads 32 consecutive channels) and
reuses each loaded value for up to KW outputs. Loads go straight to registers, relying on L1/L2
for the reuse between kernel rows and neighbouring programs; staging windows in shared memory
with TMA is the obvious next step once the kernel can be profiled.

Kernel gradient: one program per (channel block, kernel row p, ``dw_batch`` images) keeps KW
float32 accumulators per lane and loops over the output positions of its images; the per-batch-
chunk partial sums are added by XLA.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from kernels_pallas.depthwise_conv2d.tuning import GpuBlocks, gpu_blocks

F32 = jnp.float32
LANES = 128


def _pad_to(x, shape):
    return jnp.pad(x, [(0, t - s) for s, t in zip(x.shape, shape)])


def _strided(x, interpret):
    """Pins a (128,) value to one element per lane (the layout every array here uses). A layout
    is a lowering hint without meaning to the interpreter, which has no rule for it."""
    if interpret:
        return x
    return plgpu.layout_cast(x, plgpu.Layout.WG_STRIDED((LANES,), vec_size=1))


def _kernel_call(body, out_type, grid, grid_names, interpret):
    return plgpu.kernel(body, out_type=out_type, grid=grid, grid_names=grid_names,
                        interpret=interpret if interpret else None)


def conv_valid(xp, w, bias, dilation, out_dtype, interpret, blocks: GpuBlocks | None = None):
    """y[b, i, j] = bias + sum_{p,q} xp[b, i + p*dh, j + q*dw] * w[p, q] (float32 accumulation)."""
    blocks = blocks or gpu_blocks()
    batch, hp, wp, channels = xp.shape
    kh, kw = w.shape[:2]
    dh, dw = dilation
    ho, wo = hp - (kh - 1) * dh, wp - (kw - 1) * dw
    block_h, block_w = min(blocks.block_h, ho), min(blocks.block_w, wo)
    n_h, n_w = -(-ho // block_h), -(-wo // block_w)
    c_pad = -(-channels // LANES) * LANES
    cols_in = block_w + (kw - 1) * dw
    xp = _pad_to(xp, (batch, n_h * block_h + (kh - 1) * dh, n_w * block_w + (kw - 1) * dw,
                      c_pad))
    w = _pad_to(w.astype(F32), (kh, kw, c_pad))
    bias = _pad_to(bias.astype(F32), (c_pad,))

    def body(x_ref, w_ref, b_ref, o_ref):
        lanes = pl.ds(lax.axis_index("c") * LANES, LANES)
        b = lax.axis_index("b")
        h0 = lax.axis_index("h") * block_h
        w0 = lax.axis_index("w") * block_w
        start = _strided(b_ref[lanes], interpret)
        acc = tuple(start for _ in range(block_h * block_w))

        def kernel_row(p, acc):
            acc = list(acc)
            taps = [w_ref[p, q, lanes] for q in range(kw)]
            for i in range(block_h):
                row = h0 + i + p * dh
                window = [x_ref[b, row, w0 + u, lanes].astype(F32) for u in range(cols_in)]
                for j in range(block_w):
                    total = acc[i * block_w + j]
                    for q in range(kw):
                        total = total + window[j + q * dw] * taps[q]
                    acc[i * block_w + j] = total
            return tuple(acc)

        acc = lax.fori_loop(0, kh, kernel_row, acc)
        for i in range(block_h):
            for j in range(block_w):
                o_ref[b, h0 + i, w0 + j, lanes] = acc[i * block_w + j].astype(o_ref.dtype)

    out = _kernel_call(
        body, jax.ShapeDtypeStruct((batch, n_h * block_h, n_w * block_w, c_pad), out_dtype),
        grid=(c_pad // LANES, batch, n_h, n_w), grid_names=("c", "b", "h", "w"),
        interpret=interpret)(xp, w, bias)
    return out[:, :ho, :wo, :channels]


def kernel_grad(xp, g, kernel, dilation, interpret, blocks: GpuBlocks | None = None):
    """dw[p, q] = sum_{b,i,j} xp[b, i + p*dh, j + q*dw] * g[b, i, j], float32 [KH, KW, C]."""
    blocks = blocks or gpu_blocks()
    batch, hp, wp, channels = xp.shape
    kh, kw = kernel
    dh, dw = dilation
    ho, wo = hp - (kh - 1) * dh, wp - (kw - 1) * dw
    block_w = min(blocks.dw_block_w, wo)
    n_w = -(-wo // block_w)
    per_program = min(blocks.dw_batch, batch)
    n_b = -(-batch // per_program)
    c_pad = -(-channels // LANES) * LANES
    cols_in = block_w + (kw - 1) * dw
    # Zero images, columns and channels of the gradient contribute nothing.
    xp = _pad_to(xp, (n_b * per_program, hp, n_w * block_w + (kw - 1) * dw, c_pad))
    g = _pad_to(g, (n_b * per_program, ho, n_w * block_w, c_pad))
    steps = per_program * ho * n_w

    def body(x_ref, g_ref, o_ref):
        lanes = pl.ds(lax.axis_index("c") * LANES, LANES)
        p = lax.axis_index("p")
        chunk = lax.axis_index("n")
        zero = _strided(jnp.zeros((LANES,), F32), interpret)

        def position(t, acc):
            b = chunk * per_program + t // (ho * n_w)
            i = (t // n_w) % ho
            j0 = (t % n_w) * block_w
            grads = [g_ref[b, i, j0 + j, lanes].astype(F32) for j in range(block_w)]
            window = [x_ref[b, i + p * dh, j0 + u, lanes].astype(F32) for u in range(cols_in)]
            out = []
            for q in range(kw):
                total = acc[q]
                for j in range(block_w):
                    total = total + window[j + q * dw] * grads[j]
                out.append(total)
            return tuple(out)

        acc = lax.fori_loop(0, steps, position, tuple(zero for _ in range(kw)))
        for q in range(kw):
            o_ref[chunk, p, q, lanes] = acc[q]

    partial = _kernel_call(
        body, jax.ShapeDtypeStruct((n_b, kh, kw, c_pad), F32),
        grid=(c_pad // LANES, kh, n_b), grid_names=("c", "p", "n"),
        interpret=interpret)(xp, g)
    return jnp.sum(partial, axis=0)[:, :, :channels]
