"""kernels_pallas.fft_conv: every path against the direct-sum reference, forward and gradients.

The reference itself is checked against a numpy loop over the definition (causal and
two-sided); then each path's forward and every gradient (u, k, bias, pre-gate, post-gate) are
compared with the reference's on shapes drawn by hypothesis (odd L, L not a power of two,
Lk = 1 .. L, both dtypes, optional arguments on and off). NaN/Inf sprinkled into the inputs must
give exactly the reference's pattern of non-finite outputs and gradients.
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

from kernels_pallas import compile_for, interpret_as
from kernels_pallas.fft_conv import api, fft_conv, fft_conv_reference, pallas_tpu, tuning, xla_fft
from tests.kernels.harness import check_against_reference

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLANS = {"direct": tuning.XlaPlan(10**6, 10**6),
         "fft": tuning.XlaPlan(1, 1),
         "fft_train": tuning.XlaPlan(10**6, 1),
         "default": tuning.XLA_PLANS["default"]}
ARGS = ("u", "k", "bias", "pregate", "postgate")


@contextlib.contextmanager
def xla_plan(name):
    """Forces the XLA formulation ("direct", "fft" or the tuned "default") while tracing."""
    saved = tuning.XLA_PLANS
    tuning.XLA_PLANS = {"default": PLANS[name]}
    try:
        yield
    finally:
        tuning.XLA_PLANS = saved


def _arrays(batch, length, channels, taps, dtype="float32", options=(), seed=0):
    """(u, k, bias, pregate, postgate); the optional ones only when named in ``options``."""
    rng = np.random.default_rng(seed)

    def normal(shape, dt="float32"):
        return jnp.asarray(rng.standard_normal(shape, np.float32), dt)

    u = normal((batch, length, channels), dtype)
    k = normal((channels, taps)) / np.sqrt(taps)
    bias = normal((channels,)) if "bias" in options else None
    pre = normal((batch, length, channels), dtype) if "pregate" in options else None
    post = normal((batch, length, channels), dtype) if "postgate" in options else None
    return u, k, bias, pre, post


def _numpy_definition(u, k, causal, bias, pre, post):
    u, k = np.asarray(u, np.float64), np.asarray(k, np.float64)
    v = u if pre is None else u * np.asarray(pre, np.float64)
    length, taps = u.shape[1], k.shape[1]
    c = 0 if causal else taps // 2
    z = np.zeros_like(v)
    for t in range(length):
        for s in range(taps):
            if 0 <= t + c - s < length:
                z[:, t] += k[:, s] * v[:, t + c - s]
    if bias is not None:
        z = z + np.asarray(bias, np.float64) * v
    return z if post is None else z * np.asarray(post, np.float64)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("length, taps", [(9, 9), (10, 4), (7, 1), (70, 66)])
def test_reference_is_the_definition(causal, length, taps):
    """The direct sum (unrolled slices, or lax.scan past 64 taps) equals a numpy loop over the
    docstring's formula; two-sided even kernels put lag 0 at tap Lk // 2."""
    u, k, bias, pre, post = _arrays(2, length, 3, taps, options=ARGS)
    expected = _numpy_definition(u, k, causal, bias, pre, post)
    y = fft_conv_reference(u, k, causal=causal, bias=bias, pregate=pre, postgate=post)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)


def test_two_sided_centre_and_causal_shift():
    """A unit impulse kernel at tap s shifts u by s (causal) or by s - Lk // 2 (two-sided)."""
    u = jnp.arange(1.0, 9.0).reshape(1, 8, 1)
    k = jnp.zeros((1, 4)).at[0, 3].set(1.0)
    for implementation in (None, "xla"):
        causal = fft_conv(u, k, implementation=implementation)[0, :, 0]
        two_sided = fft_conv(u, k, causal=False, implementation=implementation)[0, :, 0]
        np.testing.assert_allclose(causal, [0, 0, 0, 1, 2, 3, 4, 5], atol=1e-5)
        np.testing.assert_allclose(two_sided, [0, 1, 2, 3, 4, 5, 6, 7], atol=1e-5)


# --------------------------------------------------------------------- paths vs reference
@st.composite
def conv_cases(draw, max_length=40):
    length = draw(st.integers(1, max_length))
    taps = draw(st.sampled_from(sorted({min(t, length) for t in (1, 2, (length + 1) // 2,
                                                                  length)})))
    options = tuple(a for a in ARGS[2:] if draw(st.booleans()))
    return (draw(st.integers(1, 2)), length, draw(st.sampled_from([1, 3, 8])), taps,
            draw(st.sampled_from(["float32", "bfloat16"])), options, draw(st.booleans()))


def _check(case, implementation, context=None):
    batch, length, channels, taps, dtype, options, causal = case
    args = _arrays(batch, length, channels, taps, dtype, options)

    def op(*a):
        return fft_conv(a[0], a[1], causal=causal, bias=a[2], pregate=a[3], postgate=a[4],
                        implementation=implementation)

    def reference(*a):
        return fft_conv_reference(a[0], a[1], causal=causal, bias=a[2], pregate=a[3],
                                  postgate=a[4])

    diff = tuple(i for i, a in enumerate(args) if a is not None)
    return check_against_reference(op, reference, args, diff_argnums=diff, context=context)


@pytest.mark.parametrize("plan", ["fft", "fft_train"])
@settings(max_examples=3, deadline=None, derandomize=True)
@given(case=conv_cases())
def test_xla_path_matches_reference(case, plan):
    """"fft": FFT forward and gradients; "fft_train": the direct sum for a plain forward, the
    FFT under differentiation (the plan "direct" is the reference itself)."""
    _check(case, "xla", xla_plan(plan))


@pytest.mark.slow
@pytest.mark.parametrize("plan", ["fft", "fft_train", "direct", "default"])
@settings(max_examples=20, deadline=None, derandomize=True)
@given(case=conv_cases(max_length=90))
def test_xla_path_matches_reference_many_shapes(case, plan):
    _check(case, "xla", xla_plan(plan))


@pytest.mark.parametrize("length, taps, dtype, causal", [
    (100, 37, "bfloat16", False),
    pytest.param(64, 64, "float32", True, marks=pytest.mark.slow),
    pytest.param(33, 32, "float32", False, marks=pytest.mark.slow)])
def test_fft_formulation_at_awkward_lengths(length, taps, dtype, causal):
    """Power-of-two and not, even and odd kernels, every optional argument."""
    _check((2, length, 5, taps, dtype, ARGS[2:], causal), "xla", xla_plan("fft"))


@pytest.mark.parametrize("case", [
    (2, 37, 3, 18, "bfloat16", ARGS[2:], False),  # N = 64 = 8 x 8, every option, even kernel
    pytest.param((1, 70, 8, 70, "float32", ("pregate",), True), marks=pytest.mark.slow),
])
def test_pallas_path_matches_reference(case):
    """The Monarch kernels (TPU kernels in the generic interpreter), forward and gradients."""
    _check(case, "pallas")


@pytest.mark.slow
@settings(max_examples=12, deadline=None, derandomize=True)
@given(case=conv_cases(max_length=140))
def test_pallas_path_matches_reference_many_shapes(case):
    _check(case, "pallas")


def test_pallas_kernels_under_the_tpu_interpreter():
    """TPU memory spaces simulated; 130 channels (not a lane multiple)."""
    _check((1, 20, 130, 11, "bfloat16", ("bias", "postgate"), False), "pallas",
           interpret_as("tpu"))


def test_monarch_sizes():
    assert pallas_tpu.monarch_sizes(1) == (8, 8)
    assert pallas_tpu.monarch_sizes(65) == (8, 16)
    assert pallas_tpu.monarch_sizes(200) == (16, 16)
    assert pallas_tpu.monarch_sizes(8192) == (64, 128)
    # The transform is long enough for the linear convolution (no wrap-around).
    assert pallas_tpu.transform_length(100, 100, True) == 256
    assert pallas_tpu.transform_length(64, 2, False) == 128


@pytest.mark.parametrize("causal", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_pallas_kernels_lower_for_tpu(causal):
    """Forward (kernel spectrum + fused convolution) and forward+backward (spectrum, inverse,
    and the three transforms of the gradients) lower to Mosaic TPU MLIR on this machine: the
    Pallas-level checks pass. Not a compilation: that needs a TPU."""
    u = jax.ShapeDtypeStruct((2, 1000, 256), jnp.bfloat16)
    k = jax.ShapeDtypeStruct((256, 1000), jnp.float32)
    g = jax.ShapeDtypeStruct((2, 1000, 256), jnp.bfloat16)

    def forward(u, k, g):
        return fft_conv(u, k, causal=causal, postgate=g, implementation="pallas")

    def loss(u, k, g):
        return jnp.sum(forward(u, k, g).astype(jnp.float32) ** 2)

    with compile_for("tpu"):
        fwd = jax.jit(forward).trace(u, k, g).lower(lowering_platforms=("tpu",))
        train = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(u, k, g).lower(
            lowering_platforms=("tpu",))
    assert fwd.as_text().count("tpu_custom_call") == 2
    assert train.as_text().count("tpu_custom_call") == 6


def test_pallas_refusals():
    u, k = jnp.zeros((1, 8192, 128)), jnp.zeros((128, 8192))
    with pytest.raises(ValueError, match=r"N=16384, whose blocks do not fit the TPU kernel's VMEM"):
        fft_conv(u, k, implementation="pallas")
    with pytest.raises(ValueError, match="only a TPU kernel"):
        with interpret_as("gpu"):
            fft_conv(u[:, :8], k[:, :8], implementation="pallas")
    assert api.choose_implementation(None, 8192, 8192) in ("direct", "fft")


SHARDED_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from kernels_pallas import fft_conv
    from jaxconv.train import mesh as mesh_lib

    assert jax.device_count() == 8
    rng = np.random.default_rng(0)
    u, pre = (jnp.asarray(rng.standard_normal((16, 37, 3)), jnp.float32) for _ in range(2))
    k = jnp.asarray(rng.standard_normal((3, 20)), jnp.float32)
    bias = jnp.asarray(rng.standard_normal(3), jnp.float32)
    mesh = mesh_lib.make_data_mesh()
    for implementation in ("pallas", "xla"):
        def loss(u, k, bias, pre):
            y = fft_conv(u, k, bias=bias, pregate=pre, causal=False,
                         implementation=implementation)
            return jnp.sum(jnp.sin(y))
        grad = jax.value_and_grad(loss, argnums=(0, 1, 2, 3))
        value, grads = jax.jit(grad)(u, k, bias, pre)
        with jax.set_mesh(mesh):
            batch, rep = mesh_lib.batch_sharded(mesh), mesh_lib.replicated(mesh)
            step = jax.jit(grad, in_shardings=(batch, rep, rep, batch))
            per_shard = "shard_map" in str(jax.make_jaxpr(step)(u, k, bias, pre))
            s_value, s_grads = step(u, k, bias, pre)
        assert per_shard == (implementation == "pallas"), implementation
        np.testing.assert_allclose(s_value, value, rtol=1e-5)
        for a, b in zip(s_grads, grads, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    print("SHARDED_OK")
""")


def test_under_jit_on_an_8_device_mesh_matches_one_device():
    """Batch-sharded jit on 8 CPU devices: the Pallas path runs per shard (shard_map), the XLA
    path is partitioned by XLA; value and every gradient equal the unsharded run."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert "SHARDED_OK" in result.stdout, result.stderr[-3000:]


# ------------------------------------------------------------------------ non-finite inputs
def _sprinkle(x, rng, count, values=(np.nan, np.inf, -np.inf)):
    x = np.array(x, np.float32)
    flat = x.reshape(-1)
    flat[rng.choice(flat.size, count, replace=False)] = rng.choice(values, count)
    return jnp.asarray(x)


SLOW = pytest.mark.slow


@pytest.mark.parametrize("implementation, causal, where", [
    ("xla", False, "u"), ("xla", False, "k"), ("xla", True, "postgate"),
    ("pallas", False, "u"), ("pallas", True, "k")] + [
    pytest.param(i, c, w, marks=SLOW) for i, c, w in [
        ("xla", True, "u"), ("xla", True, "k"), ("xla", False, "pregate"),
        ("xla", True, "pregate"), ("xla", False, "postgate"), ("pallas", False, "k"),
        ("pallas", False, "pregate"), ("pallas", False, "postgate")]])
def test_non_finite_values_stay_in_their_footprint(implementation, causal, where):
    """One NaN/Inf reaches only the outputs (and gradients) whose direct sum contains it: the
    isfinite masks of the FFT path equal the reference's, forward and every gradient."""
    rng = np.random.default_rng(1)
    args = list(_arrays(2, 40, 3, 9 if where != "k" else 6, options=ARGS))
    index = ARGS.index(where)
    args[index] = _sprinkle(args[index], rng, 2 if where == "k" else 3)
    cotangent = jnp.asarray(rng.standard_normal(args[0].shape), jnp.float32)

    def run(fn):
        y, vjp = jax.vjp(lambda *a: fn(*a), *args)
        return (y, *vjp(cotangent))

    ref = run(lambda u, k, b, pre, post: fft_conv_reference(
        u, k, causal=causal, bias=b, pregate=pre, postgate=post))
    with xla_plan("fft"):
        got = run(lambda u, k, b, pre, post: fft_conv(
            u, k, causal=causal, bias=b, pregate=pre, postgate=post,
            implementation=implementation))
    for name, r, g in zip(("y", *ARGS), ref, got, strict=True):
        r_mask, g_mask = np.isfinite(np.asarray(r)), np.isfinite(np.asarray(g))
        assert 0 < r_mask.sum() or name == "bias"
        np.testing.assert_array_equal(g_mask, r_mask, err_msg=f"isfinite({name})")
        np.testing.assert_allclose(np.asarray(g)[r_mask], np.asarray(r)[r_mask], rtol=1e-3,
                                   atol=1e-3 * float(np.abs(np.asarray(r)[r_mask]).max()))


def test_window_count():
    bad = jnp.asarray([0, 1, 0, 0, 1, 1, 0], bool)
    got = xla_fft.window_count(bad, 0, -1, 3, 9)
    expected = [sum(bool(bad[i]) for i in range(m - 1, m + 2) if 0 <= i < 7) for m in range(9)]
    np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------------------- edge cases
@pytest.mark.parametrize("implementation", [None, "xla"])
def test_empty_batch(implementation):
    u, k, bias, _, _ = _arrays(0, 12, 3, 5, options=("bias",))
    y = fft_conv(u, k, bias=bias, implementation=implementation)
    assert y.shape == (0, 12, 3) and y.dtype == u.dtype
    grads = jax.grad(lambda u, k: jnp.sum(fft_conv(u, k, implementation=implementation)),
                     argnums=(0, 1))(u, k)
    assert grads[0].shape == u.shape and not np.any(np.asarray(grads[1]))


def test_bfloat16_result_is_one_rounding_of_float32():
    u, k, bias, pre, post = _arrays(1, 30, 4, 30, "bfloat16", ARGS)
    expected = fft_conv_reference(u.astype(jnp.float32), k, bias=bias,
                                  pregate=pre.astype(jnp.float32),
                                  postgate=post.astype(jnp.float32)).astype(jnp.bfloat16)
    with xla_plan("fft"):
        y = fft_conv(u, k, bias=bias, pregate=pre, postgate=post, implementation="xla")
    assert y.dtype == jnp.bfloat16
    diff = np.abs(np.asarray(y, np.float32) - np.asarray(expected, np.float32))
    assert np.all(diff <= np.abs(np.asarray(expected, np.float32)) * 2 ** -7 + 1e-6)


# ----------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("u_shape, k_shape, kwargs, message", [
    ((1, 8, 4), (4, 9), {}, r"kernel length Lk = k.shape\[1\] = 9 must be in \[1, L\] = \[1, 8\]"),
    ((1, 8, 4), (4, 0), {}, r"must be in \[1, L\]"),
    ((1, 8, 4), (3, 5), {}, r"k must be \[H, Lk\] with H = u.shape\[-1\] = 4"),
    ((1, 8, 4), (4,), {}, r"k must be \[H, Lk\]"),
    ((8, 4), (4, 3), {}, r"u must be \[B, L, H\]"),
    ((1, 0, 4), (4, 1), {}, "sequence length L >= 1"),
    ((1, 8, 4), (4, 3), dict(implementation="cuda"),
     r"implementation='cuda'.*\[None, 'xla', 'pallas'\]"),
    ((1, 8, 4), (4, 3), dict(causal="yes"), "causal='yes' must be a bool"),
    ((1, 8, 4), (4, 3), dict(bias=jnp.zeros(3)), r"bias must be None or a floating \[H\] = \[4\]"),
    ((1, 8, 4), (4, 3), dict(pregate=jnp.zeros((1, 8, 3))),
     r"pregate must be None or a floating array of u's shape \[B, L, H\] = \[1, 8, 4\]"),
    ((1, 8, 4), (4, 3), dict(postgate=jnp.zeros((1, 8, 4), jnp.int32)), "postgate must be"),
])
def test_bad_arguments_raise_clear_errors(u_shape, k_shape, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fft_conv(jnp.zeros(u_shape), jnp.zeros(k_shape), **kwargs)


def test_auto_choice_follows_the_measured_plan():
    plan = tuning.XLA_PLANS["default"]
    assert api.choose_implementation(None, 4096, plan.forward_fft_min_taps) == "fft"
    assert api.choose_implementation("xla", 4096, 1) == (
        "fft_train" if plan.train_fft_min_taps <= 1 else "direct")
    assert api.choose_implementation("pallas", 64, 64) == "pallas"


def test_bench_writes_csv_rows(tmp_path):
    from kernels_pallas import bench
    out = tmp_path / "rows.csv"
    rows = bench.main(["fft_conv", "--lengths", "16", "--channels", "2", "--kernel_lens",
                       "3,L", "--repeats", "1", "--csv", str(out), "--note", "test"])
    assert [(r["kernel_len"], r["implementation"]) for r in rows] == [
        (3, "direct"), (3, "auto"), (16, "jnp.fft"), (16, "direct"), (16, "auto")]
    lines = out.read_text().splitlines()
    assert lines[0].startswith("device,batch,length,channels,kernel_len,implementation,fwd_ms")
    assert len(lines) == 6 and all(r["fwdbwd_ms"] > 0 for r in rows)
    assert rows[-1]["speedup_vs_jnp_fft"].startswith("fwd ")


def test_bad_dtypes_raise():
    with pytest.raises(ValueError, match=r"u.dtype=int32.*\['float32', 'bfloat16'\]"):
        fft_conv(jnp.zeros((1, 4, 2), jnp.int32), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="k.dtype=int32 must be a floating dtype"):
        fft_conv(jnp.zeros((1, 4, 2)), jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="XlaPlan.train_fft_min_taps must be a positive int"):
        tuning.XlaPlan(forward_fft_min_taps=1, train_fft_min_taps=0)
    with pytest.raises(ValueError, match="train_fft_min_taps must be <= forward_fft_min_taps"):
        tuning.XlaPlan(forward_fft_min_taps=4, train_fft_min_taps=8)
