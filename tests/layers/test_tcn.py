"""DilatedConv1D, TCNBlock and ByteNetBlock: forward and gradients against a direct-sum
reference on awkward shapes, weight norm, causality (autodiff), clear errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv.layers.tcn import ByteNetBlock, DilatedConv1D, TCNBlock, receptive_field
from tests.helpers import assert_causal, run_jitted


def _direct_conv(x, w, dilation, left):
    """y[t] = sum_j w[j] . x[t - left + j d] (zeros outside [0, L)), in float64 NumPy."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    batch, length, _ = x.shape
    y = np.zeros((batch, length, w.shape[-1]))
    for t in range(length):
        for j in range(w.shape[0]):
            s = t - left + j * dilation
            if 0 <= s < length:
                y[:, t] += x[:, s] @ w[j]
    return y


def _jnp_direct(x, w, dilation, left):
    """The same sum in jnp (differentiable), built from shifted, zero-padded slices."""
    k, length = w.shape[0], x.shape[1]
    span = (k - 1) * dilation
    xp = jnp.pad(x, ((0, 0), (left, span - left), (0, 0)))
    return sum(xp[:, j * dilation:j * dilation + length] @ w[j] for j in range(k))


# (L, C_in, C_out, k, dilation, causal): odd and prime lengths, span longer than L, k = 1.
CASES = [(13, 3, 5, 4, 3, True), (7, 2, 1, 3, 5, True), (10, 4, 4, 2, 1, False),
         (9, 1, 3, 5, 2, False)]


@pytest.mark.parametrize("length,cin,cout,k,dilation,causal", CASES)
def test_dilated_conv_forward_and_grads_match_direct_sum(length, cin, cout, k, dilation, causal):
    rng = np.random.default_rng(length * 31 + k)
    x = jnp.asarray(rng.normal(size=(2, length, cin)), jnp.float32)
    conv = DilatedConv1D(cout, k, dilation, causal=causal, use_bias=False,
                         kernel_init=nn_normal())
    w = jax.jit(conv.init)(jax.random.key(0), x)["params"]["kernel"]
    span = (k - 1) * dilation
    left = span if causal else span // 2
    cot = jnp.asarray(rng.normal(size=(2, length, cout)), jnp.float32)

    def both(x, w):
        loss = lambda x, w: jnp.sum(conv.apply({"params": {"kernel": w}}, x) * cot)  # noqa
        ref = lambda x, w: jnp.sum(_jnp_direct(x, w, dilation, left) * cot)  # noqa: E731
        return (conv.apply({"params": {"kernel": w}}, x), jax.grad(loss, (0, 1))(x, w),
                jax.grad(ref, (0, 1))(x, w))

    y, got, want = run_jitted(both, x, w)
    np.testing.assert_allclose(y, _direct_conv(x, w, dilation, left), rtol=1e-5, atol=1e-5)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def nn_normal():
    import flax.linen as nn
    return nn.initializers.normal(1.0)


def test_weight_norm_starts_at_v_and_scales_with_g():
    x = jnp.ones((1, 5, 3))
    conv = DilatedConv1D(4, 3, weight_norm=True, use_bias=False)
    params = conv.init(jax.random.key(1), x)["params"]
    v, g = params["kernel_v"], params["kernel_g"]
    assert v.shape == (3, 3, 4) and g.shape == (4,)
    np.testing.assert_allclose(g, np.linalg.norm(np.asarray(v).reshape(-1, 4), axis=0),
                               rtol=1e-6)
    plain = DilatedConv1D(4, 3, use_bias=False)
    np.testing.assert_allclose(conv.apply({"params": params}, x),
                               plain.apply({"params": {"kernel": v}}, x), rtol=1e-5, atol=1e-7)
    # w = g v / ||v||: doubling g doubles the output, rescaling v changes nothing.
    doubled = {"kernel_v": 3.0 * v, "kernel_g": 2.0 * g}
    np.testing.assert_allclose(conv.apply({"params": doubled}, x),
                               2.0 * conv.apply({"params": params}, x), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("make", [
    lambda: DilatedConv1D(3, 3, dilation=2, kernel_init=nn_normal()),
    lambda: TCNBlock(3, kernel_size=3, dilation=2),
    lambda: TCNBlock(2, kernel_size=2, dilation=1),   # same width: identity shortcut
    lambda: ByteNetBlock(4, kernel_size=3, dilation=2),
])
def test_causal_operators_are_causal(make):
    module = make()
    channels = module.features if isinstance(module, ByteNetBlock) else 2
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, channels)), jnp.float32)
    variables = jax.jit(module.init)(jax.random.key(0), x)
    assert_causal(jax.jit(lambda x: module.apply(variables, x)), x)


def test_non_causal_conv_reads_the_future():
    module = DilatedConv1D(2, 3, kernel_init=nn_normal(), causal=False)
    x = jnp.ones((1, 6, 2))
    variables = module.init(jax.random.key(0), x)
    with pytest.raises(AssertionError, match="not causal"):
        assert_causal(lambda x: module.apply(variables, x), x)


def test_tcn_block_shortcut_and_dropout():
    x = jnp.ones((2, 8, 3))
    block = TCNBlock(5, kernel_size=2, dilation=2, dropout_rate=0.5)
    params = jax.jit(block.init)(jax.random.key(0), x)["params"]
    assert set(params) == {"conv1", "conv2", "downsample"}
    same = jax.eval_shape(TCNBlock(3).init, jax.random.key(0), x)["params"]
    assert set(same) == {"conv1", "conv2"}
    fwd = jax.jit(lambda key, train: block.apply({"params": params}, x, train=train,
                                                 rngs={"dropout": key}), static_argnums=1)
    assert not np.allclose(fwd(jax.random.key(1), True), fwd(jax.random.key(2), True))
    np.testing.assert_array_equal(fwd(jax.random.key(1), False), fwd(jax.random.key(2), False))


def test_receptive_field():
    assert receptive_field(7, [2 ** i for i in range(8)] * 2) == 1 + 2 * 6 * 255


@pytest.mark.parametrize("make,match", [
    (lambda: DilatedConv1D(4, 3, causal=False, decode=True), "decode=True"),
    (lambda: DilatedConv1D(4, 0), "kernel_size"),
    (lambda: DilatedConv1D(4, 3, dilation=-1), "dilation"),
    (lambda: TCNBlock(4, dropout_rate=1.5), "dropout_rate"),
    (lambda: ByteNetBlock(5), "features"),
])
def test_bad_fields_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bytenet_block_needs_matching_width():
    with pytest.raises(ValueError, match="input channels 3 must equal features"):
        ByteNetBlock(4).init(jax.random.key(0), jnp.ones((1, 5, 3)))


def test_decode_takes_one_step():
    conv = DilatedConv1D(2, 3, decode=True)
    with pytest.raises(ValueError, match="one time step"):
        conv.init(jax.random.key(0), jnp.ones((1, 4, 2)))
