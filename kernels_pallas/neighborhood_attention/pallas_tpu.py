"""Pallas TPU (Mosaic) kernels of fused neighborhood attention: forward (online softmax) and
the dq and dk/dv backward kernels. Also the kernels the CPU runs in interpret mode.

Status: tested in interpret mode (generic ``interpret=True``) and lowered to Mosaic MLIR on a
CPU machine (tests/kernels); never compiled or timed on a TPU.

Layout: canonical [BH, X, Y, D] per (batch, head) (1-D: X = 1), no dilation (the caller
regroups). The wrapper pads X and Y to whole blocks and re-tiles in XLA to
[BH, tiles_x, tiles_y, bx*by, D], so every block is a contiguous (rows, D) matrix and no kernel
reshapes. A query block is bqx x bqy queries; a key block bkx x bky keys.

Forward grid (BH, query tiles x, query tiles y, key steps x, key steps y): the keys of a query
tile's windows lie in one contiguous region per dim (``windows`` module docstring); the key
steps walk the key blocks of that region (the first one computed from the tile index in the
index map, so only touched key blocks are read; steps past the region's last block are skipped
with ``pl.when`` and their block index clamped), keeping the running max, sum and output in
VMEM scratch (flash attention's online softmax). The [N, N] logits never exist. The mask is
computed in-kernel from the query and key positions (NATTEN's inward-shifted window, or the
causal one), the relative-position bias arrives as one (Q, K) tile per (query tile, key step),
gathered from the [H, 2kx-1, 2ky-1] table by XLA outside (Mosaic has no vector gather).

Backward (flash-attention-2 style, from the residuals out and logsumexp): the dq kernel uses the
forward's grid and also writes the logits gradient of each (query tile, key step), which is the
bias tiles' gradient (XLA scatters it back into the table); the dk/dv kernel has grid (BH, key
tiles x, key tiles y, query steps x, query steps y) over the contiguous range of query blocks
whose windows reach the key tile (``windows.query_range``).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.neighborhood_attention import windows

F32 = jnp.float32
NEG = -1e30
NT_DIMS = (((1,), (1,)), ((), ()))   # a @ b.T
TN_DIMS = (((0,), (0,)), ((), ()))   # a.T @ b
NN_DIMS = (((1,), (0,)), ((), ()))   # a @ b


def _div(a, b: int, xp):
    """a // b for non-negative a: ``lax.div`` on traced ints (jnp's floor division lowers via
    ``sign``, which Mosaic only lowers on a real TPU)."""
    return a // b if xp is np else lax.div(a, jnp.asarray(b, jnp.int32))


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclasses.dataclass(frozen=True)
class DimPlan:
    """Tiling of one spatial dimension (static)."""
    n: int            # true length
    k: int            # kernel size (odd)
    causal: bool
    bq: int           # queries per block along this dim
    bk: int           # keys per block
    padded: int       # n rounded up to whole query and key blocks
    steps_k: int      # key blocks a query tile touches (max over tiles)
    steps_q: int      # query blocks a key tile is reached from (max over tiles)

    @property
    def tiles_q(self) -> int:
        return self.padded // self.bq

    @property
    def tiles_k(self) -> int:
        return self.padded // self.bk

    # The four maps below work on Python/NumPy ints and traced int32 scalars alike.
    def first_key_block(self, t, xp=jnp):
        return _div(windows.window_start(t * self.bq, self.n, self.k, self.causal, xp), self.bk, xp)

    def last_key_block(self, t, xp=jnp):
        last = xp.minimum(t * self.bq + self.bq - 1, self.n - 1)
        return _div(windows.window_end(last, self.n, self.k, self.causal, xp) - 1, self.bk, xp)

    def first_query_block(self, j, xp=jnp):
        first, _ = windows.query_range(xp.minimum(j * self.bk, self.n - 1), self.n, self.k,
                                       self.causal, xp)
        return _div(first, self.bq, xp)

    def last_query_block(self, j, xp=jnp):
        _, end = windows.query_range(xp.minimum(j * self.bk + self.bk - 1, self.n - 1), self.n,
                                     self.k, self.causal, xp)
        return _div(end - 1, self.bq, xp)


def dim_plan(n: int, k: int, causal: bool, block_q: int, block_k: int, sublane: bool) -> DimPlan:
    """Blocks no larger than the (8-rounded, for the sublane dim) length; static step counts."""
    unit = 8 if sublane else 1
    bq = min(block_q, _round_up(n, unit))
    bk = min(block_k, _round_up(n, unit))
    padded = _round_up(n, math.lcm(bq, bk))
    plan = DimPlan(n, k, causal, bq, bk, padded, 0, 0)
    t = np.arange(plan.tiles_q)
    steps_k = int(np.max(plan.last_key_block(t, np) - plan.first_key_block(t, np) + 1))
    j = np.arange(plan.tiles_k)
    steps_q = int(np.max(plan.last_query_block(j, np) - plan.first_query_block(j, np) + 1))
    return dataclasses.replace(plan, steps_k=steps_k, steps_q=steps_q)


@dataclasses.dataclass(frozen=True)
class Plan:
    x: DimPlan
    y: DimPlan
    heads: int
    scale: float
    has_bias: bool

    @property
    def block_q(self) -> int:
        return self.x.bq * self.y.bq

    @property
    def block_k(self) -> int:
        return self.x.bk * self.y.bk


def make_plan(spatial, kernel_size, causal, heads, scale, has_bias, blocks) -> Plan:
    """``blocks`` = ((bqx, bqy), (bkx, bky)); Y is the TPU sublane dim of the tiled layout."""
    (bqx, bqy), (bkx, bky) = blocks
    return Plan(dim_plan(spatial[0], kernel_size[0], causal[0], bqx, bkx, sublane=False),
                dim_plan(spatial[1], kernel_size[1], causal[1], bqy, bky, sublane=True),
                heads, float(scale), has_bias)


# ------------------------------------------------------------------------ XLA-side layout
def to_tiles(x, plan: Plan, bx: int, by: int):
    """[BH, X, Y, D] -> [BH, Xp/bx, Yp/by, bx*by, D] (zero padded)."""
    bh, nx, ny, d = x.shape
    x = jnp.pad(x, ((0, 0), (0, plan.x.padded - nx), (0, plan.y.padded - ny), (0, 0)))
    x = x.reshape(bh, plan.x.padded // bx, bx, plan.y.padded // by, by, d)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(bh, plan.x.padded // bx, plan.y.padded // by,
                                                 bx * by, d)


def from_tiles(x, plan: Plan, bx: int, by: int):
    bh, tx, ty, _, d = x.shape
    x = x.reshape(bh, tx, ty, bx, by, d).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(bh, tx * bx, ty * by, d)[:, :plan.x.n, :plan.y.n]


def _key_block_positions(dim: DimPlan, xp=np):
    """[tiles_q, steps_k]: the key block each (query tile, key step) reads (clamped)."""
    t = np.arange(dim.tiles_q)[:, None]
    return np.minimum(dim.first_key_block(t, xp) + np.arange(dim.steps_k)[None],
                      dim.tiles_k - 1)


def bias_tiles(rpb, plan: Plan):
    """The rpb logits of every (query tile, key step): [H, tqx, tqy, sx, sy, Q, K] float32.
    A static-index gather from the [H, 2kx-1, 2ky-1] table (its transpose, a scatter-add, is
    the table's gradient). Entries outside the windows are masked in-kernel."""
    def rel(dim: DimPlan):  # [tiles_q, steps_k, bq, bk] index into the bias axis
        kb = _key_block_positions(dim)
        qpos = np.arange(dim.tiles_q)[:, None, None, None] * dim.bq + \
            np.arange(dim.bq)[None, None, :, None]
        kpos = kb[:, :, None, None] * dim.bk + np.arange(dim.bk)[None, None, None, :]
        return np.clip(kpos - qpos + dim.k - 1, 0, 2 * dim.k - 2)

    bias = jnp.take(rpb.astype(F32), rel(plan.x), axis=1)  # [H, tqx, sx, bqx, bkx, 2ky-1]
    bias = jnp.take(bias, rel(plan.y), axis=5)  # [H, tqx, sx, bqx, bkx, tqy, sy, bqy, bky]
    bias = bias.transpose(0, 1, 5, 2, 6, 3, 7, 4, 8)
    shape = bias.shape
    return bias.reshape(*shape[:5], plan.block_q, plan.block_k)


def _offsets(bx: int, by: int):
    """Row offsets (x, y) of the bx*by positions of a tile, as int32 arrays."""
    u = np.arange(bx * by)
    return jnp.asarray(u // by, jnp.int32), jnp.asarray(u % by, jnp.int32)


# ----------------------------------------------------------------------------- in-kernel
def _mask(plan: Plan, offs, tqx, tqy, kbx, kby):
    """[Q, K] bool: query (tile tqx, tqy) row attends key (block kbx, kby) column."""
    qox, qoy, kox, koy = (r[...] for r in offs)  # [Q, 1], [Q, 1], [1, K], [1, K]
    mask = None
    for dim, t, qo, kb, ko in ((plan.x, tqx, qox, kbx, kox), (plan.y, tqy, qoy, kby, koy)):
        qpos = jnp.minimum(t * dim.bq + qo, dim.n - 1)  # padded queries borrow the last window
        lo = windows.window_start(qpos, dim.n, dim.k, dim.causal, jnp)
        hi = windows.window_end(qpos, dim.n, dim.k, dim.causal, jnp)
        kpos = kb * dim.bk + ko
        m = (kpos >= lo) & (kpos < hi)
        mask = m if mask is None else mask & m
    return mask


def _logits(plan: Plan, q, k, bias_ref):
    s = lax.dot_general(q, k, NT_DIMS, preferred_element_type=F32) * plan.scale
    if bias_ref is not None:
        s = s + bias_ref[...]
    return s


def _forward_kernel(*refs, plan: Plan):
    offs, (q_ref, k_ref, v_ref), rest = refs[:4], refs[4:7], refs[7:]
    bias_ref = rest[0] if plan.has_bias else None
    o_ref, lse_ref, m_sc, l_sc, acc_sc = rest[1:] if plan.has_bias else rest
    tqx, tqy, sx, sy = (pl.program_id(i) for i in range(1, 5))
    kbx = plan.x.first_key_block(tqx) + sx
    kby = plan.y.first_key_block(tqy) + sy

    @pl.when((sx == 0) & (sy == 0))
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, NEG, F32)
        l_sc[...] = jnp.zeros(l_sc.shape, F32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, F32)

    @pl.when((kbx <= plan.x.last_key_block(tqx)) & (kby <= plan.y.last_key_block(tqy)))
    def _step():
        v = v_ref[...]
        mask = _mask(plan, offs, tqx, tqy, kbx, kby)
        s = jnp.where(mask, _logits(plan, q_ref[...], k_ref[...], bias_ref), NEG)
        m_prev = m_sc[...]
        m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))
        p = jnp.where(mask, jnp.exp(s - m_new), 0.0)
        alpha = jnp.exp(m_prev - m_new)
        m_sc[...] = m_new
        l_sc[...] = alpha * l_sc[...] + jnp.sum(p, axis=1, keepdims=True)
        acc_sc[...] = alpha * acc_sc[...] + lax.dot_general(
            p.astype(v.dtype), v, NN_DIMS, preferred_element_type=F32)

    @pl.when((sx == plan.x.steps_k - 1) & (sy == plan.y.steps_k - 1))
    def _finish():
        l = l_sc[...]
        o_ref[...] = (acc_sc[...] / l).astype(o_ref.dtype)
        lse_ref[...] = m_sc[...] + jnp.log(l)


def _offset_specs(plan: Plan):
    zeros = (lambda *_: (0, 0))
    return [pl.BlockSpec((plan.block_q, 1), zeros), pl.BlockSpec((plan.block_q, 1), zeros),
            pl.BlockSpec((1, plan.block_k), zeros), pl.BlockSpec((1, plan.block_k), zeros)]


def _offset_arrays(plan: Plan):
    qox, qoy = _offsets(plan.x.bq, plan.y.bq)
    kox, koy = _offsets(plan.x.bk, plan.y.bk)
    return [qox[:, None], qoy[:, None], kox[None, :], koy[None, :]]


def _forward_specs(plan: Plan, dim: int):
    """Index maps of the (BH, tqx, tqy, sx, sy) grid."""
    q_block = (None, None, None, plan.block_q, dim)
    k_block = (None, None, None, plan.block_k, dim)

    def q_map(b, tx, ty, sx, sy):
        return b, tx, ty, 0, 0

    def k_map(b, tx, ty, sx, sy):
        return (b, jnp.minimum(plan.x.first_key_block(tx) + sx, plan.x.tiles_k - 1),
                jnp.minimum(plan.y.first_key_block(ty) + sy, plan.y.tiles_k - 1), 0, 0)

    def bias_map(b, tx, ty, sx, sy):
        return lax.rem(b, plan.heads), tx, ty, sx, sy, 0, 0

    bias_spec = pl.BlockSpec((None,) * 5 + (plan.block_q, plan.block_k), bias_map)
    return (pl.BlockSpec(q_block, q_map), pl.BlockSpec(k_block, k_map), bias_spec,
            pl.BlockSpec((None, None, None, plan.block_q, 1), q_map))


def _compiler_params():
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel",
                                                     "arbitrary", "arbitrary"))


def forward(plan: Plan, q, k, v, bias, interpret):
    """q, k, v tiled [BH, t_x, t_y, rows, D]; bias [H, tqx, tqy, sx, sy, Q, K] or None.
    Returns (out tiled like q, logsumexp [BH, tqx, tqy, Q, 1]), both float32: the backward's
    rowsum(dout * out) then uses the unrounded output, as the reference's autodiff does (a
    bfloat16-rounded out would put ~0.4% errors into the bias gradient)."""
    bh, tqx, tqy, _, dim = q.shape
    q_spec, k_spec, bias_spec, lse_spec = _forward_specs(plan, dim)
    in_specs = _offset_specs(plan) + [q_spec, k_spec, k_spec]
    args = _offset_arrays(plan) + [q, k, v]
    if plan.has_bias:
        in_specs.append(bias_spec)
        args.append(bias)
    return pl.pallas_call(
        functools.partial(_forward_kernel, plan=plan),
        out_shape=(jax.ShapeDtypeStruct(q.shape, F32),
                   jax.ShapeDtypeStruct((bh, tqx, tqy, plan.block_q, 1), F32)),
        grid=(bh, tqx, tqy, plan.x.steps_k, plan.y.steps_k),
        in_specs=in_specs,
        out_specs=(q_spec, lse_spec),
        scratch_shapes=[pltpu.VMEM((plan.block_q, 1), F32), pltpu.VMEM((plan.block_q, 1), F32),
                        pltpu.VMEM((plan.block_q, dim), F32)],
        compiler_params=_compiler_params(),
        interpret=interpret,
        name="neighborhood_attention_fwd",
    )(*args)


def _probs_and_dlogits(plan, mask, q, k, v, do, lse, delta, bias_ref):
    s = _logits(plan, q, k, bias_ref)
    p = jnp.where(mask, jnp.exp(s - lse), 0.0)
    dp = lax.dot_general(do, v, NT_DIMS, preferred_element_type=F32)
    return p, p * (dp - delta)


def _dq_kernel(*refs, plan: Plan):
    offs, (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), rest = refs[:4], refs[4:10], \
        refs[10:]
    if plan.has_bias:
        bias_ref, dq_ref, dbias_ref, acc_sc = rest
    else:
        bias_ref, dbias_ref = None, None
        dq_ref, acc_sc = rest
    tqx, tqy, sx, sy = (pl.program_id(i) for i in range(1, 5))
    kbx = plan.x.first_key_block(tqx) + sx
    kby = plan.y.first_key_block(tqy) + sy
    valid = (kbx <= plan.x.last_key_block(tqx)) & (kby <= plan.y.last_key_block(tqy))

    @pl.when((sx == 0) & (sy == 0))
    def _init():
        acc_sc[...] = jnp.zeros(acc_sc.shape, F32)

    @pl.when(valid)
    def _step():
        k = k_ref[...]
        mask = _mask(plan, offs, tqx, tqy, kbx, kby)
        _, ds = _probs_and_dlogits(plan, mask, q_ref[...], k, v_ref[...], do_ref[...],
                                   lse_ref[...], delta_ref[...], bias_ref)
        acc_sc[...] += lax.dot_general(ds.astype(k.dtype), k, NN_DIMS,
                                       preferred_element_type=F32) * plan.scale
        if dbias_ref is not None:
            dbias_ref[...] = ds

    if dbias_ref is not None:
        @pl.when(jnp.logical_not(valid))
        def _skip():
            dbias_ref[...] = jnp.zeros(dbias_ref.shape, F32)

    @pl.when((sx == plan.x.steps_k - 1) & (sy == plan.y.steps_k - 1))
    def _finish():
        dq_ref[...] = acc_sc[...].astype(dq_ref.dtype)


def backward_dq(plan: Plan, q, k, v, do, lse, delta, bias, interpret):
    """dq (tiled like q) and, with a bias, the logits gradient per bias tile."""
    bh, tqx, tqy, _, dim = q.shape
    q_spec, k_spec, bias_spec, lse_spec = _forward_specs(plan, dim)
    in_specs = _offset_specs(plan) + [q_spec, k_spec, k_spec, q_spec, lse_spec, lse_spec]
    args = _offset_arrays(plan) + [q, k, v, do, lse, delta]
    out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype)]
    out_specs = [q_spec]
    if plan.has_bias:
        in_specs.append(bias_spec)
        args.append(bias)
        # The gradient tile is per (batch*head), summed over the batch by the caller.
        out_shape.append(jax.ShapeDtypeStruct((bh, *bias.shape[1:]), F32))
        out_specs.append(pl.BlockSpec((None,) * 5 + (plan.block_q, plan.block_k),
                                      lambda b, tx, ty, sx, sy: (b, tx, ty, sx, sy, 0, 0)))
    out = pl.pallas_call(
        functools.partial(_dq_kernel, plan=plan),
        out_shape=tuple(out_shape),
        grid=(bh, tqx, tqy, plan.x.steps_k, plan.y.steps_k),
        in_specs=in_specs,
        out_specs=tuple(out_specs),
        scratch_shapes=[pltpu.VMEM((plan.block_q, dim), F32)],
        compiler_params=_compiler_params(),
        interpret=interpret,
        name="neighborhood_attention_dq",
    )(*args)
    return out if plan.has_bias else (out[0], None)


def _dkv_kernel(*refs, plan: Plan):
    offs, (q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref), rest = refs[:4], refs[4:10], \
        refs[10:]
    if plan.has_bias:
        bias_ref, dk_ref, dv_ref, dk_sc, dv_sc = rest
    else:
        bias_ref = None
        dk_ref, dv_ref, dk_sc, dv_sc = rest
    kbx, kby, rx, ry = (pl.program_id(i) for i in range(1, 5))
    tqx = plan.x.first_query_block(kbx) + rx
    tqy = plan.y.first_query_block(kby) + ry

    @pl.when((rx == 0) & (ry == 0))
    def _init():
        dk_sc[...] = jnp.zeros(dk_sc.shape, F32)
        dv_sc[...] = jnp.zeros(dv_sc.shape, F32)

    @pl.when((tqx <= plan.x.last_query_block(kbx)) & (tqy <= plan.y.last_query_block(kby)))
    def _step():
        q, do = q_ref[...], do_ref[...]
        mask = _mask(plan, offs, tqx, tqy, kbx, kby)
        p, ds = _probs_and_dlogits(plan, mask, q, k_ref[...], v_ref[...], do, lse_ref[...],
                                   delta_ref[...], bias_ref)
        dv_sc[...] += lax.dot_general(p.astype(do.dtype), do, TN_DIMS,
                                      preferred_element_type=F32)
        dk_sc[...] += lax.dot_general(ds.astype(q.dtype), q, TN_DIMS,
                                      preferred_element_type=F32) * plan.scale

    @pl.when((rx == plan.x.steps_q - 1) & (ry == plan.y.steps_q - 1))
    def _finish():
        dk_ref[...] = dk_sc[...].astype(dk_ref.dtype)
        dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def backward_dkv(plan: Plan, q, k, v, do, lse, delta, bias, interpret):
    """dk, dv (tiled like k)."""
    bh, tkx, tky, _, dim = k.shape

    def query_tiles(b, jx, jy, rx, ry):
        return (jnp.minimum(plan.x.first_query_block(jx) + rx, plan.x.tiles_q - 1),
                jnp.minimum(plan.y.first_query_block(jy) + ry, plan.y.tiles_q - 1))

    def q_map(b, jx, jy, rx, ry):
        return (b, *query_tiles(b, jx, jy, rx, ry), 0, 0)

    def k_map(b, jx, jy, rx, ry):
        return b, jx, jy, 0, 0

    def bias_map(b, jx, jy, rx, ry):
        tx, ty = query_tiles(b, jx, jy, rx, ry)
        sx = jnp.clip(jx - plan.x.first_key_block(tx), 0, plan.x.steps_k - 1)
        sy = jnp.clip(jy - plan.y.first_key_block(ty), 0, plan.y.steps_k - 1)
        return lax.rem(b, plan.heads), tx, ty, sx, sy, 0, 0

    q_spec = pl.BlockSpec((None, None, None, plan.block_q, dim), q_map)
    k_spec = pl.BlockSpec((None, None, None, plan.block_k, dim), k_map)
    lse_spec = pl.BlockSpec((None, None, None, plan.block_q, 1), q_map)
    in_specs = _offset_specs(plan) + [q_spec, k_spec, k_spec, q_spec, lse_spec, lse_spec]
    args = _offset_arrays(plan) + [q, k, v, do, lse, delta]
    if plan.has_bias:
        in_specs.append(pl.BlockSpec((None,) * 5 + (plan.block_q, plan.block_k), bias_map))
        args.append(bias)
    return pl.pallas_call(
        functools.partial(_dkv_kernel, plan=plan),
        out_shape=(jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape,
                                                                                v.dtype)),
        grid=(bh, tkx, tky, plan.x.steps_q, plan.y.steps_q),
        in_specs=in_specs,
        out_specs=(k_spec, k_spec),
        scratch_shapes=[pltpu.VMEM((plan.block_k, dim), F32),
                        pltpu.VMEM((plan.block_k, dim), F32)],
        compiler_params=_compiler_params(),
        interpret=interpret,
        name="neighborhood_attention_dkv",
    )(*args)
