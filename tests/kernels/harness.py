"""Test harness shared by the kernels_pallas ops.

``implementations()`` lists what an op can run on this backend (compiled where the backend
allows, interpreted otherwise) and ``check_against_reference`` runs an op forward and backward
(one VJP with a random cotangent) in one jitted call and compares outputs, gradients, shapes and
dtypes with the op's reference. Tolerances are relative to the largest reference magnitude:
float32 paths (FFT included) agree to ~1e-6 of it, bfloat16 results are rounded to 8 bits.
"""
from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

from kernels_pallas import core, interpret_as

#: Max |op - reference| / max |reference| per result dtype.
TOLERANCE = {"float32": 5e-5, "bfloat16": 1.5e-2}


def implementations() -> list[tuple[str, str | None]]:
    """(implementation, interpreter target) pairs for this backend: "xla" (compiled) and
    "pallas" (compiled on TPU/GPU, the default interpreter on CPU)."""
    return [("xla", None), ("pallas", None)]


def interpreter(target: str | None):
    """Context in which Pallas paths run ``target``'s kernel under its own interpreter (CPU)."""
    if target is None or core.platform() != "cpu":
        return contextlib.nullcontext()
    return interpret_as(target)


def _forward_and_vjp(fn, diff_argnums):
    def run(args, cotangent):
        def partial_fn(*diff):
            full = list(args)
            for i, value in zip(diff_argnums, diff):
                full[i] = value
            return fn(*full)

        y, vjp = jax.vjp(partial_fn, *[args[i] for i in diff_argnums])
        return y, vjp(cotangent)

    return jax.jit(run)


def assert_close(actual, expected, name: str):
    actual, expected = jnp.asarray(actual), jnp.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    a = np.asarray(actual, np.float32)
    e = np.asarray(expected, np.float32)
    scale = max(float(np.max(np.abs(e), initial=0.0)), 1e-6)
    error = float(np.max(np.abs(a - e), initial=0.0)) / scale
    tol = TOLERANCE[jnp.dtype(actual.dtype).name]
    assert error <= tol, f"{name}: max error {error:.3g} of the largest value > {tol}"
    return error


def check_against_reference(op, reference, args, *, diff_argnums, seed: int = 0,
                            context=None) -> dict[str, float]:
    """Forward and gradients (w.r.t. ``args[i]`` for i in ``diff_argnums``) of ``op`` equal
    ``reference``'s. The forward is checked twice: called plainly (an op may use another
    formulation when it is not differentiated) and as the primal output of the VJP. Returns the
    relative errors."""
    with context or contextlib.nullcontext():
        y_ref, grads_ref = _forward_and_vjp(reference, diff_argnums)(
            args, _cotangent(reference, args, seed))
        y_plain = jax.jit(op)(*args)
        y, grads = _forward_and_vjp(op, diff_argnums)(args, _cotangent(reference, args, seed))
    errors = {"forward": assert_close(y_plain, y_ref, "forward"),
              "vjp forward": assert_close(y, y_ref, "forward under differentiation")}
    for i, g, g_ref in zip(diff_argnums, grads, grads_ref, strict=True):
        errors[f"grad{i}"] = assert_close(g, g_ref, f"gradient of argument {i}")
    return errors


def _cotangent(fn, args, seed):
    out = jax.eval_shape(fn, *args)
    values = np.random.default_rng(seed).standard_normal(out.shape).astype(np.float32)
    return jnp.asarray(values, out.dtype)
