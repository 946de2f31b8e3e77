"""kernels_pallas.neighborhood_attention: every path against the dense masked reference, and the
reference against a per-query NumPy loop written from NATTEN's window rule.

NATTEN's rule (its ``get_window_start``, dilation included): a window of k keys centred on the
query that shifts inward at the borders; with dilation d the same rule runs inside each group of
positions with equal residue mod d. The NumPy oracle below states it in NATTEN's own form (not in
the group form the reference uses), so the two are independent.

On CPU the "xla" path is compiled and the "pallas" path runs its TPU kernels in the generic
interpreter (with blocks far smaller than the inputs, so windows cross block edges); one slow
case runs them under ``pltpu.InterpretParams``, and forward and backward are lowered for TPU.
Run the default set with ``-m "not slow"``; the slow set adds randomized Pallas cases.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels_pallas import compile_for, core, neighborhood_attention
from kernels_pallas.neighborhood_attention import api, neighborhood_attention_reference, tuning
from kernels_pallas.neighborhood_attention import pallas_tpu
from tests.kernels.harness import check_against_reference, interpreter

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: Blocks far smaller than the shapes below, so queries span several blocks, windows cross
#: block edges and key steps past a tile's region get skipped.
SMALL_BLOCKS = tuning.PallasBlocks(block_q=8, block_k=16, block_qx=3, block_qy=8, block_kx=2,
                                   block_ky=16)


# ------------------------------------------------------------------ NumPy oracle (NATTEN form)
def natten_window_start(index, length, kernel_size, dilation):
    """NATTEN's window start of a query (first key position), per its CUDA helper's logic."""
    half = kernel_size // 2
    if index - half * dilation < 0:
        return index % dilation
    if index + half * dilation >= length:
        residue = index % dilation
        full = (length // dilation) * dilation
        extra = length - full
        if residue < extra:
            return length - extra + residue - 2 * half * dilation
        return full + residue - kernel_size * dilation
    return index - half * dilation


def natten_keys(index, length, kernel_size, dilation, causal):
    """(key positions, rpb indices) of one query along one dimension."""
    if causal:
        first = max(index % dilation, index - (kernel_size - 1) * dilation)
        keys = list(range(first, index + 1, dilation))
    else:
        start = natten_window_start(index, length, kernel_size, dilation)
        keys = [start + t * dilation for t in range(kernel_size)]
    return keys, [(key - index) // dilation + kernel_size - 1 for key in keys]


def loop_oracle(q, k, v, kernel_size, dilation=1, causal=False, rpb=None):
    """Float64 per-query softmax over its neighbourhood; 1-D [B, L, H, D] or 2-D inputs."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    two_d = q.ndim == 5
    if not two_d:
        q, k, v = q[:, None], k[:, None], v[:, None]
        kernel_size, dilation, causal = (1, kernel_size), (1, dilation), (False, causal)
        rpb = None if rpb is None else np.asarray(rpb)[:, None, :]
    pair = lambda value: tuple(value) if isinstance(value, tuple) else (value, value)  # noqa
    kernel_size, dilation, causal = pair(kernel_size), pair(dilation), pair(causal)
    scale = 1 / np.sqrt(q.shape[-1])
    _, nx, ny, heads, _ = q.shape
    out = np.zeros_like(q)
    for x in range(nx):
        keys_x, rel_x = natten_keys(x, nx, kernel_size[0], dilation[0], causal[0])
        for y in range(ny):
            keys_y, rel_y = natten_keys(y, ny, kernel_size[1], dilation[1], causal[1])
            kk = k[:, keys_x][:, :, keys_y]  # [B, kx, ky, H, D]
            vv = v[:, keys_x][:, :, keys_y]
            logits = np.einsum("bhd,bijhd->bhij", q[:, x, y], kk) * scale
            if rpb is not None:
                logits = logits + np.asarray(rpb, np.float64)[:, rel_x][:, :, rel_y][None]
            logits = logits.reshape(*logits.shape[:2], -1)
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            out[:, x, y] = np.einsum("bhk,bkhd->bhd", p, vv.reshape(vv.shape[0], -1,
                                                                     *vv.shape[3:]))
    return out if two_d else out[:, 0]


def _qkv(shape, dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal(shape, np.float32), dtype) for _ in range(3))


# ------------------------------------------------------------------ reference vs NATTEN oracle
@pytest.mark.parametrize("shape, kernel_size, dilation, causal, with_rpb", [
    ((2, 11, 2, 4), 5, 1, False, True),
    ((1, 13, 1, 3), 3, 3, False, True),     # 13 = 4*3 + 1: groups of length 5 and 4
    ((1, 12, 2, 4), 5, 2, True, True),
    ((1, 9, 1, 3), 9, 1, False, False),     # the window is the whole sequence
    ((1, 7, 9, 2, 4), (3, 5), (2, 1), False, True),
    ((1, 6, 7, 1, 3), 3, (1, 2), (True, False), True),
])
def test_reference_matches_natten_rule(shape, kernel_size, dilation, causal, with_rpb):
    q, k, v = _qkv(shape)
    two_d = len(shape) == 5
    ks = kernel_size if isinstance(kernel_size, tuple) else (kernel_size,) * (1 + two_d)
    rpb = None
    if with_rpb:
        rpb = jnp.asarray(np.random.default_rng(1).standard_normal(
            (shape[-2], *(2 * kk - 1 for kk in ks)), np.float32))
    y = jax.jit(lambda q, k, v, rpb: neighborhood_attention_reference(
        q, k, v, kernel_size=kernel_size, dilation=dilation, is_causal=causal, rpb=rpb))(
        q, k, v, rpb)
    expected = loop_oracle(q, k, v, kernel_size, dilation, causal, rpb)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)


def test_border_query_attends_exactly_the_first_k_keys():
    """Query 0's window is keys 0..k-1 (shifted inward, not zero-padded): changing key k moves
    nothing at query 0, changing key k-1 does; query 0 and query k//2 see the same keys."""
    kernel = 5
    q, k, v = _qkv((1, 16, 1, 4))
    attend = jax.jit(lambda q, k, v: neighborhood_attention(q, k, v, kernel_size=kernel))
    base = attend(q, k, v)
    for changed, moves in ((kernel, False), (kernel - 1, True)):
        y = attend(q, k, v.at[:, changed].add(10.0))
        assert bool(jnp.any(jnp.abs(y[:, 0] - base[:, 0]) > 1e-3)) == moves, changed
    y = attend(q.at[:, 0].set(q[:, kernel // 2]), k, v)
    np.testing.assert_allclose(y[:, 0], y[:, kernel // 2], rtol=1e-6)
    # The last query likewise attends the last k keys.
    y = attend(q, k, v.at[:, -kernel - 1].add(10.0))
    np.testing.assert_allclose(y[:, -1], base[:, -1], rtol=1e-6)


# ---------------------------------------------------------------- fast paths vs the reference
@contextlib.contextmanager
def pallas_blocks(blocks):
    """Forces the Pallas block sizes while tracing."""
    saved = tuning.PALLAS_BLOCKS
    tuning.PALLAS_BLOCKS = {"default": blocks}
    try:
        yield
    finally:
        tuning.PALLAS_BLOCKS = saved


def _check(shape, kernel_size, dilation, causal, with_rpb, dtype, implementation, context=None,
           seed=0):
    q, k, v = _qkv(shape, dtype, seed)
    two_d = len(shape) == 5
    ks = kernel_size if isinstance(kernel_size, tuple) else (kernel_size,) * (1 + two_d)
    rpb = None
    if with_rpb:
        # In q's dtype, as a bfloat16 model passes it: its gradient then has bfloat16's
        # tolerance (the Pallas path multiplies bfloat16 probabilities on the MXU).
        rpb = jnp.asarray(np.random.default_rng(seed + 1).standard_normal(
            (shape[-2], *(2 * kk - 1 for kk in ks)), np.float32), dtype)
    kwargs = dict(kernel_size=kernel_size, dilation=dilation, is_causal=causal)

    def op(q, k, v, rpb):
        return neighborhood_attention(q, k, v, rpb=rpb, implementation=implementation, **kwargs)

    def reference(q, k, v, rpb):
        return neighborhood_attention_reference(q, k, v, rpb=rpb, **kwargs)

    return check_against_reference(op, reference, (q, k, v, rpb),
                                   diff_argnums=(0, 1, 2, 3) if with_rpb else (0, 1, 2),
                                   seed=seed, context=context)


@st.composite
def attention_cases(draw, max_len=40, max_kernel=9):
    """A random valid call: odd and even sizes, dilations that do and do not divide the size,
    causal per dim, with or without rpb, both dtypes."""
    two_d = draw(st.booleans())
    ndim = 1 + two_d
    kernel = tuple(draw(st.sampled_from(range(1, (max_kernel if not two_d else 5) + 1, 2)))
                   for _ in range(ndim))
    dilation = tuple(draw(st.sampled_from([1, 1, 2, 3])) for _ in range(ndim))
    causal = tuple(draw(st.booleans()) for _ in range(ndim))
    limit = max_len if not two_d else 13
    spatial = tuple(draw(st.integers(kk * d, max(kk * d, limit)))
                    for kk, d in zip(kernel, dilation))
    shape = (draw(st.integers(1, 2)), *spatial, draw(st.integers(1, 2)), draw(st.sampled_from(
        [3, 8])))
    unpack = (lambda t: t[0]) if ndim == 1 else (lambda t: t)
    return (shape, unpack(kernel), unpack(dilation), unpack(causal), draw(st.booleans()),
            draw(st.sampled_from(["float32", "bfloat16"])))


@settings(max_examples=5, deadline=None, derandomize=True)
@given(case=attention_cases())
def test_xla_path_matches_reference(case):
    _check(*case, "xla")


@pytest.mark.slow
@settings(max_examples=25, deadline=None, derandomize=True)
@given(case=attention_cases(max_len=70))
def test_xla_path_matches_reference_more_cases(case):
    _check(*case, "xla", seed=1)


@pytest.mark.parametrize("shape, kernel_size, dilation, causal, with_rpb, dtype", [
    ((1, 37, 1, 8), 7, 1, False, True, "float32"),    # 1-D, 5 query blocks, both borders
    ((1, 7, 10, 1, 4), (3, 5), (2, 1), (True, False), True, "bfloat16"),  # 2-D, dilated x
])
def test_pallas_path_matches_reference(shape, kernel_size, dilation, causal, with_rpb, dtype):
    _check(shape, kernel_size, dilation, causal, with_rpb, dtype, "pallas",
           pallas_blocks(SMALL_BLOCKS))


@pytest.mark.slow
@pytest.mark.parametrize("shape, kernel_size, dilation, causal, with_rpb, dtype", [
    ((1, 20, 1, 3), 5, 3, True, False, "bfloat16"),   # causal, 20 = 6*3 + 2: two group sizes
    ((2, 37, 2, 8), 7, 1, False, True, "bfloat16"),
    ((1, 40, 1, 3), 5, 3, True, True, "float32"),
    ((1, 11, 13, 2, 4), (3, 5), (2, 1), False, True, "float32"),
    ((1, 9, 17, 1, 8), 3, 1, (True, False), True, "bfloat16"),
    ((1, 50, 2, 8), 9, 2, False, True, "float32"),
])
def test_pallas_path_more_cases(shape, kernel_size, dilation, causal, with_rpb, dtype):
    _check(shape, kernel_size, dilation, causal, with_rpb, dtype, "pallas",
           pallas_blocks(SMALL_BLOCKS))


@pytest.mark.slow
def test_tpu_kernel_under_tpu_interpreter():
    """pltpu.InterpretParams simulates TPU memory spaces: scratch carried across the key steps,
    output blocks written once at the last step, per-step bias-gradient blocks (~45 s)."""
    @contextlib.contextmanager
    def context():
        with pallas_blocks(SMALL_BLOCKS), interpreter("tpu"):
            yield

    _check((1, 7, 10, 1, 4), (3, 5), 1, (False, True), True, "bfloat16", "pallas", context())


@pytest.mark.slow
def test_pallas_path_with_default_blocks():
    """The tuned blocks (128 queries/keys in 1-D: one block holds this whole sequence)."""
    _check((1, 30, 1, 8), 9, 1, False, True, "float32", "pallas")


@pytest.mark.slow
@settings(max_examples=10, deadline=None, derandomize=True)
@given(case=attention_cases(max_len=60))
def test_pallas_path_matches_reference_randomized(case):
    _check(*case, "pallas", pallas_blocks(SMALL_BLOCKS))


def test_plan_step_counts_cover_every_window():
    """The static key steps of every query tile reach its last key block, and the query steps
    of every key tile its last query block (otherwise keys would be silently dropped)."""
    for n, k, causal, bq, bk in [(37, 7, False, 8, 16), (300, 31, True, 128, 128),
                                 (13, 13, False, 8, 8), (29, 5, False, 3, 2)]:
        dim = pallas_tpu.dim_plan(n, k, causal, bq, bk, sublane=bq % 8 == 0)
        for t in range(dim.tiles_q):
            span = dim.last_key_block(t, np) - dim.first_key_block(t, np) + 1
            assert 1 <= span <= dim.steps_k
        for j in range(dim.tiles_k):
            span = dim.last_query_block(j, np) - dim.first_query_block(j, np) + 1
            assert 1 <= span <= dim.steps_q
    # A 1-D 32K sequence with a 2K window: a query tile reads at most
    # ceil((128 + 2047 - 1) / 128) = 17 of the 256 key blocks. A key tile is reached from at
    # most 24 query blocks: key k-1 = 2046 is in the windows of queries 0..3069 (the border
    # queries 0..1023 share the window [0, k)).
    dim = pallas_tpu.dim_plan(32768, 2047, False, 128, 128, sublane=True)
    assert dim.steps_k == 17 and dim.steps_q == 24


@pytest.mark.parametrize("shape, kernel_size, rpb_shape, dtype, causal", [
    ((2, 300, 2, 32), 31, (2, 61), "bfloat16", False),
    ((2, 300, 2, 32), 31, None, "float32", True),
    ((2, 28, 28, 2, 32), 7, (2, 13, 13), "bfloat16", False),
])
def test_kernels_lower_for_tpu(shape, kernel_size, rpb_shape, dtype, causal):
    """Forward and backward of the Pallas path lower to Mosaic TPU MLIR on this machine (the
    Pallas-level checks pass; not a compilation, which needs the device)."""
    x = jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))
    rpb = None if rpb_shape is None else jax.ShapeDtypeStruct(rpb_shape, jnp.float32)

    def loss(q, k, v, rpb):
        y = neighborhood_attention(q, k, v, kernel_size=kernel_size, rpb=rpb, is_causal=causal,
                                   implementation="pallas")
        return jnp.sum(y.astype(jnp.float32) ** 2)

    argnums = (0, 1, 2) if rpb is None else (0, 1, 2, 3)
    with compile_for("tpu"):
        lowered = jax.jit(jax.grad(loss, argnums=argnums)).trace(x, x, x, rpb).lower(
            lowering_platforms=("tpu",))
    assert lowered.as_text().count("tpu_custom_call") == 3  # forward, dq, dk/dv


def test_no_gpu_kernel_yet_is_a_clear_error():
    x = jnp.zeros((1, 8, 1, 4))
    with compile_for("gpu"), pytest.raises(NotImplementedError, match="no Mosaic GPU kernel"):
        jax.jit(lambda x: neighborhood_attention(x, x, x, kernel_size=3,
                                                 implementation="pallas")).trace(x)


def test_auto_choice(monkeypatch):
    geometry = api.check_arguments(*_qkv((1, 8, 1, 4)), kernel_size=3)
    assert api.choose_implementation(None, geometry) == "xla"
    assert api.choose_implementation("pallas", geometry) == "pallas"
    monkeypatch.setattr(core, "platform", lambda: "gpu")
    monkeypatch.setattr(core, "device_kind", lambda: "NVIDIA H100 80GB HBM3")
    assert api.choose_implementation(None, geometry) == "xla"  # nothing measured yet
    monkeypatch.setattr(tuning, "AUTO_PALLAS_DEVICE_KINDS", ("NVIDIA H100",))
    assert api.choose_implementation(None, geometry) == "pallas"
    assert api.choose_implementation("xla", geometry) == "xla"


def test_tuning_validation():
    with pytest.raises(ValueError, match="PallasBlocks.block_qy must be a multiple of 8"):
        tuning.PallasBlocks(block_qy=12)
    with pytest.raises(ValueError, match="XlaTiles.tile_2d must be a positive int"):
        tuning.XlaTiles(tile_2d=0)
    assert tuning.XlaTiles(tile_1d=64).tiles(1, (2047,)) == (1, 511)
    assert tuning.XlaTiles(tile_2d=8).tiles(2, (7, 7)) == (8, 8)


SHARDED_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from kernels_pallas import neighborhood_attention
    from jaxconv.train import mesh as mesh_lib

    assert jax.device_count() == 8
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((8, 6, 7, 1, 4)), jnp.float32) for _ in range(3))
    rpb = jnp.asarray(rng.standard_normal((1, 5, 5)), jnp.float32)
    mesh = mesh_lib.make_data_mesh()
    for implementation in ("pallas",):
        def loss(q, k, v, rpb):
            y = neighborhood_attention(q, k, v, kernel_size=3, rpb=rpb,
                                       implementation=implementation)
            return jnp.sum(jnp.sin(y))
        grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))
        value, grads = jax.jit(grad)(q, k, v, rpb)
        with jax.set_mesh(mesh):
            batch, rep = mesh_lib.batch_sharded(mesh), mesh_lib.replicated(mesh)
            step = jax.jit(grad, in_shardings=(batch, batch, batch, rep),
                           out_shardings=(rep, (batch, batch, batch, rep)))
            per_shard = "shard_map" in str(jax.make_jaxpr(step)(q, k, v, rpb))
            s_value, s_grads = step(q, k, v, rpb)
        assert per_shard, implementation
        np.testing.assert_allclose(s_value, value, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(s_grads), jax.tree.leaves(grads), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    print("SHARDED_OK")
""")


def test_jit_on_an_8_device_mesh_matches_the_unsharded_run():
    """Under a batch-sharded jit the Pallas path runs per shard (shard_map); value and all
    gradients (rpb's summed over shards) equal one device's. (The XLA path is partitioned by
    XLA like any jnp code.)"""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert "SHARDED_OK" in result.stdout, result.stderr[-3000:]


def test_bench_writes_csv_rows(tmp_path):
    from kernels_pallas import bench
    from kernels_pallas.neighborhood_attention import bench as op_bench
    out = tmp_path / "rows.csv"
    rows = bench.main(["neighborhood_attention", "--cases", "1x9x10x1x4/3", "--repeats", "1",
                       "--csv", str(out), "--note", "test"])
    assert [(r["case"], r["implementation"]) for r in rows] == [
        ("1x9x10x1x4 window 3x3", impl) for impl in ("xla", "naive", "dense")]
    lines = out.read_text().splitlines()
    assert lines[0].startswith("device,case,dtype,implementation,fwd_ms,fwdbwd_ms")
    assert len(lines) == 4 and all(r["fwdbwd_ms"] > 0 for r in rows)
    assert op_bench.useful_flops((2, 5, 6, 3, 4), 3) == 4 * 2 * 3 * 30 * 9 * 4
    assert op_bench.useful_flops((2, 50, 3, 4), 5) == 4 * 2 * 3 * 50 * 5 * 4


# ----------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("shape, kwargs, message", [
    ((1, 8, 2, 4), dict(kernel_size=4), r"kernel_size=4 is not supported: each must be an odd"),
    ((1, 8, 2, 4), dict(kernel_size=0), r"kernel_size=0"),
    ((1, 8, 2, 4), dict(kernel_size=9), r"kernel_size \* dilation = 9 \* 1 = 9 is larger than "
                                        r"the input along L \(8\)"),
    ((1, 8, 2, 4), dict(kernel_size=3, dilation=3), r"3 \* 3 = 9 is larger than the input "
                                                    r"along L \(8\)"),
    ((1, 8, 6, 2, 4), dict(kernel_size=(3, 7)), r"along Y \(6\)"),
    ((1, 8, 2, 4), dict(kernel_size=(3, 3)), r"kernel_size=\(3, 3\).*1-D input"),
    ((1, 8, 2, 4), dict(kernel_size=3, dilation=0), r"dilation=0"),
    ((1, 8, 2, 4), dict(kernel_size=3, is_causal=1), r"is_causal=1"),
    ((1, 8, 2, 4), dict(kernel_size=3, rpb=jnp.zeros((2, 3))),
     r"rpb must be None or a floating \[H, 2k-1\] = \[2, 5\]"),
    ((1, 8, 8, 2, 4), dict(kernel_size=3, rpb=jnp.zeros((2, 5))),
     r"\[H, 2kx-1, 2ky-1\] = \[2, 5, 5\]"),
    ((1, 8, 2, 4), dict(kernel_size=3, scale="x"), r"scale='x'"),
    ((1, 8, 2, 4), dict(kernel_size=3, implementation="cuda"),
     r"implementation='cuda'.*\[None, 'xla', 'pallas'\]"),
    ((8, 2, 4), dict(kernel_size=3), r"q must be \[B, L, H, D\] \(1-D\) or \[B, X, Y, H, D\]"),
])
def test_bad_arguments_raise_clear_errors(shape, kwargs, message):
    x = jnp.zeros(shape)
    with pytest.raises(ValueError, match=message):
        neighborhood_attention(x, x, x, **kwargs)


@pytest.mark.parametrize("implementation, shape, kernel_size, dilation", [
    (None, (0, 7, 2, 4), 3, 2), ("xla", (0, 6, 5, 2, 4), (3, 5), 1),
    ("pallas", (0, 7, 2, 4), 3, 2), ("pallas", (0, 6, 5, 2, 4), (3, 5), 1)])
def test_batch_zero_gives_empty_results_and_zero_gradients(implementation, shape, kernel_size,
                                                           dilation):
    q = jnp.zeros(shape, jnp.bfloat16)
    kernel = (kernel_size,) if isinstance(kernel_size, int) else kernel_size
    rpb = jnp.ones((shape[-2], *(2 * k - 1 for k in kernel)))
    y, vjp = jax.vjp(lambda q, k, v, rpb: neighborhood_attention(
        q, k, v, kernel_size=kernel_size, dilation=dilation, rpb=rpb,
        implementation=implementation), q, q, q, rpb)
    assert (y.shape, y.dtype) == (q.shape, q.dtype)
    dq, dk, dv, drpb = vjp(jnp.zeros_like(y))
    assert all((t.shape, t.dtype) == (q.shape, q.dtype) for t in (dq, dk, dv))
    np.testing.assert_array_equal(drpb, np.zeros(rpb.shape))


def test_mismatched_qkv_and_bad_dtype_raise():
    q = jnp.zeros((1, 8, 2, 4))
    with pytest.raises(ValueError, match=r"k must have q's shape \(1, 8, 2, 4\)"):
        neighborhood_attention(q, jnp.zeros((1, 9, 2, 4)), q, kernel_size=3)
    with pytest.raises(ValueError, match=r"v must have q's shape .* and dtype float32"):
        neighborhood_attention(q, q, q.astype(jnp.bfloat16), kernel_size=3)
    qi = jnp.zeros((1, 8, 2, 4), jnp.int32)
    with pytest.raises(ValueError, match=r"q.dtype=int32 is not supported; valid: "
                                         r"\['float32', 'bfloat16', 'float16'\]"):
        neighborhood_attention(qi, qi, qi, kernel_size=3)
