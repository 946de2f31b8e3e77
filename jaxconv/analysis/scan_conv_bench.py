"""Train-step time of scanned blocks with and without ``loop_safe_conv``, beside unrolled blocks.

    python -m jaxconv.analysis.scan_conv_bench --models resnet20 --batch 32

Backs the claim in :mod:`jaxconv.layers.conv`: on XLA:CPU, JAX's stock convolution VJP inside
``nn.scan`` runs ~10x slower than unrolled, and ``loop_safe_conv`` closes the gap. Prints the
device, JAX version and input shape; per model, the median of 3 train steps (forward, backward,
batch_stats update; after a warm-up) for: unrolled blocks (the baseline), scanned blocks with
``loop_safe_conv`` (the default), scanned blocks with ``lax.conv_general_dilated``.
Compile time against depth is ``python -m experiments.bench compile``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import jax
import jax.numpy as jnp

import jaxconv
from jaxconv.analysis.cost import _train_step
from jaxconv.layers import conv as conv_lib


def step_time(model, shape, repeats: int = 3) -> float:
    """Median seconds of a jitted train step of ``model`` on zeros of ``shape``, after warm-up."""
    x = jnp.zeros(shape, jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x)
    step = jax.jit(_train_step(model))
    key = jax.random.key(1)
    jax.block_until_ready(step(variables, x, key))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(variables, x, key))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet20")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)

    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind} x{jax.device_count()}, "
          f"jax {jax.__version__}")
    for name in args.models.split(","):
        shape = (args.batch, *jaxconv.model_info(name).input_size)
        model = jaxconv.create_model(name, scan_blocks=True)
        unrolled = step_time(model.clone(scan_blocks=False), shape)
        scanned = step_time(model, shape)
        with mock.patch.object(conv_lib, "loop_safe_conv", jax.lax.conv_general_dilated):
            stock = step_time(model, shape)
        print(f"{name} train step, input {shape}:")
        print(f"  unrolled                   {unrolled:.3f} s (baseline)")
        print(f"  scan, loop_safe_conv       {scanned:.3f} s ({scanned / unrolled:.2f}x)")
        print(f"  scan, stock conv VJP       {stock:.3f} s ({stock / unrolled:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
