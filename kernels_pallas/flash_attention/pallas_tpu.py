"""Pallas TPU (Mosaic) kernels of flash attention with an additive bias: forward (online
softmax, saves the log-sum-exp), backward dq (+ the score-gradient tiles dS that become the
bias gradient) and backward dk/dv. Also the kernels the CPU runs in interpret mode.

Status: tested in interpret mode (generic ``interpret=True`` and ``pltpu.InterpretParams``) and
lowered to Mosaic MLIR on a CPU machine (tests/kernels); never compiled or timed on a TPU.

Layout: heads-major [B, H, L, D] (the caller transposes from jax.nn's [B, L, H, D]) so that a
block is (sequence rows on sublanes, head dim on lanes); L and S are zero-padded to whole blocks
and the padded keys masked in the kernel. Scores are ``(block_q, block_k)`` float32 tiles.

* Forward: grid (B, H, q blocks, k blocks); the k axis is the reduction ("arbitrary"): running
  max ``m``, normaliser ``l`` and the float32 output accumulator live in VMEM scratch, the
  output and ``lse = m + log l`` are written at the last k block.
* dq kernel: same grid; recomputes ``P = exp(S - lse)``, ``dS = P * (dO V^T - delta)`` with
  ``delta = rowsum(dO * O)`` (computed by XLA), accumulates ``dq = scale * dS K`` in scratch and,
  when there is a bias, writes each dS tile to a [B, H, L, S] float32 array; the caller sums it
  over the dimensions the bias broadcasts over. When that array would be large
  (``TpuBlocks.dbias_tiles_max_bytes``) and the bias is broadcast, a separate dbias kernel sums
  the dS tiles over the broadcast dimensions instead (grid (bias slices, q blocks, k blocks,
  summed (example, head) pairs); it recomputes S and dO V^T).
* dk/dv kernel: grid (B, H, k blocks, q blocks), the q axis the reduction:
  ``dv += P^T dO``, ``dk += scale * dS^T Q``.

Causal (top-left aligned): tiles entirely above the diagonal are skipped (``pl.when``) and their
block index maps are clamped to the last (first) needed block, so a skipped step fetches no new
block; the dS tiles of skipped steps are written as zeros.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.flash_attention.tuning import TpuBlocks

F32 = jnp.float32
#: Score of a masked entry: finite (so no inf - inf) and far below any real score.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
#: Contract the last dims of both operands: ``a @ b.T``.
NT_DIMS = (((1,), (1,)), ((), ()))


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static description of one call: sizes, padded sizes and blocks."""
    q_len: int
    kv_len: int
    block_q: int
    block_k: int
    causal: bool
    scale: float
    bias_batch: int      # 0: no bias, 1: broadcast over the batch, B: per example
    bias_heads: int      # 0: no bias, 1: broadcast over heads, H: per head
    vmem_limit_bytes: int
    dbias_kernel: bool   # reduce dS over the broadcast dims in a kernel (see make_plan)

    @property
    def padded_q(self) -> int:
        return -(-self.q_len // self.block_q) * self.block_q

    @property
    def padded_kv(self) -> int:
        return -(-self.kv_len // self.block_k) * self.block_k

    @property
    def num_q(self) -> int:
        return self.padded_q // self.block_q

    @property
    def num_k(self) -> int:
        return self.padded_kv // self.block_k

    @property
    def has_bias(self) -> bool:
        return self.bias_batch > 0


def make_plan(batch, heads, q_len, kv_len, causal, scale, bias_shape,
              blocks: TpuBlocks) -> Plan:
    """Blocks no larger than the (8-rounded) sequence: a short sequence is one block of its whole
    padded length, which Mosaic accepts whatever its size (a block dim equal to the array's).

    Bias gradient: a bias that is not broadcast ([B, H, L, S]) gets the dq kernel's dS tiles
    directly. A broadcast one does too (summed by XLA) while the [B, H, L, S] float32 dS array is
    at most ``blocks.dbias_tiles_max_bytes``; beyond that, the dbias kernel reduces dS over the
    broadcast dimensions tile by tile (recomputing S and dO V^T: two more matmuls per tile,
    memory the size of the bias)."""
    block_q = min(blocks.block_q, -(-q_len // 8) * 8)
    block_k = min(blocks.block_k, -(-kv_len // 8) * 8)
    bias_batch, bias_heads = (0, 0) if bias_shape is None else bias_shape[:2]
    padded = (-(-q_len // block_q) * block_q) * (-(-kv_len // block_k) * block_k)
    broadcast = bias_shape is not None and (bias_batch, bias_heads) != (batch, heads)
    dbias_kernel = broadcast and batch * heads * padded * 4 > blocks.dbias_tiles_max_bytes
    return Plan(q_len, kv_len, block_q, block_k, causal, scale, bias_batch, bias_heads,
                blocks.vmem_limit_bytes, dbias_kernel)


# ------------------------------------------------------------------------------ masking
def _first_k_block_skipped(plan: Plan, i):
    """Causal: k blocks j with j * block_k > last query row of q block i are fully masked.
    (``lax.div``, not ``//``: indices are non-negative, and floor division of traced ints lowers
    through ``sign``, which Mosaic only lowers knowing the TPU generation.)"""
    return lax.div(i * plan.block_q + plan.block_q - 1, plan.block_k) + 1


def _last_needed_k(plan: Plan, i):
    return jnp.minimum(_first_k_block_skipped(plan, i), plan.num_k) - 1


def _first_needed_q(plan: Plan, j):
    return jnp.minimum(lax.div(j * plan.block_k, plan.block_q), plan.num_q - 1)


def _tile_needed(plan: Plan, i, j):
    return j * plan.block_k <= i * plan.block_q + plan.block_q - 1


def _scores(plan: Plan, q, k, bias_ref, i, j):
    """Masked float32 score tile ``scale * q k^T + bias`` of q block i and k block j."""
    s = lax.dot_general(q, k, NT_DIMS, preferred_element_type=F32) * plan.scale
    if bias_ref is not None:
        s = s + bias_ref[...].astype(F32)
    shape = (plan.block_q, plan.block_k)
    mask = None
    if plan.kv_len != plan.padded_kv:
        cols = j * plan.block_k + lax.broadcasted_iota(jnp.int32, shape, 1)
        mask = cols < plan.kv_len
    if plan.causal:
        cols = j * plan.block_k + lax.broadcasted_iota(jnp.int32, shape, 1)
        rows = i * plan.block_q + lax.broadcasted_iota(jnp.int32, shape, 0)
        causal = cols <= rows
        mask = causal if mask is None else jnp.logical_and(mask, causal)
    if mask is not None:
        s = jnp.where(mask, s, MASK_VALUE)
    return s


def _run_if_needed(plan: Plan, i, j, body, otherwise=None):
    if not plan.causal:
        body()
        return
    needed = _tile_needed(plan, i, j)
    pl.when(needed)(body)
    if otherwise is not None:
        pl.when(jnp.logical_not(needed))(otherwise)


# ------------------------------------------------------------------------------ forward
def _forward_kernel(*refs, plan: Plan):
    if plan.has_bias:
        q_ref, k_ref, v_ref, bias_ref, o_ref, lse_ref, m_ref, l_ref, acc_ref = refs
    else:
        q_ref, k_ref, v_ref, o_ref, lse_ref, m_ref, l_ref, acc_ref = refs
        bias_ref = None
    i, j = pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _init():
        m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, F32)
        l_ref[...] = jnp.zeros(l_ref.shape, F32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, F32)

    def body():
        v = v_ref[...]
        s = _scores(plan, q_ref[...], k_ref[...], bias_ref, i, j)
        m_prev = m_ref[...]
        m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
        alpha = jnp.exp(m_prev - m_new)
        p = jnp.exp(s - m_new)
        l_ref[...] = alpha * l_ref[...] + jnp.sum(p, axis=1, keepdims=True)
        acc_ref[...] = alpha * acc_ref[...] + lax.dot_general(
            p.astype(v.dtype), v, (((1,), (0,)), ((), ())), preferred_element_type=F32)
        m_ref[...] = m_new

    _run_if_needed(plan, i, j, body)

    @pl.when(j == plan.num_k - 1)
    def _finish():
        l = l_ref[...]
        o_ref[...] = (acc_ref[...] / l).astype(o_ref.dtype)
        lse_ref[...] = m_ref[...] + jnp.log(l)


def _specs(plan: Plan, head_dim: int, kv_major: bool):
    """BlockSpecs of q-side (q, dO, O), row-vector (lse, delta), k-side (k, v) and bias blocks
    for a grid (B, H, q, k) (``kv_major=False``) or (B, H, k, q) (``kv_major=True``)."""
    if kv_major:
        def order(fn):
            return lambda b, h, j, i: fn(b, h, i, j)
    else:
        def order(fn):
            return fn
    causal = plan.causal

    def q_index(b, h, i, j):
        if causal and kv_major:
            i = jnp.maximum(i, _first_needed_q(plan, j))
        return b, h, i, 0

    def k_index(b, h, i, j):
        if causal and not kv_major:
            j = jnp.minimum(j, _last_needed_k(plan, i))
        return b, h, j, 0

    def bias_index(b, h, i, j):
        if causal and kv_major:
            i = jnp.maximum(i, _first_needed_q(plan, j))
        if causal and not kv_major:
            j = jnp.minimum(j, _last_needed_k(plan, i))
        return (b if plan.bias_batch > 1 else 0), (h if plan.bias_heads > 1 else 0), i, j

    q_spec = pl.BlockSpec((None, None, plan.block_q, head_dim), order(q_index))
    row_spec = pl.BlockSpec((None, None, plan.block_q, 1), order(q_index))
    k_spec = pl.BlockSpec((None, None, plan.block_k, head_dim), order(k_index))
    bias_spec = pl.BlockSpec((None, None, plan.block_q, plan.block_k), order(bias_index))
    return q_spec, row_spec, k_spec, bias_spec


def _compiler_params(plan: Plan):
    return pltpu.CompilerParams(
        dimension_semantics=("parallel", "parallel", "parallel", "arbitrary"),
        vmem_limit_bytes=plan.vmem_limit_bytes)


def forward(q, k, v, bias, plan: Plan, interpret: Any):
    """q [B, H, Lp, D], k/v [B, H, Sp, D], bias [Bb, Hb, Lp, Sp] or None (padded) ->
    (o [B, H, Lp, D] in q.dtype, lse [B, H, Lp, 1] float32)."""
    batch, heads, _, head_dim = q.shape
    q_spec, row_spec, k_spec, bias_spec = _specs(plan, head_dim, kv_major=False)
    in_specs = [q_spec, k_spec, k_spec] + ([bias_spec] if plan.has_bias else [])
    args = (q, k, v) + ((bias,) if plan.has_bias else ())
    return pl.pallas_call(
        functools.partial(_forward_kernel, plan=plan),
        grid=(batch, heads, plan.num_q, plan.num_k),
        in_specs=in_specs,
        out_specs=[q_spec, row_spec],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((batch, heads, plan.padded_q, 1), F32)],
        scratch_shapes=[pltpu.VMEM((plan.block_q, 1), F32), pltpu.VMEM((plan.block_q, 1), F32),
                        pltpu.VMEM((plan.block_q, head_dim), F32)],
        compiler_params=_compiler_params(plan),
        interpret=interpret,
    )(*args)


# ----------------------------------------------------------------------------- backward
def _probabilities_and_ds(plan, q, k, v, bias_ref, lse_ref, delta_ref, do, i, j):
    s = _scores(plan, q, k, bias_ref, i, j)
    p = jnp.exp(s - lse_ref[...])
    dp = lax.dot_general(do, v, NT_DIMS, preferred_element_type=F32)
    return p, p * (dp - delta_ref[...])


def _dq_kernel(*refs, plan: Plan):
    if plan.has_bias and not plan.dbias_kernel:
        (q_ref, k_ref, v_ref, bias_ref, lse_ref, delta_ref, do_ref, dq_ref, ds_ref,
         acc_ref) = refs
    elif plan.has_bias:
        q_ref, k_ref, v_ref, bias_ref, lse_ref, delta_ref, do_ref, dq_ref, acc_ref = refs
        ds_ref = None
    else:
        q_ref, k_ref, v_ref, lse_ref, delta_ref, do_ref, dq_ref, acc_ref = refs
        bias_ref = ds_ref = None
    i, j = pl.program_id(2), pl.program_id(3)

    @pl.when(j == 0)
    def _init():
        acc_ref[...] = jnp.zeros(acc_ref.shape, F32)

    def body():
        k = k_ref[...]
        _, ds = _probabilities_and_ds(plan, q_ref[...], k, v_ref[...], bias_ref, lse_ref,
                                      delta_ref, do_ref[...], i, j)
        if ds_ref is not None:
            ds_ref[...] = ds.astype(ds_ref.dtype)
        acc_ref[...] += lax.dot_general(ds.astype(k.dtype), k, (((1,), (0,)), ((), ())),
                                        preferred_element_type=F32)

    def skipped():
        ds_ref[...] = jnp.zeros(ds_ref.shape, ds_ref.dtype)

    _run_if_needed(plan, i, j, body, skipped if ds_ref is not None else None)

    @pl.when(j == plan.num_k - 1)
    def _finish():
        dq_ref[...] = (acc_ref[...] * plan.scale).astype(dq_ref.dtype)


def _dkv_kernel(*refs, plan: Plan):
    if plan.has_bias:
        (q_ref, k_ref, v_ref, bias_ref, lse_ref, delta_ref, do_ref, dk_ref, dv_ref,
         dk_acc, dv_acc) = refs
    else:
        q_ref, k_ref, v_ref, lse_ref, delta_ref, do_ref, dk_ref, dv_ref, dk_acc, dv_acc = refs
        bias_ref = None
    j, i = pl.program_id(2), pl.program_id(3)

    @pl.when(i == 0)
    def _init():
        dk_acc[...] = jnp.zeros(dk_acc.shape, F32)
        dv_acc[...] = jnp.zeros(dv_acc.shape, F32)

    def body():
        q, do = q_ref[...], do_ref[...]
        p, ds = _probabilities_and_ds(plan, q, k_ref[...], v_ref[...], bias_ref, lse_ref,
                                      delta_ref, do, i, j)
        dv_acc[...] += lax.dot_general(p.astype(do.dtype).T, do, (((1,), (0,)), ((), ())),
                                       preferred_element_type=F32)
        dk_acc[...] += lax.dot_general(ds.astype(q.dtype).T, q, (((1,), (0,)), ((), ())),
                                       preferred_element_type=F32)

    _run_if_needed(plan, i, j, body)

    @pl.when(i == plan.num_q - 1)
    def _finish():
        dk_ref[...] = (dk_acc[...] * plan.scale).astype(dk_ref.dtype)
        dv_ref[...] = dv_acc[...].astype(dv_ref.dtype)


def backward(q, k, v, bias, o, lse, do, plan: Plan, interpret: Any):
    """Padded heads-major tensors as in :func:`forward`, plus its o, lse and the output gradient
    dO (zero in padded rows) -> (dq, dk, dv, dS [B, H, Lp, Sp] float32 or None)."""
    batch, heads, _, head_dim = q.shape
    delta = jnp.sum(do.astype(F32) * o.astype(F32), axis=-1, keepdims=True)
    has_bias = plan.has_bias
    bias_args = (bias,) if has_bias else ()

    q_spec, row_spec, k_spec, bias_spec = _specs(plan, head_dim, kv_major=False)
    ds_spec = pl.BlockSpec((None, None, plan.block_q, plan.block_k),
                           lambda b, h, i, j: (b, h, i, j))
    write_ds = has_bias and not plan.dbias_kernel
    dq_out = [jax.ShapeDtypeStruct(q.shape, q.dtype)]
    if write_ds:
        dq_out.append(jax.ShapeDtypeStruct((batch, heads, plan.padded_q, plan.padded_kv), F32))
    dq_results = pl.pallas_call(
        functools.partial(_dq_kernel, plan=plan),
        grid=(batch, heads, plan.num_q, plan.num_k),
        in_specs=[q_spec, k_spec, k_spec] + ([bias_spec] if has_bias else [])
        + [row_spec, row_spec, q_spec],
        out_specs=[q_spec] + ([ds_spec] if write_ds else []),
        out_shape=dq_out,
        scratch_shapes=[pltpu.VMEM((plan.block_q, head_dim), F32)],
        compiler_params=_compiler_params(plan),
        interpret=interpret,
    )(q, k, v, *bias_args, lse, delta, do)
    dq, ds = (dq_results[0], dq_results[1]) if write_ds else (dq_results[0], None)
    if plan.dbias_kernel:
        ds = _dbias(q, k, v, bias, lse, delta, do, plan, interpret)

    q_spec, row_spec, k_spec, bias_spec = _specs(plan, head_dim, kv_major=True)
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, plan=plan),
        grid=(batch, heads, plan.num_k, plan.num_q),
        in_specs=[q_spec, k_spec, k_spec] + ([bias_spec] if has_bias else [])
        + [row_spec, row_spec, q_spec],
        out_specs=[k_spec, k_spec],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype),
                   jax.ShapeDtypeStruct(v.shape, v.dtype)],
        scratch_shapes=[pltpu.VMEM((plan.block_k, head_dim), F32),
                        pltpu.VMEM((plan.block_k, head_dim), F32)],
        compiler_params=_compiler_params(plan),
        interpret=interpret,
    )(q, k, v, *bias_args, lse, delta, do)
    return dq, dk, dv, ds


def _dbias_kernel(q_ref, k_ref, v_ref, bias_ref, lse_ref, delta_ref, do_ref, dbias_ref, acc_ref,
                  *, plan: Plan, reduce_size: int):
    i, j, r = pl.program_id(1), pl.program_id(2), pl.program_id(3)

    @pl.when(r == 0)
    def _init():
        acc_ref[...] = jnp.zeros(acc_ref.shape, F32)

    def body():
        _, ds = _probabilities_and_ds(plan, q_ref[...], k_ref[...], v_ref[...], bias_ref,
                                      lse_ref, delta_ref, do_ref[...], i, j)
        acc_ref[...] += ds

    _run_if_needed(plan, i, j, body)

    @pl.when(r == reduce_size - 1)
    def _finish():
        dbias_ref[...] = acc_ref[...]


def _dbias(q, k, v, bias, lse, delta, do, plan: Plan, interpret: Any):
    """dS summed over the dimensions the bias broadcasts over: [Bb, Hb, Lp, Sp] float32.

    Grid (Bb * Hb bias slices, q blocks, k blocks, the B/Bb * H/Hb (example, head) pairs summed
    into each slice): the reduction axis is innermost, so one float32 (block_q, block_k) tile
    accumulates in VMEM and is written once."""
    batch, heads, _, head_dim = q.shape
    bias_batch, bias_heads = bias.shape[:2]
    reduce_heads = heads // bias_heads
    reduce_size = (batch // bias_batch) * reduce_heads

    def example_and_head(g, r):
        b = lax.div(g, bias_heads) if bias_batch > 1 else lax.div(r, reduce_heads)
        h = lax.rem(g, bias_heads) if bias_heads > 1 else lax.rem(r, reduce_heads)
        return b, h

    def q_index(g, i, j, r):
        return (*example_and_head(g, r), i, 0)

    def k_index(g, i, j, r):
        return (*example_and_head(g, r), j, 0)

    def bias_index(g, i, j, r):
        return lax.div(g, bias_heads), lax.rem(g, bias_heads), i, j

    q_spec = pl.BlockSpec((None, None, plan.block_q, head_dim), q_index)
    row_spec = pl.BlockSpec((None, None, plan.block_q, 1), q_index)
    k_spec = pl.BlockSpec((None, None, plan.block_k, head_dim), k_index)
    tile_spec = pl.BlockSpec((None, None, plan.block_q, plan.block_k), bias_index)
    return pl.pallas_call(
        functools.partial(_dbias_kernel, plan=plan, reduce_size=reduce_size),
        grid=(bias_batch * bias_heads, plan.num_q, plan.num_k, reduce_size),
        in_specs=[q_spec, k_spec, k_spec, tile_spec, row_spec, row_spec, q_spec],
        out_specs=tile_spec,
        out_shape=jax.ShapeDtypeStruct(bias.shape[:2] + (plan.padded_q, plan.padded_kv), F32),
        scratch_shapes=[pltpu.VMEM((plan.block_q, plan.block_k), F32)],
        compiler_params=_compiler_params(plan),
        interpret=interpret,
    )(q, k, v, bias, lse, delta, do)
