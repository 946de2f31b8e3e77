"""kernels_pallas.depthwise_conv2d: every path against the lax.conv oracle, forward and gradients.

On CPU the "xla" path is compiled (its direct and FFT formulations are each forced by a tuning
plan) and the "pallas" path runs its TPU kernel in the generic interpreter; a few cases run the
TPU kernel under ``pltpu.InterpretParams`` and the Mosaic GPU kernel under its interpreter, and
both kernels are lowered for the "tpu" and "cuda" platforms. Shapes are drawn by hypothesis
(odd sizes, channels that are not a multiple of the 128-lane block, stride 2, dilation, band
kernels, both dtypes), kept small because interpreting is slow.
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
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import kernels_pallas
from kernels_pallas import compile_for, core, depthwise_conv2d
from kernels_pallas.depthwise_conv2d import api, depthwise_conv2d_reference, tuning, xla_cpu
from tests.kernels.harness import check_against_reference, implementations, interpreter

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLANS = {"direct": tuning.CpuPlan(10**6, 10**6),
         "fft": tuning.CpuPlan(1, 1),
         "default": tuning.CPU_PLANS["default"]}


#: Shrinking recompiles per example; the drawn case is printed as it is.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@st.composite
def conv_cases(draw, max_kernel=7, channels=(1, 3, 8, 130)):
    """A random valid call: (shape, kernel, stride, padding, dilation, dtype, with_bias)."""
    k = draw(st.integers(1, max_kernel))
    kernel = draw(st.sampled_from([(k, k), (1, k), (k, 1)]))
    stride = draw(st.sampled_from([1, 2, (1, 2), (2, 1)]))
    dilation = draw(st.sampled_from([1, 2, (1, 3)]))
    effective = [(kk - 1) * d + 1 for kk, d in zip(kernel, _pair(dilation))]
    height = draw(st.integers(effective[0], effective[0] + 6))
    width = draw(st.integers(effective[1], effective[1] + 6))
    padding = draw(st.sampled_from(["SAME", "VALID", "explicit"]))
    if padding == "explicit":
        padding = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(2))
    shape = (draw(st.integers(1, 2)), height, width, draw(st.sampled_from(channels)))
    dtype = draw(st.sampled_from(["float32", "bfloat16"]))
    return shape, kernel, stride, padding, dilation, dtype, draw(st.booleans())


def _arrays(shape, kernel, dtype, with_bias, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal(shape, np.float32), dtype)
    w = jnp.asarray(rng.standard_normal((*kernel, shape[-1]), np.float32))
    b = jnp.asarray(rng.standard_normal(shape[-1], np.float32)) if with_bias else None
    return x, w, b


def _check(case, implementation, context=None):
    shape, kernel, stride, padding, dilation, dtype, with_bias = case
    x, w, b = _arrays(shape, kernel, dtype, with_bias)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation)
    ref_kwargs = dict(stride=_pair(stride), dilation=_pair(dilation), padding=padding)

    def op(x, w, b):
        return depthwise_conv2d(x, w, bias=b, implementation=implementation, **kwargs)

    def reference(x, w, b):
        return depthwise_conv2d_reference(x, w, bias=b, **ref_kwargs)

    diff = (0, 1, 2) if with_bias else (0, 1)
    return check_against_reference(op, reference, (x, w, b), diff_argnums=diff,
                                   context=context)


@contextlib.contextmanager
def cpu_plan(name):
    """Forces the CPU formulation ("direct", "fft" or the tuned "default") while tracing."""
    saved = tuning.CPU_PLANS
    tuning.CPU_PLANS = {"default": PLANS[name]}
    try:
        yield
    finally:
        tuning.CPU_PLANS = saved


# ------------------------------------------------------------------------- against lax.conv
@pytest.mark.parametrize("plan", ["direct", "fft"])
@settings(max_examples=10, deadline=None, derandomize=True)
@given(case=conv_cases())
def test_xla_path_matches_reference(case, plan):
    _check(case, "xla", cpu_plan(plan))


@settings(max_examples=8, deadline=None, derandomize=True)
@given(case=conv_cases(max_kernel=5, channels=(3, 130)))
def test_pallas_path_matches_reference(case):
    _check(case, "pallas")


@pytest.mark.parametrize("implementation, target", implementations())
@pytest.mark.parametrize("kernel, dilation, padding", [
    ((13, 13), 1, "SAME"), ((31, 31), 1, "SAME"), ((1, 13), (1, 2), ((0, 1), (6, 5)))])
def test_large_and_band_kernels(implementation, target, kernel, dilation, padding):
    if implementation == "pallas" and kernel == (31, 31):
        pytest.skip("31x31 interpreted costs ~20 s; covered by the lowering test and 13x13")
    case = ((1, 33, 34, 8), kernel, 1, padding, dilation, "float32", True)
    # The tuned plan: FFT for the 13x13 and 31x31, shifted multiply-adds for the band.
    with cpu_plan("default"):
        _check(case, implementation, interpreter(target))


@pytest.mark.parametrize("stride, shape, kernel", [
    (2, (1, 9, 8, 130), (3, 3)),   # odd height, even width, 130 channels: two lane blocks
    ((1, 2), (2, 6, 7, 5), (2, 3)),
])
def test_tpu_kernel_under_tpu_interpreter(stride, shape, kernel):
    case = (shape, kernel, stride, "SAME", (2, 1), "bfloat16", True)
    _check(case, "pallas", interpreter("tpu"))


def test_gpu_kernel_under_mosaic_gpu_interpreter():
    case = ((1, 5, 6, 3), (3, 2), 2, "SAME", 1, "float32", True)
    _check(case, "pallas", interpreter("gpu"))


@pytest.mark.parametrize("target, lowering_platform", [("tpu", "tpu"), ("gpu", "cuda")])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_kernels_lower_for_their_platform(target, lowering_platform, dtype):
    """Forward and backward of the Pallas path lower to Mosaic (TPU) / Mosaic GPU MLIR on this
    machine: the Pallas-level checks (block shapes, layouts, supported primitives) pass. Not a
    compilation: that needs the device."""
    x = jax.ShapeDtypeStruct((2, 20, 20, 256), jnp.dtype(dtype))
    w = jax.ShapeDtypeStruct((31, 31, 256), jnp.float32)

    def loss(x, w):
        y = depthwise_conv2d(x, w, padding="SAME", implementation="pallas")
        return jnp.sum(y.astype(jnp.float32) ** 2)

    with compile_for(target):
        lowered = jax.jit(jax.grad(loss, argnums=(0, 1))).trace(x, w).lower(
            lowering_platforms=(lowering_platform,))
    text = lowered.as_text()
    call = "tpu_custom_call" if target == "tpu" else "mosaic_gpu"
    assert text.count(call) >= 3  # forward, input-gradient and kernel-gradient kernels


def test_bias_is_added_before_the_single_rounding():
    """bfloat16: bias + accumulator are rounded once (a double rounding would differ)."""
    x, w, _ = _arrays((1, 6, 6, 8), (3, 3), "bfloat16", False)
    b = jnp.full((8,), 1000.3, jnp.float32)  # large: the float32 sum rounds differently
    expected = depthwise_conv2d_reference(x, w, padding="SAME", bias=b)
    for implementation in ("xla", "pallas"):
        y = depthwise_conv2d(x, w, bias=b, implementation=implementation)
        np.testing.assert_array_equal(np.asarray(y, np.float32),
                                      np.asarray(expected, np.float32))


# ------------------------------------------------------------- non-finite values, batch 0
def _finite_mask_and_values(actual, expected, name, channel=None):
    """The isfinite mask of lax's result (or, given ``channel``, that whole channel non-finite
    and lax's non-finite entries inside it), and the finite entries agree."""
    a, e = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
    want = ~np.isfinite(e)
    if channel is not None:
        assert not want[..., np.arange(e.shape[-1]) != channel].any()
        want[..., channel] = True
    bad = ~np.isfinite(a) != want
    assert not bad.any(), (f"{name}: {int(bad.sum())} of {a.size} entries differ in finiteness "
                           f"(op non-finite {int((~np.isfinite(a)).sum())}, expected "
                           f"{int(want.sum())})")
    ok = ~want
    scale = max(float(np.max(np.abs(e[ok]), initial=0.0)), 1e-6)
    error = float(np.max(np.abs(a[ok] - e[ok]), initial=0.0)) / scale
    assert error <= (1.5e-2 if actual.dtype == jnp.bfloat16 else 5e-5), f"{name}: error {error}"


@pytest.mark.parametrize("plan", ["direct", "fft"])
@pytest.mark.parametrize("where", ["x", "w", "g"])
@settings(max_examples=2, deadline=None, derandomize=True, phases=NO_SHRINK)
@given(case=conv_cases(max_kernel=5, channels=(1, 3)),
       value=st.sampled_from([np.nan, np.inf, -np.inf]), position=st.integers(0, 10**6))
def test_non_finite_values_stay_in_their_footprint(case, plan, where, value, position):
    """A NaN/Inf in x makes exactly the outputs and kernel-gradient entries non-finite that
    lax.conv_general_dilated does, one in the cotangent exactly its input-gradient entries
    (issue 19: the FFT plan turned one NaN into a whole channel); a non-finite kernel tap makes
    its channel's output and input gradient, a non-finite cotangent its channel's kernel
    gradient, non-finite (lax: the same but for entries where it only meets padding). Every
    other entry keeps its value."""
    shape, kernel, stride, padding, dilation, dtype, with_bias = case
    x, w, b = _arrays(shape, kernel, dtype, with_bias)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation)
    ref_kwargs = dict(stride=_pair(stride), dilation=_pair(dilation), padding=padding)
    y_shape = jax.eval_shape(lambda x, w: depthwise_conv2d_reference(x, w, **ref_kwargs), x, w)
    g = jnp.asarray(np.random.default_rng(1).standard_normal(y_shape.shape), dtype)
    poked = {"x": x, "w": w, "g": g}[where]
    index = np.unravel_index(position % poked.size, poked.shape)
    x, w, g = (a.at[index].set(value) if name == where else a
               for name, a in (("x", x), ("w", w), ("g", g)))

    def run(fn):
        y, vjp = jax.vjp(fn, x, w)
        return (y, *vjp(g))

    with cpu_plan(plan):
        plain = jax.jit(lambda x, w: depthwise_conv2d(x, w, implementation="xla", **kwargs))(x, w)
        got = jax.jit(lambda: run(lambda x, w: depthwise_conv2d(
            x, w, implementation="xla", **kwargs)))()
    expected = jax.jit(lambda: run(lambda x, w: depthwise_conv2d_reference(
        x, w, **ref_kwargs)))()
    channel = index[-1]
    whole = {"w": ("forward", "vjp forward", "dx"), "g": ("dw",)}.get(where, ())
    for name, a, e in zip(("forward", "vjp forward", "dx", "dw"), (plain, *got),
                          (expected[0], *expected)):
        _finite_mask_and_values(a, e, name, channel if name in whole else None)


def test_one_nan_in_a_13x13_conv_stays_in_its_footprint():
    """Issue 19's case: the default CPU plan (FFT for 13x13) on one NaN pixel."""
    x, w, _ = _arrays((1, 24, 20, 2), (13, 13), "float32", False)
    x = x.at[0, 3, 17, 1].set(jnp.nan)
    y = jax.jit(lambda x, w: depthwise_conv2d(x, w, implementation="xla"))(x, w)
    expected = depthwise_conv2d_reference(x, w, padding="SAME")
    assert int(jnp.sum(~jnp.isfinite(expected))) == 10 * 9  # the footprint, clipped at borders
    _finite_mask_and_values(y, expected, "forward")


@pytest.mark.parametrize("implementation, kernel, stride", [
    (None, (13, 13), 1), ("xla", (3, 3), 1), ("pallas", (3, 2), 2), ("pallas", (13, 13), 1)])
def test_batch_zero_gives_empty_results_and_zero_gradients(implementation, kernel, stride):
    x, w, b = _arrays((0, 9, 7, 3), kernel, "bfloat16", True)
    y, vjp = jax.vjp(lambda x, w, b: depthwise_conv2d(
        x, w, bias=b, stride=stride, implementation=implementation), x, w, b)
    expected = jax.eval_shape(lambda: depthwise_conv2d_reference(
        jnp.zeros((1, 9, 7, 3), x.dtype), w, padding="SAME", stride=_pair(stride)))
    assert (y.shape, y.dtype) == ((0, *expected.shape[1:]), x.dtype)
    dx, dw, db = vjp(jnp.zeros(y.shape, y.dtype))
    assert (dx.shape, dx.dtype) == (x.shape, x.dtype)
    np.testing.assert_array_equal(dw, np.zeros(w.shape))
    np.testing.assert_array_equal(db, np.zeros(b.shape))


# ----------------------------------------------------------------------- dispatch, sharding
def test_auto_choice_and_fallback(monkeypatch):
    geometry = api.check_arguments(jnp.zeros((1, 8, 8, 4)), jnp.zeros((3, 3, 4)))
    assert api.choose_implementation(None, geometry, 4) == "xla_cpu"
    assert api.choose_implementation("xla", geometry, 4) == "xla_cpu"
    assert api.choose_implementation("pallas", geometry, 4) == "pallas"
    monkeypatch.setattr(core, "platform", lambda: "gpu")
    monkeypatch.setattr(core, "device_kind", lambda: "NVIDIA H100 80GB HBM3")
    assert api.choose_implementation(None, geometry, 4) == "reference"  # nothing measured yet
    monkeypatch.setattr(tuning, "AUTO_PALLAS_DEVICE_KINDS", ("NVIDIA H100",))
    assert api.choose_implementation(None, geometry, 4) == "pallas"
    assert api.choose_implementation("xla", geometry, 4) == "reference"
    # A TPU shape beyond the VMEM limit: None falls back to lax.conv, "pallas" refuses.
    monkeypatch.setattr(core, "platform", lambda: "tpu")
    monkeypatch.setattr(tuning, "AUTO_PALLAS_DEVICE_KINDS", ("cpu", "NVIDIA H100"))
    big = api.check_arguments(jax.ShapeDtypeStruct((1, 2048, 2048, 256), jnp.float32),
                              jax.ShapeDtypeStruct((31, 31, 256), jnp.float32))
    assert api.choose_implementation(None, big, 4) == "reference"
    with pytest.raises(ValueError, match="does not fit the TPU kernel's VMEM"):
        api.choose_implementation("pallas", big, 4)


def test_strided_convolution_is_split_into_stride_one_phases():
    assert api._phases(3, 2, 1) == [(0, 0, 2, 1, 0), (1, 1, 2, 1, 0)]
    assert api._phases(3, 2, 2) == [(0, 0, 1, 1, 0)]   # even dilation: one phase, dilation 1
    assert api._phases(3, 2, 3) == [(0, 0, 2, 3, 0), (1, 1, 2, 3, 1)]
    assert api._phases(1, 2, 1) == [(0, 0, 2, 1, 0)]


def test_fft_sizes_are_smooth_and_large_enough():
    for n in (1, 7, 31, 62, 86, 97, 121):
        m = xla_cpu.fft_size(n)
        rest = m
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        assert m >= n and rest == 1
        assert all(not _smooth(k) for k in range(n, m))


def _smooth(n):
    for p in (2, 3, 5):
        while n % p == 0:
            n //= p
    return n == 1


SHARDED_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, flax.linen as nn
    from jaxconv.layers import DepthwiseConv2D
    from jaxconv.train import mesh as mesh_lib

    class Net(nn.Module):
        implementation: str
        @nn.compact
        def __call__(self, x):
            x = nn.relu(DepthwiseConv2D(5, implementation=self.implementation)(x))
            x = DepthwiseConv2D((1, 3), strides=2, use_bias=False,
                                implementation=self.implementation)(x)
            return nn.Dense(3)(x.mean(axis=(1, 2)))

    assert jax.device_count() == 8
    x = jnp.asarray(np.random.default_rng(0).standard_normal((16, 9, 9, 8)), jnp.float32)
    mesh = mesh_lib.make_data_mesh()
    for implementation in ("pallas", "xla"):
        net = Net(implementation)
        variables = net.init(jax.random.key(0), x[:1])
        loss = lambda v, x: jnp.sum(net.apply(v, x) ** 2)
        value, grads = jax.jit(jax.value_and_grad(loss))(variables, x)
        with jax.set_mesh(mesh):
            step = jax.jit(jax.value_and_grad(loss),
                           in_shardings=(mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)),
                           out_shardings=mesh_lib.replicated(mesh))
            per_shard = "shard_map" in str(jax.make_jaxpr(step)(variables, x))
            s_value, s_grads = step(variables, x)
        assert per_shard == (implementation == "pallas"), implementation
        np.testing.assert_allclose(s_value, value, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(s_grads), jax.tree.leaves(grads), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    print("SHARDED_OK")
""")


def test_layer_on_an_8_device_mesh_matches_the_unsharded_run():
    """The Pallas path runs per batch shard (shard_map) inside a jitted, batch-sharded model;
    loss and all gradients (the depthwise kernels' summed over shards) equal one device's."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert "SHARDED_OK" in result.stdout, result.stderr[-3000:]


# ----------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("x_shape, w_shape, kwargs, message", [
    ((1, 8, 8, 4), (9, 3, 4), dict(padding="VALID"), "kernel larger than the padded input"),
    ((1, 8, 8, 4), (5, 5, 4), dict(padding="VALID", dilation=2), "kernel larger"),
    ((1, 8, 8, 4), (3, 3, 5), {}, r"w must be \[KH, KW, C\] with C = x.shape\[-1\] = 4"),
    ((1, 8, 8, 4), (3, 3), {}, r"w must be \[KH, KW, C\]"),
    ((1, 8, 8, 4), (3, 3, 4), dict(stride=3), r"stride=3 is not supported.*one of \[1, 2\]"),
    ((1, 8, 8, 4), (3, 3, 4), dict(stride=(1, 0)), "stride"),
    ((1, 8, 8, 4), (3, 3, 4), dict(padding="FULL"), r"padding='FULL'.*\['SAME', 'VALID'\]"),
    ((1, 8, 8, 4), (3, 3, 4), dict(padding=((1, 1),)), "padding"),
    ((1, 8, 8, 4), (3, 3, 4), dict(dilation=0), "dilation=0"),
    ((1, 8, 8, 4), (3, 3, 4), dict(implementation="cuda"),
     r"implementation='cuda'.*\[None, 'xla', 'pallas'\]"),
    ((8, 8, 4), (3, 3, 4), {}, r"x must be \[B, H, W, C\]"),
])
def test_bad_arguments_raise_clear_errors(x_shape, w_shape, kwargs, message):
    with pytest.raises(ValueError, match=message):
        depthwise_conv2d(jnp.zeros(x_shape), jnp.zeros(w_shape), **kwargs)


def test_bad_dtype_and_bias_raise():
    with pytest.raises(ValueError, match=r"x.dtype=int32.*\['float32', 'bfloat16'\]"):
        depthwise_conv2d(jnp.zeros((1, 4, 4, 2), jnp.int32), jnp.zeros((3, 3, 2)))
    with pytest.raises(ValueError, match=r"bias must be None or a floating \[C\] = \[2\]"):
        depthwise_conv2d(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2)), bias=jnp.zeros(3))


# ---------------------------------------------------------------------------- framework
def test_tuning_lookup_and_validation():
    table = {"default": 0, "NVIDIA H": 1, "NVIDIA H100": 2, "TPU v5": 3}
    assert core.lookup_tuning(table, "NVIDIA H100 80GB HBM3") == 2
    assert core.lookup_tuning(table, "NVIDIA H200") == 1
    assert core.lookup_tuning(table, "TPU v5 lite") == 3
    assert core.lookup_tuning(table, "cpu") == 0
    with pytest.raises(ValueError, match="block_c must be a multiple of 128"):
        tuning.TpuBlocks(block_c=100)
    with pytest.raises(ValueError, match=r"block_h \* block_w must be <= 128"):
        tuning.GpuBlocks(block_h=16, block_w=16)
    with pytest.raises(ValueError, match="GpuBlocks.dw_batch must be a positive int"):
        tuning.GpuBlocks(dw_batch=0)
    with pytest.raises(ValueError, match="CpuPlan.train_fft_min_taps"):
        tuning.CpuPlan(forward_fft_min_taps=1, train_fft_min_taps=0)
    with pytest.raises(ValueError, match=r"target='cuda'.*\['tpu', 'gpu'\]"):
        with kernels_pallas.interpret_as("cuda"):
            pass


def test_bench_writes_csv_rows(tmp_path):
    from kernels_pallas import bench
    out = tmp_path / "rows.csv"
    rows = bench.main(["depthwise_conv2d", "--shapes", "1x6x6x4", "--kernel_sizes", "3,1x3",
                       "--repeats", "1", "--csv", str(out), "--note", "test"])
    assert [(r["kernel"], r["implementation"]) for r in rows] == [
        ("3x3", "reference"), ("3x3", "auto"), ("1x3", "reference"), ("1x3", "auto")]
    lines = out.read_text().splitlines()
    assert lines[0].startswith("device,shape,kernel,dtype,implementation,fwd_ms,fwdbwd_ms")
    assert len(lines) == 5 and all(r["fwdbwd_ms"] > 0 for r in rows)
