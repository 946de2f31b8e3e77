"""``flash_attention``: the public function, argument checks, implementation dispatch, the
``custom_vjp`` of the Pallas path and the ``shard_map`` wrapper.

Conventions are those of ``jax.nn.dot_product_attention``: q [B, L, H, D], k and v [B, S, H, D]
(L != S allowed), scores ``scale * q k^T + bias`` with ``scale = 1/sqrt(D)`` by default, an
additive ``bias`` [B|1, H|1, L, S] broadcast over batch and heads (CoAtNet's relative-position
bias is [1, H, L, S]), ``causal=True`` masks key j for query i when j > i (top-left aligned, as
``is_causal=True``; every query keeps key 0, so no row is empty). The softmax is computed in
float32 on every path; the result has ``q.dtype``. The bias is differentiable: its gradient is
the softmax gradient of the scores (dS), summed over the dimensions the bias broadcasts over.

Paths (``implementation``):

* ``"xla"``: ``jax.nn.dot_product_attention(implementation="xla")`` with the bias.
* ``"cudnn"``: ``jax.nn.dot_product_attention(implementation="cudnn")`` (NVIDIA GPUs only;
  cuDNN decides which shapes/dtypes it takes and raises otherwise).
* ``"pallas"``: the Pallas kernels of ``pallas_tpu.py`` (forward with online softmax, backward
  dq and dk/dv kernels; the bias gradient from the dq kernel's dS tiles, or for a large broadcast
  bias from a reduction kernel), compiled on TPU and interpreted on CPU
  (a correctness path, not a speed path). There is no GPU kernel yet: on GPU it raises
  ValueError.
* ``None``: the fastest correct path known for the backend: ``"xla"`` on CPU; on TPU the
  Pallas kernel only on device kinds in ``tuning.AUTO_PALLAS_DEVICE_KINDS``, on GPU cuDNN only
  on device kinds in ``tuning.AUTO_CUDNN_DEVICE_KINDS`` and for calls it takes (``cudnn_takes``)
  -- both tables are empty until a benchmark on that hardware is recorded, so today ``None`` is
  the XLA path everywhere.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers

import jax
import jax.numpy as jnp

from kernels_pallas import core
from kernels_pallas.flash_attention import tuning

#: Values ``implementation`` accepts (the framework's three plus cuDNN through jax.nn).
IMPLEMENTATIONS = (None, "xla", "pallas", "cudnn")
#: Input dtypes (q, k and v share one). float16 is left out: TPUs have no float16 arithmetic
#: and the test harness has no float16 tolerance.
DTYPES = ("float32", "bfloat16")
#: Dtypes cuDNN's flash attention takes (of DTYPES).
CUDNN_DTYPES = ("bfloat16",)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """A checked call."""
    batch: int
    q_len: int
    kv_len: int
    heads: int
    head_dim: int
    dtype: str
    bias_shape: tuple[int, int, int, int] | None
    causal: bool
    scale: float


def check_arguments(q, k, v, *, bias=None, causal=False, scale=None,
                    implementation=None) -> Geometry:
    """Validates a call (before anything is traced); returns its :class:`Geometry`.

    Raises ``ValueError`` naming the argument, the shape it got and the one it needs.
    """
    core.check_choice("implementation", implementation, IMPLEMENTATIONS)
    for name, x in (("q", q), ("k", k), ("v", v)):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"{name} must be 4-D [B, {'L' if name == 'q' else 'S'}, H, D] "
                             f"(the layout of jax.nn.dot_product_attention), got shape "
                             f"{jnp.shape(x)}")
    batch, q_len, heads, head_dim = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape [B, S, H, D], got k {k.shape} and "
                         f"v {v.shape}")
    if (k.shape[0], k.shape[2], k.shape[3]) != (batch, heads, head_dim):
        raise ValueError(f"k/v must be [B, S, H, D] = [{batch}, S, {heads}, {head_dim}] to match "
                         f"q {q.shape} (same batch, heads and head dim; grouped heads are not "
                         f"supported), got {k.shape}")
    kv_len = k.shape[1]
    if min(q.shape[1:]) < 1 or kv_len < 1:
        raise ValueError(f"empty attention: only the batch B may be 0 (L, S, H and D must be "
                         f">= 1), got q {q.shape}, k {k.shape}")
    dtype = jnp.dtype(q.dtype).name
    if dtype not in DTYPES or jnp.dtype(k.dtype) != q.dtype or jnp.dtype(v.dtype) != q.dtype:
        raise ValueError(f"q, k, v must share one dtype of {list(DTYPES)}, got q.dtype={q.dtype}, "
                         f"k.dtype={k.dtype}, v.dtype={v.dtype}")
    expected = f"[B|1, H|1, L, S] = [{batch} or 1, {heads} or 1, {q_len}, {kv_len}]"
    bias_shape = None
    if bias is not None:
        shape = tuple(getattr(bias, "shape", ()))
        ok = (len(shape) == 4 and shape[0] in (1, batch) and shape[1] in (1, heads)
              and shape[2:] == (q_len, kv_len))
        if not ok:
            raise ValueError(f"bias must be None or an additive {expected}, got shape "
                             f"{jnp.shape(bias)}")
        if not jnp.issubdtype(bias.dtype, jnp.floating):
            raise ValueError(f"bias.dtype={bias.dtype} must be a floating dtype")
        bias_shape = shape
    if not isinstance(causal, (bool, jnp.bool_)):
        raise ValueError(f"causal={causal!r} must be a Python bool (True or False)")
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim)
    elif (isinstance(scale, bool) or not isinstance(scale, numbers.Real)
          or not math.isfinite(scale) or scale == 0):
        raise ValueError(f"scale={scale!r} must be None (1/sqrt(D)) or a finite nonzero Python "
                         f"number")
    return Geometry(batch, q_len, kv_len, heads, head_dim, dtype, bias_shape, bool(causal),
                    float(scale))


def cudnn_takes(geometry: Geometry) -> bool:
    """Calls ``implementation=None`` may give cuDNN: bfloat16 inputs, a head dim that is a
    multiple of 8 up to 128, no bias (cuDNN's bias gradient only covers some broadcasts), and
    no causal mask with L != S (cuDNN may align it differently)."""
    return (geometry.dtype in CUDNN_DTYPES and geometry.head_dim % 8 == 0
            and geometry.head_dim <= 128 and geometry.bias_shape is None
            and not (geometry.causal and geometry.q_len != geometry.kv_len))


def choose_implementation(implementation: str | None, geometry: Geometry) -> str:
    """The path a call takes: "xla", "cudnn" or "pallas" (module docstring)."""
    plat = core.platform()
    if implementation == "cudnn" and plat != "gpu":
        raise ValueError(f"implementation='cudnn' needs an NVIDIA GPU, this backend is {plat!r}; "
                         f"valid here: {[i for i in IMPLEMENTATIONS if i != 'cudnn']}")
    if implementation is not None:
        return implementation
    if plat == "cpu":
        return "xla"
    kind = core.device_kind()
    if plat == "gpu" and cudnn_takes(geometry) and any(
            kind.startswith(k) for k in tuning.AUTO_CUDNN_DEVICE_KINDS):
        return "cudnn"
    if plat == "tpu" and any(kind.startswith(k) for k in tuning.AUTO_PALLAS_DEVICE_KINDS):
        return "pallas"
    return "xla"


# ------------------------------------------------------------------------------ pallas path
def _to_kernel_layout(x, padded_len):
    """[B, N, H, D] -> heads-major [B, H, N_padded, D], zero-padded along the sequence."""
    x = jnp.swapaxes(x, 1, 2)
    return jnp.pad(x, ((0, 0), (0, 0), (0, padded_len - x.shape[2]), (0, 0)))


def _from_kernel_layout(x, length):
    return jnp.swapaxes(x[:, :, :length], 1, 2)


def _pad_bias(bias, plan):
    return jnp.pad(bias, ((0, 0), (0, 0), (0, plan.padded_q - plan.q_len),
                          (0, plan.padded_kv - plan.kv_len)))


def _pallas_forward(q, k, v, bias, plan, interpret):
    from kernels_pallas.flash_attention import pallas_tpu
    qt = _to_kernel_layout(q, plan.padded_q)
    kt = _to_kernel_layout(k, plan.padded_kv)
    vt = _to_kernel_layout(v, plan.padded_kv)
    bias_p = None if bias is None else _pad_bias(bias, plan)
    o, lse = pallas_tpu.forward(qt, kt, vt, bias_p, plan, interpret)
    return _from_kernel_layout(o, plan.q_len), (qt, kt, vt, bias_p, o, lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _pallas_attention(q, k, v, bias, plan, interpret):
    return _pallas_forward(q, k, v, bias, plan, interpret)[0]


def _pallas_attention_fwd(q, k, v, bias, plan, interpret):
    out, residuals = _pallas_forward(q, k, v, bias, plan, interpret)
    bias_meta = None if bias is None else jax.ShapeDtypeStruct(bias.shape, bias.dtype)
    return out, (residuals, bias_meta)


def _pallas_attention_bwd(plan, interpret, saved, g):
    from kernels_pallas.flash_attention import pallas_tpu
    (qt, kt, vt, bias_p, o, lse), bias_meta = saved
    do = _to_kernel_layout(g.astype(qt.dtype), plan.padded_q)  # zero in padded rows
    dq, dk, dv, ds = pallas_tpu.backward(qt, kt, vt, bias_p, o, lse, do, plan, interpret)
    dbias = None
    if bias_meta is not None:
        ds = ds[:, :, :plan.q_len, :plan.kv_len]
        axes = tuple(a for a, n in ((0, bias_meta.shape[0]), (1, bias_meta.shape[1]))
                     if n == 1 and ds.shape[a] > 1)
        dbias = jnp.sum(ds, axis=axes, keepdims=True).astype(bias_meta.dtype)
    return (_from_kernel_layout(dq, plan.q_len), _from_kernel_layout(dk, plan.kv_len),
            _from_kernel_layout(dv, plan.kv_len), dbias)


_pallas_attention.defvjp(_pallas_attention_fwd, _pallas_attention_bwd)


def _pallas_path(q, k, v, bias, geometry: Geometry):
    target, interpret = core.pallas_target()
    if target != "tpu":
        raise ValueError("implementation='pallas': flash_attention has only a TPU-style kernel "
                         "(compiled on TPU, interpreted on CPU), no GPU kernel yet; on GPU use "
                         "implementation=None, 'xla' or 'cudnn'")
    from kernels_pallas.flash_attention import pallas_tpu
    plan = pallas_tpu.make_plan(geometry.batch, geometry.heads, geometry.q_len, geometry.kv_len,
                                geometry.causal, geometry.scale, geometry.bias_shape,
                                tuning.tpu_blocks(interpret))
    per_example_bias = bias is not None and bias.shape[0] > 1

    def run(q, k, v, *rest):
        bias = rest[0]
        return _pallas_attention(q, k, v, bias, plan, interpret)

    if per_example_bias:
        return core.shard_batch(run, [q, k, v, bias], [])
    return core.shard_batch(run, [q, k, v], [bias])


# ----------------------------------------------------------------------------- public fn
def flash_attention(q, k, v, *, bias=None, causal: bool = False, scale=None,
                    implementation: str | None = None):
    """Scaled dot-product attention with an additive, differentiable bias.

    Args:
      q: [B, L, H, D] queries; float32 or bfloat16. B may be 0 (an empty result and a zero
        bias gradient on every path); L, S, H, D must be >= 1.
      k, v: [B, S, H, D] keys and values, q's dtype (S may differ from L).
      bias: optional additive score bias [B|1, H|1, L, S] (any float dtype); gets gradients.
      causal: mask keys after the query's own position (top-left aligned, as
        ``jax.nn.dot_product_attention(is_causal=True)``).
      scale: score scale, default 1/sqrt(D).
      implementation: None (fastest known correct path), "xla", "pallas" or "cudnn" (module
        docstring of ``kernels_pallas.flash_attention.api``).

    Returns:
      [B, L, H, D] in ``q.dtype``; float32 softmax on every path. Differentiable in q, k, v
      and bias.
    """
    geometry = check_arguments(q, k, v, bias=bias, causal=causal, scale=scale,
                               implementation=implementation)
    path = choose_implementation(implementation, geometry)
    if geometry.batch == 0:  # nothing to compute; the XLA path handles empty arrays
        path = "xla"
    if path in ("xla", "cudnn"):
        return jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=geometry.causal,
                                            scale=geometry.scale, implementation=path)
    return _pallas_path(q, k, v, bias, geometry)
