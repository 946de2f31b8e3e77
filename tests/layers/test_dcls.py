"""jaxconv.layers.dcls: bilinear placement of kernel elements, equality with a dense depthwise
conv, gradients w.r.t. positions and weights against finite differences (float64), init, and
field validation."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxconv.layers.dcls import DclsDepthwiseConv2D, dcls_position_init, interpolate_kernel
from jaxconv.layers.depthwise import torch_depthwise_uniform
from kernels_pallas.depthwise_conv2d import depthwise_conv2d_reference


#: Jitted (one compile instead of one per primitive in eager mode, ~10x faster here).
interpolate = jax.jit(interpolate_kernel, static_argnums=2)


def dense_kernel_numpy(weight, positions, size):
    """Independent NumPy construction: each element at (row, col) = centre + position spreads
    its weight to the 4 surrounding cells with bilinear coefficients."""
    n, c = weight.shape
    kernel = np.zeros((size, size, c))
    centre = (size - 1) / 2
    for k in range(n):
        for ch in range(c):
            r, q = np.clip(positions[:, k, ch] + centre, 0, size - 1)
            r0, q0 = min(int(np.floor(r)), size - 2), min(int(np.floor(q)), size - 2)
            for rr, wr in ((r0, 1 - (r - r0)), (r0 + 1, r - r0)):
                for qq, wq in ((q0, 1 - (q - q0)), (q0 + 1, q - q0)):
                    kernel[rr, qq, ch] += weight[k, ch] * wr * wq
    return kernel


def test_integer_position_lands_on_one_cell_and_half_integer_splits_equally():
    weight = jnp.array([[2.0], [4.0], [8.0]])  # 3 elements, 1 channel
    positions = jnp.array([[[0.0], [-1.0], [0.5]],     # rows (offsets from the centre)
                           [[0.0], [2.0], [-1.5]]])    # columns
    k = np.asarray(interpolate(weight, positions, (5, 5)))[..., 0]
    expected = np.zeros((5, 5))
    expected[2, 2] = 2.0               # (0, 0): the centre cell only
    expected[1, 4] = 4.0               # (-1, 2): one cell, at the window edge
    expected[2:4, 0:2] = 8.0 / 4       # (0.5, -1.5): four cells, a quarter each
    np.testing.assert_array_equal(k, expected)
    # Mass is conserved: the kernel sums to the weights' sum.
    assert k.sum() == pytest.approx(14.0)


def test_positions_are_clamped_to_the_window():
    weight = jnp.ones((2, 1))
    positions = jnp.array([[[9.0], [-0.25]], [[-9.0], [30.0]]])
    k = np.asarray(interpolate(weight, positions, (5, 5)))[..., 0]
    assert k[4, 0] == 1.0  # (9, -9) clamped to the corner (2, -2)
    np.testing.assert_allclose(k[1:3, 4], [0.25, 0.75])  # column clamped to 2, row -0.25
    # The clamp passes the gradient through: outside the window a position gets the border's
    # gradient (so it can come back), not zero.
    probe = jnp.asarray(np.random.default_rng(5).standard_normal((5, 5, 1)), jnp.float32)
    grad = jax.jit(jax.grad(lambda p: jnp.sum(probe * interpolate_kernel(weight, p, (5, 5)))))
    border = positions.at[:, 0].set(jnp.array([[2.0], [-2.0]]))
    np.testing.assert_allclose(grad(positions)[:, 0], grad(border)[:, 0])
    assert np.all(np.asarray(grad(positions)[:, 0]) != 0)


def test_interpolation_matches_numpy_on_random_positions():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((6, 3))
    positions = rng.uniform(-4, 4, (2, 6, 3))  # some outside the 7x7 window (|offset| > 3)
    k = interpolate(jnp.asarray(weight, jnp.float32), jnp.asarray(positions, jnp.float32),
                    (7, 7))
    np.testing.assert_allclose(np.asarray(k), dense_kernel_numpy(weight, positions, 7),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("implementation, stride", [(None, 1), ("xla", 2), ("pallas", 1)])
def test_layer_equals_dense_depthwise_conv_with_interpolated_kernel(implementation, stride):
    rng = np.random.default_rng(1)
    c, size, count = 4, 7, 5
    params = {"weight": jnp.asarray(rng.standard_normal((count, c)), jnp.float32),
              "positions": jnp.asarray(rng.uniform(-3, 3, (2, count, c)), jnp.float32),
              "bias": jnp.asarray(rng.standard_normal(c), jnp.float32)}
    x = jnp.asarray(rng.standard_normal((2, 9, 10, c)), jnp.float32)
    layer = DclsDepthwiseConv2D(size, kernel_count=count, strides=stride,
                                implementation=implementation)
    y = jax.jit(layer.apply)({"params": params}, x)
    kernel = dense_kernel_numpy(np.asarray(params["weight"]), np.asarray(params["positions"]),
                                size)
    expected = depthwise_conv2d_reference(x, jnp.asarray(kernel, jnp.float32),
                                          stride=(stride, stride), padding=((3, 3), (3, 3)),
                                          bias=params["bias"])
    assert y.shape == expected.shape == (2, -(-9 // stride), -(-10 // stride), c)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def _dense_conv64(x, kernel):
    return lax.conv_general_dilated(x, kernel[:, :, None, :], (1, 1), ((2, 2), (2, 2)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=x.shape[-1],
                                    precision=lax.Precision.HIGHEST)


def _loss64(x, probe):
    def loss(weight, positions):
        return jnp.sum(probe * _dense_conv64(x, interpolate_kernel(weight, positions, (5, 5))))
    return loss


def _random_problem(dtype):
    rng = np.random.default_rng(2)
    c, count = 3, 4
    weight = rng.standard_normal((count, c))
    # Positions away from integers (bilinear is piecewise linear; its kinks are at integers)
    # and inside the window.
    positions = rng.integers(-2, 2, (2, count, c)) + rng.uniform(0.1, 0.9, (2, count, c))
    x = rng.standard_normal((2, 6, 6, c))
    probe = rng.standard_normal((2, 6, 6, c))
    return [jnp.asarray(a, dtype) for a in (weight, positions, x, probe)]


def test_gradients_wrt_positions_and_weights_match_central_differences_in_float64():
    with jax.enable_x64(True):
        weight, positions, x, probe = _random_problem(jnp.float64)
        loss = jax.jit(_loss64(x, probe))
        g_weight, g_positions = jax.jit(jax.grad(_loss64(x, probe), argnums=(0, 1)))(weight,
                                                                             positions)
        assert g_positions.dtype == jnp.float64
        eps = 1e-6
        base = [np.asarray(weight), np.asarray(positions)]
        for arg, grad in ((0, g_weight), (1, g_positions)):
            numeric = np.zeros(grad.shape)
            for index in np.ndindex(grad.shape):
                plus, minus = list(base), list(base)
                plus[arg], minus[arg] = base[arg].copy(), base[arg].copy()
                plus[arg][index] += eps
                minus[arg][index] -= eps
                numeric[index] = (float(loss(*plus)) - float(loss(*minus))) / (2 * eps)
            np.testing.assert_allclose(np.asarray(grad), numeric, rtol=1e-6, atol=1e-8)
        assert np.abs(np.asarray(g_positions)).min() > 0  # every position gets a gradient
    assert jnp.ones(1).dtype == jnp.float32  # x64 did not leak out of the context


@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_layer_gradients_through_the_op_match_the_float64_oracle(implementation):
    """The float32 layer (through kernels_pallas.depthwise_conv2d and its VJP) gives the
    float64 oracle's gradients (checked against finite differences above)."""
    with jax.enable_x64(True):
        weight, positions, x, probe = _random_problem(jnp.float64)
        expected = jax.jit(jax.grad(_loss64(x, probe), argnums=(0, 1)))(weight, positions)
        expected = [np.asarray(e) for e in expected]
    weight, positions, x, probe = _random_problem(jnp.float32)
    layer = DclsDepthwiseConv2D(5, kernel_count=4, use_bias=False,
                                implementation=implementation)

    def loss(params):
        return jnp.sum(probe * layer.apply({"params": params}, x))

    grads = jax.jit(jax.grad(loss))({"weight": weight, "positions": positions})
    np.testing.assert_allclose(grads["weight"], expected[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads["positions"], expected[1], rtol=1e-4, atol=1e-4)


def test_parameters_and_official_init():
    layer = DclsDepthwiseConv2D(17, kernel_count=34)
    x = jax.ShapeDtypeStruct((1, 8, 8, 64), jnp.float32)
    shapes = jax.eval_shape(layer.init, jax.random.key(0), x)["params"]
    assert {k: (v.shape, v.dtype) for k, v in shapes.items()} == {
        "weight": ((34, 64), jnp.float32), "positions": ((2, 34, 64), jnp.float32),
        "bias": ((64,), jnp.float32)}
    # Official init: N(0, 0.5^2) clamped to the window (+-8 here; +-1 for a 3x3 window).
    @jax.jit
    def draws(key):
        k1, k2 = jax.random.split(key)
        return (dcls_position_init((17, 17))(k1, (2, 34, 64)),
                dcls_position_init((3, 3))(k1, (2, 34, 64)),
                torch_depthwise_uniform(lambda s: 34)(k2, (34, 64)))

    positions, small, weight = (np.asarray(a) for a in draws(jax.random.key(1)))
    assert abs(positions.mean()) < 0.03 and positions.std() == pytest.approx(0.5, rel=0.05)
    assert small.max() == 1.0 and small.min() == -1.0
    np.testing.assert_array_equal(small, np.clip(positions, -1, 1))
    bound = 1 / np.sqrt(34)
    assert np.abs(weight).max() <= bound and np.abs(weight).max() > 0.95 * bound


def test_caller_owned_positions():
    layer = DclsDepthwiseConv2D(5, kernel_count=4)
    shared = jnp.zeros((2, 4, 8))
    shapes = jax.eval_shape(lambda k: layer.init(k, jnp.zeros((1, 6, 6, 8)), positions=shared),
                            jax.random.key(0))["params"]
    assert set(shapes) == {"weight", "bias"}  # no positions parameter of its own
    rng = np.random.default_rng(3)
    own = {"weight": jnp.asarray(rng.standard_normal((4, 8)), jnp.float32),
           "bias": jnp.asarray(rng.standard_normal(8), jnp.float32)}
    ones = jnp.ones((1, 6, 6, 8))
    y = jax.jit(layer.apply)({"params": own}, ones, positions=shared)
    # All elements at the centre: output = sum of weights + bias everywhere.
    np.testing.assert_allclose(y[0, 3, 3], own["weight"].sum(0) + own["bias"], rtol=1e-5)
    with pytest.raises(ValueError, match="positions must be"):
        layer.apply({"params": own}, ones, positions=jnp.zeros((2, 3, 8)))


def test_works_inside_a_jitted_model_with_bfloat16():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            return DclsDepthwiseConv2D(5, kernel_count=3, dtype="bfloat16")(x).mean()

    net = Net()
    x = jnp.ones((1, 6, 6, 2))
    shapes = jax.eval_shape(net.init, jax.random.key(0), x)
    variables = jax.tree.map(lambda s: jnp.full(s.shape, 0.3, s.dtype), shapes)
    grads = jax.jit(jax.grad(lambda v: net.apply(v, x).astype(jnp.float32)))(variables)
    assert grads["params"]["DclsDepthwiseConv2D_0"]["positions"].dtype == jnp.float32


@pytest.mark.parametrize("field, value, match", [
    ("kernel_count", 0, "kernel_count"),
    ("kernel_count", 2.5, "kernel_count"),
    ("kernel_size", 0, "kernel_size"),
    ("strides", 3, "strides"),
    ("features", -1, "features"),
    ("dtype", "float64", "dtype"),
    ("implementation", "cuda", "implementation"),
    ("padding", "FULL", "padding"),
])
def test_bad_fields_raise(field, value, match):
    with pytest.raises(ValueError, match=match):
        DclsDepthwiseConv2D(**{"kernel_size": 5, "kernel_count": 3, field: value})


def test_features_must_match_the_input():
    layer = DclsDepthwiseConv2D(5, kernel_count=3, features=8)
    with pytest.raises(ValueError, match="features=8"):
        layer.init(jax.random.key(0), jnp.zeros((1, 6, 6, 4)))


def test_pallas_path_lowers_for_tpu_forward_and_backward():
    """The DCLS layer on the Pallas op (kernel construction + kernel + custom VJP) lowers to
    Mosaic for TPU on this CPU-only machine (kernels_pallas.compile_for)."""
    from kernels_pallas import compile_for

    layer = DclsDepthwiseConv2D(17, kernel_count=34, implementation="pallas")
    params = {"weight": jnp.ones((34, 128)), "positions": jnp.zeros((2, 34, 128)),
              "bias": jnp.zeros(128)}
    x = jnp.ones((2, 16, 16, 128))

    def loss(p, x):
        return jnp.sum(layer.apply({"params": p}, x) ** 2)

    with compile_for("tpu"):
        lowered = jax.jit(jax.grad(loss)).trace(params, x).lower(lowering_platforms=("tpu",))
    assert "tpu_custom_call" in lowered.as_text()
