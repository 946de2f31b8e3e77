"""Compute-dtype handling shared by all models."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

#: Compute dtypes a model's ``dtype`` field accepts (parameters are always float32).
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def canonical_dtype(dtype: Any) -> np.dtype:
    """Return ``dtype`` (a string, a jnp scalar type or a numpy dtype) as a ``np.dtype``.

    Raises ``ValueError`` naming the valid choices for anything that is not one of
    :data:`COMPUTE_DTYPES`.
    """
    try:
        resolved = jnp.dtype(dtype)
    except (TypeError, ValueError):
        resolved = None
    if resolved is None or resolved.name not in COMPUTE_DTYPES:
        raise ValueError(f"dtype must be one of {list(COMPUTE_DTYPES)}, got {dtype!r}")
    return resolved
