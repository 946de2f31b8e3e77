"""HyenaFilter / HyenaOperator: positional features and decay against their formulas; the
operator forward and every gradient against a plain-jnp re-implementation of safari's recurrence
(direct-sum convolutions, shifted short conv) at orders 2 and 3 and odd lengths; causality;
dropout; bfloat16; field and length errors."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv.layers import HyenaFilter, HyenaOperator
from jaxconv.layers.hyena import exponential_decay, positional_features
from tests.helpers import assert_causal, run_jitted

# fft_conv's FFT path leaves float rounding (~1e-8) on future positions: tolerate it.
FFT_ROUNDING = 1e-5


def test_positional_features_and_decay():
    z = positional_features(8, 5)  # t, 2 cosine bands, 2 sine bands
    assert z.shape == (8, 5)
    np.testing.assert_allclose(z[:, 0], np.linspace(0, 1, 8))
    n = np.arange(8)
    np.testing.assert_allclose(z[:, 2], np.cos(2 * np.pi * n / 8), atol=1e-6)   # band f = 1
    np.testing.assert_allclose(z[:, 4], -np.sin(2 * np.pi * n / 8), atol=1e-6)
    np.testing.assert_allclose(z[:, 1], np.cos(1e-4 * 2 * np.pi * n / 8), atol=1e-6)
    window = exponential_decay(jnp.array([0.0, 0.3, 1.5]), 3, 0.3, 1.5, 1e-2)
    # the slowest channel reaches the target at t = 1.5, the fastest at t = 0.3
    np.testing.assert_allclose(window[0], [1, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(window[2, 0], 1e-2, rtol=1e-5)
    np.testing.assert_allclose(window[1, 2], 1e-2, rtol=1e-5)


def direct_causal_conv(v, k):
    """y[b, t, h] = sum_{s <= t} k[h, s] v[b, t - s, h] as a dense lower-triangular matmul."""
    length = v.shape[1]
    lag = jnp.arange(length)[:, None] - jnp.arange(length)[None, :]
    m = jnp.where(lag >= 0, k[:, jnp.clip(lag, 0, k.shape[1] - 1)], 0.0)
    return jnp.einsum("hts,bsh->bth", m, v)


def reference_hyena(p, u, order, emb_dim, max_len):
    """safari's HyenaOperator.forward written out with the layer's parameters."""
    batch, length, width = u.shape
    x = u @ p["in_proj"]["kernel"] + p["in_proj"]["bias"]
    sk, sb = p["short_filter"]["kernel"][0], p["short_filter"]["bias"]  # [K, C]
    taps = sk.shape[0]
    padded = jnp.pad(x, ((0, 0), (taps - 1, 0), (0, 0)))
    x = sum(sk[j] * padded[:, j:j + length] for j in range(taps)) + sb
    *xs, v = jnp.split(x, order + 1, axis=-1)
    f = p["filter_fn"]
    z = f["z"][:length]
    t = jnp.linspace(0, 1, max_len)[:length]
    h = z
    for i in range(3):  # two inner MLPs
        h = jnp.sin(f["freq"] * (h @ f[f"implicit_filter_{i}"]["kernel"]
                                 + f[f"implicit_filter_{i}"]["bias"]))
    h = h @ f["implicit_filter_out"]["kernel"]
    deltas = jnp.linspace(math.log(1e-2) / 1.5, math.log(1e-2) / 0.3, h.shape[1])
    h = (h * jnp.exp(-t[:, None] * jnp.abs(deltas))).T
    for o, x_i in enumerate(reversed(xs[1:])):
        v = v * x_i
        k, b = h[o * width:(o + 1) * width], f["bias"][o * width:(o + 1) * width]
        v = direct_causal_conv(v, k) + b * v
    y = v * xs[0]
    return y @ p["out_proj"]["kernel"] + p["out_proj"]["bias"]


@pytest.mark.parametrize("order, length, width", [
    (3, 8, 3), pytest.param(2, 11, 4, marks=pytest.mark.slow)])
def test_operator_forward_and_backward_match_reference(order, length, width):
    rng = np.random.default_rng(order)
    u = jnp.asarray(rng.standard_normal((2, length, width)), jnp.float32)
    layer = HyenaOperator(max_len=16, order=order, filter_order=8,
                          filter_kwargs={"emb_dim": 5, "w": 3.0})
    params = layer.init(jax.random.key(0), u)["params"]
    assert params["filter_fn"]["z"].shape == (16, 5)
    assert params["filter_fn"]["bias"].shape == ((order - 1) * width,)
    assert params["short_filter"]["kernel"].shape == (1, 3, (order + 1) * width)

    def ours(p, u):
        return layer.apply({"params": p}, u)

    def ref(p, u):
        return reference_hyena(p, u, order, 5, 16)

    ct = jnp.asarray(rng.standard_normal(u.shape), jnp.float32)

    def both(params, u):
        return [(f(params, u), jax.grad(lambda p, u: jnp.sum(f(p, u) * ct), (0, 1))(params, u))
                for f in (ours, ref)]

    (y, g_ours), (y_ref, g_ref) = run_jitted(both, params, u)
    np.testing.assert_allclose(y, y_ref, rtol=2e-4, atol=2e-5)
    flat_ref = dict(jax.tree_util.tree_leaves_with_path(g_ref))
    for path, g in jax.tree_util.tree_leaves_with_path(g_ours):
        scale = float(jnp.max(jnp.abs(flat_ref[path]))) + 1e-6
        np.testing.assert_allclose(g / scale, flat_ref[path] / scale, atol=2e-4,
                                   err_msg=jax.tree_util.keystr(path))


def test_operator_is_causal_and_filter_without_table():
    x = jnp.asarray(np.random.default_rng(5).standard_normal((1, 9, 2)), jnp.float32)
    layer = HyenaOperator(order=3, filter_order=4, filter_kwargs={"train_pos_emb": False})
    variables = layer.init(jax.random.key(1), x)
    assert "z" not in variables["params"]["filter_fn"]
    assert_causal(jax.jit(lambda x: layer.apply(variables, x)), x, atol=FFT_ROUNDING)


def test_dropout_and_bfloat16():
    x = jnp.asarray(np.random.default_rng(6).standard_normal((2, 8, 4)), jnp.float32)
    layer = HyenaOperator(max_len=8, filter_order=4, dropout=0.5)
    variables = layer.init(jax.random.key(0), x)
    plain = HyenaOperator(max_len=8, filter_order=4).apply(variables, x)
    np.testing.assert_allclose(layer.apply(variables, x), plain, rtol=1e-5, atol=1e-6)
    dropped = layer.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(dropped, plain, atol=1e-3)
    half = HyenaOperator(max_len=8, filter_order=4, dtype="bfloat16").apply(variables, x)
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), plain, rtol=0.1, atol=0.05)


def test_filter_shapes_and_normalisation():
    filt = HyenaFilter(6, max_len=10, filter_order=4, normalized=True)
    (k, bias), _ = filt.init_with_output(jax.random.key(0), 7)
    assert k.shape == (6, 7) and bias.shape == (6,)
    np.testing.assert_allclose(jnp.sum(jnp.abs(k), axis=0), np.ones(7), rtol=1e-5)


@pytest.mark.parametrize("make, match", [
    (lambda: HyenaOperator(order=1), "order must be an int >= 2"),
    (lambda: HyenaOperator(short_filter_order=0), "short_filter_order"),
    (lambda: HyenaOperator(dropout=-0.1), "dropout"),
    (lambda: HyenaFilter(4, max_len=8, emb_dim=4), "emb_dim must be an odd int"),
    (lambda: HyenaFilter(4, max_len=None), "max_len=None needs train_pos_emb=False"),
    (lambda: HyenaFilter(4, max_len=8, target=2.0), "target"),
    (lambda: HyenaFilter(4, max_len=8, w=0), "w must be"),
])
def test_bad_fields(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_sequence_longer_than_max_len():
    layer = HyenaOperator(max_len=8, filter_order=4)
    with pytest.raises(ValueError, match="sequence length 9 exceeds the filter's max_len=8"):
        jax.eval_shape(layer.init, jax.random.key(0), jnp.zeros((1, 9, 2)))
