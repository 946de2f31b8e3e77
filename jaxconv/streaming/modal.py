"""Modal distillation of long convolution filters (Massaroli et al. 2023, Laughing Hyena
Distillery: Extracting Compact Recurrences From Convolutions, arXiv:2310.18780).

A causal long filter ``k [H, L]`` costs O(L) work per generated token when run step by step (a
dot product with the last L inputs). Distilled into ``d`` modes per channel,

    k[0] = h0 (kept exactly),   k[j] ~= Re(sum_n R_n lambda_n ** (j - 1))   for j >= 1,

the same convolution is a diagonal linear recurrence with O(d) work and state per step::

    y_t = (h0 + bias) u_t + Re(sum_n R_n x_{t-1, n}),      x_t = lambda * x_{t-1} + u_t

(:func:`step`; ``bias`` is the skip term ``D`` of ``fft_conv``). Its output equals
``fft_conv(u, modal_kernel(m, L), bias=bias)`` exactly (to rounding), and differs from the
original filter's convolution by at most ``||k - k_modal||_1 * max|u|`` per channel.

Fitting (:func:`distill`, host-side NumPy in float64, no training): the poles are the
eigenvalues of the shift-invariance map of the leading ``order``-dimensional subspace of the
tail's Hankel matrix (Kung's realisation / ESPRIT; what Laughing Hyena uses to initialise its
modal fit), poles outside the unit disc are pulled inside, and the residues are the least-squares
fit of the tail ``k[1:]`` on those poles. A real filter gives real poles and conjugate pairs; a
pair is kept once with twice its residue (the real part is unchanged), so ``order`` is the
number of real state variables per channel and the stored complex modes number
``real poles + pairs`` (padded to the largest count over channels with zero residues).

``python -m jaxconv.streaming.modal`` prints the approximation error of a Hyena filter against
the state size and times a step of the recurrence against recomputing the convolution over the
window (a ring-buffer dot product and a full ``fft_conv``), in one process.
"""
from __future__ import annotations

import argparse
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas.fft_conv import fft_conv

__all__ = ["ModalFilter", "approximation_error", "distill", "init_state", "modal_kernel",
           "distill_orders", "run", "step"]

#: Largest pole magnitude kept (a pole on or outside the unit circle never decays).
MAX_POLE_RADIUS = 0.9999
#: Rows of the Hankel matrix (the fit uses at most this many lags' shift structure).
MAX_HANKEL_ROWS = 256


class ModalFilter(NamedTuple):
    """A distilled filter (a pytree): per channel ``h0`` [H], ``bias`` [H] (the skip term),
    ``poles`` and ``residues`` [H, M] complex64 (M stored modes, unused ones zero)."""

    h0: jax.Array
    bias: jax.Array
    poles: jax.Array
    residues: jax.Array


def _check_kernel(k) -> np.ndarray:
    k = np.asarray(k, np.float64)
    if k.ndim != 2 or k.shape[1] < 3:
        raise ValueError(f"k must be [H, L] with L >= 3 taps, got shape {k.shape}")
    if not np.isfinite(k).all():
        raise ValueError("k has non-finite taps")
    return k


def _hankel_basis(tail: np.ndarray, order: int) -> np.ndarray:
    """The leading ``order`` left singular vectors of ``tail``'s Hankel matrix ([rows, order])."""
    length = tail.shape[0]
    rows = min(MAX_HANKEL_ROWS, length // 2)
    hankel = np.lib.stride_tricks.sliding_window_view(tail, length - rows + 1)[:rows]
    u, _, _ = np.linalg.svd(hankel, full_matrices=False)
    return u[:, :order]


def _fit_channel(tail: np.ndarray, basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Poles (eigenvalues of the basis' shift map, pulled inside the unit disc) and least-
    squares residues of ``tail[j] ~= sum_n c_n p_n**j``; one per basis column."""
    shift, *_ = np.linalg.lstsq(basis[:-1], basis[1:], rcond=None)
    poles = np.linalg.eigvals(shift)
    radius = np.abs(poles)
    poles = np.where(radius > MAX_POLE_RADIUS, poles / radius * MAX_POLE_RADIUS, poles)
    vandermonde = poles[None, :] ** np.arange(tail.shape[0])[:, None]
    residues, *_ = np.linalg.lstsq(vandermonde, tail.astype(np.complex128), rcond=None)
    return poles, residues


def distill(k, order: int, *, bias=None) -> ModalFilter:
    """Distil ``k`` [H, L] into ``order`` real state variables per channel (module docstring).

    ``order`` must be in [1, (L - 1) // 2]. ``bias`` [H] (default zeros) is carried as the skip
    term. Host-side (NumPy): call it outside ``jit``.
    """
    return distill_orders(k, [order], bias=bias)[0]


def distill_orders(k, orders, *, bias=None) -> list[ModalFilter]:
    """:func:`distill` at several state sizes, sharing one SVD per channel."""
    k = _check_kernel(k)
    channels, length = k.shape
    for order in orders:
        if isinstance(order, bool) or not isinstance(order, (int, np.integer)) \
                or not 1 <= order <= (length - 1) // 2:
            raise ValueError(f"order (real state size per channel) must be an int in "
                             f"[1, {(length - 1) // 2}] for a {length}-tap filter, got "
                             f"{order!r}")
    bias = np.zeros(channels) if bias is None else np.asarray(bias, np.float64)
    if bias.shape != (channels,):
        raise ValueError(f"bias must be [H] = [{channels}], got shape {bias.shape}")
    bases = [_hankel_basis(k[h, 1:], max(orders)) for h in range(channels)]
    return [_modal_filter(k, [_fit_channel(k[h, 1:], bases[h][:, :order])
                              for h in range(channels)], bias) for order in orders]


def _modal_filter(k, fits, bias) -> ModalFilter:
    """Keeps one pole of each conjugate pair (twice its residue) and the real poles, padded
    to the largest count over channels with zero modes."""
    kept = []
    for poles, residues in fits:
        upper = poles.imag >= 0
        weight = np.where(poles.imag > 0, 2.0, 1.0)
        kept.append((poles[upper], (residues * weight)[upper]))
    channels = len(fits)
    width = max(p.shape[0] for p, _ in kept)
    poles = np.zeros((channels, width), np.complex64)
    residues = np.zeros((channels, width), np.complex64)
    for h, (p, r) in enumerate(kept):
        poles[h, :p.shape[0]], residues[h, :r.shape[0]] = p, r
    return ModalFilter(jnp.asarray(k[:, 0], jnp.float32), jnp.asarray(bias, jnp.float32),
                       jnp.asarray(poles), jnp.asarray(residues))


def modal_kernel(m: ModalFilter, length: int) -> jax.Array:
    """The filter the recurrence implements, ``[H, length]`` float32."""
    powers = m.poles[:, None, :] ** jnp.arange(length - 1)[None, :, None]   # [H, L-1, M]
    tail = jnp.real(jnp.sum(m.residues[:, None, :] * powers, axis=-1))
    return jnp.concatenate([m.h0[:, None], tail], axis=1).astype(jnp.float32)


def approximation_error(k, m: ModalFilter) -> np.ndarray:
    """Relative L2 error ``||k - k_modal|| / ||k||`` per channel, [H]."""
    k = np.asarray(k, np.float64)
    diff = k - np.asarray(modal_kernel(m, k.shape[1]), np.float64)
    return np.linalg.norm(diff, axis=1) / np.maximum(np.linalg.norm(k, axis=1), 1e-30)


def init_state(m: ModalFilter, batch: int) -> jax.Array:
    """The zero state ``x`` [batch, H, M] complex64 (no input seen yet)."""
    return jnp.zeros((batch,) + m.poles.shape, jnp.complex64)


def step(m: ModalFilter, state, u_t):
    """One token: ``u_t`` [B, H] -> ``(new_state, y_t [B, H])``, O(M) work per channel."""
    u_t32 = u_t.astype(jnp.float32)
    y = (m.h0 + m.bias) * u_t32 + jnp.real(jnp.sum(m.residues * state, axis=-1))
    state = m.poles * state + u_t32[..., None]
    return state, y.astype(u_t.dtype)


def run(m: ModalFilter, u, state=None):
    """The recurrence over ``u`` [B, L, H] (a ``lax.scan`` of :func:`step`): ``(state, y)``."""
    state = init_state(m, u.shape[0]) if state is None else state

    def body(s, u_t):
        return step(m, s, u_t)

    state, y = jax.lax.scan(body, state, jnp.swapaxes(u, 0, 1))
    return state, jnp.swapaxes(y, 0, 1)


# ----------------------------------------------------------------------------------------------
# Benchmark: python -m jaxconv.streaming.modal [--length 1024 --channels 256 ...]

def _hyena_filter(channels: int, length: int, seed: int) -> np.ndarray:
    """Implicit filters of a freshly initialised HyenaFilter (safari's associative-recall
    settings: emb_dim 5, width 64, w 10, exponential modulation)."""
    from jaxconv.layers import HyenaFilter

    filt = HyenaFilter(channels, max_len=None, emb_dim=5, filter_order=64, w=10.0,
                       train_pos_emb=False)
    (k, _), _ = jax.jit(filt.init_with_output, static_argnums=1)(jax.random.key(seed), length)
    return np.asarray(k)


def _trained_hyena_filter(steps: int, length: int, seed: int) -> np.ndarray:
    """The first block's implicit filters of ``hyena_lm_tiny`` after ``steps`` Adam steps on
    associative recall (``assoc_recall_<length>``, batch 32, lr 5e-4 as safari's config)."""
    import optax

    import jaxconv
    from jaxconv.data.sequences import sequence_source
    from jaxconv.layers import HyenaFilter

    model = jaxconv.create_model("hyena_lm_tiny")
    source = sequence_source(f"assoc_recall_{length}", "train")
    tx = optax.adamw(5e-4, weight_decay=0.1)

    def batch(i):
        rows = [source[(i * 32 + j) % len(source)] for j in range(32)]
        return (jnp.asarray(np.stack([r["image"] for r in rows])),
                jnp.asarray(np.stack([r["label"] for r in rows])))

    @jax.jit
    def train_step(params, opt_state, x, y, key):
        def loss_fn(p):
            logits = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(y, 0))
            mask = (y >= 0).astype(jnp.float32)
            return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    x, _ = batch(0)
    params = jax.jit(model.init)(jax.random.key(seed), x)["params"]
    opt_state = tx.init(params)
    for i in range(steps):
        x, y = batch(i)
        params, opt_state, loss = train_step(params, opt_state, x, y, jax.random.key(i))
    print(f"hyena_lm_tiny after {steps} steps on assoc_recall_{length}: loss {float(loss):.3f}")
    filt = HyenaFilter(model.d_model, max_len=None, filter_order=model.filter_order,
                       **dict(model.filter_kwargs))
    k, _ = filt.apply({"params": params["blocks_0"]["mixer"]["filter_fn"]}, length)
    return np.asarray(k)


def _time(fn, *args, repeats: int = 5, number: int = 50) -> float:
    """Median seconds per call of a jitted ``fn`` (compiled and warmed first)."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / number)
    return float(np.median(times))


def error_table(k: np.ndarray, orders) -> list[tuple[int, float, float, float]]:
    """(order, mean, max relative L2 error over channels, max |k - k_modal|_1 / |k|_1)."""
    rows = []
    for order, m in zip(orders, distill_orders(k, orders)):
        err = approximation_error(k, m)
        l1 = np.abs(k - np.asarray(modal_kernel(m, k.shape[1]))).sum(1) / np.abs(k).sum(1)
        rows.append((order, float(err.mean()), float(err.max()), float(l1.max())))
    return rows


def latency(k: np.ndarray, order: int, batch: int) -> dict[str, float]:
    """Seconds per generated token: modal step vs ring-buffer dot vs fft_conv of the window."""
    channels, length = k.shape
    m = distill(k, order)
    kj = jnp.asarray(k)
    rng = np.random.default_rng(0)
    u_t = jnp.asarray(rng.standard_normal((batch, channels)), jnp.float32)
    state = init_state(m, batch)
    window = jnp.asarray(rng.standard_normal((batch, length, channels)), jnp.float32)
    modal = jax.jit(lambda s, u: step(m, s, u))

    @jax.jit
    def ring(buf, pos, u):
        # buf holds the last L inputs, newest at pos: y = sum_s k[s] u[t - s].
        buf = jax.lax.dynamic_update_slice(buf, u[:, None], (0, pos, 0))
        lags = (pos - jnp.arange(length)) % length
        y = jnp.einsum("blh,hl->bh", buf[:, lags], kj)
        return buf, (pos + 1) % length, y

    @jax.jit
    def recompute(win, u):
        win = jnp.concatenate([win[:, 1:], u[:, None]], axis=1)
        return win, fft_conv(win, kj)[:, -1]

    return {"modal": _time(modal, state, u_t),
            "ring": _time(ring, window, jnp.int32(0), u_t),
            "fft_window": _time(recompute, window, u_t, number=10)}


def _print_errors(k: np.ndarray, orders) -> None:
    print("| state size | mean rel. L2 | max rel. L2 | max rel. L1 |")
    print("| --- | --- | --- | --- |")
    orders = [o for o in orders if o <= (k.shape[1] - 1) // 2]
    for order, mean, worst, l1 in error_table(k, orders):
        print(f"| {order} | {mean:.2e} | {worst:.2e} | {l1:.2e} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--orders", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    parser.add_argument("--step_order", type=int, default=16,
                        help="state size of the timed recurrence")
    parser.add_argument("--error_channels", type=int, default=32,
                        help="channels fitted for the error table (the fit is per channel)")
    parser.add_argument("--train_steps", type=int, default=0,
                        help="also distil hyena_lm_tiny's first-block filters after this many "
                             "training steps on associative recall (at the first --length)")
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind} | jax {jax.__version__}")
    if args.train_steps:
        length = args.length[0]
        k = _trained_hyena_filter(args.train_steps, length, seed=0)
        print(f"\nTrained Hyena filter (64 channels), L={length}: relative error vs state size")
        _print_errors(k, args.orders)
    for length in args.length:
        k = _hyena_filter(args.channels, length, seed=0)
        print(f"\nHyena filter at init, L={length}: relative error vs state size "
              f"({args.error_channels} channels)")
        _print_errors(k[:args.error_channels], args.orders)
        t = latency(k, args.step_order, args.batch)
        print(f"\nper-token latency, B={args.batch}, H={args.channels}, window L={length}, "
              f"state {args.step_order}:")
        print("| path | us / token | vs modal |")
        print("| --- | --- | --- |")
        for name in ("modal", "ring", "fft_window"):
            print(f"| {name} | {t[name] * 1e6:.1f} | {t[name] / t['modal']:.1f}x |")


if __name__ == "__main__":
    main()
