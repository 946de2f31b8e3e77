"""CKConv / FlexConv (jaxconv.layers.ckconv): forward and gradients against direct-sum
references on awkward 1-D and 2-D shapes, the kernel nets, the mask, causality, errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv.layers.ckconv import CKConv, KernelNet, gaussian_mask, relative_positions
from tests.helpers import assert_causal, run_jitted

KEY = jax.random.key(0)


class DirectCKConv(CKConv):
    """The same layer with its conv replaced by explicit sums over taps (the reference)."""

    def _conv(self, x, kernel, sizes):
        if len(sizes) == 1:  # fft_conv's definition: y[t] = sum_s k[s] x[t + c - s]
            (taps,), length = sizes, x.shape[1]
            centre = 0 if self.causal else taps // 2
            xp = jnp.pad(x, ((0, 0), (taps, taps), (0, 0)))
            return sum(kernel[s] * xp[:, taps + centre - s:taps + centre - s + length]
                       for s in range(taps))
        (kh, kw), (h, w) = sizes, x.shape[1:3]  # correlation, extra even tap low-side pad
        top, left = (kh - 1) - (kh - 1) // 2, (kw - 1) - (kw - 1) // 2
        xp = jnp.pad(x, ((0, 0), (kh, kh), (kw, kw), (0, 0)))
        return sum(kernel[a, b] * xp[:, kh - top + a:kh - top + a + h,
                                     kw - left + b:kw - left + b + w]
                   for a in range(kh) for b in range(kw))


# (input shape, fields): odd / even / prime lengths, kernel shorter than L, each kernel net.
# The first two run by default, the rest with -m slow.
CASES = [
    ((2, 13, 3), dict(causal=True)),
    ((2, 7, 6, 3), dict(causal=False, kernel_size=(3, 4), omega_0=2.0, mask_init=0.8)),
    pytest.param((2, 10, 2), dict(causal=False, kernel_size=7, kernel_net="siren", omega_0=3.0,
                                  mask_init=0.5), marks=pytest.mark.slow),
    pytest.param((1, 9, 3), dict(causal=True, kernel_size=4, kernel_net="mlp", mask=False),
                 marks=pytest.mark.slow),
]


@pytest.mark.parametrize("shape,fields", CASES)
def test_separable_forward_and_grads_match_direct_sums(shape, fields):
    x = jnp.asarray(np.random.default_rng(len(shape) * 7 + shape[1]).normal(size=shape),
                    jnp.float32)
    layer, reference = CKConv(4, **fields), DirectCKConv(4, **fields)
    variables = run_jitted(layer.init, KEY, x)

    def loss(module):
        return lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))

    def both(v, x):
        return (layer.apply(v, x), reference.apply(v, x), jax.grad(loss(layer), (0, 1))(v, x),
                jax.grad(loss(reference), (0, 1))(v, x))

    y, y_ref, grads, grads_ref = run_jitted(both, variables, x)
    assert y.shape == shape[:-1] + (4,) and np.abs(y).max() > 1e-3
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-5)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-5)


def test_dense_causal_kernel_matches_numpy():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 8, 3)), jnp.float32)
    layer = CKConv(2, kernel_size=5, separable=False, omega_0=3.0, mask=False)
    variables = run_jitted(layer.init, KEY, x)
    y, state = run_jitted(lambda v, x: layer.apply(v, x, mutable=["intermediates"]),
                          variables, x)
    kernel = np.asarray(state["intermediates"]["kernel"][0], np.float64)  # [taps, C_in, C_out]
    assert kernel.shape == (5, 3, 2)
    want = np.zeros((2, 8, 2)) + np.asarray(variables["params"]["bias"])
    for t in range(8):
        for s in range(min(t + 1, 5)):  # tap s is lag s
            want[:, t] += np.asarray(x[:, t - s], np.float64) @ kernel[s]
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("separable", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_causal_ckconv_is_causal(separable):
    layer = CKConv(3, separable=separable, omega_0=3.0, mask_init=0.5)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 9, 2)), jnp.float32)
    variables = run_jitted(layer.init, KEY, x)
    # fft_conv's FFT path leaks float32 rounding (~1e-7) to earlier outputs: exact zeros are
    # not available there, so the check allows 1e-5 (gradients here are O(1)).
    assert_causal(jax.jit(lambda x: layer.apply(variables, x)), x, atol=1e-5)


@pytest.mark.slow
def test_two_sided_ckconv_reads_the_future():
    layer = CKConv(2, causal=False, omega_0=3.0, mask=False)
    x = jnp.ones((1, 6, 2))
    variables = run_jitted(layer.init, KEY, x)
    with pytest.raises(AssertionError, match="not causal"):
        assert_causal(jax.jit(lambda x: layer.apply(variables, x)), x)


def test_flexconv_mask_multiplies_the_generated_kernel_and_learns_sigma():
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 12, 3)), jnp.float32)
    layer = CKConv(4, omega_0=3.0, mask_init=0.3)
    variables = run_jitted(layer.init, KEY, x)
    params = variables["params"]
    np.testing.assert_allclose(params["mask_sigma"], [0.3])
    (y, state), grads = run_jitted(lambda v, x: (
        layer.apply(v, x, mutable=["intermediates"]),
        jax.grad(lambda v: jnp.sum(layer.apply(v, x) ** 2))(v)), variables, x)
    positions = relative_positions((12,))
    net = KernelNet(3, "magnet", 32, 3, 3.0, chang_fan=12, causal=True,
                    init_spatial_value=1.667 * 0.3)
    raw = net.apply({"params": params["kernel_net"]}, positions)
    want = raw * gaussian_mask(positions, jnp.ones(1), params["mask_sigma"])[:, None]
    np.testing.assert_allclose(state["intermediates"]["kernel"][0], want, rtol=1e-5, atol=1e-7)
    assert abs(float(grads["params"]["mask_sigma"][0])) > 0
    assert "mask_sigma" not in jax.eval_shape(CKConv(4, mask=False).init, KEY, x)["params"]


def test_relative_positions():
    np.testing.assert_allclose(relative_positions((5,))[:, 0], [1.0, 0.5, 0.0, -0.5, -1.0])
    grid = relative_positions((3, 4))
    assert grid.shape == (3, 4, 2)
    np.testing.assert_allclose(grid[0, 0], [-1.0, -1.0])
    np.testing.assert_allclose(grid[2, 3], [1.0, 1.0])


@pytest.mark.parametrize("dim", [1, 2])
def test_magnet_parameter_count_matches_the_authors_modules(dim):
    # MAGNet(no_layers=3): 4 Gabor filters (mu, gamma [h, D]; D -> h linear with bias),
    # 3 h -> h linears with bias, an h -> out linear with bias.
    hidden, out = 32, 140
    net = KernelNet(out, "magnet", hidden, 3)
    variables = jax.eval_shape(net.init, KEY, jnp.zeros((5,) * dim + (dim,)))
    count = sum(np.prod(v.shape) for v in jax.tree.leaves(variables))
    magnet = 4 * (3 * hidden * dim + hidden) + 3 * (hidden ** 2 + hidden) + hidden * out + out
    assert count == magnet


@pytest.mark.parametrize("make,x_shape,match", [
    (lambda: CKConv(4, kernel_net="fourier"), None, "kernel_net must be one of"),
    (lambda: CKConv(4, decode=True), None, "int kernel_size"),
    (lambda: CKConv(4, causal=False, decode=True, kernel_size=3), None, "causal=True"),
    (lambda: CKConv(4, mask_init=0.0), None, "mask_init"),
    (lambda: CKConv(4), (1, 5, 5, 2), "causal=True is for 1-D"),
    (lambda: CKConv(4, kernel_size=9), (1, 5, 2), "exceeds the sequence length"),
    (lambda: CKConv(4, causal=False, kernel_size=(3, 3, 3)), (1, 5, 5, 2), "one int or one per"),
    (lambda: CKConv(4), (1, 5), r"\[B, L, C\] or \[B, H, W, C\]"),
])
def test_errors(make, x_shape, match):
    with pytest.raises(ValueError, match=match):
        layer = make()
        jax.eval_shape(layer.init, KEY, jnp.zeros(x_shape))
