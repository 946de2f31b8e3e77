"""Atomic, resumable checkpoints (orbax), with fallback past a corrupt latest checkpoint.

orbax writes each step into a temporary directory and renames it when complete, so a crash or
SIGKILL mid-save leaves no half-written step that looks finished. A finished step whose files were
damaged later fails to restore; it is then moved aside (never deleted) and the previous step used.
"""
from __future__ import annotations

import logging
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jaxconv.train.mesh import to_host

log = logging.getLogger(__name__)


class Checkpointer:
    def __init__(self, workdir: str, *, keep: int = 3):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.quarantine = os.path.abspath(os.path.join(workdir, "corrupt_checkpoints"))
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 cleanup_tmp_directories=True))

    def save(self, state, *, wait: bool = False) -> None:
        step = int(to_host(state.step))
        if step in self._manager.all_steps():
            return
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
        if wait:
            self._manager.wait_until_finished()

    def restore_latest(self, target):
        """Restores the newest readable checkpoint into the structure/shardings of ``target``.

        Returns ``target`` unchanged when there is no checkpoint.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                restored = self._manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
                return restored["state"]
            except Exception as e:  # noqa: BLE001 -- any failure to read means unusable
                log.warning("checkpoint at step %d is unreadable (%s: %s); moving it to %s and "
                            "trying the previous one", step, type(e).__name__, e, self.quarantine)
                self._set_aside(step)
        return target

    def _set_aside(self, step: int) -> None:
        if jax.process_index() == 0:
            os.makedirs(self.quarantine, exist_ok=True)
            src = os.path.join(self.directory, str(step))
            dst = os.path.join(self.quarantine, str(step))
            if os.path.exists(dst):
                shutil.rmtree(dst)
            shutil.move(src, dst)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"jaxconv_checkpoint_set_aside_{step}")
        self._manager.reload()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def load_checkpoint(workdir: str, step: int | None = None) -> tuple[int, dict]:
    """Reads a run's checkpoint (the latest by default) as host arrays, no model needed.

    Returns ``(step, state)`` with ``state["params"]``, ``state["model_state"]`` etc., e.g. to
    evaluate a trained model in a notebook: ``model.apply({"params": s["params"],
    **s["model_state"]}, x)``.
    """
    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit()) \
        if os.path.isdir(directory) else []
    if not steps:
        raise FileNotFoundError(f"no checkpoint under {directory}")
    step = steps[-1] if step is None else step
    path = os.path.join(directory, str(step), "state")
    checkpointer = ocp.StandardCheckpointer()
    # Target every array at this process's first device, whatever topology wrote it (a pod
    # slice's checkpoint reads fine in a notebook).
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          checkpointer.metadata(path).item_metadata.tree)
    state = checkpointer.restore(path, target)
    return step, jax.tree.map(np.asarray, state)
