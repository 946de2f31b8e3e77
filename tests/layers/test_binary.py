"""BinaryConv2D (XNOR-Net): forward equals the paper's definition computed independently in
NumPy, and the straight-through gradients."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv.layers import BinaryConv2D
from jaxconv.layers.binary import ste_sign


def _np_conv(x, w, stride, pad):
    """Direct NHWC/HWIO cross-correlation with symmetric zero padding."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw, _, o = w.shape
    oh = (x.shape[1] - kh) // stride + 1
    ow = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, o))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride:i * stride + kh, j * stride:j * stride + kw, :]
            out[:, i, j] = np.einsum("bhwc,hwco->bo", patch, w)
    return out


@pytest.mark.parametrize("shape,features,k,stride,binarize", [
    ((2, 7, 5, 3), 4, 3, 1, True),
    ((1, 9, 6, 2), 5, 3, 2, True),
    ((3, 5, 5, 4), 3, 1, 1, False),
])
def test_forward_equals_definition(shape, features, k, stride, binarize):
    layer = BinaryConv2D(features, k, stride, binarize_inputs=binarize)
    x = jax.random.normal(jax.random.key(0), shape)
    variables = layer.init(jax.random.key(1), x)
    w = np.asarray(variables["params"]["kernel"], np.float64)
    xn = np.asarray(x, np.float64)
    alpha = np.abs(w).mean(axis=(0, 1, 2))
    wb = np.where(w >= 0, 1.0, -1.0)
    if binarize:
        a = np.abs(xn).mean(-1, keepdims=True)
        kmap = _np_conv(a, np.full((k, k, 1, 1), 1.0 / (k * k)), stride, k // 2)
        expected = _np_conv(np.where(xn >= 0, 1.0, -1.0), wb, stride, k // 2) * kmap * alpha
    else:
        expected = _np_conv(xn, wb, stride, k // 2) * alpha
    out = layer.apply(variables, x)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)


def test_ste_sign_values_and_gradient():
    x = jnp.array([-2.0, -1.0, -0.3, 0.0, 0.4, 1.0, 1.5])
    np.testing.assert_array_equal(ste_sign(x), [-1, -1, -1, 1, 1, 1, 1])
    np.testing.assert_array_equal(jax.grad(lambda v: jnp.sum(ste_sign(v) * 3.0))(x),
                                  3.0 * (np.abs(np.asarray(x)) <= 1))


@jax.custom_vjp
def _sign_ste_ref(x):
    return jnp.where(x >= 0, 1.0, -1.0)


_sign_ste_ref.defvjp(lambda x: (_sign_ste_ref(x), x),
                     lambda x, g: (g * (jnp.abs(x) <= 1),))


@pytest.mark.parametrize("binarize", [True, False])
def test_gradients_equal_the_ste_definition(binarize):
    """Input and latent-kernel gradients equal those of the definition written with a
    custom-VJP sign whose backward is the paper's 1{|x| <= 1} (independent of ste_sign)."""
    layer = BinaryConv2D(3, 3, 2, binarize_inputs=binarize)
    x = 1.5 * jax.random.normal(jax.random.key(2), (2, 7, 6, 4))
    params = layer.init(jax.random.key(3), x)["params"]
    params = {"kernel": params["kernel"] * 4.0}   # some latent weights beyond +-1
    conv = lambda a, w, s: jax.lax.conv_general_dilated(  # noqa: E731
        a, w, (s, s), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def reference(params, x):
        w = params["kernel"]
        alpha = jnp.mean(jnp.abs(w), axis=(0, 1, 2))
        if binarize:
            kmap = conv(jnp.mean(jnp.abs(x), -1, keepdims=True), jnp.full((3, 3, 1, 1), 1 / 9), 2)
            return conv(_sign_ste_ref(x), _sign_ste_ref(w), 2) * kmap * alpha
        return conv(x, _sign_ste_ref(w), 2) * alpha

    target = jax.random.normal(jax.random.key(4), layer.apply({"params": params}, x).shape)
    loss = lambda f: lambda p, x: jnp.sum(f(p, x) * target)  # noqa: E731
    got = jax.grad(loss(lambda p, x: layer.apply({"params": p}, x)), argnums=(0, 1))(params, x)
    want = jax.grad(loss(reference), argnums=(0, 1))(params, x)
    np.testing.assert_allclose(got[0]["kernel"], want[0]["kernel"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-5)
    # The STE really masks: latent weights beyond +-1 get only alpha's (per-filter) gradient.
    assert np.any(np.abs(np.asarray(params["kernel"])) > 1)
    assert np.abs(np.asarray(got[0]["kernel"])).sum() > 0


def test_bad_fields_fail_fast():
    with pytest.raises(ValueError, match="features"):
        BinaryConv2D(0)
    with pytest.raises(ValueError, match="strides"):
        BinaryConv2D(4, 3, -1)
