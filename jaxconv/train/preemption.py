"""Preemption: save at the next step boundary when the machine is about to be taken.

Spot / preemptible Cloud TPU VMs (and most cluster schedulers) send SIGTERM some seconds before
they stop a VM. The training loop asks :meth:`PreemptionGuard.reached` after every step; once it
says yes, the loop saves a checkpoint of that step, waits for it to be written and raises
:class:`Preempted`. Re-running the same command resumes from that checkpoint.

One process: a SIGTERM handler sets a flag (the step running when the signal came finishes first).
Several processes: every host must save the *same* step, or the checkpoint is torn. JAX's
coordination service already listens for SIGTERM on each host and agrees on a step with the
others; :func:`jax.experimental.multihost_utils.reached_preemption_sync_point` reports it, so no
Python handler is installed there.
"""
from __future__ import annotations

import logging
import signal
import threading

import jax

log = logging.getLogger(__name__)


class Preempted(Exception):
    """Training stopped at a step boundary because the process was told to stop (SIGTERM); the
    step is checkpointed and re-running the command resumes there."""

    def __init__(self, step: int, saved: bool, directory: str):
        where = (f"saved step {step} in {directory}; re-run the same command to resume from it"
                 if saved else f"step {step} was not saved (its state is not finite)")
        super().__init__(f"preempted (SIGTERM) after step {step}: {where}")
        self.step = step


class PreemptionGuard:
    """Context manager watching for preemption; ``reached(step)`` is True from the step after a
    SIGTERM on (on every host at the same step in multi-process runs)."""

    def __init__(self):
        self._flag = threading.Event()
        self._previous = None
        self._multi_host = jax.process_count() > 1

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self) -> None:
        # Signal handlers can only be set from the main thread (a run started from a worker thread,
        # e.g. a notebook executor, goes unguarded rather than failing).
        if not self._multi_host and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def stop(self) -> None:
        """Puts back the SIGTERM handler that was there before :meth:`start`."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _on_sigterm(self, signum, frame):
        log.warning("SIGTERM received: saving at the end of this step, then stopping")
        self._flag.set()

    def reached(self, step: int) -> bool:
        if self._multi_host:
            from jax.experimental import multihost_utils
            try:
                return bool(multihost_utils.reached_preemption_sync_point(step))
            except RuntimeError:  # started without the coordination service's preemption support
                return False
        return self._flag.is_set()
