"""kernels_pallas.flash_attention: every path against the explicit float32 reference, forward
and gradients (q, k, v and the additive bias).

On CPU the "xla" path is ``jax.nn.dot_product_attention`` compiled and the "pallas" path runs
the TPU kernels in the generic interpreter with 16x16 score tiles (tuning.INTERPRET_BLOCKS), so
the small shapes drawn here (odd L and S, L != S, not multiples of the tile) span several
blocks, padded edges and causally skipped blocks. The kernels are also lowered for TPU.

Interpreted kernels cost seconds to compile on this CPU, so the checks use their own
single-jit comparison compiled at XLA optimisation level 0 (``_check_fast``, with the harness's
tolerances and cotangents; the numbers are the same, the compile ~3x faster); more random shapes
run under ``-m slow``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
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

from kernels_pallas import compile_for, core, flash_attention, interpret_as
from kernels_pallas.flash_attention import api, flash_attention_reference, pallas_tpu, tuning
from tests.kernels.harness import _cotangent, assert_close

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BIAS_BROADCASTS = {"none": None, "1,1": (True, True), "B,1": (False, True),
                   "1,H": (True, False), "B,H": (False, False)}


def _arrays(batch, q_len, kv_len, heads, head_dim, dtype, bias, seed=0):
    """q, k, v and a bias of the named broadcast ("1,H" = [1, H, L, S]), all in ``dtype`` (a
    float32 bias gradient of a bfloat16 computation has only bfloat16 accuracy)."""
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((batch, q_len, heads, head_dim)), dtype)
    k = jnp.asarray(rng.standard_normal((batch, kv_len, heads, head_dim)), dtype)
    v = jnp.asarray(rng.standard_normal((batch, kv_len, heads, head_dim)), dtype)
    b = None
    if BIAS_BROADCASTS[bias] is not None:
        one_b, one_h = BIAS_BROADCASTS[bias]
        shape = (1 if one_b else batch, 1 if one_h else heads, q_len, kv_len)
        b = jnp.asarray(rng.standard_normal(shape), dtype)
    return q, k, v, b


# ------------------------------------------------------------------------- against reference
@pytest.mark.parametrize("shape, dtype, bias, causal, scale", [
    ((2, 6, 6, 1, 8), "bfloat16", "1,1", True, None),
    ((2, 5, 7, 3, 8), "float32", "1,H", False, None),
    ((1, 9, 4, 2, 16), "float32", "B,H", True, 0.3),
    ((2, 3, 8, 1, 8), "bfloat16", "B,1", False, None),
])
def test_xla_path_matches_reference(shape, dtype, bias, causal, scale):
    _check_fast(shape, dtype, bias, causal, "xla", scale)


def test_reference_matches_dot_product_attention():
    """The explicit oracle and jax.nn.dot_product_attention(xla) agree, bias and causal."""
    q, k, v, b = _arrays(2, 7, 11, 2, 8, "float32", "B,1")

    @jax.jit
    def both(q, k, v, b):
        pairs = {}
        for causal in (False, True):
            pairs[f"causal={causal}"] = (
                flash_attention_reference(q, k, v, bias=b, causal=causal),
                jax.nn.dot_product_attention(q, k, v, bias=b, is_causal=causal,
                                             implementation="xla"))
        pairs["scale=0.37"] = (
            flash_attention_reference(q, k, v, scale=0.37),
            jax.nn.dot_product_attention(q, k, v, scale=0.37, implementation="xla"))
        return pairs

    for name, (ours, theirs) in both(q, k, v, b).items():
        assert_close(ours, theirs, name)


def test_reference_bias_gradient_is_the_score_gradient_summed_over_broadcasts():
    """dbias of a [1, H, L, S] bias = the [B, H, L, S] bias gradient summed over the batch."""
    q, k, v, b_full = _arrays(3, 5, 6, 2, 4, "float32", "B,H")
    b_shared = b_full[:1]
    loss = lambda b: jnp.sum(flash_attention_reference(q, k, v, bias=b) ** 2)  # noqa: E731
    g_shared, g_full = jax.jit(lambda b: (jax.grad(loss)(b), jax.grad(loss)(
        jnp.broadcast_to(b, b_full.shape))))(b_shared)
    np.testing.assert_allclose(g_shared, g_full.sum(0, keepdims=True), rtol=1e-5, atol=1e-6)


def _check_fast(shape, dtype, bias, causal, implementation, scale=None, context=None):
    """Forward (plain and under the VJP) and all gradients of a path equal the reference's,
    computed in one jitted call compiled at XLA optimisation level 0 (the harness's
    ``check_against_reference`` compiles three calls at full optimisation: ~3x slower here)."""
    q, k, v, b = _arrays(*shape, dtype, bias)
    args = (q, k, v, b)
    diff = (0, 1, 2) if b is None else (0, 1, 2, 3)

    def op(q, k, v, b):
        return flash_attention(q, k, v, bias=b, causal=causal, scale=scale,
                               implementation=implementation)

    def reference(q, k, v, b):
        return flash_attention_reference(q, k, v, bias=b, causal=causal, scale=scale)

    def run(args, cotangent):
        results = []
        for fn in (op, reference):
            def partial_fn(*diff_args, fn=fn):
                full = list(args)
                for i, value in zip(diff, diff_args):
                    full[i] = value
                return fn(*full)
            y, vjp = jax.vjp(partial_fn, *[args[i] for i in diff])
            results.append((y, vjp(cotangent)))
        return results, op(*args)

    with context or contextlib.nullcontext():
        compiled = jax.jit(run).lower(args, _cotangent(reference, args, 0)).compile(
            compiler_options={"xla_backend_optimization_level": 0})
    ((y, grads), (y_ref, grads_ref)), y_plain = compiled(args, _cotangent(reference, args, 0))
    errors = {"forward": assert_close(y_plain, y_ref, "forward"),
              "vjp forward": assert_close(y, y_ref, "forward under differentiation")}
    for i, g, g_ref in zip(diff, grads, grads_ref, strict=True):
        errors[f"grad{i}"] = assert_close(g, g_ref, f"gradient of argument {i}")
    return errors


# (B, L, S, H, D), dtype, bias broadcast, causal. Blocks are 16x16 in the interpreter.
@pytest.mark.parametrize("shape, dtype, bias, causal", [
    ((2, 37, 21, 2, 8), "float32", "1,H", True),    # L > S, 3x2 blocks, both edges padded
    ((2, 19, 35, 1, 16), "float32", "B,1", False),  # L < S
    ((1, 23, 23, 2, 8), "bfloat16", "1,1", True),
    ((2, 9, 40, 2, 8), "float32", "B,H", True),     # k blocks past the last query: dk = dv = 0
    ((1, 32, 16, 1, 8), "float32", "none", False),  # whole blocks, no padding, no bias
])
def test_pallas_path_matches_reference(shape, dtype, bias, causal):
    _check_fast(shape, dtype, bias, causal, "pallas")


@pytest.fixture
def dbias_kernel(monkeypatch):
    """Broadcast biases take the dbias reduction kernel instead of per-example dS tiles."""
    for name in ("INTERPRET_BLOCKS",):
        monkeypatch.setattr(tuning, name, dataclasses.replace(getattr(tuning, name),
                                                              dbias_tiles_max_bytes=0))
    monkeypatch.setattr(tuning, "TPU_BLOCKS",
                        {"default": tuning.TpuBlocks(dbias_tiles_max_bytes=0)})


@pytest.mark.parametrize("shape, dtype, bias, causal", [
    ((3, 21, 37, 2, 8), "float32", "1,1", True),     # sums over batch and heads
    pytest.param((2, 19, 17, 3, 8), "bfloat16", "1,H", False, marks=pytest.mark.slow),
    pytest.param((2, 9, 33, 2, 8), "float32", "B,1", True, marks=pytest.mark.slow),
])
def test_bias_gradient_reduction_kernel(dbias_kernel, shape, dtype, bias, causal):
    _check_fast(shape, dtype, bias, causal, "pallas")


def test_plan_picks_the_dbias_kernel_only_for_large_broadcast_biases():
    blocks = tuning.TpuBlocks(dbias_tiles_max_bytes=8 * 256 * 256 * 4)
    plan = functools.partial(pallas_tpu.make_plan, 2, 4, 250, 256, False, 1.0, blocks=blocks)
    assert not plan(bias_shape=(1, 4, 250, 256)).dbias_kernel        # 2*4*256*256*4 B: fits
    assert not plan(bias_shape=(2, 4, 250, 256)).dbias_kernel        # not broadcast
    big = functools.partial(pallas_tpu.make_plan, 4, 4, 250, 256, False, 1.0, blocks=blocks)
    assert big(bias_shape=(1, 4, 250, 256)).dbias_kernel
    assert big(bias_shape=(4, 1, 250, 256)).dbias_kernel
    assert not big(bias_shape=(4, 4, 250, 256)).dbias_kernel
    assert not big(bias_shape=None).dbias_kernel


@st.composite
def attention_cases(draw):
    # S >= 2: with one key the softmax is constant, dq is exactly 0 and a relative error of
    # rounding noise is meaningless.
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 40)), draw(st.integers(2, 40)),
             draw(st.integers(1, 2)), draw(st.sampled_from([4, 8, 16])))
    return (shape, draw(st.sampled_from(["float32", "bfloat16"])),
            draw(st.sampled_from(sorted(BIAS_BROADCASTS))), draw(st.booleans()),
            draw(st.sampled_from([None, 0.3])))


@pytest.mark.slow
@settings(max_examples=12, deadline=None, derandomize=True)
@given(case=attention_cases())
def test_pallas_path_matches_reference_on_random_shapes(case):
    shape, dtype, bias, causal, scale = case
    _check_fast(shape, dtype, bias, causal, "pallas", scale)


@pytest.mark.slow  # ~15-20 s on the shared 2-core machine; the generic interpreter covers the math
def test_tpu_kernel_under_tpu_interpreter():
    """The same kernels under pltpu.InterpretParams (VMEM scratch, block copies simulated)."""
    _check_fast((1, 9, 18, 1, 8), "float32", "1,H", True, "pallas", context=interpret_as("tpu"))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("reduction_kernel", [False, True])
def test_kernels_lower_for_tpu(dtype, reduction_kernel, monkeypatch):
    """Forward, dq (+ dS) and dk/dv kernels (and the dbias reduction kernel) lower to Mosaic
    MLIR with the compiled TPU blocks (128x128 tiles; causal clamped index maps, padding masks,
    a [1, H, L, S] bias). Not a compilation: that needs the device."""
    if reduction_kernel:
        monkeypatch.setattr(tuning, "TPU_BLOCKS",
                            {"default": tuning.TpuBlocks(dbias_tiles_max_bytes=0)})
    q = jax.ShapeDtypeStruct((2, 300, 4, 64), jnp.dtype(dtype))
    k = jax.ShapeDtypeStruct((2, 200, 4, 64), jnp.dtype(dtype))
    b = jax.ShapeDtypeStruct((1, 4, 300, 200), jnp.float32)

    def loss(q, k, v, b):
        y = flash_attention(q, k, v, bias=b, causal=True, implementation="pallas")
        return jnp.sum(y.astype(jnp.float32) ** 2)

    with compile_for("tpu"):
        lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).trace(q, k, k, b).lower(
            lowering_platforms=("tpu",))
    assert lowered.as_text().count("tpu_custom_call") == 3 + reduction_kernel


def test_causal_tiles_skipped_are_exactly_the_fully_masked_ones():
    """A tile is computed iff some (query, key) pair in it is unmasked; the clamped index maps
    stay in range."""
    for q_len, kv_len, bq, bk in [(37, 21, 16, 16), (9, 40, 8, 16), (300, 200, 128, 128),
                                  (64, 64, 32, 16)]:
        plan = pallas_tpu.make_plan(1, 1, q_len, kv_len, True, 1.0, None,
                                    tuning.TpuBlocks(block_q=bq, block_k=bk))
        for i in range(plan.num_q):
            for j in range(plan.num_k):
                rows = np.arange(i * plan.block_q, (i + 1) * plan.block_q)
                cols = np.arange(j * plan.block_k, (j + 1) * plan.block_k)
                any_unmasked = bool(np.any(cols[None, :] <= rows[:, None]))
                assert bool(pallas_tpu._tile_needed(plan, i, j)) == any_unmasked
            assert 0 <= int(pallas_tpu._last_needed_k(plan, i)) < plan.num_k
        for j in range(plan.num_k):
            assert 0 <= int(pallas_tpu._first_needed_q(plan, j)) < plan.num_q


def test_pallas_path_refuses_the_gpu_target(monkeypatch):
    monkeypatch.setattr(core, "pallas_target", lambda: ("gpu", False))
    x = jnp.zeros((1, 4, 1, 8))
    with pytest.raises(ValueError, match="no GPU kernel yet"):
        flash_attention(x, x, x, implementation="pallas")


SHARDED_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from kernels_pallas import flash_attention
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from kernels_pallas.flash_attention import flash_attention_reference

    assert jax.device_count() == 8
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.standard_normal((16, 12, 2, 8)), jnp.float32) for _ in range(3))
    shared = jnp.asarray(rng.standard_normal((1, 2, 12, 12)), jnp.float32)
    per_example = jnp.asarray(rng.standard_normal((16, 1, 12, 12)), jnp.float32)

    def loss(attention, shared, q, k, v, per_example):
        y = attention(q, k, v, bias=shared + per_example, causal=True)  # batched bias
        y2 = attention(q, k, v, bias=shared)                            # replicated bias
        return jnp.sum(y ** 2) + jnp.sum(jnp.sin(y2))

    pallas = lambda *a, **kw: flash_attention(*a, implementation="pallas", **kw)
    args = (shared, q, k, v, per_example)
    argnums = (1, 2, 3, 4, 5)
    fast = {"xla_backend_optimization_level": 0}
    value, grads = jax.jit(jax.value_and_grad(lambda *a: loss(flash_attention_reference, *a),
                                              argnums=tuple(i - 1 for i in argnums))).lower(
        *args).compile(compiler_options=fast)(*args)
    # The training loop's mesh (jaxconv.train.mesh, not imported: it costs seconds).
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    with jax.set_mesh(mesh):
        batch = NamedSharding(mesh, P("data"))
        step = jax.jit(jax.value_and_grad(lambda *a: loss(pallas, *a),
                                          argnums=tuple(i - 1 for i in argnums)),
                       in_shardings=(NamedSharding(mesh, P()),) + (batch,) * 4,
                       out_shardings=NamedSharding(mesh, P()))
        assert "shard_map" in str(jax.make_jaxpr(step)(*args)), "no per-shard Pallas call"
        s_value, s_grads = step.lower(*args).compile(compiler_options=fast)(*args)
    np.testing.assert_allclose(s_value, value, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s_grads), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    print("SHARDED_OK")
""")



def test_jit_on_an_8_device_mesh_matches_the_reference():
    """Under a batch-sharded jit the Pallas path runs per shard (shard_map); value and all
    gradients (a shared [1, H, L, S] bias's summed over shards, a per-example [B, 1, L, S] one
    split with the batch) equal the reference's on one device."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert "SHARDED_OK" in result.stdout, result.stderr[-3000:]


# ----------------------------------------------------------------------- dispatch
def test_auto_choice(monkeypatch):
    g = api.check_arguments(jnp.zeros((1, 4, 2, 8), jnp.bfloat16),
                            jnp.zeros((1, 4, 2, 8), jnp.bfloat16),
                            jnp.zeros((1, 4, 2, 8), jnp.bfloat16))
    assert api.choose_implementation(None, g) == "xla"
    assert api.choose_implementation("pallas", g) == "pallas"
    with pytest.raises(ValueError, match="implementation='cudnn' needs an NVIDIA GPU"):
        api.choose_implementation("cudnn", g)
    monkeypatch.setattr(core, "platform", lambda: "gpu")
    monkeypatch.setattr(core, "device_kind", lambda: "NVIDIA H100 80GB HBM3")
    assert api.choose_implementation(None, g) == "xla"  # nothing measured yet
    assert api.choose_implementation("cudnn", g) == "cudnn"
    monkeypatch.setattr(tuning, "AUTO_CUDNN_DEVICE_KINDS", ("NVIDIA H100",))
    assert api.choose_implementation(None, g) == "cudnn"
    f32 = dataclasses.replace(g, dtype="float32")
    assert api.choose_implementation(None, f32) == "xla"          # cuDNN: half precision only
    with_bias = dataclasses.replace(g, bias_shape=(1, 2, 4, 4))
    assert api.choose_implementation(None, with_bias) == "xla"
    odd_dim = dataclasses.replace(g, head_dim=12)
    assert api.choose_implementation(None, odd_dim) == "xla"
    monkeypatch.setattr(core, "platform", lambda: "tpu")
    monkeypatch.setattr(core, "device_kind", lambda: "TPU v5 lite")
    assert api.choose_implementation(None, g) == "xla"
    monkeypatch.setattr(tuning, "AUTO_PALLAS_DEVICE_KINDS", ("TPU v5",))
    assert api.choose_implementation(None, g) == "pallas"


@pytest.mark.parametrize("implementation", [None, "xla", "pallas"])
def test_batch_zero_gives_empty_results_and_zero_gradients(implementation):
    q = jnp.zeros((0, 5, 2, 8), jnp.bfloat16)
    k = jnp.zeros((0, 7, 2, 8), jnp.bfloat16)
    bias = jnp.ones((1, 2, 5, 7))
    y, vjp = jax.vjp(lambda q, k, v, bias: flash_attention(
        q, k, v, bias=bias, causal=True, implementation=implementation), q, k, k, bias)
    assert (y.shape, y.dtype) == (q.shape, q.dtype)
    dq, dk, dv, dbias = vjp(jnp.zeros_like(y))
    assert [(t.shape, t.dtype) for t in (dq, dk, dv)] == [(t.shape, t.dtype) for t in (q, k, k)]
    np.testing.assert_array_equal(dbias, np.zeros(bias.shape))


@pytest.mark.parametrize("shape", [(1, 0, 2, 8), (1, 4, 0, 8), (1, 4, 2, 0)])
def test_empty_sequence_heads_or_head_dim_are_refused(shape):
    x = jnp.zeros(shape)
    with pytest.raises(ValueError, match=r"only the batch B may be 0"):
        flash_attention(x, x, x)


# ----------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("q_shape, k_shape, v_shape, bias_shape, kwargs, message", [
    ((4, 2, 8), (1, 4, 2, 8), (1, 4, 2, 8), None, {}, r"q must be 4-D \[B, L, H, D\]"),
    ((1, 4, 2, 8), (1, 4, 2, 8, 1), (1, 4, 2, 8), None, {}, r"k must be 4-D \[B, S, H, D\]"),
    ((1, 4, 2, 8), (1, 5, 2, 8), (1, 4, 2, 8), None, {}, "k and v must have the same shape"),
    ((1, 4, 2, 8), (1, 5, 3, 8), (1, 5, 3, 8), None, {},
     r"k/v must be \[B, S, H, D\] = \[1, S, 2, 8\]"),
    ((1, 4, 2, 8), (1, 5, 2, 4), (1, 5, 2, 4), None, {}, r"= \[1, S, 2, 8\]"),
    ((2, 4, 2, 8), (1, 5, 2, 8), (1, 5, 2, 8), None, {}, r"= \[2, S, 2, 8\]"),
    ((2, 4, 2, 8), (2, 5, 2, 8), (2, 5, 2, 8), (2, 2, 5, 4), {},
     r"bias must be None or an additive \[B\|1, H\|1, L, S\] = \[2 or 1, 2 or 1, 4, 5\], "
     r"got shape \(2, 2, 5, 4\)"),
    ((2, 4, 2, 8), (2, 5, 2, 8), (2, 5, 2, 8), (3, 1, 4, 5), {}, r"\[2 or 1, 2 or 1, 4, 5\]"),
    ((2, 4, 2, 8), (2, 5, 2, 8), (2, 5, 2, 8), (4, 5), {}, r"got shape \(4, 5\)"),
    ((1, 4, 2, 8), (1, 5, 2, 8), (1, 5, 2, 8), None, dict(implementation="flash"),
     r"implementation='flash'.*\[None, 'xla', 'pallas', 'cudnn'\]"),
    ((1, 4, 2, 8), (1, 5, 2, 8), (1, 5, 2, 8), None, dict(scale=0.0), r"scale=0.0 must be"),
    ((1, 4, 2, 8), (1, 5, 2, 8), (1, 5, 2, 8), None, dict(causal="yes"), r"causal='yes'"),
])
def test_bad_arguments_raise_clear_errors(q_shape, k_shape, v_shape, bias_shape, kwargs,
                                          message):
    bias = None if bias_shape is None else jnp.zeros(bias_shape)
    with pytest.raises(ValueError, match=message):
        flash_attention(jnp.zeros(q_shape), jnp.zeros(k_shape), jnp.zeros(v_shape), bias=bias,
                        **kwargs)


def test_bad_dtypes_raise():
    x = jnp.zeros((1, 4, 2, 8))
    with pytest.raises(ValueError, match=r"share one dtype of \['float32', 'bfloat16'"):
        flash_attention(x, x.astype(jnp.bfloat16), x)
    with pytest.raises(ValueError, match=r"q, k, v must share one dtype.*int32"):
        flash_attention(x.astype(jnp.int32), x.astype(jnp.int32), x.astype(jnp.int32))
    with pytest.raises(ValueError, match="bias.dtype=int32 must be a floating dtype"):
        flash_attention(x, x, x, bias=jnp.zeros((1, 1, 4, 4), jnp.int32))


def test_default_scale_is_inverse_sqrt_head_dim():
    g = api.check_arguments(*(jnp.zeros((1, 3, 1, 16)),) * 3)
    assert g.scale == pytest.approx(1 / math.sqrt(16))


def test_bench_rows_and_flop_count(tmp_path):
    from kernels_pallas import bench
    from kernels_pallas.flash_attention import bench as fa_bench
    # Causal pairs, top-left aligned: rows see 1..L keys (capped at S).
    assert fa_bench.forward_flops(1, 4, 4, 1, 1, True) == 4 * (1 + 2 + 3 + 4)
    assert fa_bench.forward_flops(2, 3, 2, 3, 8, True) == 4 * 2 * 3 * 8 * (1 + 2 + 2)
    assert fa_bench.forward_flops(2, 3, 5, 3, 8, False) == 4 * 2 * 3 * 8 * 15
    out = tmp_path / "rows.csv"
    rows = bench.main(["flash_attention", "--seq_lens", "16", "--tokens", "32", "--heads",
                       "1", "--head_dim", "8", "--dtype", "float32", "--causal",
                       "--implementations", "dpa_xla,auto", "--repeats", "1",
                       "--csv", str(out), "--note", "test"])
    assert [(r["seq_len"], r["batch"], r["implementation"]) for r in rows] == [
        (16, 2, "dpa_xla"), (16, 2, "auto")]
    lines = out.read_text().splitlines()
    assert lines[0].startswith("device,batch,seq_len,heads,head_dim,dtype,bias,causal")
    assert len(lines) == 3 and all(r["fwdbwd_ms"] > 0 for r in rows)
    assert rows[0]["speedup_vs_dpa_xla"] == "fwd 1.00x / fwd+bwd 1.00x"
