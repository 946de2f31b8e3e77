"""Multi-process flags shared by the train and sweep commands, and the call that uses them."""
from __future__ import annotations

from absl import flags

COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                  "HOST:PORT of process 0, for multi-process runs.")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
DISTRIBUTED = flags.DEFINE_bool("distributed", False,
                                "Call jax.distributed.initialize() with auto-detection "
                                "(Cloud TPU pod slices, SLURM).")


def initialize() -> None:
    """``jax.distributed.initialize`` from the flags (a no-op for a single process)."""
    from jaxconv import train
    train.initialize_distributed(COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value,
                                 auto=DISTRIBUTED.value)
