"""LightweightConv / DynamicConv (Wu et al. 2019): forward and gradients against a dense
[L, L] band-matrix reference on randomized shapes (odd L, even kernels, kernels longer than the
sequence), causality, DropConnect, and field errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv.layers import DynamicConv, LightweightConv
from jaxconv.layers.dynamic_conv import conv_padding
from tests.helpers import assert_causal, run_jitted


def band_reference(x, weight, causal):
    """y[b, t, c] = sum_s M[b, h(c), t, s] x[b, s, c], with M[t, s] = w[t, s - t + left] for
    0 <= s - t + left < K: the convolution written as a dense matrix (independent of the
    layers' shifted-copy / depthwise formulations). ``weight`` [B, L, H, K] (per position)."""
    batch, length, channels = x.shape
    heads, taps = weight.shape[2:]
    left, _ = conv_padding(taps, causal)
    offset = jnp.arange(length)[None, :] - jnp.arange(length)[:, None] + left  # [t, s] -> tap
    valid = (offset >= 0) & (offset < taps)
    matrix = jnp.where(valid[None, :, None, :],
                       jnp.take_along_axis(weight, jnp.clip(offset, 0, taps - 1)[None, :, None, :]
                                           .repeat(heads, 2), axis=3), 0.0)   # [B, t, H, s]
    xh = x.reshape(batch, length, heads, channels // heads)
    return jnp.einsum("bths,bshr->bthr", matrix, xh).reshape(x.shape)


CASES = [  # batch, length, channels, heads, kernel, causal (more shapes with -m slow)
    (2, 7, 4, 4, 6, False),     # even kernel, non-causal: pads (3, 2)
    (1, 5, 3, 1, 8, True),      # kernel longer than the sequence
    pytest.param((2, 11, 6, 3, 4, True), marks=pytest.mark.slow),
    pytest.param((1, 9, 8, 2, 5, False), marks=pytest.mark.slow),
]


def _inputs(case, seed):
    batch, length, channels, heads, taps, _ = case
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal((batch, length, channels)), jnp.float32)


@pytest.mark.parametrize("case", CASES)
def test_lightweight_matches_reference_forward_and_backward(case):
    batch, length, channels, heads, taps, causal = case
    x = _inputs(case, 0)
    layer = LightweightConv(heads, taps, causal=causal)
    params = layer.init(jax.random.key(1), x)["params"]
    assert params["weight"].shape == (heads, taps) and "bias" not in params

    def ours(p, x):
        return layer.apply({"params": p}, x)

    def ref(p, x):
        w = jax.nn.softmax(p["weight"], axis=-1)
        return band_reference(x, jnp.broadcast_to(w, (batch, length, heads, taps)), causal)

    ct = jnp.asarray(np.random.default_rng(2).standard_normal(x.shape), jnp.float32)
    _compare(ours, ref, params, x, ct)


def _compare(ours, ref, params, x, ct):
    """Forward and the gradients w.r.t. params and input, all in one compiled call."""
    def both(params, x):
        return [(f(params, x), jax.grad(lambda p, x: jnp.sum(f(p, x) * ct), (0, 1))(params, x))
                for f in (ours, ref)]
    (y, g), (y_ref, g_ref) = run_jitted(both, params, x)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_dynamic_matches_reference_forward_and_backward(case):
    batch, length, channels, heads, taps, causal = case
    x = _inputs(case, 3)
    layer = DynamicConv(heads, taps, causal=causal, use_bias=True)
    params = layer.init(jax.random.key(4), x)["params"]
    params["bias"] = jnp.linspace(-1, 1, channels)  # nonzero, so the bias path is checked

    def ours(p, x):
        return layer.apply({"params": p}, x)

    def ref(p, x):
        lin = p["weight_linear"]
        w = (x @ lin["kernel"] + lin["bias"]).reshape(batch, length, heads, taps)
        return band_reference(x, jax.nn.softmax(w, axis=-1), causal) + p["bias"]

    ct = jnp.asarray(np.random.default_rng(5).standard_normal(x.shape), jnp.float32)
    _compare(ours, ref, params, x, ct)


@pytest.mark.parametrize("cls", [LightweightConv,
                                 pytest.param(DynamicConv, marks=pytest.mark.slow)])
def test_causal_and_noncausal(cls):
    x = jnp.asarray(np.random.default_rng(6).standard_normal((1, 8, 4)), jnp.float32)
    for causal in (True, False):
        layer = cls(2, 3, causal=causal, weight_softmax=False)
        params = layer.init(jax.random.key(7), x)
        fn = jax.jit(lambda x: layer.apply(params, x))
        if causal:
            assert_causal(fn, x)
        else:
            with pytest.raises(AssertionError, match="not causal"):
                assert_causal(fn, x)


def test_weight_dropout_only_in_training():
    x = jnp.asarray(np.random.default_rng(8).standard_normal((2, 6, 4)), jnp.float32)
    layer = LightweightConv(2, 3, weight_dropout=0.5)
    params = layer.init(jax.random.key(0), x)
    plain = LightweightConv(2, 3).apply(params, x)
    np.testing.assert_allclose(layer.apply(params, x), plain, rtol=1e-6)
    a = layer.apply(params, x, train=True, rngs={"dropout": jax.random.key(1)})
    b = layer.apply(params, x, train=True, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, plain, atol=1e-3)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_heads": 0, "kernel_size": 3}, "num_heads"),
    ({"num_heads": 2, "kernel_size": 2.5}, "kernel_size"),
    ({"num_heads": 2, "kernel_size": 3, "weight_dropout": 1.0}, "weight_dropout"),
    ({"num_heads": 2, "kernel_size": 3, "causal": "yes"}, "causal"),
])
def test_bad_fields(kwargs, match):
    for cls in (LightweightConv, DynamicConv):
        with pytest.raises(ValueError, match=match):
            cls(**kwargs)


def test_heads_must_divide_channels():
    x = jnp.zeros((1, 4, 6))
    for cls in (LightweightConv, DynamicConv):
        with pytest.raises(ValueError, match="num_heads=4 must divide the input channels"):
            cls(4, 3).init(jax.random.key(0), x)
