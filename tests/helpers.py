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


def assert_causal(fn, x, *, atol: float = 0.0):
    """Asserts ``fn`` ([B, L, ...] -> [B, L, ...]) is causal along axis 1: for every output
    position t, the gradient of ``y[:, t]`` with respect to ``x[:, s]`` is zero for all s > t
    (checked with autodiff, one VJP per output position), and some earlier input matters.

    ``x`` is a float array; a model over token ids is checked through its embedding output.
    """
    import numpy as np  # local: keep this module's import cheap for the other tests

    y, vjp = jax.vjp(fn, x)
    length = x.shape[1]
    if y.shape[1] != length:
        raise AssertionError(f"output length {y.shape[1]} != input length {length}")
    grads = jax.jit(jax.vmap(lambda ct: vjp(ct)[0]))(
        jax.numpy.stack([jax.numpy.zeros_like(y).at[:, t].set(1.0) for t in range(length)]))
    # grads[t] = d sum(y[:, t]) / d x; reduce over batch and channels -> [t, s].
    per_position = np.abs(np.asarray(grads, np.float64)).reshape(length, x.shape[0], length, -1)
    influence = per_position.sum(axis=(1, 3))
    future = np.triu(influence, k=1)
    if future.max() > atol:
        t, s = np.unravel_index(np.argmax(future), future.shape)
        raise AssertionError(f"not causal: output {t} depends on input {s} > {t} "
                             f"(|grad| {future.max():.3g})")
    if np.tril(influence).max() == 0:
        raise AssertionError("no output depends on any input: the check would pass vacuously")


def dot_contractions(jaxpr) -> list[tuple]:
    """(lhs shape, lhs contracting dims, name stack) of every dot_general in a jaxpr, nested
    jaxprs (jit, remat, scan bodies) included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            found.append((eqn.invars[0].aval.shape, tuple(lhs_contract),
                          str(eqn.source_info.name_stack)))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found += dot_contractions(sub)
    return found
