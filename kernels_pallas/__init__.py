"""Pallas kernels for jaxconv's hot convolution and attention paths.

Each op lives in its own folder (``kernels_pallas/<op>/``) with a public function taking
``implementation=None | "xla" | "pallas"``, a pure-jnp reference, the Pallas kernels (TPU via
Mosaic; GPU via Mosaic GPU where written), a ``jax.custom_vjp`` with backward kernels, and a
tuning table of block sizes per device kind. ``kernels_pallas.core`` holds what the ops share
(implementation choice, interpret mode on CPU, tuning look-up, the ``shard_map`` wrapper). See
DESIGN.md.

Ops: :func:`depthwise_conv2d`, :func:`fft_conv`, :func:`flash_attention`,
:func:`neighborhood_attention`.
Benchmarks: ``python -m kernels_pallas.bench <op>``.

The package exports each op's function under the op's name, which shadows the subpackage as
an attribute: import an op's modules with ``from kernels_pallas.<op> import tuning``.
"""

from kernels_pallas.core import IMPLEMENTATIONS, compile_for, interpret_as
from kernels_pallas.depthwise_conv2d import depthwise_conv2d
from kernels_pallas.fft_conv import fft_conv
from kernels_pallas.flash_attention import flash_attention
from kernels_pallas.neighborhood_attention import neighborhood_attention

__all__ = ["IMPLEMENTATIONS", "compile_for", "depthwise_conv2d", "fft_conv", "flash_attention",
           "interpret_as", "neighborhood_attention"]
