"""Modal distillation (Laughing Hyena): exact recovery of a modal filter, the recurrence equal to
fft_conv of the distilled filter and within the L1 bound of the original filter's convolution,
streaming in pieces, error against state size, argument errors, the benchmark's output."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv.streaming import modal
from kernels_pallas import fft_conv


def _damped_modes(length):
    j = np.arange(length)
    k = np.stack([0.9 ** j * np.cos(0.3 * j) + 0.5 * 0.97 ** j,       # a pair and a real pole
                  0.8 ** j * np.sin(0.1 * j) + 0.2 * (-0.9) ** j])
    k[:, 0] = [1.5, -0.7]  # the lag-0 tap is kept exactly, whatever it is
    return k


def test_recovers_an_exactly_modal_filter():
    k = _damped_modes(60)
    m = modal.distill(k, 3)  # 3 real states: one conjugate pair stored once + one real pole
    assert m.poles.shape == (2, 2)
    np.testing.assert_array_less(modal.approximation_error(k, m), 1e-5)
    # the tail k[1:] = sum c p^(j-1) has the same poles as k: 0.9 e^{+-0.3i}, 0.97 / 0.8
    # e^{+-0.1i}, -0.9
    np.testing.assert_allclose(sorted(np.abs(np.asarray(m.poles[0]))), [0.9, 0.97], rtol=1e-4)
    np.testing.assert_allclose(sorted(np.asarray(m.poles[1]).real), [-0.9, 0.8 * np.cos(0.1)],
                               rtol=1e-4)


def _hyena_like(channels, length, seed=0):
    """Smooth decaying random filters (random modes plus a little noise): fit, not exact."""
    rng = np.random.default_rng(seed)
    j = np.arange(length)
    k = np.zeros((channels, length))
    for h in range(channels):
        for _ in range(6):
            k[h] += rng.standard_normal() * rng.uniform(0.85, 0.99) ** j * np.cos(
                rng.uniform(0, np.pi) * j + rng.uniform(0, 2 * np.pi))
    return k + 1e-3 * rng.standard_normal(k.shape)


def test_recurrence_equals_conv_of_distilled_filter_and_bounds_the_original():
    length, channels = 48, 3
    k = _hyena_like(channels, length)
    bias = np.array([0.5, -1.0, 0.0])
    m = modal.distill(k, 4, bias=bias)
    u = jnp.asarray(np.random.default_rng(1).standard_normal((2, length, channels)), jnp.float32)
    _, y = jax.jit(modal.run)(m, u)
    exact = fft_conv(u, modal.modal_kernel(m, length), bias=jnp.asarray(bias, jnp.float32))
    np.testing.assert_allclose(y, exact, rtol=1e-4, atol=1e-4)
    original = fft_conv(u, jnp.asarray(k, jnp.float32), bias=jnp.asarray(bias, jnp.float32))
    bound = np.abs(k - np.asarray(modal.modal_kernel(m, length))).sum(1) \
        * np.abs(np.asarray(u)).max()
    gap = np.abs(np.asarray(y) - np.asarray(original)).max(axis=(0, 1))
    assert (gap <= bound + 1e-4).all(), (gap, bound)
    assert gap.max() > 1e-4  # order 4 cannot fit 6 modes: the comparison is not vacuous


def test_streaming_in_pieces_equals_one_run():
    k = _hyena_like(2, 32, seed=2)
    m = modal.distill(k, 6)
    u = jnp.asarray(np.random.default_rng(3).standard_normal((1, 20, 2)), jnp.float32)
    _, whole = modal.run(m, u)
    state, first = modal.run(m, u[:, :7])
    state, second = modal.run(m, u[:, 7:8], state)
    outs = [first, second]
    for t in range(8, 20):
        state, y_t = modal.step(m, state, u[:, t])
        outs.append(y_t[:, None])
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), whole, rtol=1e-5, atol=1e-5)


def test_error_falls_with_state_size():
    k = _hyena_like(4, 128, seed=4)
    rows = modal.error_table(k, [2, 4, 8, 12])
    means = [mean for _, mean, _, _ in rows]
    assert means[-1] < 0.1 * means[0] and means[-1] < 0.05, means
    filters = modal.distill_orders(k, [2, 12])
    assert filters[1].poles.shape[1] <= 12


@pytest.mark.parametrize("call, match", [
    (lambda: modal.distill(np.ones((2, 10)), 5), "order .* must be an int in \\[1, 4\\]"),
    (lambda: modal.distill(np.ones((2, 10)), 0), "order"),
    (lambda: modal.distill(np.ones(10), 2), "k must be \\[H, L\\]"),
    (lambda: modal.distill(np.full((1, 10), np.nan), 2), "non-finite"),
    (lambda: modal.distill(np.ones((2, 10)), 2, bias=np.ones(3)), "bias must be \\[H\\]"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.slow
def test_benchmark_prints_device_error_table_and_ratios(capsys):
    modal.main(["--length", "64", "--channels", "4", "--orders", "2", "4", "--step_order", "4",
                "--error_channels", "2"])
    out = capsys.readouterr().out
    assert "device: cpu" in out and "| 4 |" in out and "fft_window" in out and "vs modal" in out
