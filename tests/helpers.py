"""Helpers shared by the model, layer and conversion tests.

Compile time dominates these tests on a 2-core CPU, so jitted functions compile with test-only
XLA:CPU options that cut it 2-5x (same results to float32 rounding; the options are ignored
where an XLA does not know them, and never used off CPU).
"""
from __future__ import annotations

import jax

#: XLA:CPU compile options for tests: backend optimisation off, no fusion emitters.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def compile_fast(fn, *args):
    """``jax.jit(fn)`` lowered and compiled for ``args`` (with :data:`FAST_COMPILE` on CPU)."""
    lowered = jax.jit(fn).lower(*args)
    if jax.default_backend() != "cpu":
        return lowered.compile()
    try:
        return lowered.compile(compiler_options=FAST_COMPILE)
    except Exception as err:  # an XLA without one of the options: compile as usual
        if "compile option" not in str(err):
            raise
        return lowered.compile()


def run_jitted(fn, *args):
    """``jax.jit(fn)(*args)``, compiled by :func:`compile_fast`."""
    return compile_fast(fn, *args)(*args)
