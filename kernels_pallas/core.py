"""What every op in ``kernels_pallas`` shares: implementation choice, interpret mode, tuning-table
look-up and the ``shard_map`` wrapper.

Kept deliberately small; each op folder (``kernels_pallas/<op>/``) owns its kernels, its
reference and its block-size dataclasses, and uses these helpers for the parts that are the same
for every op:

* ``implementation=None | "xla" | "pallas"`` (:func:`check_implementation`, :func:`platform`).
* Interpret mode: on CPU a Pallas kernel only runs interpreted. By default the op runs its TPU
  kernel with ``interpret=True`` (the generic HLO interpreter, the fastest one); inside
  ``with interpret_as("tpu")`` it runs the TPU kernel under ``pltpu.InterpretParams()`` (TPU
  memory spaces, DMAs and semaphores simulated), inside ``with interpret_as("gpu")`` its Mosaic
  GPU kernel under the Mosaic GPU interpreter. The choice is read at trace time, so enter the
  context before ``jax.jit`` traces the function. ``with compile_for("tpu" | "gpu")`` traces the
  compiled kernel instead, to check on CPU that it lowers for that platform.
* Tuning tables: ``{device-kind prefix: config}``; :func:`lookup_tuning` picks the longest
  matching prefix of ``jax.devices()[0].device_kind`` (``"cpu"`` on CPU), else ``"default"``.
* :func:`shard_batch`: inside ``jax.jit`` under a mesh context (``jax.set_mesh(mesh)``) whose
  axes include ``"data"`` and/or ``"fsdp"``, runs the op per shard with ``jax.shard_map`` (batch
  split over all of them, as the training loop splits it; parameters replicated), so a
  ``pallas_call`` sees its local batch rather than being handed to the SPMD partitioner, which
  cannot split a custom call. Parameters sharded over ``"fsdp"`` (``config.sharding="fsdp"``)
  are all-gathered by jit on the way in; their gradients are summed over the batch shards and
  jit reduce-scatters them back to the parameter's layout.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
from jax.sharding import PartitionSpec as P

#: Values the ``implementation`` argument of every op accepts.
IMPLEMENTATIONS = (None, "xla", "pallas")
#: Mesh axis names a batch is split over: the training loop's mesh axes
#: (``jaxconv.train.mesh.MESH_AXES``), ``"data"`` alone or ``"data"`` x ``"fsdp"``.
BATCH_AXES = ("data", "fsdp")
#: Targets whose Pallas kernels can be interpreted on CPU.
INTERPRET_TARGETS = ("tpu", "gpu")

_interpret_target: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "kernels_pallas_interpret_target", default=None)
_compile_target: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "kernels_pallas_compile_target", default=None)


def check_choice(argument: str, value: Any, valid: Sequence[Any]) -> None:
    """Raises ``ValueError`` naming ``argument`` and the valid values when ``value`` is not one."""
    if value not in valid:
        raise ValueError(f"{argument}={value!r} is not supported; valid values: {list(valid)}")


def check_implementation(implementation: str | None) -> None:
    check_choice("implementation", implementation, IMPLEMENTATIONS)


def platform() -> str:
    """``"cpu"``, ``"gpu"`` or ``"tpu"``: the backend the op is traced for."""
    backend = jax.default_backend()
    return "gpu" if backend in ("gpu", "cuda", "rocm") else backend


def device_kind() -> str:
    """The tuning-table key of the default device: ``"cpu"`` or e.g. ``"NVIDIA H100 80GB HBM3"``."""
    device = jax.devices()[0]
    return "cpu" if device.platform == "cpu" else device.device_kind


def lookup_tuning(table: Mapping[str, Any], kind: str | None = None) -> Any:
    """The entry of ``table`` for device kind ``kind`` (default: this machine's).

    Keys are prefixes of device kinds (``"TPU v5"``, ``"NVIDIA H100"``, ``"cpu"``); the longest
    matching prefix wins, else the ``"default"`` entry.
    """
    kind = device_kind() if kind is None else kind
    matches = [k for k in table if k != "default" and kind.startswith(k)]
    if matches:
        return table[max(matches, key=len)]
    return table["default"]


@contextlib.contextmanager
def interpret_as(target: str):
    """Within this context, Pallas paths on CPU run ``target``'s kernel ("tpu" or "gpu") under
    that backend's interpreter (``pltpu.InterpretParams`` / the Mosaic GPU interpreter), which
    simulates its memory spaces and synchronisation. Slower than the default interpreter; meant
    for tests on a few shapes."""
    check_choice("target", target, INTERPRET_TARGETS)
    token = _interpret_target.set(target)
    try:
        yield
    finally:
        _interpret_target.reset(token)


@contextlib.contextmanager
def compile_for(target: str):
    """Within this context, Pallas paths trace ``target``'s compiled kernel ("tpu" or "gpu")
    whatever the local backend, so a function can be lowered for that platform on a machine
    without it: ``jax.jit(f).trace(*args).lower(lowering_platforms=("tpu",))`` (or ``"cuda"``)
    runs the Pallas-to-Mosaic lowering. Running such a function locally fails."""
    check_choice("target", target, INTERPRET_TARGETS)
    token = _compile_target.set(target)
    try:
        yield
    finally:
        _compile_target.reset(token)


def pallas_target() -> tuple[str, Any]:
    """``(kernel target, interpret argument)`` for a Pallas path traced now.

    On TPU/GPU: that target, compiled (``interpret=False``). On CPU: the TPU kernel with the
    generic interpreter, or the target chosen with :func:`interpret_as` under its own interpreter.
    """
    if _compile_target.get() is not None:
        return _compile_target.get(), False
    plat = platform()
    if plat in ("tpu", "gpu"):
        return plat, False
    target = _interpret_target.get()
    if target == "tpu":
        from jax.experimental.pallas import tpu as pltpu
        return "tpu", pltpu.InterpretParams()
    if target == "gpu":
        # Not exported under jax.experimental.pallas in JAX 0.10/0.11; see the module docstring
        # of the op's pallas_gpu.py.
        from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
        return "gpu", InterpretGPUParams()
    return "tpu", True


def batch_mesh_axes(batch_size: int) -> tuple[str, ...] | None:
    """The context mesh's batch axes (those of :data:`BATCH_AXES` it has) when the op should run
    per shard, else None (no mesh, no batch axis, size-1 axes, a batch their product does not
    divide, or already inside a ``shard_map`` over them)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names and a not in mesh.manual_axes)
    size = math.prod(mesh.shape[a] for a in axes) if axes else 1
    if size <= 1 or batch_size % size:
        return None
    return axes


def shard_batch(fn: Callable, batched: Sequence[Any], replicated: Sequence[Any]) -> Any:
    """``fn(*batched, *replicated)``, run per batch shard under the context mesh when there is one.

    ``batched`` arrays are split along axis 0 over :data:`BATCH_AXES`, ``replicated`` ones
    (parameters; ``None`` allowed) are passed whole, and the output (an array split along axis 0)
    is reassembled. Gradients of replicated inputs are summed over the shards by ``shard_map``'s
    transpose. Without a suitable mesh this is just ``fn(*batched, *replicated)``.
    """
    axes = batch_mesh_axes(batched[0].shape[0])
    if axes is None:
        return fn(*batched, *replicated)

    spec = P(axes)
    in_specs = tuple(spec for _ in batched) + tuple(None if p is None else P() for p in replicated)
    # check_vma=False: pallas_call outputs carry no varying-axes annotation; without the check,
    # shard_map's transpose sums the cotangents of the replicated inputs over the batch axes.
    return jax.shard_map(fn, in_specs=in_specs, out_specs=spec, check_vma=False)(
        *batched, *replicated)
