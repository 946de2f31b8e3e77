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
appends a row to ``WORKDIR/results.jsonl``: the swept values, final and best metrics, parameters,
FLOPs, activations, train images/s, wall time and status. Re-running skips runs whose row says
``ok``; an interrupted run resumes from its checkpoints; failed runs are retried. A run that raises
is recorded as ``failed`` with its error, and the sweep goes on. Every run's config is validated
before the first one starts, so a typo fails the sweep in seconds, not hours.
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

from jaxconv.analysis.plots import value_label
from jaxconv.train.metrics import append_line, read_jsonl, read_metrics

log = logging.getLogger(__name__)

__all__ = [
    "Progress", "Run", "SweepLock", "SweepLockedError", "SweepSpec", "apply_overrides", "axis",
    "chain", "expand_runs", "load_sweep", "pending_runs", "product", "read_results", "run_name",
    "run_status", "run_sweep", "train_one", "write_spec", "zipped",
]

LABEL_PREFIX = "label."
RESULTS_FILE = "results.jsonl"
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


def read_results(path: str, *, warn: bool = True) -> list[dict]:
    """Rows of a ``results.jsonl`` (a sweep directory or the file), the newest row per run.

    A damaged line (torn by a crash mid-write) is skipped with one warning naming it; its run
    then counts as not finished and is trained (resumed) again.
    """
    if os.path.isdir(path):
        path = os.path.join(path, RESULTS_FILE)
    if not os.path.exists(path):
        return []
    rows, damaged = read_jsonl(path)
    if damaged and warn:
        log.warning("%s: skipped %d damaged line(s) (line %s; a crash mid-write?); their runs "
                    "count as not finished", path, len(damaged), ", ".join(map(str, damaged)))
    latest = {}
    for row in rows:
        latest[row.get("run")] = row
    return list(latest.values())


def _append_row(path: str, row: dict) -> None:
    # One locked, newline-terminated write: rows stay whole when several runs of one sweep finish
    # at once, and a line torn by a crash cannot swallow the next row.
    append_line(path, json.dumps(row, sort_keys=True, default=_json_default))


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return str(value)


def _metric_summary(workdir: str) -> dict:
    """Best eval metrics and the median train images/s from a run's metrics.jsonl."""
    path = os.path.join(workdir, "metrics.jsonl")
    rows = read_metrics(path) if os.path.exists(path) else []
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
    info = data.dataset_info(config.dataset)
    model = build_model(config, info)
    shape = (1, *model_input_shape(config, info))
    dtype = info.input_dtype  # int32 token ids for token datasets
    variables = analysis.init_variables(model, shape, input_dtype=dtype)
    return {"params": analysis.count_params(variables["params"]),
            "flops": analysis.model_flops(model, shape, input_dtype=dtype),
            "activations": analysis.model_activations(model, shape, input_dtype=dtype),
            "input_size": "x".join(map(str, shape[1:]))}


def train_one(run: Run, sweep_dir: str) -> dict:
    """Trains (or resumes) one run and returns its results row; failures become a row too.

    KeyboardInterrupt is not a failure: the training loop saves and the sweep stops.
    """
    from jaxconv.train.loop import train_and_evaluate
    workdir = os.path.join(sweep_dir, RUNS_DIR, run.name)
    row = {"run": run.name, "workdir": os.path.join(RUNS_DIR, run.name),
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
    except Exception as e:  # pylint: disable=broad-except  (recorded; the sweep goes on)
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "error.txt"), "w") as f:
            f.write(traceback.format_exc())
        row.update(status="failed", error=f"{type(e).__name__}: {e}"[:2000])
        log.error("run %s failed: %s (traceback in %s/error.txt)", run.name, e, workdir)
    from jaxconv.analysis import device_name
    row.update(wall_time_s=round(time.perf_counter() - start, 2), device=device_name(),
               finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    return row


def write_spec(sweep_dir: str, spec: SweepSpec, runs: list[Run]) -> None:
    record = {"sweep": spec.name, "path": spec.path, "arg": spec.arg, "report": spec.report,
              "base_config": json.loads(spec.base.to_json_best_effort()),
              "runs": [{"run": r.name, **r.values} for r in runs],
              "swept_fields": list(dict.fromkeys(k for r in runs for k in r.values))}
    tmp = os.path.join(sweep_dir, f"{SPEC_FILE}.{os.getpid()}.tmp")  # workers write it too
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True, default=_json_default)
    os.replace(tmp, os.path.join(sweep_dir, SPEC_FILE))


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
    """An exclusive lock on a sweep directory (``flock`` on ``DIR/sweep.lock``, which records the
    holder's host, pid and start time). The kernel drops the lock of a process that dies, so a
    stale lock is taken over, with a warning naming the old holder."""

    def __init__(self, sweep_dir: str):
        self.path = os.path.join(sweep_dir, LOCK_FILE)
        self._fd = None

    @staticmethod
    def holder(sweep_dir: str) -> dict | None:
        """Who holds the lock now (host, pid, started), or None."""
        path = os.path.join(sweep_dir, LOCK_FILE)
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

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            h = _read_holder(self.path) or {}
            raise SweepLockedError(
                f"sweep directory {os.path.dirname(self.path)} is in use by another sweep (host "
                f"{h.get('host', '?')}, pid {h.get('pid', '?')}, started {h.get('started', '?')});"
                " wait for it to finish or use another --workdir") from None
        stale = _read_holder(self.path)
        if stale:
            log.warning("taking over the lock of %s: its holder (host %s, pid %s, started %s) "
                        "ended without releasing it", self.path, stale.get("host"),
                        stale.get("pid"), stale.get("started"))
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # a clean exit leaves no holder behind
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


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
    rows = {r.get("run"): r for r in read_results(os.path.join(sweep_dir, RESULTS_FILE))}
    out = {}
    for run in runs:
        row = rows.get(run.name, {})
        ckpts = os.path.join(sweep_dir, RUNS_DIR, run.name, "checkpoints")
        steps = [int(d) for d in os.listdir(ckpts) if d.isdigit()] if os.path.isdir(ckpts) else []
        if row.get("status") == "ok":
            out[run.name] = "done"
        elif row.get("status"):
            out[run.name] = "failed" + (f", checkpoint at step {max(steps)}" if steps else "")
        else:
            out[run.name] = f"partial, checkpoint at step {max(steps)}" if steps else "todo"
    return out


def pending_runs(runs: list[Run], sweep_dir: str) -> tuple[list[Run], list[Run]]:
    """(finished, to do): finished runs have an ``ok`` row in results.jsonl."""
    ok = {r["run"] for r in read_results(os.path.join(sweep_dir, RESULTS_FILE))
          if r.get("status") == "ok"}
    return [r for r in runs if r.name in ok], [r for r in runs if r.name not in ok]


def run_sweep(spec: SweepSpec, sweep_dir: str, *, only: Sequence[str] | None = None,
              is_main: bool = True) -> list[dict]:
    """Runs every unfinished run of ``spec`` in order, in this process; returns the new rows.

    ``only`` restricts to the named runs (the parallel launcher gives each worker one).
    ``is_main``: process 0 of a multi-process job writes the files; every process trains.
    """
    runs = all_runs = expand_runs(spec.base, spec.grid)
    if only:
        unknown = sorted(set(only) - {r.name for r in runs})
        if unknown:
            raise ValueError(f"unknown run(s) {unknown}; runs of this sweep: "
                             f"{[r.name for r in runs]}")
        runs = [r for r in runs if r.name in set(only)]
    os.makedirs(sweep_dir, exist_ok=True)
    lock = SweepLock(sweep_dir)
    if is_main and not _locked_by_parent(sweep_dir):
        lock.acquire()  # a second sweep on this directory stops here, naming the holder
    try:
        if is_main:
            write_spec(sweep_dir, spec, all_runs)
        return _run_locked(spec, runs, sweep_dir, only=only, is_main=is_main)
    finally:
        lock.release()


def _run_locked(spec, runs, sweep_dir, *, only, is_main) -> list[dict]:
    finished, todo = pending_runs(runs, sweep_dir)
    progress = Progress(spec.name, len(runs), len(finished), enabled=is_main and not only)
    if finished:
        progress.message(f"{len(finished)} of {len(runs)} runs already finished; skipping them")
    rows = []
    for index, run in enumerate(todo, start=len(finished) + 1):
        progress.started(run, index)
        row = train_one(run, sweep_dir)
        if is_main:
            _append_row(os.path.join(sweep_dir, RESULTS_FILE), row)
        progress.finished(row)
        rows.append(row)
    return rows

