"""Saving quantized variables (real int8 / int4 on disk) and ``jax.export`` of deploy models.

:func:`save_variables` writes any variables tree (float or quantized) as one ``.npz``: each leaf
under its tree path; int8 ``QArray`` values stay int8, and 4-bit weights (int8 containers holding
[-7, 7], see :mod:`jaxconv.quantize.ptq`) are packed two per byte as int4. :func:`load_variables`
restores them into the structure of a template tree (e.g. ``QuantizedModel.variables`` or its
``jax.eval_shape``), so the loaded tree has the same ``QArray``/``WithAux`` nodes.

:func:`export_model` serialises ``fn(x)`` with the variables baked in as constants (StableHLO
via ``jax.export``, batch size symbolic), and :func:`load_exported` runs it anywhere JAX runs,
without jaxconv or qwix::

    blob = export_model(qm.apply, (None, 32, 32, 1))      # or a float model's apply
    open("model.jaxexport", "wb").write(blob)
    # in the serving process:
    exported = jax.export.deserialize(open("model.jaxexport", "rb").read())
    logits = exported.call(images)
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["export_model", "file_bytes", "load_exported", "load_variables", "save_variables"]

_INT4_SUFFIX = "::int4"


def _key(path) -> str:
    return jax.tree_util.keystr(path)


def save_variables(path: str, variables: Any, weight_bits: int = 8) -> int:
    """Writes ``variables`` to ``path`` (.npz); returns the file's size in bytes.

    ``weight_bits=4``: int8 leaves are stored packed as int4 (two values per byte); every value
    must then be in [-8, 7] (ValueError otherwise).
    """
    if weight_bits not in (4, 8):
        raise ValueError(f"weight_bits must be 4 or 8, got {weight_bits!r}")
    arrays = {}
    for p, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        a = np.asarray(leaf)
        if weight_bits == 4 and a.dtype == np.int8:
            if a.size and (a.min() < -8 or a.max() > 7):
                raise ValueError(f"{_key(p)} holds values outside int4's [-8, 7]")
            flat = (a.ravel().astype(np.int16) & 0xF).astype(np.uint8)
            flat = np.concatenate([flat, np.zeros(flat.size % 2, np.uint8)])
            arrays[_key(p) + _INT4_SUFFIX] = flat[0::2] | (flat[1::2] << 4)
        else:
            arrays[_key(p)] = a
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return os.path.getsize(path)


def load_variables(path: str, template: Any) -> Any:
    """The tree saved by :func:`save_variables`, in ``template``'s structure (shapes checked)."""
    with np.load(path) as data:
        stored = dict(data.items())
    leaves = []
    for p, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
        key = _key(p)
        if key + _INT4_SUFFIX in stored:
            packed = stored[key + _INT4_SUFFIX]
            nibbles = np.stack([packed & 0xF, packed >> 4], -1).ravel()[:int(np.prod(leaf.shape))]
            a = ((nibbles.astype(np.int16) ^ 8) - 8).astype(np.int8).reshape(leaf.shape)
        elif key in stored:
            a = stored[key]
        else:
            raise ValueError(f"{path} has no array for {key}")
        if tuple(a.shape) != tuple(leaf.shape):
            raise ValueError(f"{key}: stored shape {a.shape} != expected {leaf.shape}")
        leaves.append(jnp.asarray(a))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)


def file_bytes(path: str) -> int:
    return os.path.getsize(path)


def export_model(fn: Callable, input_shape: Sequence[int | None],
                 dtype: Any = jnp.float32) -> bytes:
    """Serialised ``jax.export`` of ``fn(x)`` (variables closed over become constants);
    ``None`` in ``input_shape`` is a symbolic dimension (the batch)."""
    dims = ", ".join("b" if d is None else str(int(d)) for d in input_shape)
    shape = jax.export.symbolic_shape(dims)
    exported = jax.export.export(jax.jit(fn))(jax.ShapeDtypeStruct(shape, dtype))
    return bytes(exported.serialize())


def load_exported(blob: bytes):
    """The ``jax.export.Exported`` of :func:`export_model`'s bytes; run it with ``.call(x)``."""
    return jax.export.deserialize(bytearray(blob))
