"""CPU convolutions: ``jaxconv.layers.conv.cpu_conv`` beside XLA's, in one process.

    python -m jaxconv.analysis.conv_cpu_bench                     # per-conv table
    python -m jaxconv.analysis.conv_cpu_bench --models resnet20 --batch 128

Backs the choices in :func:`jaxconv.layers.conv.cpu_conv`. Prints the device, JAX version and
CPU count; per conv shape (ResNet-20 CIFAR, ResNet-50 / ConvNeXt / MobileNet at 128 px), the
minimum of ``--repeats`` timings of the forward and of forward + both gradients, XLA's
convolution (the baseline) and ``cpu_conv``, with the ratio XLA / cpu_conv (> 1: cpu_conv is
faster), timed in turn each round; then dense kernel gradients, XLA's against
``taps_conv``'s. ``--models``: whole train steps (loss, gradients and batch_stats; no
optimizer) of registry models built with ``cpu_conv`` in the ``conv2d`` factory and with it
patched to lax, timed in turn.
"""
from __future__ import annotations

import argparse
import os
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.layers import conv as conv_lib

NHWC = ("NHWC", "HWIO", "NHWC")
#: (name, x shape, kernel HWIO, stride, groups): convs of the issue-16 models and grouped ones.
SHAPES = [
    ("resnet20 3x3 16", (128, 32, 32, 16), (3, 3, 16, 16), 1, 1),
    ("resnet20 3x3 64", (128, 8, 8, 64), (3, 3, 64, 64), 1, 1),
    ("resnet20 3x3 s2 16>32", (128, 32, 32, 16), (3, 3, 16, 32), 2, 1),
    ("resnet50 stem 7x7 s2", (16, 128, 128, 3), (7, 7, 3, 64), 2, 1),
    ("resnet50 1x1 256>64", (16, 32, 32, 256), (1, 1, 256, 64), 1, 1),
    ("resnet50 3x3 256", (16, 8, 8, 256), (3, 3, 256, 256), 1, 1),
    ("resnet50 3x3 512 4x4", (16, 4, 4, 512), (3, 3, 512, 512), 1, 1),
    ("convnext stem 4x4 s4", (16, 128, 128, 3), (4, 4, 3, 96), 4, 1),
    ("grouped 3x3 g8 64", (16, 32, 32, 64), (3, 3, 8, 64), 1, 8),
    ("grouped 3x3 g32 128", (16, 32, 32, 128), (3, 3, 4, 128), 1, 32),
    ("depthwise 3x3 g64", (16, 16, 16, 64), (3, 3, 1, 64), 1, 64),
]
#: Dense kernel gradients alone: XLA's against taps_conv's transpose (one matmul per tap).
KERNEL_GRAD_SHAPES = SHAPES[:4] + SHAPES[5:6]


def _interleaved(fns, args, repeats):
    """Minimum ms of each fn, the fns timed in turn each round (a shared machine's load then
    hits them alike)."""
    for fn in fns:
        jax.block_until_ready(fn(*args))
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            best[i] = min(best[i], time.perf_counter() - start)
    return [b * 1e3 for b in best]


def _pads(w_shape, stride):
    return tuple((k // 2, k // 2) if stride < k else (0, 0) for k in w_shape[:2])


def conv_rows(repeats: int):
    """(name, fwd lax, fwd cpu_conv, fwd+bwd lax, fwd+bwd cpu_conv) in ms."""
    rng = np.random.default_rng(0)
    for name, x_shape, w_shape, stride, groups in SHAPES:
        x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
        w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
        fns = []
        for what in ("fwd", "fwd+bwd"):
            for conv in (jax.lax.conv_general_dilated, conv_lib.cpu_conv):
                def f(x, w, conv=conv):
                    return conv(x, w, (stride, stride), _pads(w_shape, stride),
                                dimension_numbers=NHWC, feature_group_count=groups)
                fns.append(jax.jit(f) if what == "fwd" else jax.jit(jax.grad(
                    lambda x, w, f=f: jnp.sum(jnp.sin(f(x, w))), (0, 1))))
        yield (name, *_interleaved(fns, (x, w), repeats))


def kernel_grad_rows(repeats: int):
    """(name, XLA's kernel gradient, taps_conv's) in ms."""
    rng = np.random.default_rng(0)
    for name, x_shape, w_shape, stride, _ in KERNEL_GRAD_SHAPES:
        x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
        w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)
        pads = _pads(w_shape, stride)
        fns = [jax.jit(lambda x, w, conv=conv: jax.grad(lambda w: jnp.sum(conv(w)))(w))
               for conv in (
                   lambda w: jax.lax.conv_general_dilated(x, w, (stride, stride), pads,
                                                          dimension_numbers=NHWC),
                   lambda w: conv_lib.taps_conv(x, w, (stride, stride), pads))]
        yield (name, *_interleaved(fns, (x, w), repeats))


def model_rows(models, batch, repeats):
    import jaxconv
    from jaxconv.analysis.cost import _train_step
    for name in models:
        shape = (batch, *jaxconv.model_info(name).input_size)
        x = jnp.zeros(shape, jnp.float32)
        times = []
        steps = []
        for patched in (True, False):
            with mock.patch.object(conv_lib, "cpu_conv",
                                   jax.lax.conv_general_dilated) if patched else _null():
                model = jaxconv.create_model(name)
                variables = jax.jit(model.init)(jax.random.key(0), x)
                step = jax.jit(_train_step(model))
                jax.block_until_ready(step(variables, x, jax.random.key(1)))  # traced here
                steps.append(step)
        yield name, shape, _interleaved(steps, (variables, x, jax.random.key(1)), repeats)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated registry names")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind} x{jax.device_count()}, "
          f"jax {jax.__version__}, {os.cpu_count()} CPUs visible; float32; min of "
          f"{args.repeats}")
    if args.models:
        for name, shape, (xla, ours) in model_rows(args.models.split(","), args.batch,
                                                   args.repeats):
            print(f"{name} train step {shape}: lax {xla:.1f} ms (baseline), cpu_conv "
                  f"{ours:.1f} ms, ratio {xla / ours:.2f}x")
        return
    print(f"{'conv':24s} {'fwd lax':>9s} {'cpu_conv':>9s} {'ratio':>6s} "
          f"{'f+b lax':>9s} {'cpu_conv':>9s} {'ratio':>6s}   (ms)")
    for name, f_lax, f_ours, b_lax, b_ours in conv_rows(args.repeats):
        print(f"{name:24s} {f_lax:9.2f} {f_ours:9.2f} {f_lax / f_ours:6.2f} "
              f"{b_lax:9.2f} {b_ours:9.2f} {b_lax / b_ours:6.2f}", flush=True)
    print(f"\n{'dense kernel gradient':24s} {'XLA':>9s} {'taps':>9s} {'ratio':>6s}   (ms)")
    for name, xla, taps in kernel_grad_rows(args.repeats):
        print(f"{name:24s} {xla:9.2f} {taps:9.2f} {xla / taps:6.2f}", flush=True)


if __name__ == "__main__":
    main()
