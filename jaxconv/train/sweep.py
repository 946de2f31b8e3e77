"""Sweeps: a grid of training runs over config fields, run and recorded one row per run.

A sweep file (``experiments/configs/sweeps/NAME.py``) defines::

    def get_config(arg=None):   # the base training config (an ordinary experiment config)
    def get_sweep(arg=None):    # the grid: a list of {field path: value} dicts, built with
                                # axis / product / zipped / chain below
    REPORT = {...}              # optional: what `experiments.report` compares (see report.py)

Grid fields are config paths (``learning_rate``, ``augment.flip``,
``model_overrides.widths``) or labels (``label.NAME``): a label is recorded with the run and
used by the report, but changes no config field (e.g. the scaling strategy that produced a run's
widths and depth).

``run_sweep`` trains each run with the ordinary training loop in ``WORKDIR/runs/NAME`` and
records a row for it: the swept values, final and best metrics, parameters, FLOPs, activations,
train images/s, wall time and status. Re-running skips runs whose row says ``ok``; an interrupted
run resumes from its checkpoints; failed runs are retried. A run that raises is recorded as
``failed`` with its error, and the sweep goes on. Every run's config is validated before the first
one starts, so a typo fails the sweep in seconds, not hours.

Storage: ``WORKDIR`` is any ``etils.epath`` path, ``gs://bucket/...`` included. Objects in a
bucket cannot be appended to or locked, so each row is its own object, ``results/RUN.json``
(written whole: a single PUT on object storage, temp file + rename on a local disk), and
``results.jsonl`` (one row per run) is rewritten from them after every run. Readers merge both:
a sweep directory written by an older version (rows appended to ``results.jsonl`` only) reads as
before, and a run's ``results/RUN.json`` wins over its line. The directory's lock is ``flock`` on
a local disk and a create-only object on ``gs://`` (see ``SweepLock``).

Multi-host (``jax.distributed``): process 0 decides which runs are left and writes the files;
after every run all processes exchange their outcome through the coordination service's
key-value store, so a run that failed on any host is recorded as failed (naming the host) on all
of them and the sweep goes on with the next run together. Every wait has a timeout
(``host_timeout_s``); a process that does not answer in time is named in a ``HostTimeoutError``,
and the process that timed out says in the store that it leaves, so a late one stops too rather
than start the next run alone. A process cannot free others already waiting in a collective of
the failed run: it leaves after the timeout, which ends their collective (gloo on CPU: the
connection closes; tested) or, where the runtime does not notice, leaves them to jax's
coordination service, which ends the job when it misses the host's heartbeat (not tested here).
"""
from __future__ import annotations

import copy
import dataclasses
import fcntl
import hashlib
import importlib.util
import itertools
import json
import logging
import os
import re
import socket
import time
import traceback
from typing import Any, Iterable, Sequence

import ml_collections
import numpy as np
from etils import epath

from jaxconv.analysis.plots import value_label
from jaxconv.train.metrics import read_jsonl
from jaxconv.train.workdir import is_remote, refresh

log = logging.getLogger(__name__)

__all__ = [
    "HostAgreement", "HostTimeoutError", "OtherHostError", "Progress", "Run", "SweepLock",
    "SweepLockedError", "SweepSpec", "apply_overrides", "axis", "chain", "expand_runs",
    "join_path", "load_sweep", "pending_runs", "product", "read_jsonl_file", "read_results",
    "record_result", "rewrite_results_file", "run_name", "run_status", "run_sweep", "train_one",
    "write_spec", "zipped",
]

LABEL_PREFIX = "label."
RESULTS_FILE = "results.jsonl"
#: One object per run, ``results/RUN.json``: the object-store-safe record of a run.
RESULTS_DIR = "results"
SPEC_FILE = "sweep.json"
RUNS_DIR = "runs"
LOCK_FILE = "sweep.lock"
#: Set by ``experiments.sweep --parallel`` for its workers: the pid of the process that holds
#: the sweep directory's lock on their behalf.
LOCK_HOLDER_ENV = "JAXCONV_SWEEP_LOCK_HOLDER"
_MAX_NAME = 100

Grid = list[dict[str, Any]]


# ------------------------------------------------------------------------------------ the grid


def axis(field: str, values: Iterable[Any]) -> Grid:
    """One swept field: ``[{field: v} for v in values]``."""
    if not isinstance(field, str) or not field:
        raise ValueError(f"axis field must be a non-empty config path, got {field!r}")
    values = list(values)
    if not values:
        raise ValueError(f"axis {field!r} has no values")
    return [{field: v} for v in values]


def _merge(parts: Sequence[dict]) -> dict:
    merged = {}
    for part in parts:
        for key, value in part.items():
            if key in merged:
                raise ValueError(f"field {key!r} is swept by more than one grid")
            merged[key] = value
    return merged


def product(*grids: Grid) -> Grid:
    """Every combination of the grids' points (the last grid varies fastest)."""
    return [_merge(parts) for parts in itertools.product(*grids)]


def zipped(*grids: Grid) -> Grid:
    """Points taken together, i-th with i-th; the grids must have equal lengths."""
    lengths = [len(g) for g in grids]
    if len(set(lengths)) > 1:
        raise ValueError(f"zipped grids must have equal lengths, got {lengths}")
    return [_merge(parts) for parts in zip(*grids)]


def chain(*grids: Grid) -> Grid:
    """The grids one after another (a union of sub-sweeps)."""
    return [dict(point) for grid in grids for point in grid]


# ----------------------------------------------------------------------------------- the runs


@dataclasses.dataclass(frozen=True)
class Run:
    """One point of a sweep: its name (= directory), swept values and full training config."""

    name: str
    values: dict[str, Any]
    config: ml_collections.ConfigDict


def run_name(values: dict[str, Any]) -> str:
    """Directory name of a run: ``field=value`` pairs of its swept values, with the last path
    component of each field (``model_overrides.widths`` -> ``widths``); long names are cut and
    made unique with a hash."""
    short = [key.rsplit(".", 1)[-1] for key in values]
    keys = [s if short.count(s) == 1 else k for s, k in zip(short, values)]
    name = ",".join(f"{k}={value_label(v, separator='-')}" for k, v in zip(keys, values.values()))
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name) or "base"
    if len(name) > _MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[:_MAX_NAME - 9]}_{digest}"
    return name


def _to_config_value(value):
    # Config values from lists are stored as tuples, which the models expect for sequences.
    return tuple(value) if isinstance(value, list) else value


def _apply(config: ml_collections.ConfigDict, field: str, value) -> None:
    from jaxconv.train.config import default_config
    schema = default_config()
    *parents, leaf = field.split(".")
    node, schema_node = config, schema
    for i, part in enumerate(parents):
        if part not in schema_node or not hasattr(schema_node[part], "keys"):
            raise ValueError(f"swept field {field!r}: {'.'.join(parents[:i + 1])!r} is not a "
                             f"config group; top-level fields: {sorted(schema.keys())}")
        node, schema_node = node[part], schema_node[part]
    # model_overrides is free-form here: its keys are checked against the model's fields by
    # validate_config (with the valid field names in the error).
    if parents != ["model_overrides"] and leaf not in schema_node:
        where = ".".join(parents) or "config"
        raise ValueError(f"swept field {field!r} is not a training config field; valid fields of "
                         f"{where}: {sorted(schema_node.keys())} (or label.NAME for a label)")
    with node.unlocked():
        node[leaf] = _to_config_value(value)


def expand_runs(base: ml_collections.ConfigDict, grid: Grid) -> list[Run]:
    """The runs of ``grid`` over ``base``, each config validated (ValueError names the run)."""
    from jaxconv.train.loop import validate_config
    if not isinstance(grid, list) or not all(isinstance(p, dict) for p in grid):
        raise ValueError("get_sweep() must return a list of {field: value} dicts (use axis, "
                         f"product, zipped, chain); got {type(grid).__name__}")
    runs, seen = [], {}
    for values in grid or [{}]:
        name = run_name(values)
        if name in seen:
            raise ValueError(f"the grid has the point {values} twice (run {name!r})")
        seen[name] = values
        config = copy.deepcopy(base)
        for field, value in values.items():
            if not field.startswith(LABEL_PREFIX):
                _apply(config, field, value)
        try:
            validate_config(config)
        except ValueError as e:
            raise ValueError(f"sweep run {name!r}: {e}") from None
        runs.append(Run(name, dict(values), config))
    return runs


@dataclasses.dataclass
class SweepSpec:
    """A loaded sweep file: base config, grid and report settings."""

    path: str
    arg: str | None
    base: ml_collections.ConfigDict
    grid: Grid
    report: dict
    doc: str = ""

    @property
    def name(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]


def load_sweep(spec: str) -> SweepSpec:
    """Loads ``PATH.py[:ARG]`` (the ``--config`` argument of ``experiments.sweep``)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sweep file {path!r} not found (experiments/configs/sweeps/ has "
                                "the bundled ones)")
    module_spec = importlib.util.spec_from_file_location(f"_sweep_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    for fn in ("get_config", "get_sweep"):
        if not callable(getattr(module, fn, None)):
            raise ValueError(f"sweep file {path} must define {fn}(arg=None)")
    arg = arg or None
    return SweepSpec(path=path, arg=arg, base=module.get_config(arg), grid=module.get_sweep(arg),
                     report=dict(getattr(module, "REPORT", {})), doc=module.__doc__ or "")


# ------------------------------------------------------------------------------- the results


def join_path(*parts) -> str:
    """``parts`` joined with ``/`` (local paths and ``gs://`` URLs alike; relative stays
    relative)."""
    return "/".join([str(parts[0]).rstrip("/"), *map(str, parts[1:])])


def _write_whole(path: str, text: str) -> None:
    """Writes a file so that a reader never sees it half-written: temp file + rename on a local
    disk; a single object upload (whole by itself) on object storage. Unlike
    workdir.write_text_atomic the temp name is per process: parallel workers write results.jsonl
    and sweep.json at the same time."""
    if not is_remote(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    else:
        epath.Path(path).write_text(text)


def _listing(path: str) -> list[epath.Path]:
    """Entries of a directory, fresh (other hosts and workers write here; gcsfs caches)."""
    refresh(path)
    p = epath.Path(path)
    return list(p.iterdir()) if p.is_dir() else []


def _fs(path: str):
    """The fsspec file system epath uses for a remote path (for what epath does not expose)."""
    return epath.backend.fsspec_backend.fs(str(path))


def read_jsonl_file(path: str) -> tuple[list[dict], list[int]]:
    """``metrics.read_jsonl`` of any epath; a missing file has no rows."""
    refresh(path)
    return read_jsonl(path) if epath.Path(path).exists() else ([], [])


def read_results(path: str, *, warn: bool = True) -> list[dict]:
    """Rows of a sweep directory (or of its ``results.jsonl``), the newest row per run.

    Merges the per-run objects ``results/RUN.json`` with ``results.jsonl`` (all an older sweep
    directory has); a run's object wins over its line. A damaged line (torn by a crash
    mid-write) or object is skipped with one warning naming it; its run then counts as not
    finished and is trained (resumed) again. Works on any epath (``gs://`` included).
    """
    path = str(path)
    if path.rstrip("/").endswith("/" + RESULTS_FILE) or path == RESULTS_FILE:
        sweep_dir, results = os.path.dirname(path.rstrip("/")) or ".", path
    else:
        sweep_dir, results = path, join_path(path, RESULTS_FILE)
    rows, damaged = read_jsonl_file(results)
    if damaged and warn:
        log.warning("%s: skipped %d damaged line(s) (line %s; a crash mid-write?); their runs "
                    "count as not finished", results, len(damaged), ", ".join(map(str, damaged)))
    latest = {}
    for row in rows:
        latest[row.get("run")] = row
    objects = []
    for entry in sorted(_listing(join_path(sweep_dir, RESULTS_DIR)), key=lambda e: e.name):
        if not entry.name.endswith(".json"):
            continue  # temp files of a writer mid-rename
        try:
            row = json.loads(entry.read_text())
            if not isinstance(row, dict) or "run" not in row:
                raise ValueError("not a results row")
        except (OSError, ValueError) as e:
            if warn:
                log.warning("%s: skipped a damaged result (%s); its run counts as not finished",
                            entry, e)
            continue
        objects.append(row)
    objects.sort(key=lambda r: (r.get("finished_at", ""), r["run"]))
    for row in objects:
        latest[row["run"]] = row
    return list(latest.values())


def record_result(sweep_dir: str, row: dict) -> None:
    """Records a run's row: writes ``results/RUN.json`` whole, then rewrites ``results.jsonl``
    (one row per run) from everything recorded. Safe on object storage, where nothing can be
    appended to; concurrent writers (parallel workers) each write their own object, and the last
    rewrite of ``results.jsonl`` wins (readers merge the objects anyway)."""
    _write_whole(join_path(sweep_dir, RESULTS_DIR, f"{row['run']}.json"),
                 json.dumps(row, sort_keys=True, default=_json_default) + "\n")
    rewrite_results_file(sweep_dir)


def rewrite_results_file(sweep_dir: str) -> None:
    """Rewrites ``results.jsonl`` from the merged rows (drops superseded and torn lines, with
    the warning that names the torn ones)."""
    rows = read_results(sweep_dir)
    _write_whole(join_path(sweep_dir, RESULTS_FILE),
                 "".join(json.dumps(r, sort_keys=True, default=_json_default) + "\n"
                         for r in rows))


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def _metric_summary(workdir: str) -> dict:
    """Best eval metrics and the median train images/s from a run's metrics.jsonl."""
    rows, _ = read_jsonl_file(join_path(workdir, "metrics.jsonl"))
    out = {}
    evals = [r for r in rows if "eval_top1" in r]
    if evals:
        best = max(evals, key=lambda r: r["eval_top1"])
        out.update(best_eval_top1=best["eval_top1"], best_eval_step=best["step"],
                   best_eval_loss=min(r["eval_loss"] for r in evals))
    # The first logged interval includes compilation; leave it out when there is more.
    speeds = [r["images_per_sec"] for r in rows if "images_per_sec" in r]
    if len(speeds) > 1:
        speeds = speeds[1:]
    if speeds:
        out["train_images_per_sec"] = float(np.median(speeds))
    return out


def _model_costs(config) -> dict:
    """Parameters, forward FLOPs and activations per image at the run's input size."""
    from jaxconv import analysis, data
    from jaxconv.train.loop import build_model, model_input_shape
    info = data.dataset_info(config.dataset, data_dir=config.get("data_dir"))
    model = build_model(config, info)
    shape = (1, *model_input_shape(config, info))
    dtype = info.input_dtype  # int32 token ids for token datasets
    variables = analysis.init_variables(model, shape, input_dtype=dtype)
    return {"params": analysis.count_params(variables["params"]),
            "flops": analysis.model_flops(model, shape, input_dtype=dtype),
            "activations": analysis.model_activations(model, shape, input_dtype=dtype),
            "input_size": "x".join(map(str, shape[1:]))}


def train_one(run: Run, sweep_dir: str, *, process_index: int = 0) -> dict:
    """Trains (or resumes) one run and returns its results row; failures become a row too.

    KeyboardInterrupt and preemption (SIGTERM, :class:`Preempted`) are not failures: the training
    loop saves and the sweep stops; re-running it resumes that run.
    ``process_index`` > 0 (another host of a multi-host sweep) writes its traceback to
    ``error.processN.txt``, beside process 0's ``error.txt``.
    """
    from jaxconv.train.loop import train_and_evaluate
    from jaxconv.train.preemption import Preempted
    workdir = join_path(sweep_dir, RUNS_DIR, run.name)
    row = {"run": run.name, "workdir": f"{RUNS_DIR}/{run.name}",
           "swept_fields": list(run.values), **run.values,
           "model": run.config.model, "dataset": run.config.dataset}
    start = time.perf_counter()
    try:
        summary = train_and_evaluate(run.config, workdir)
        row.update(status="ok", steps=summary["step"],
                   final_eval_top1=summary.get("eval_top1"),
                   final_eval_loss=summary.get("eval_loss"),
                   final_train_loss=summary.get("loss"), final_train_top1=summary.get("top1"),
                   train_wall_time_s=round(summary["run_wall_time"], 2))
        row.update(_metric_summary(workdir))
        row.update(_model_costs(run.config))
    except Preempted:  # SIGTERM: the run saved its step; the machine is going away, stop here
        raise
    except Exception as e:  # pylint: disable=broad-except  (recorded; the sweep goes on)
        name = f"error.process{process_index}.txt" if process_index else "error.txt"
        _write_whole(join_path(workdir, name), traceback.format_exc())
        row.update(status="failed", error=f"{type(e).__name__}: {e}"[:2000])
        log.error("run %s failed: %s (traceback in %s/%s)", run.name, e, workdir, name)
    from jaxconv.analysis import device_name
    row.update(wall_time_s=round(time.perf_counter() - start, 2), device=device_name(),
               finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return row


def write_spec(sweep_dir: str, spec: SweepSpec, runs: list[Run]) -> None:
    record = {"sweep": spec.name, "path": spec.path, "arg": spec.arg, "report": spec.report,
              "base_config": json.loads(spec.base.to_json_best_effort()),
              "runs": [{"run": r.name, **r.values} for r in runs],
              "swept_fields": list(dict.fromkeys(k for r in runs for k in r.values))}
    _write_whole(join_path(sweep_dir, SPEC_FILE),  # workers write it too: never half-written
                 json.dumps(record, indent=2, sort_keys=True, default=_json_default))


def _fmt_minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


class Progress:
    """One line per run start and end, with counts, elapsed time and an ETA for the sweep."""

    def __init__(self, name: str, total: int, skipped: int, enabled: bool = True):
        self.name, self.total, self.done, self.failed = name, total, skipped, 0
        self.start, self.durations, self.enabled = time.perf_counter(), [], enabled

    def message(self, text: str) -> None:
        if self.enabled:
            print(f"[sweep {self.name}] {text}", flush=True)

    def started(self, run: Run, index: int) -> None:
        self.message(f"run {index}/{self.total} {run.name}: training")

    def finished(self, row: dict) -> None:
        self.done += 1
        self.failed += row["status"] != "ok"
        self.durations.append(row["wall_time_s"])
        result = (f"eval_top1={row['final_eval_top1']:.4f}"
                  if row["status"] == "ok" and row.get("final_eval_top1") is not None
                  else row["status"].upper() + (f" ({row.get('error', '')[:120]})"
                                                if row["status"] != "ok" else ""))
        elapsed = time.perf_counter() - self.start
        left = self.total - self.done
        eta = f", ETA {_fmt_minutes(left * float(np.mean(self.durations)))}" if left else ""
        self.message(f"{row['run']}: {result} in {row['wall_time_s']:.0f} s | {self.done}/"
                    f"{self.total} done, {self.failed} failed, {_fmt_minutes(elapsed)} elapsed"
                    f"{eta}")


class SweepLockedError(RuntimeError):
    """Another live process holds the sweep directory."""


class SweepLock:
    """An exclusive lock on a sweep directory, ``DIR/sweep.lock``, which records the holder's
    host, pid and start time.

    Local disk: ``flock``. The kernel drops the lock of a process that dies, so a stale lock is
    taken over, with a warning naming the old holder.

    Object storage (``gs://``...): no flock, so the lock is an object created only if absent
    (``ifGenerationMatch=0`` on GCS: of two sweeps starting at once exactly one creates it) and
    deleted on release. Nothing drops the lock of a holder that crashed: a lock whose holder is a
    dead process of this host is taken over (with a warning); one held from another host stays
    until its sweep ends or someone deletes ``DIR/sweep.lock`` (the error says so).
    """

    def __init__(self, sweep_dir: str):
        self.path = join_path(sweep_dir, LOCK_FILE)
        self._fd = None
        self._token = None  # object storage: what we wrote, to release only our own lock

    @staticmethod
    def holder(sweep_dir: str) -> dict | None:
        """Who holds the lock now (host, pid, started), or None."""
        path = join_path(sweep_dir, LOCK_FILE)
        if is_remote(path):
            return _read_remote_holder(path)
        if not os.path.exists(path):
            return None
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_holder(path) or {"pid": "?", "host": "?", "started": "?"}
        finally:
            os.close(fd)
        return None

    def _me(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}

    def _locked_error(self, h: dict, extra: str = "") -> SweepLockedError:
        return SweepLockedError(
            f"sweep directory {self.path[:-len(LOCK_FILE) - 1]} is in use by another sweep (host "
            f"{h.get('host', '?')}, pid {h.get('pid', '?')}, started {h.get('started', '?')});"
            f" wait for it to finish or use another --workdir{extra}")

    def acquire(self) -> None:
        if is_remote(self.path):
            return self._acquire_remote()
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise self._locked_error(_read_holder(self.path) or {}) from None
        stale = _read_holder(self.path)
        if stale:
            log.warning("taking over the lock of %s: its holder (host %s, pid %s, started %s) "
                        "ended without releasing it", self.path, stale.get("host"),
                        stale.get("pid"), stale.get("started"))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self._me()).encode(), 0)
        self._fd = fd

    def _acquire_remote(self) -> None:
        fs, key = _fs(self.path), self.path.split("://", 1)[1]
        held = _read_remote_holder(self.path)
        if held:
            if held.get("host") == socket.gethostname() and not _pid_alive(held.get("pid")):
                log.warning("taking over the lock of %s: its holder (host %s, pid %s, started %s) "
                            "ended without releasing it", self.path, held.get("host"),
                            held.get("pid"), held.get("started"))
                fs.rm_file(key)
            else:
                raise self._locked_error(held, extra=(
                    f"; if that sweep is no longer running (it crashed), delete {self.path}"))
        me = {**self._me(), "token": f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"}
        try:
            # mode="create" sends ifGenerationMatch=0: GCS refuses the write (412) if the object
            # appeared since the check above, so two sweeps starting at once cannot both hold it.
            fs.pipe_file(key, json.dumps(me).encode(), mode="create")
        except FileExistsError:
            raise self._locked_error(_read_remote_holder(self.path) or {}) from None
        self._token = me["token"]

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # a clean exit leaves no holder behind
            os.close(self._fd)
            self._fd = None
        if self._token is not None:
            held = _read_remote_holder(self.path)
            if held and held.get("token") == self._token:  # never delete someone else's lock
                _fs(self.path).rm_file(self.path.split("://", 1)[1])
            self._token = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, TypeError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def _read_remote_holder(path: str) -> dict | None:
    p = epath.Path(path)
    refresh(path)
    try:
        text = p.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text) if text else {"host": "?", "pid": "?", "started": "?"}
    except ValueError:
        return {"host": "?", "pid": "?", "started": "?"}


def _read_holder(path: str) -> dict | None:
    try:
        with open(path) as f:
            text = f.read().strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return {"host": "?", "pid": "?", "started": "?"}


def _locked_by_parent(sweep_dir: str) -> bool:
    """True in a ``--parallel`` worker whose parent holds this directory's lock."""
    holder = SweepLock.holder(sweep_dir)
    return bool(holder) and str(holder.get("pid")) == os.environ.get(LOCK_HOLDER_ENV)


def apply_overrides(spec: SweepSpec, overrides: dict[str, Any]) -> None:
    """Sets base-config fields for every run (``--config.FIELD=value``); a field the grid sweeps
    cannot be overridden (ValueError)."""
    swept = {k for point in spec.grid for k in point}
    for field, value in overrides.items():
        if field in swept:
            raise ValueError(f"--config.{field} is swept by the grid of {spec.path}; override "
                             f"only fields the grid does not set (it sets {sorted(swept)})")
        _apply(spec.base, field, value)


def run_status(runs: list[Run], sweep_dir: str) -> dict[str, str]:
    """What is on disk for each run: ``done``, ``failed``, ``partial (step N)`` or ``todo``."""
    rows = {r.get("run"): r for r in read_results(sweep_dir)}
    out = {}
    for run in runs:
        row = rows.get(run.name, {})
        ckpts = _listing(join_path(sweep_dir, RUNS_DIR, run.name, "checkpoints"))
        steps = [int(d.name) for d in ckpts if d.name.isdigit()]
        if row.get("status") == "ok":
            out[run.name] = "done"
        elif row.get("status"):
            out[run.name] = "failed" + (f", checkpoint at step {max(steps)}" if steps else "")
        else:
            out[run.name] = f"partial, checkpoint at step {max(steps)}" if steps else "todo"
    return out


def pending_runs(runs: list[Run], sweep_dir: str) -> tuple[list[Run], list[Run]]:
    """(finished, to do): finished runs have an ``ok`` row."""
    ok = {r["run"] for r in read_results(sweep_dir) if r.get("status") == "ok"}
    return [r for r in runs if r.name in ok], [r for r in runs if r.name not in ok]


# ------------------------------------------------------------------------------- multi-host

#: How long a host of a multi-host sweep waits for the others at each agreement point (seconds).
DEFAULT_HOST_TIMEOUT_S = 900.0
# Each run_sweep call in a jax.distributed job gets its own key-value namespace. Every process
# makes the same calls in the same order, so their counters agree.
_SESSIONS = itertools.count()


class HostTimeoutError(RuntimeError):
    """A process of a multi-host sweep did not answer in time (the message names it)."""


class OtherHostError(RuntimeError):
    """The sweep could not start on another process of a multi-host job (the message names it
    and gives its error)."""


class HostAgreement:
    """All processes of a ``jax.distributed`` job exchange a small JSON value at named points,
    through the coordination service's key-value store, each wait bounded by ``timeout_s``.

    ``client`` is a ``jax.distributed`` client (``key_value_set``, ``blocking_key_value_get``
    with a timeout in ms); ``from_jax`` returns the current job's, or None for one process.
    """

    def __init__(self, client, process_index: int, process_count: int, timeout_s: float,
                 namespace: str | None = None):
        if not timeout_s > 0:
            raise ValueError(f"host_timeout_s must be > 0 seconds, got {timeout_s!r}")
        self.client, self.index, self.count = client, process_index, process_count
        self.timeout_s = float(timeout_s)
        self.namespace = namespace or f"jaxconv_sweep/{next(_SESSIONS)}"

    @classmethod
    def from_jax(cls, timeout_s: float = DEFAULT_HOST_TIMEOUT_S) -> "HostAgreement | None":
        """The agreement of the running ``jax.distributed`` job; None for a single process."""
        from jax._src import distributed  # the client is not public API; stable since jax 0.4
        state = distributed.global_state
        if state.client is None or (state.num_processes or 1) <= 1:
            return None
        return cls(state.client, state.process_id, state.num_processes, timeout_s)

    def exchange(self, tag: str, value: dict) -> list[dict]:
        """Publishes this process's ``value`` under ``tag`` and returns every process's value
        (index = process index). Raises HostTimeoutError naming the processes that did not
        publish theirs within the timeout."""
        prefix = f"{self.namespace}/{tag}"
        self.client.key_value_set(f"{prefix}/{self.index}", json.dumps(value,
                                                                       default=_json_default))
        deadline = time.monotonic() + self.timeout_s
        answers, missing = {self.index: value}, []
        for p in range(self.count):
            if p == self.index:
                continue
            # The processes that already answered are read at once even after the deadline.
            ms = max(1, int((deadline - time.monotonic()) * 1000))
            try:
                answers[p] = json.loads(self.client.blocking_key_value_get(f"{prefix}/{p}", ms))
            except Exception as e:  # pylint: disable=broad-except  (JaxRuntimeError in jax)
                if "DEADLINE_EXCEEDED" not in str(e) and "timed out" not in str(e).lower():
                    raise
                missing.append(p)
        if missing:
            who = ", ".join(map(str, missing))
            message = (f"process {who} (of {self.count}) did not answer within "
                       f"{self.timeout_s:g} s at {tag!r} (seen from process {self.index}): it "
                       "crashed, hangs, or is stuck in a collective after another host failed; "
                       "the sweep stops (re-run it to continue)")
            # Tell the others this process leaves: one that answers late (freed from a
            # collective by our exit) then stops too instead of going on alone.
            self.client.key_value_set(f"{self.namespace}/left/{self.index}", message)
            raise HostTimeoutError(message)
        return [answers[p] for p in range(self.count)]

    def departed(self) -> dict[int, str]:
        """{process index: its reason} of the processes that left the sweep on a timeout."""
        out = {}
        for p in range(self.count):
            if p != self.index:
                try:
                    out[p] = self.client.key_value_try_get(f"{self.namespace}/left/{p}")
                except Exception:  # pylint: disable=broad-except  (NOT_FOUND: still here)
                    pass
        return out


def _grid_digest(runs: list[Run]) -> str:
    text = json.dumps([[r.name, json.loads(r.config.to_json_best_effort())] for r in runs],
                      sort_keys=True, default=_json_default)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _agree_on_start(agreement: HostAgreement, runs, todo, error) -> list[str]:
    """Every process says whether it could start (and process 0 which runs are left); all raise
    if any could not, or if the processes do not have the same runs. Returns the run names."""
    answers = agreement.exchange("start", {
        "error": None if error is None else f"{type(error).__name__}: {error}",
        "grid": None if runs is None else _grid_digest(runs),
        "todo": None if todo is None else [r.name for r in todo]})
    if error is not None:
        raise error
    problems = [f"process {p}: {a['error']}" for p, a in enumerate(answers) if a["error"]]
    if problems:
        raise OtherHostError("the sweep did not start on every host: " + "; ".join(problems))
    differ = [p for p, a in enumerate(answers) if a["grid"] != answers[0]["grid"]]
    if differ:
        raise ValueError(f"process {', '.join(map(str, differ))} has other runs or configs than "
                         "process 0 (a different sweep file, --config overrides or code on that "
                         "host?)")
    return answers[0]["todo"]


def _agree_on_outcome(agreement: HostAgreement, row: dict) -> dict:
    """The run's row as all processes agree: failed (naming the processes) if it failed on any."""
    answers = agreement.exchange(f"run/{row['run']}", {"status": row["status"],
                                                       "error": row.get("error")})
    failed = [(p, a) for p, a in enumerate(answers) if a["status"] != "ok"]
    if not failed:
        return row
    return {**row, "status": "failed", "failed_processes": [p for p, _ in failed],
            "error": "; ".join(f"process {p}: {a.get('error')}" for p, a in failed)[:2000]}


def run_sweep(spec: SweepSpec, sweep_dir: str, *, only: Sequence[str] | None = None,
              is_main: bool = True, host_timeout_s: float = DEFAULT_HOST_TIMEOUT_S,
              agreement: HostAgreement | None = None) -> list[dict]:
    """Runs every unfinished run of ``spec`` in order, in this process; returns the new rows.

    ``only`` restricts to the named runs (the parallel launcher gives each worker one).
    ``is_main``: process 0 of a multi-process job writes the files; every process trains.
    In a ``jax.distributed`` job of several processes (or with an explicit ``agreement``) the
    processes agree on the runs left and on each run's outcome, waiting at most
    ``host_timeout_s`` for each other (HostTimeoutError names the process that did not answer).
    """
    if agreement is None:
        agreement = HostAgreement.from_jax(host_timeout_s)
    sweep_dir = str(sweep_dir)
    lock = SweepLock(sweep_dir)
    try:
        runs = todo = finished = error = None
        try:
            runs = all_runs = expand_runs(spec.base, spec.grid)
            if only:
                unknown = sorted(set(only) - {r.name for r in runs})
                if unknown:
                    raise ValueError(f"unknown run(s) {unknown}; runs of this sweep: "
                                     f"{[r.name for r in runs]}")
                runs = [r for r in runs if r.name in set(only)]
            if is_main:
                if not is_remote(sweep_dir):
                    os.makedirs(sweep_dir, exist_ok=True)
                if not _locked_by_parent(sweep_dir):
                    lock.acquire()  # a second sweep on this directory stops here, naming the holder
                write_spec(sweep_dir, spec, all_runs)
                finished, todo = pending_runs(runs, sweep_dir)
            elif agreement is None:
                finished, todo = pending_runs(runs, sweep_dir)
        except Exception as e:  # pylint: disable=broad-except  (told to the other hosts first)
            if agreement is None:
                raise
            error = e
        if agreement is not None:
            # Process 0 decides what is left: the other hosts may not see the same files.
            names = set(_agree_on_start(agreement, runs, todo, error))
            finished = [r for r in runs if r.name not in names]
            todo = [r for r in runs if r.name in names]
        return _run_locked(spec, runs, finished, todo, sweep_dir, only=only, is_main=is_main,
                           agreement=agreement)
    finally:
        lock.release()


def _run_locked(spec, runs, finished, todo, sweep_dir, *, only, is_main,
                agreement) -> list[dict]:
    progress = Progress(spec.name, len(runs), len(finished), enabled=is_main and not only)
    if finished:
        progress.message(f"{len(finished)} of {len(runs)} runs already finished; skipping them")
    rows = []
    for index, run in enumerate(todo, start=len(finished) + 1):
        progress.started(run, index)
        row = train_one(run, sweep_dir, process_index=agreement.index if agreement else 0)
        if agreement is not None:
            try:
                row = _agree_on_outcome(agreement, row)
            except HostTimeoutError as e:
                if is_main:  # the run is over for this sweep: say so on disk, then stop
                    record_result(sweep_dir, {**row, "status": "failed", "error": str(e)})
                raise
        if is_main:
            record_result(sweep_dir, row)
        progress.finished(row)
        rows.append(row)
        gone = agreement.departed() if agreement is not None else {}
        if gone:  # the next run's collectives would wait for a process that is not coming
            raise HostTimeoutError("; ".join(f"process {p} left the sweep ({why})"
                                             for p, why in sorted(gone.items())))
    return rows
