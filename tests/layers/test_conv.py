"""``jaxconv.layers.conv.matmul_conv`` and ``cpu_conv``: same values and gradients as
``lax.conv_general_dilated``; matmul_conv a matmul exactly for the calls it serves."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from jaxconv.layers import conv
from tests.helpers import dot_contractions

PAD1 = ((1, 1), (1, 1))
DN = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("x_shape, kernel, kwargs, served", [
    ((2, 7, 7, 8), (7, 7, 8, 5), {}, True),                   # window = map: a reshape
    ((2, 9, 10, 8), (7, 7, 8, 5), {}, True),                  # 3x4 outputs, taps side by side
    ((2, 3, 3, 8), (1, 1, 8, 5), {}, True),                   # 1x1
    ((2, 20, 20, 8), (1, 1, 8, 5), {}, True),                 # 1x1 on a large map
    ((2, 4, 4, 8), (3, 3, 8, 5), {"padding": PAD1}, True),    # 16 output pixels: padded
    ((2, 1, 2, 8), (3, 3, 8, 5), {"padding": PAD1}, True),
    ((2, 5, 5, 8), (3, 3, 8, 5), {"padding": PAD1}, False),   # 25 pixels: lax
    ((2, 9, 9, 8), (3, 3, 8, 5), {"strides": 2}, False),
    ((2, 9, 9, 8), (3, 3, 8, 5), {"padding": "SAME"}, False),
])
def test_matmul_conv_matches_lax(x_shape, kernel, kwargs, served, monkeypatch):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=kernel), jnp.float32)
    strides = (kwargs.get("strides", 1),) * 2
    padding = kwargs.get("padding", "VALID")
    dn = ("NHWC", "HWIO", "NHWC")

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w, strides, padding, dimension_numbers=dn)))

    with jax.default_matmul_precision("highest"):
        ref = jax.jit(jax.value_and_grad(loss(jax.lax.conv_general_dilated), (0, 1)))(x, w)
        calls, stock = [], jax.lax.conv_general_dilated
        monkeypatch.setattr(conv.lax, "conv_general_dilated",
                            lambda *a, **k: calls.append(1) or stock(*a, **k))
        ours = jax.jit(jax.value_and_grad(loss(conv.matmul_conv), (0, 1)))(x, w)
    assert (not calls) == served
    # Relative to the largest value: a 7x7x8 window sums 392 float32 products.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(
        a, b, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(b)))), ours, ref)


# ------------------------------------------------------------------------------- cpu_conv
@st.composite
def conv_calls(draw):
    """A random conv call: odd sizes, stride 2, dilation, groups, every padding form, bf16."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin, cout = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = draw(st.sampled_from([(1, 1), (2, 2), (1, 2)]))
    dilation = draw(st.sampled_from([(1, 1), (2, 1), (2, 2)]))
    effective = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    hw = [draw(st.integers(e, e + 5)) for e in effective]
    padding = draw(st.sampled_from(["SAME", "VALID", "explicit"]))
    if padding == "explicit":
        padding = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2))
    dtype = draw(st.sampled_from(["float32", "float32", "bfloat16"]))
    return ((draw(st.integers(1, 3)), *hw, cin), (*kernel, cin // groups, cout), stride,
            padding, dilation, groups, dtype)


@settings(max_examples=12, deadline=None, derandomize=True,
          phases=(Phase.explicit, Phase.reuse, Phase.generate))
@given(call=conv_calls())
def test_cpu_conv_matches_lax_forward_and_both_gradients(call):
    x_shape, w_shape, stride, padding, dilation, groups, dtype = call
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=x_shape), dtype)
    w = jnp.asarray(rng.normal(size=w_shape), dtype)

    def run(conv):
        def f(x, w):
            return conv(x, w, stride, padding, rhs_dilation=dilation, dimension_numbers=DN,
                        feature_group_count=groups)
        y, vjp = jax.vjp(f, x, w)
        cotangent = jnp.asarray(np.random.default_rng(1).normal(size=y.shape), y.dtype)
        return (y, *vjp(cotangent))

    with jax.default_matmul_precision("highest"):
        expected = jax.jit(lambda: run(jax.lax.conv_general_dilated))()
        got = jax.jit(lambda: run(conv.cpu_conv))()
    tol = 2e-2 if dtype == "bfloat16" else 1e-5
    for name, a, e in zip(("forward", "input gradient", "kernel gradient"), got, expected):
        assert (a.shape, a.dtype) == (e.shape, e.dtype), name
        a, e = np.asarray(a, np.float32), np.asarray(e, np.float32)
        error = np.max(np.abs(a - e), initial=0) / max(np.max(np.abs(e), initial=0), 1e-6)
        assert error <= tol, f"{name}: relative error {error:.3g}"


@pytest.mark.parametrize("groups, w_shape", [(1, (3, 3, 6, 4)), (3, (3, 3, 2, 6)),
                                             (6, (3, 1, 1, 6))])
def test_cpu_conv_forward_mode_and_dispatch(groups, w_shape, monkeypatch):
    """jax.jvp works; on CPU no grouped convolution is left (XLA:CPU's is ~250x slower than
    its dense one) in the forward or either gradient; conv2d uses cpu_conv; off CPU every call
    is lax's own, groups included."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 7, 6, 6)), jnp.float32)
    w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)

    def f(conv_fn):
        return lambda x, w: conv_fn(x, w, (2, 2), PAD1, dimension_numbers=DN,
                                    feature_group_count=groups)

    with jax.default_matmul_precision("highest"):
        primal, tangent = jax.jvp(f(conv.cpu_conv), (x, w), (x, w))
        primal_ref, tangent_ref = jax.jvp(f(jax.lax.conv_general_dilated), (x, w), (x, w))
    np.testing.assert_allclose(tangent, tangent_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(primal, primal_ref, rtol=1e-5, atol=1e-4)
    monkeypatch.setattr(conv, "BLOCK_DIAGONAL_MAX_GROUPS", 4)  # 6 groups: taps_conv
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(f(conv.cpu_conv)(x, w)), (0, 1)))(
        x, w))
    assert "feature_group_count=1" in jaxpr or groups > 4
    assert f"feature_group_count={groups}" not in jaxpr or groups == 1
    assert conv.conv2d(4, 3).conv_general_dilated is conv.cpu_conv
    assert conv.conv2d(4, 3, loop_safe=True).conv_general_dilated is conv.loop_safe_conv
    monkeypatch.setattr(conv.jax, "default_backend", lambda: "gpu")
    jaxpr = str(jax.make_jaxpr(f(conv.cpu_conv))(x, w))
    assert f"feature_group_count={groups}" in jaxpr and "dot_general" not in jaxpr


@pytest.mark.parametrize("x_shape, strides, dtype", [
    ((2, 9, 7, 6), (2, 2), "float32"),    # odd sizes: the last row/column is read
    ((3, 8, 8, 5), (2, 2), "float32"),    # even sizes: the last row/column is skipped
    ((2, 10, 9, 4), (3, 2), "float32"),
    ((2, 7, 7, 6), (2, 2), "bfloat16"),
])
def test_strided_pointwise_conv_matches_lax(x_shape, strides, dtype):
    """Unpadded strided 1x1 convs (ResNet's downsample shortcuts) on CPU: a strided slice and
    a matmul, no convolution left in the forward or either gradient; same values, jvp works."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=x_shape), dtype)
    w = jnp.asarray(rng.normal(size=(1, 1, x_shape[3], 3)), dtype)

    def run(conv_fn):
        def f(x, w):
            return conv_fn(x, w, strides, "VALID", dimension_numbers=DN)
        y, vjp = jax.vjp(f, x, w)
        cotangent = jnp.asarray(np.random.default_rng(1).normal(size=y.shape), y.dtype)
        return (y, *vjp(cotangent), jax.jvp(f, (x, w), (x, w))[1])

    with jax.default_matmul_precision("highest"):
        expected = jax.jit(lambda: run(jax.lax.conv_general_dilated))()
        got = jax.jit(lambda: run(conv.cpu_conv))()
    tol = 2e-2 if dtype == "bfloat16" else 1e-5
    for name, a, e in zip(("forward", "input gradient", "kernel gradient", "jvp"), got,
                          expected):
        assert (a.shape, a.dtype) == (e.shape, e.dtype), name
        a, e = np.asarray(a, np.float32), np.asarray(e, np.float32)
        assert np.max(np.abs(a - e)) <= tol * np.max(np.abs(e)), name
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(
        conv.cpu_conv(x, w, strides, "VALID", dimension_numbers=DN)), (0, 1)))(x, w))
    assert "conv_general_dilated" not in jaxpr


@pytest.mark.parametrize("make", ["pointwise", "strided_pointwise", "dense", "taps"])
def test_matmul_paths_contract_one_dimension(make, monkeypatch):
    """The 1x1 convs cpu_conv makes matmuls, taps_conv's per-tap matmuls and the zoo's Dense
    layers on [B, H, W, C] maps contract ONE dimension in the forward and both gradients: a
    kernel gradient contracting (b, h, w) makes XLA:CPU lay the activation gradient out
    transposed at ~1.3 GB/s (flat_matmul's docstring), 1.25-1.28x of a whole train step."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 5, 6, 8)), jnp.float32)
    if make == "dense":
        module = conv.dense(7)
        params = module.init(jax.random.key(0), x)

        def f(x, params):
            return module.apply(params, x)
        args = (x, params)
    else:
        kernel = {"pointwise": (1, 1, 8, 7), "strided_pointwise": (1, 1, 8, 7),
                  "taps": (3, 3, 1, 8)}[make]
        strides = (2, 2) if make == "strided_pointwise" else (1, 1)
        groups = 8 if make == "taps" else 1
        monkeypatch.setattr(conv, "BLOCK_DIAGONAL_MAX_GROUPS", 4)  # 8 groups: taps_conv
        w = jnp.asarray(rng.normal(size=kernel), jnp.float32)

        def f(x, w):
            return conv.cpu_conv(x, w, strides, "VALID", dimension_numbers=DN,
                                 feature_group_count=groups)
        args = (x, w)
    grads = jax.make_jaxpr(jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), (0, 1)))(*args)
    contractions = [len(dims) for _, dims, _ in dot_contractions(grads.jaxpr)]
    assert contractions and set(contractions) == {1}, contractions
    if make == "dense":  # the same layer through lax.dot_general
        plain = conv.nn.Dense(7, kernel_init=conv.torch_linear_init)
        expected = jax.grad(lambda x, p: jnp.sum(jnp.sin(plain.apply(p, x))), (0, 1))
    else:
        expected = jax.grad(lambda x, w: jnp.sum(jnp.sin(jax.lax.conv_general_dilated(
            x, w, strides, "VALID", dimension_numbers=DN, feature_group_count=groups))), (0, 1))
    with jax.default_matmul_precision("highest"):
        got, want = jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), (0, 1))(*args), expected(*args)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), got, want)
