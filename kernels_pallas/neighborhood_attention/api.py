"""``neighborhood_attention``: the public function, argument checks, implementation dispatch,
the ``custom_vjp`` of the Pallas path and the ``shard_map`` wrapper.

Semantics are NATTEN's (Hassani et al., "Neighborhood Attention Transformer", CVPR 2023,
arXiv:2204.07143; "Dilated Neighborhood Attention Transformer", arXiv:2209.15001): each query
attends a window of ``kernel_size`` keys per spatial dimension, centred on the query and
SHIFTED INWARD at the borders (a query at the border attends exactly the first / last k keys;
nothing is zero-padded), so every query attends exactly k (1-D) or kx*ky (2-D) keys. With
dilation d the positions split into d interleaved groups (position mod d); each group runs
neighbourhood attention with kernel k among its own members. ``is_causal``: query j of a group
attends members max(0, j - k + 1) .. j (fewer than k near the start).

Paths (``implementation``):

* ``"xla"``: pure XLA, differentiated by JAX: query tiles against the key region their windows
  span (``xla.py``), O(N * (tile + k - 1)) work and memory instead of the reference's O(N^2).
* ``"pallas"``: the fused Pallas kernels (``pallas_tpu.py``): online softmax over the key
  blocks a query block's windows touch, mask and bias applied in-kernel, backward kernels for
  dq and dk/dv under a ``jax.custom_vjp`` with residuals (out, logsumexp); on CPU interpreted
  (``kernels_pallas.core.pallas_target``), a correctness path, not a speed path.
* ``None``: ``"xla"`` on CPU; on GPU/TPU the Pallas kernels only on device kinds listed in
  ``tuning.AUTO_PALLAS_DEVICE_KINDS`` (none yet: they have not been timed on hardware), else
  ``"xla"``.

Both fast paths work on the canonical layout [B, X, Y, H, D] without dilation: 1-D inputs get
X = 1, and a dilated dimension is regrouped (:func:`regrouped`: reshape/transpose its d
interleaved groups into the batch; when d does not divide the size the groups have two lengths
and each length class is one call), which is exact because NATTEN's dilated window is the
non-dilated window inside each group. The relative-position bias depends only on the key-query
offset in group units, so it passes through unchanged.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp

from kernels_pallas import core
from kernels_pallas.neighborhood_attention import tuning, xla

F32 = jnp.float32
#: Input dtypes the op accepts (the result has q's dtype).
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class Geometry:
    """A checked call. 1-D calls have one entry per tuple, 2-D calls two."""
    batch: int
    spatial: tuple[int, ...]
    heads: int
    dim: int
    kernel_size: tuple[int, ...]
    dilation: tuple[int, ...]
    causal: tuple[bool, ...]
    scale: float

    @property
    def ndim(self) -> int:
        return len(self.spatial)

    @property
    def tokens(self) -> int:
        return math.prod(self.spatial)

    @property
    def window(self) -> int:
        """Keys per (non-causal) query: k in 1-D, kx*ky in 2-D."""
        return math.prod(self.kernel_size)


def _per_dim(argument: str, value: Any, ndim: int, kind: type, what: str) -> tuple:
    def ok(v):
        if kind is bool:
            return isinstance(v, (bool,)) or (hasattr(v, "dtype") and v.dtype == bool
                                              and getattr(v, "ndim", 1) == 0)
        return isinstance(v, int) and not isinstance(v, bool)

    if ok(value):
        values = (value,) * ndim
    elif isinstance(value, (tuple, list)) and len(value) == ndim and all(ok(v) for v in value):
        values = tuple(value)
    else:
        form = "an int" if kind is int else "a bool"
        raise ValueError(f"{argument}={value!r} is not supported: give {form}"
                         + (" or a pair of them (one per spatial dim)" if ndim == 2 else
                            " (1-D input)") + f"; {what}")
    return tuple(kind(v) for v in values)


def check_arguments(q, k, v, *, kernel_size, dilation=1, is_causal=False, rpb=None,
                    scale=None, implementation=None) -> Geometry:
    """Validates a call (before anything is traced); returns its :class:`Geometry`.

    Raises ``ValueError`` naming the argument and its valid values.
    """
    core.check_implementation(implementation)
    if getattr(q, "ndim", None) not in (4, 5):
        raise ValueError(f"q must be [B, L, H, D] (1-D) or [B, X, Y, H, D] (2-D), got shape "
                         f"{jnp.shape(q)}")
    if jnp.dtype(q.dtype).name not in DTYPES:
        raise ValueError(f"q.dtype={jnp.dtype(q.dtype).name} is not supported; valid: "
                         f"{list(DTYPES)}")
    for name, t in (("k", k), ("v", v)):
        if getattr(t, "shape", None) != q.shape or t.dtype != q.dtype:
            raise ValueError(f"{name} must have q's shape {tuple(q.shape)} and dtype "
                             f"{jnp.dtype(q.dtype).name}, got shape {jnp.shape(t)} and dtype "
                             f"{getattr(t, 'dtype', None)}")
    ndim = q.ndim - 3
    batch, spatial, heads, dim = q.shape[0], tuple(q.shape[1:1 + ndim]), q.shape[-2], q.shape[-1]
    if min(q.shape[1:]) < 1:
        raise ValueError(f"q must have no empty dimension but the batch (B may be 0), got "
                         f"shape {tuple(q.shape)}")
    kernel = _per_dim("kernel_size", kernel_size, ndim, int, "each an odd int >= 1")
    if any(kk < 1 or kk % 2 == 0 for kk in kernel):
        raise ValueError(f"kernel_size={kernel_size!r} is not supported: each must be an odd "
                         f"int >= 1 (the window is centred on the query)")
    dil = _per_dim("dilation", dilation, ndim, int, "each an int >= 1")
    if any(d < 1 for d in dil):
        raise ValueError(f"dilation={dilation!r} is not supported: each must be an int >= 1")
    causal = _per_dim("is_causal", is_causal, ndim, bool, "True or False")
    axes = ("L",) if ndim == 1 else ("X", "Y")
    for axis, n, kk, d in zip(axes, spatial, kernel, dil):
        if kk * d > n:
            raise ValueError(f"kernel_size * dilation = {kk} * {d} = {kk * d} is larger than the "
                             f"input along {axis} ({n}): every dilation group needs at least "
                             f"kernel_size members; reduce kernel_size or dilation")
    if rpb is not None:
        expected = (heads, *(2 * kk - 1 for kk in kernel))
        if getattr(rpb, "shape", None) != expected or not jnp.issubdtype(rpb.dtype,
                                                                         jnp.floating):
            layout = "[H, 2k-1]" if ndim == 1 else "[H, 2kx-1, 2ky-1]"
            raise ValueError(f"rpb must be None or a floating {layout} = {list(expected)} array, "
                             f"got shape {jnp.shape(rpb)}")
    if scale is None:
        scale = 1.0 / math.sqrt(dim)
    elif isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(
            scale):
        raise ValueError(f"scale={scale!r} is not supported: give None (1/sqrt(D)) or a finite "
                         f"Python number")
    return Geometry(batch, spatial, heads, dim, kernel, dil, causal, float(scale))


def choose_implementation(implementation: str | None, geometry: Geometry) -> str:
    """The path a call takes: "xla" or "pallas" (module docstring)."""
    if implementation is not None:
        return implementation
    if core.platform() != "cpu" and any(core.device_kind().startswith(kind)
                                        for kind in tuning.AUTO_PALLAS_DEVICE_KINDS):
        return "pallas"
    return "xla"


def regrouped(fn, tensors, dilation):
    """``fn(*tensors)`` for [B, X, Y, H, D] tensors, run per dilation group (module docstring):
    ``fn`` sees no dilation and returns one [B', X', Y', H, D] array like its first input."""
    def inner(*ts):
        return _regroup_axis(fn, ts, 2, dilation[1])
    return _regroup_axis(inner, tensors, 1, dilation[0])


def _regroup_axis(fn, tensors, axis, d):
    if d == 1:
        return fn(*tensors)
    n = tensors[0].shape[axis]
    full, rem = -(-n // d), n % d

    def split(t):  # [B, ..n.., ...] -> [B, d, full, ...]: group r holds positions r, r+d, ...
        t = jnp.moveaxis(t, axis, 1)
        t = jnp.pad(t, [(0, 0), (0, full * d - n)] + [(0, 0)] * (t.ndim - 2))
        return jnp.swapaxes(t.reshape(t.shape[0], full, d, *t.shape[2:]), 1, 2)

    parts = [split(t) for t in tensors]
    batch, rest = parts[0].shape[0], parts[0].shape[3:]
    # Groups r < rem have `full` members, the others full - 1 (their last slot is padding).
    classes = [(0, d, full)] if rem == 0 else [(0, rem, full), (rem, d, full - 1)]
    outs = []
    for first, last, length in classes:
        sub = [jnp.moveaxis(p[:, first:last, :length].reshape(-1, length, *rest), 1, axis)
               for p in parts]
        out = jnp.moveaxis(fn(*sub), axis, 1).reshape(batch, last - first, length, *rest)
        outs.append(jnp.pad(out, [(0, 0), (0, 0), (0, full - length)]
                            + [(0, 0)] * len(rest)))
    out = jnp.swapaxes(jnp.concatenate(outs, axis=1), 1, 2).reshape(batch, full * d, *rest)
    return jnp.moveaxis(out[:, :n], 1, axis)


# ------------------------------------------------------------------------------ pallas path
@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _fused(plan, interpret, q, k, v, bias):
    """Fused attention of tiled [BH, tiles_x, tiles_y, rows, D] q/k/v (``pallas_tpu``); the
    result is float32 (rounded to q's dtype by the caller)."""
    from kernels_pallas.neighborhood_attention import pallas_tpu
    return pallas_tpu.forward(plan, q, k, v, bias, interpret)[0]


def _fused_fwd(plan, interpret, q, k, v, bias):
    from kernels_pallas.neighborhood_attention import pallas_tpu
    out, lse = pallas_tpu.forward(plan, q, k, v, bias, interpret)
    return out, (q, k, v, bias, out, lse)


def _fused_bwd(plan, interpret, residuals, d_out):
    from kernels_pallas.neighborhood_attention import pallas_tpu
    q, k, v, bias, out, lse = residuals
    delta = jnp.sum(d_out.astype(F32) * out.astype(F32), axis=-1, keepdims=True)
    d_out = d_out.astype(q.dtype)
    dq, dbias = pallas_tpu.backward_dq(plan, q, k, v, d_out, lse, delta, bias, interpret)
    dk, dv = pallas_tpu.backward_dkv(plan, q, k, v, d_out, lse, delta, bias, interpret)
    if bias is not None:  # per (batch, head) tiles -> per head
        dbias = dbias.reshape(-1, *bias.shape).sum(axis=0).astype(bias.dtype)
    return dq, dk, dv, dbias


_fused.defvjp(_fused_fwd, _fused_bwd)


def _pallas_attention(q, k, v, rpb, *, kernel_size, causal, scale, ndim):
    """Canonical [B, X, Y, H, D], no dilation, by the Pallas kernels."""
    from kernels_pallas.neighborhood_attention import pallas_tpu
    target, interpret = core.pallas_target()
    if target != "tpu":
        raise NotImplementedError(
            "neighborhood_attention: no Mosaic GPU kernel yet (only the TPU kernel, which runs "
            "compiled on TPU and interpreted on CPU); use implementation=None or 'xla' on GPU")
    batch, nx, ny, heads, dim = q.shape
    (bqx, bqy), (bkx, bky) = blocks = tuning.pallas_blocks().blocks(ndim)
    plan = pallas_tpu.make_plan((nx, ny), kernel_size, causal, heads, scale, rpb is not None,
                                blocks)
    bqx, bqy, bkx, bky = plan.x.bq, plan.y.bq, plan.x.bk, plan.y.bk

    def tiles(t, bx, by):
        t = t.transpose(0, 3, 1, 2, 4).reshape(batch * heads, nx, ny, dim)
        return pallas_tpu.to_tiles(t, plan, bx, by)

    bias = None if rpb is None else pallas_tpu.bias_tiles(rpb, plan)
    out = _fused(plan, interpret, tiles(q, bqx, bqy), tiles(k, bkx, bky), tiles(v, bkx, bky),
                 bias)
    out = pallas_tpu.from_tiles(out, plan, bqx, bqy).astype(q.dtype)
    return out.reshape(batch, heads, nx, ny, dim).transpose(0, 2, 3, 1, 4)


# ----------------------------------------------------------------------------- public fn
def neighborhood_attention(q, k, v, *, kernel_size, dilation=1, is_causal=False, rpb=None,
                           scale=None, implementation: str | None = None):
    """Neighborhood attention (NATTEN semantics), 1-D or 2-D, heads-last.

    Each query attends the ``kernel_size`` (per dim) nearest keys of its dilation group: a
    window centred on the query that SHIFTS INWARD at the borders instead of being zero-padded
    (so a query at position 0 attends keys 0..k-1, the same keys as query k//2). See the module
    docstring of ``kernels_pallas.neighborhood_attention.api`` for dilation and causal masks.

    Args:
      q, k, v: [B, L, H, D] (1-D) or [B, X, Y, H, D] (2-D), all the same shape and dtype
        (float32, bfloat16 or float16). B may be 0 (an empty result and a zero rpb gradient
        on every path); the other dimensions must be >= 1.
      kernel_size: odd window size, an int or (2-D) a pair (kx, ky).
      dilation: an int or a pair; kernel_size * dilation must not exceed the input size.
      is_causal: a bool or (2-D) a pair: query j attends keys max(0, j-k+1)..j of its group.
      rpb: optional relative positional bias (NAT), [H, 2k-1] or [H, 2kx-1, 2ky-1], added to
        the logits at index (key - query + k - 1) per dim, in dilation-group units;
        differentiable. With ``is_causal`` (keys never after the query) only the entries
        0..k-1 are used; NATTEN refuses rpb with causal masks, this op supports it.
      scale: logit scale, default 1/sqrt(D).
      implementation: None (fastest known correct path), "xla" or "pallas".

    Returns:
      q's shape and dtype. Softmax and accumulation in float32 on every path.
    """
    geometry = check_arguments(q, k, v, kernel_size=kernel_size, dilation=dilation,
                               is_causal=is_causal, rpb=rpb, scale=scale,
                               implementation=implementation)
    path = choose_implementation(implementation, geometry)
    if geometry.batch == 0:  # nothing to compute; the XLA path handles empty arrays
        path = "xla"
    one_d = geometry.ndim == 1
    kernel = (1, *geometry.kernel_size) if one_d else geometry.kernel_size
    dilation_2d = (1, *geometry.dilation) if one_d else geometry.dilation
    causal = (False, *geometry.causal) if one_d else geometry.causal
    if rpb is not None and one_d:
        rpb = rpb[:, None, :]

    if path == "xla":
        tiles = tuning.xla_tiles().tiles(geometry.ndim, geometry.kernel_size)

        def canonical(q, k, v, rpb):
            return xla.attention(q, k, v, rpb, kernel_size=kernel, causal=causal,
                                 scale=geometry.scale, tiles=tiles)
    else:
        def canonical(q, k, v, rpb):
            return _pallas_attention(q, k, v, rpb, kernel_size=kernel, causal=causal,
                                     scale=geometry.scale, ndim=geometry.ndim)

    def run(q, k, v, rpb):
        if one_d:
            q, k, v = (t[:, None] for t in (q, k, v))
        out = regrouped(lambda q, k, v: canonical(q, k, v, rpb), (q, k, v), dilation_2d)
        return out[:, 0] if one_d else out

    if path == "pallas":
        return core.shard_batch(run, [q, k, v], [rpb])
    return run(q, k, v, rpb)
