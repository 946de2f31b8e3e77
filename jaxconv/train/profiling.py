"""``config.profile_steps = "START:END"``: a JAX profiler trace of train steps START..END.

The trace (TensorBoard's profile plugin and Perfetto read it) is written to a local temporary
directory and then copied to ``WORKDIR/profile/`` through etils.epath, so a ``gs://`` workdir gets
it too without relying on the profiler's own file-system support.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile

import jax
from etils import epath

log = logging.getLogger(__name__)

PROFILE_DIR = "profile"


def parse_profile_steps(value: str) -> tuple[int, int] | None:
    """``""`` -> None; ``"START:END"`` -> (START, END) with 1 <= START <= END (1-based step
    numbers, both included); anything else raises ValueError naming config.profile_steps."""
    if value in ("", None):
        return None
    parts = str(value).split(":")
    try:
        start, end = (int(p) for p in parts)
    except ValueError:
        start = end = None
    if start is None or len(parts) != 2 or not 1 <= start <= end:
        raise ValueError(f"config.profile_steps={value!r} must be '' (off) or 'START:END' with "
                         "1 <= START <= END, the train steps to trace (e.g. '10:15')")
    return start, end


class StepProfiler:
    """Starts the trace before step START and stops it after step END (waiting for that step's
    results, so the trace holds its device work). Only process 0 traces."""

    def __init__(self, profile_steps: str, workdir: str, *, enabled: bool = True):
        self.window = parse_profile_steps(profile_steps) if enabled else None
        self.workdir = workdir
        self._local = None

    def before_step(self, step: int) -> None:
        if self.window and step == self.window[0] and self._local is None:
            self._local = tempfile.mkdtemp(prefix="jaxconv_profile_")
            jax.profiler.start_trace(self._local)

    def after_step(self, step: int, outputs) -> None:
        if self._local is not None and step >= self.window[1]:
            jax.block_until_ready(outputs)
            self.stop()

    def stop(self) -> None:
        """Ends a running trace (also on errors or interruption) and copies it to the workdir."""
        if self._local is None:
            return
        local, self._local = self._local, None
        jax.profiler.stop_trace()
        dst = epath.Path(self.workdir) / PROFILE_DIR
        for root, _, files in os.walk(local):
            for name in files:
                src = epath.Path(root) / name
                target = dst / os.path.relpath(src, local)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(src.read_bytes())
        shutil.rmtree(local, ignore_errors=True)
        log.warning("profiler trace of steps %d-%d written to %s (tensorboard --logdir %s, or "
                    "open the .trace.json.gz / .xplane.pb in Perfetto)", *self.window, dst,
                    self.workdir)
