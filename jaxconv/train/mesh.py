"""Device mesh, shardings and multi-host start-up.

One code path for one CPU, one GPU, 8 fake CPU devices or a TPU pod slice: a 1-D mesh whose
``data`` axis spans every device of every process; parameters are replicated, batches are split
along their leading axis. Each process feeds only its own rows (``global_batch``).
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


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


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


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
