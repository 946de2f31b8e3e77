"""Atomic, verified, resumable checkpoints (orbax), with fallback past a damaged latest one.

orbax writes each step into a temporary directory and renames it when complete, so a crash or
SIGKILL mid-save leaves no half-written step that looks finished. Once a step is complete its
files get SHA-256 checksums (``MANIFEST``), verified before every restore: a step whose files were
damaged later (a flipped bit included, which orbax would restore silently) is detected; the
training loop moves it aside to ``corrupt_checkpoints/`` (never deleted, never over another) and
uses the previous step, ``load_checkpoint`` skips it. A checkpoint that is intact but holds other
shapes (another model or optimizer) is an error, not damage: nothing is moved. A fallback is one
warning line: orbax's asyncio "Event loop is closed" tracebacks and absl metadata notices are
dropped unless ``$JAXCONV_VERBOSE`` is set.

Every path may be local or ``gs://`` (``etils.epath``; orbax writes arrays through tensorstore).
On GCS orbax has no rename either: it writes a step in place and marks it finished with a
``commit_success.txt``, and an unfinished step is ignored as locally. Setting a damaged step aside
there copies its objects and then deletes them.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from jaxconv.train.mesh import to_host
from jaxconv.train.workdir import join, list_files, move_tree, refresh, write_text_atomic

log = logging.getLogger(__name__)

MANIFEST = "jaxconv_checksums.json"

#: Set to 1 to see the library noise that a fallback otherwise hides (see ``_quiet_fallbacks``).
VERBOSE_ENV = "JAXCONV_VERBOSE"


class IncompatibleCheckpointError(ValueError):
    """An intact checkpoint whose arrays do not fit the state being restored."""


class DamagedCheckpointsError(RuntimeError):
    """More than one checkpoint in a row is unreadable: stopped instead of moving more aside."""


# ------------------------------------------------------------------------------ checksums


def _digests(step_dir: str) -> dict[str, str]:
    refresh(step_dir)
    out = {}
    for rel in list_files(step_dir):
        if rel.startswith(MANIFEST):  # the manifest itself (and its temp file)
            continue
        h = hashlib.sha256()
        with epath.Path(step_dir, rel).open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        out[rel] = h.hexdigest()
    return out


def write_manifest(step_dir: str) -> None:
    """Records the SHA-256 of every file of a finished step (atomically: temp file + rename)."""
    digests = _digests(step_dir)
    write_text_atomic(os.path.join(step_dir, MANIFEST),
                      json.dumps({"sha256": digests}, indent=0, sort_keys=True))


def verify_step(step_dir: str) -> str | None:
    """What is wrong with a step's files, or None if they match their checksums (or the step has
    none: written by an older jaxconv, or killed between finishing the step and summing it)."""
    path = os.path.join(step_dir, MANIFEST)
    refresh(path)
    if not epath.Path(path).exists():
        return None
    try:
        expected = json.loads(epath.Path(path).read_text())["sha256"]
    except (OSError, ValueError, KeyError) as e:
        return f"its checksum file is unreadable ({type(e).__name__})"
    actual = _digests(step_dir)
    missing = sorted(set(expected) - set(actual))
    changed = sorted(k for k in expected if k in actual and actual[k] != expected[k])
    if missing or changed:
        return "checksum mismatch: " + ", ".join(
            [f"{k} changed" for k in changed[:3]] + [f"{k} missing" for k in missing[:3]]) + (
            " ..." if len(changed) + len(missing) > 6 else "")
    return None


def _leaf_shapes(tree) -> collections.Counter:
    return collections.Counter((tuple(x.shape), np.dtype(x.dtype).name)
                               for x in jax.tree.leaves(tree))


def _saved_shapes(state_dir: str) -> collections.Counter:
    tree = ocp.StandardCheckpointer().metadata(state_dir).item_metadata.tree
    return _leaf_shapes(tree)


class _DropOrbaxNoise(logging.Filter):
    """orbax's absl warnings about files a jaxconv checkpoint does not have by design."""

    NOISE = ("Metadata file does not exist", "Failed to get item metadata")

    def filter(self, record):
        return not str(record.msg).startswith(self.NOISE)


_previous_unraisablehook = None


def _drop_closed_loop(unraisable):
    # A failed tensorstore read ends orbax's asyncio loop while other reads are in flight; each
    # one then reports "Event loop is closed" as an unraisable exception, dozens per fallback.
    if (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
        return
    (_previous_unraisablehook or sys.__unraisablehook__)(unraisable)


def _quiet_fallbacks() -> None:
    """One warning line per fallback, without library tracebacks (unless $JAXCONV_VERBOSE)."""
    if os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
        return
    global _previous_unraisablehook
    if sys.unraisablehook is not _drop_closed_loop:
        _previous_unraisablehook, sys.unraisablehook = sys.unraisablehook, _drop_closed_loop
    absl = logging.getLogger("absl")
    if not any(isinstance(f, _DropOrbaxNoise) for f in absl.filters):
        absl.addFilter(_DropOrbaxNoise())


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"


# --------------------------------------------------------------------------- on-device check


@jax.jit
def _finite(tree):
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def non_finite_parts(state) -> list[str]:
    """Which of params / opt_state / model_state / ema hold a NaN or Inf (a reduction on device; one
    scalar per part comes back to the host)."""
    parts = {"params": state.params, "opt_state": state.opt_state,
             "model_state (batch statistics)": state.model_state}
    if getattr(state, "ema", None) is not None:
        parts["ema (EMA weights)"] = state.ema
    flags = to_host({k: _finite(v) for k, v in parts.items()})
    return [k for k, ok in flags.items() if not bool(ok)]


# ------------------------------------------------------------------------------ checkpointer


class Checkpointer:
    def __init__(self, workdir: str, *, keep: int = 3):
        self.directory = join(workdir, "checkpoints")
        self.quarantine = join(workdir, "corrupt_checkpoints")
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 cleanup_tmp_directories=True))
        self._unsummed: set[int] = set()   # saved steps whose checksums are not written yet

    def save(self, state, *, wait: bool = False) -> None:
        step = int(to_host(state.step))
        if step in self._manager.all_steps():
            return
        self._finish_pending()  # orbax waits for the previous save anyway; sum it meanwhile
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
        self._unsummed.add(step)
        if wait:
            self._finish_pending()

    def _finish_pending(self) -> None:
        self._manager.wait_until_finished()
        if jax.process_index() == 0:
            for step in sorted(self._unsummed):
                step_dir = os.path.join(self.directory, str(step))
                refresh(step_dir)
                if epath.Path(step_dir).is_dir():  # not already removed by max_to_keep
                    write_manifest(step_dir)
        self._unsummed.clear()

    def restore_latest(self, target):
        """Restores the newest intact checkpoint into the structure/shardings of ``target``.

        Returns ``target`` unchanged when there is no checkpoint. A damaged newest step is moved
        aside with one warning line and the previous one used; a second damaged step in a row
        stops with :class:`DamagedCheckpointsError` (nothing more is moved). An intact
        checkpoint with other shapes raises :class:`IncompatibleCheckpointError`.
        """
        _quiet_fallbacks()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        moved = None
        for step in sorted(self._manager.all_steps(), reverse=True):
            step_dir = os.path.join(self.directory, str(step))
            problem = verify_step(step_dir)
            if problem is None:
                try:
                    saved = _saved_shapes(os.path.join(step_dir, "state"))
                except Exception as e:  # noqa: BLE001 -- unreadable metadata is damage
                    problem = f"unreadable metadata ({_one_line(e)})"
                else:
                    if saved != _leaf_shapes(abstract):
                        raise IncompatibleCheckpointError(
                            f"the checkpoint at step {step} in {self.directory} is intact but "
                            "holds arrays of other shapes than this config's model and optimizer "
                            "(written by another config?); nothing was changed. Train in a new "
                            "workdir, or move the old run aside with --config.overwrite=True")
            if problem is None:
                try:
                    restored = self._manager.restore(
                        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
                    return restored["state"]
                except Exception as e:  # noqa: BLE001 -- any failure to read means unusable
                    problem = _one_line(e)
            if moved is not None:
                raise DamagedCheckpointsError(
                    f"checkpoints at steps {moved[0]} and {step} in {self.directory} are both "
                    f"unreadable ({problem}); step {moved[0]} was moved to {moved[1]}, nothing "
                    "else was moved. Damage to several checkpoints suggests a disk or version "
                    "problem: inspect them, or train in a new workdir")
            moved = (step, self._set_aside(step))
            earlier = [s for s in self._manager.all_steps() if s < step]
            log.warning("checkpoint at step %d is damaged (%s); moved it to %s and %s", step,
                        problem, moved[1], f"resuming from step {max(earlier)}" if earlier
                        else "starting from step 0 (no earlier checkpoint)")
        return target

    def _set_aside(self, step: int) -> str:
        """Moves a step to the quarantine under a fresh name (never over an earlier one)."""
        refresh(self.quarantine)
        dst = os.path.join(self.quarantine, str(step))
        n = 1
        while epath.Path(dst).exists():
            dst, n = os.path.join(self.quarantine, f"{step}.{n}"), n + 1
        if jax.process_index() == 0:
            epath.Path(self.quarantine).mkdir(parents=True, exist_ok=True)
            move_tree(os.path.join(self.directory, str(step)), dst)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"jaxconv_checkpoint_set_aside_{step}")
        self._manager.reload()
        return dst

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def finished_steps(self) -> list[int]:
        """Steps whose save has completed (waits for one in flight)."""
        self._finish_pending()
        return sorted(self._manager.all_steps())

    def close(self) -> None:
        self._finish_pending()
        self._manager.close()


def load_checkpoint(workdir: str, step: int | None = None) -> tuple[int, dict]:
    """Reads a run's checkpoint (the latest intact one by default) as host arrays, no model needed.

    Returns ``(step, state)`` with ``state["params"]``, ``state["model_state"]`` etc., e.g. to
    evaluate a trained model in a notebook: ``model.apply({"params": s["params"],
    **s["model_state"]}, x)``. A damaged latest step is skipped with one warning line (and left
    where it is); an explicitly requested damaged ``step`` raises ValueError.
    """
    _quiet_fallbacks()
    directory = join(workdir, "checkpoints")
    refresh(directory)
    # Finished steps only: on GCS an unfinished one is a directory without commit_success.txt.
    steps = sorted(ocp.step.checkpoint_steps(directory))
    if not steps:
        raise FileNotFoundError(f"no checkpoint under {directory}")
    if step is not None and step not in steps:
        raise FileNotFoundError(f"no checkpoint at step {step} under {directory}; steps: {steps}")
    skipped = []
    for candidate in ([step] if step is not None else steps[::-1]):
        step_dir = os.path.join(directory, str(candidate))
        problem = verify_step(step_dir)
        if problem is None:
            try:
                state = _restore_on_host(os.path.join(step_dir, "state"))
            except Exception as e:  # noqa: BLE001 -- any failure to read means unusable
                problem = _one_line(e)
        if problem is None:
            if skipped:
                log.warning("checkpoint at step %d in %s is damaged (%s); loaded step %d instead",
                            *skipped[0], candidate)
            return candidate, state
        if step is not None:
            raise ValueError(f"checkpoint at step {step} in {directory} is damaged: {problem}")
        skipped.append((candidate, directory, problem))
    raise ValueError(f"every checkpoint under {directory} is damaged: " +
                     "; ".join(f"step {s}: {p}" for s, _, p in skipped))


def _restore_on_host(path: str) -> dict:
    checkpointer = ocp.StandardCheckpointer()
    # Target every array at this process's first device, whatever topology wrote it (a pod
    # slice's checkpoint reads fine in a notebook).
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          checkpointer.metadata(path).item_metadata.tree)
    return jax.tree.map(np.asarray, checkpointer.restore(path, target))
