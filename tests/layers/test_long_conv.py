"""LongConv and SGConv: the convolution (causal and bidirectional, stacked channels, D skip)
forward and backward against a dense Toeplitz reference on awkward shapes; the kernel
parameterizations (squash, moving average, SGConv's scales / interpolation / decay / fixed
norm) against hand-computed values; causality; dropout; field errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv.layers import LongConv, SGConv
from jaxconv.layers.long_conv import long_conv_apply, moving_average, sgconv_kernel, squash
from tests.helpers import assert_causal, run_jitted

# fft_conv's FFT path leaves float rounding (~1e-8) on future positions: tolerate it.
FFT_ROUNDING = 1e-5


def toeplitz_reference(u, k, d, causal):
    """The authors' definition as a dense matrix: y_c[t] = sum_{0<=s<=t} k_c[s] u[t-s] + D_c u[t]
    (+ sum_m k1_c[m] u[t+1+m] when bidirectional), stacked channel-major."""
    batch, length, features = u.shape
    channels = d.shape[0]
    lag = jnp.arange(length)[:, None] - jnp.arange(length)[None, :]  # [t, s] -> t - s

    def band(kern, lags):  # kern [H, Lk]; M[h, t, s] = kern[h, lags[t, s]] where valid
        valid = (lags >= 0) & (lags < kern.shape[-1])
        return jnp.where(valid, kern[:, jnp.clip(lags, 0, kern.shape[-1] - 1)], 0.0)

    outs = []
    for c in range(channels):
        m = band(k[c], lag)
        if not causal:
            m = m + band(k[channels + c], -lag - 1)  # future: s = t + 1 + m
        outs.append(jnp.einsum("hts,bsh->bth", m, u) + d[c] * u)
    return jnp.concatenate(outs, axis=-1)


CASES = [  # batch, length, features, channels, taps, causal (more shapes with -m slow)
    (1, 10, 2, 2, 6, True),      # kernel shorter than the sequence
    (2, 9, 3, 2, 16, False),     # kernel longer than the sequence (cut), bidirectional
    pytest.param((2, 13, 3, 1, 13, True), marks=pytest.mark.slow),
    pytest.param((1, 7, 4, 1, 4, False), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("case", CASES)
def test_long_conv_apply_forward_and_backward(case):
    batch, length, features, channels, taps, causal = case
    rng = np.random.default_rng(sum(case[:5]))
    u = jnp.asarray(rng.standard_normal((batch, length, features)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((channels * (1 if causal else 2), features, taps)),
                    jnp.float32)
    d = jnp.asarray(rng.standard_normal((channels, features)), jnp.float32)
    ct = jnp.asarray(rng.standard_normal((batch, length, channels * features)), jnp.float32)

    def both(u, k, d):
        fns = (lambda u, k, d: long_conv_apply(u, k, d, causal),
               lambda u, k, d: toeplitz_reference(u, k[..., :length], d, causal))
        return [(f(u, k, d), jax.grad(lambda *a: jnp.sum(f(*a) * ct), (0, 1, 2))(u, k, d))
                for f in fns]

    (ours, g_ours), (ref, g_ref) = run_jitted(both, u, k, d)
    assert ours.shape == (batch, length, channels * features)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)
    for a, b in zip(g_ours, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_squash_and_moving_average():
    k = jnp.array([[-0.5, -0.05, 0.0, 0.02, 0.3]])
    np.testing.assert_allclose(squash(k, 0.1), [[-0.4, 0.0, 0.0, 0.0, 0.2]], atol=1e-7)
    x = np.random.default_rng(0).standard_normal((2, 3, 11)).astype(np.float32)
    expected = np.apply_along_axis(lambda r: np.convolve(r, np.ones(5) / 5, mode="same"), -1, x)
    np.testing.assert_allclose(moving_average(jnp.asarray(x), 5), expected, rtol=1e-5,
                               atol=1e-6)


def test_long_conv_layer_composes_kernel_conv_and_head():
    """The layer = smooth -> squash -> conv(+D) -> GELU -> Dense -> GLU, with its own params."""
    rng = np.random.default_rng(1)
    u = jnp.asarray(rng.standard_normal((2, 12, 4)), jnp.float32)
    layer = LongConv(max_len=12, channels=2, lam=0.001, smoothing="ma", smooth_window=3)
    params = layer.init(jax.random.key(0), u)["params"]
    assert params["kernel"].shape == (2, 4, 12) and params["D"].shape == (2, 4)
    assert params["head"]["output_linear"]["kernel"].shape == (8, 8)  # 2*H -> 2*H (GLU)
    k = squash(moving_average(params["kernel"], 3), 0.001)
    y = toeplitz_reference(u, k, params["D"], True)
    lin = params["head"]["output_linear"]
    z = jax.nn.gelu(y, approximate=False) @ lin["kernel"] + lin["bias"]
    expected = z[..., :4] * jax.nn.sigmoid(z[..., 4:])
    np.testing.assert_allclose(layer.apply({"params": params}, u), expected, rtol=1e-4,
                               atol=1e-5)


def test_sgconv_interpolation_matches_pytorch_values():
    """F.interpolate([1, 2, 3], scale_factor=2, mode='linear') = [1, 1.25, 1.75, 2.25, 2.75, 3]
    (align_corners=False); 'nearest' repeats."""
    ones = jnp.ones((1, 1, 3))
    subs = [ones, ones, jnp.array([[[1.0, 2.0, 3.0]]])]  # scale 2 is upsampled by 2
    k = sgconv_kernel(subs, jnp.array([1.0]), "linear")
    np.testing.assert_allclose(k[0, 0, 6:], [1, 1.25, 1.75, 2.25, 2.75, 3], rtol=1e-6)
    k = sgconv_kernel(subs, jnp.array([1.0]), "nearest")
    np.testing.assert_allclose(k[0, 0, 6:], [1, 1, 2, 2, 3, 3])


def test_sgconv_scales_decay_and_fixed_norm():
    layer = SGConv(max_len=40, kernel_dim=4)  # 1 + ceil(log2(40/4)) = 5 scales, 4*2**4 = 64 taps
    assert layer.scales == 5
    u = jnp.asarray(np.random.default_rng(2).standard_normal((1, 40, 3)), jnp.float32)
    variables = layer.init(jax.random.key(0), u)
    params = variables["params"]
    assert sorted(k for k in params if k.startswith("kernel_")) == [f"kernel_{i}" for i in range(5)]
    norm = variables["constants"]["kernel_norm"]
    assert norm.shape == (1, 3, 1)
    multiplier = jnp.full((3,), 2.0)
    full = sgconv_kernel([params[f"kernel_{i}"] for i in range(5)], multiplier)
    assert full.shape == (1, 3, 64)
    np.testing.assert_allclose(norm, jnp.linalg.norm(full, axis=-1, keepdims=True), rtol=1e-6)
    # decay: with equal sub-kernels, each coarser scale carries half the finer scale's weight.
    flat = sgconv_kernel([jnp.ones((1, 1, 4))] * 5, jnp.array([2.0]))
    np.testing.assert_allclose(flat[0, 0, ::4], [16, 8, 4, 4, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1])
    # The norm is a constant: doubling every sub-kernel doubles the output of the conv part.
    doubled = {"params": dict(params), "constants": variables["constants"]}
    for i in range(5):
        doubled["params"][f"kernel_{i}"] = 2 * params[f"kernel_{i}"]
    doubled["params"]["D"] = 2 * params["D"]
    k0 = full / norm
    k1 = 2 * full / norm
    y0 = long_conv_apply(u, k0, params["D"], True)
    y1 = long_conv_apply(u, k1, 2 * params["D"], True)
    np.testing.assert_allclose(y1, 2 * y0, rtol=1e-5, atol=1e-5)
    # and the layer uses exactly this kernel: compare with a manual head on y0.
    lin = params["head"]["output_linear"]
    expected = jax.nn.gelu(y0, approximate=False) @ lin["kernel"] + lin["bias"]
    np.testing.assert_allclose(layer.apply(variables, u), expected, rtol=1e-4, atol=1e-4)
    y_doubled = layer.apply(doubled, u)
    expected = jax.nn.gelu(y1, approximate=False) @ lin["kernel"] + lin["bias"]
    np.testing.assert_allclose(y_doubled, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("make", [  # SGConv shares long_conv_apply: its check runs with -m slow
    lambda causal: LongConv(max_len=8, channels=2, lam=0.0, causal=causal),
    pytest.param(lambda causal: SGConv(max_len=8, kernel_dim=2, causal=causal),
                 marks=pytest.mark.slow),
])
def test_causal_and_bidirectional(make):
    x = jnp.asarray(np.random.default_rng(3).standard_normal((1, 8, 2)), jnp.float32)
    for causal in (True, False):
        layer = make(causal)
        variables = layer.init(jax.random.key(1), x)
        fn = jax.jit(lambda x: layer.apply(variables, x))
        if causal:
            assert_causal(fn, x, atol=FFT_ROUNDING)
        else:
            with pytest.raises(AssertionError, match="not causal"):
                assert_causal(fn, x, atol=FFT_ROUNDING)


@pytest.mark.slow
def test_kernel_dropout_only_in_training():
    x = jnp.asarray(np.random.default_rng(4).standard_normal((1, 8, 2)), jnp.float32)
    layer = LongConv(max_len=8, lam=0.0, kernel_dropout=0.5)
    variables = layer.init(jax.random.key(0), x)
    plain = LongConv(max_len=8, lam=0.0).apply(variables, x)
    np.testing.assert_allclose(layer.apply(variables, x), plain, rtol=1e-6)
    dropped = layer.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(dropped, plain, atol=1e-4)


@pytest.mark.parametrize("make, match", [
    (lambda: LongConv(max_len=0), "max_len"),
    (lambda: LongConv(max_len=8, lam=-1.0), "lam"),
    (lambda: LongConv(max_len=8, smoothing="gauss"), "smoothing"),
    (lambda: LongConv(max_len=8, smoothing="ma", smooth_window=4), "smooth_window must be odd"),
    (lambda: LongConv(max_len=8, kernel_dropout=1.5), "kernel_dropout"),
    (lambda: LongConv(max_len=8, postact="relu"), "postact"),
    (lambda: SGConv(max_len=8, kernel_dim=0), "kernel_dim"),
    (lambda: SGConv(max_len=8, decay_min=0.0), "decay_min"),
    (lambda: SGConv(max_len=8, interpolation="cubic"), "interpolation"),
    (lambda: SGConv(max_len=8, channels=0), "channels"),
    (lambda: SGConv(max_len=8, causal=1), "causal"),
])
def test_bad_fields(make, match):
    with pytest.raises(ValueError, match=match):
        make()
