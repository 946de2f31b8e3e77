"""Pallas kernels for jaxconv's hot convolution and attention paths.

Each op lives in its own folder (``kernels_pallas/<op>/``) with a public function taking
``implementation=None | "xla" | "pallas"``, a pure-jnp reference, and the Pallas kernels.
See DESIGN.md; ops are added by the kernel issues.
"""
