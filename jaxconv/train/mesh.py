"""Device mesh, shardings and multi-host start-up.

One code path for one CPU, one GPU, 8 fake CPU devices or a TPU pod slice. By default a 1-D mesh
whose ``data`` axis spans every device of every process; ``config.mesh`` may ask for a 2-D
``data`` x ``fsdp`` mesh instead (:func:`make_mesh`; how parameters are laid out over it is
:mod:`jaxconv.train.sharding`). Batches are split along their leading axis over every mesh axis;
each process feeds only its own rows (``global_batch``).
"""
from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
#: Axis names ``config.mesh`` may use. The batch is split over all of them, and Pallas ops'
#: ``shard_map`` wrapper (``kernels_pallas.core.BATCH_AXES``) splits over the same names.
MESH_AXES = (DATA_AXIS, FSDP_AXIS)


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           auto: bool = False) -> None:
    """Calls ``jax.distributed.initialize`` when asked to; a no-op for single-process runs.

    Explicit flags (coordinator, process count and id) start a multi-process run anywhere, e.g.
    two processes on localhost. ``auto=True`` lets JAX discover the cluster (Cloud TPU VM pod
    slices, SLURM, ...). On CPU the collectives go through gloo.
    """
    explicit = coordinator_address is not None
    if not (explicit or auto):
        return
    if explicit and (num_processes is None or process_id is None):
        raise ValueError("coordinator_address needs num_processes and process_id as well "
                         f"(got num_processes={num_processes}, process_id={process_id})")
    # Multi-process CPU needs an explicit collectives backend; GPU/TPU clients ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
    else:
        jax.distributed.initialize()


def make_data_mesh() -> Mesh:
    """A 1-D mesh over all devices of all processes, with Auto axis types so jit infers layouts."""
    return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def parse_mesh(spec, device_count: int | None = None) -> tuple[tuple[str, int], ...]:
    """``config.mesh`` (``((name, size), ...)``, at most one size ``-1`` for the rest) with the
    ``-1`` resolved against ``device_count`` (default: all devices of all processes).

    Raises ValueError naming ``config.mesh`` for unknown or repeated names, sizes that are not
    positive ints (or one ``-1``), and products that are not the device count.
    """
    n = jax.device_count() if device_count is None else device_count
    try:
        axes = [(name, size) for name, size in spec]
    except (TypeError, ValueError):
        raise ValueError(f"config.mesh={spec!r} must be ((name, size), ...), e.g. "
                         f"(('data', -1), ('fsdp', 4))") from None
    names = [a for a, _ in axes]
    if not axes or any(a not in MESH_AXES for a in names) or len(set(names)) != len(names):
        raise ValueError(f"config.mesh={spec!r}: axis names must be distinct names from "
                         f"{list(MESH_AXES)} (at least one)")
    sizes = [s for _, s in axes]
    if any(isinstance(s, bool) or not isinstance(s, int) or (s <= 0 and s != -1) for s in sizes) \
            or sizes.count(-1) > 1:
        raise ValueError(f"config.mesh={spec!r}: sizes must be positive ints, with at most one "
                         "-1 (the rest of the devices)")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n % known:
            raise ValueError(f"config.mesh={spec!r}: the fixed sizes (product {known}) do not "
                             f"divide the device count {n}")
        sizes = [n // known if s == -1 else s for s in sizes]
    if math.prod(sizes) != n:
        raise ValueError(f"config.mesh={spec!r}: the axis sizes multiply to "
                         f"{math.prod(sizes)}, not the device count {n}; use -1 for one axis")
    return tuple(zip(names, sizes))


def make_mesh(config_or_spec=None) -> Mesh:
    """The mesh of ``config.mesh`` (a config, or the ``((name, size), ...)`` spec itself; None:
    the 1-D data mesh), Auto axis types so jit infers the layouts it is not given."""
    spec = getattr(config_or_spec, "mesh", config_or_spec)
    if spec is None:
        spec = ((DATA_AXIS, -1),)
    axes = parse_mesh(spec)
    return jax.make_mesh(tuple(s for _, s in axes), tuple(a for a, _ in axes),
                         axis_types=(AxisType.Auto,) * len(axes))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading axis split over every mesh axis (``P(("data", "fsdp"))`` on a 2-D mesh; the same
    as ``P("data")`` on the 1-D data mesh)."""
    axes = tuple(mesh.axis_names)
    return NamedSharding(mesh, P(axes[0] if len(axes) == 1 else axes))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles the global batch from each process's rows (process p holds rows p*b..(p+1)*b)."""
    sharding = batch_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def to_host(tree):
    """Fetches replicated arrays to numpy on every process (reads the local replica)."""
    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(x)
    return jax.tree.map(fetch, tree)
