"""Report a sweep: ``python -m experiments.report DIR [--metric best_eval_top1]``.

Prints a summary table of ``DIR/results.jsonl`` and writes PNG plots to ``DIR/plots/``:

* ``metric_vs_cost.png``: the metric against parameters, FLOPs, activations and images/s;
* ``learning_curves.png``: train loss and test top-1 of every run against step;
* the sweep's own comparison, from the ``REPORT`` dict of its sweep file (kept in
  ``DIR/sweep.json``): ``compare`` (a swept field whose values are put side by side, e.g. the
  deep vs shallow layout: ``compare_FIELD.png``) and ``group`` (a field whose values are scaling
  strategies: ``scaling.png``; ``shared`` names the value of the unscaled base run that starts
  every line). ``metric`` and ``average`` (fields averaged over, default seed) are optional.
  ``versus`` (a numeric swept field, e.g. ``label.length``) with ``lines`` (e.g. ``model``):
  the metric, throughput, FLOPs and parameters against it, one line per value
  (``versus_FIELD.png``; the long-range sweep).

``DIR`` may be any epath, ``gs://bucket/sweep`` included: the plots are drawn into a local
temporary directory and copied there.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile

from etils import epath

from jaxconv.analysis import plots
from jaxconv.train import sweep as sweep_lib
from jaxconv.train.sweep import RESULTS_FILE, SPEC_FILE, read_results
from jaxconv.train.workdir import is_remote

PLOTS_DIR = "plots"


def _order(rows: list[dict], spec: dict) -> list[dict]:
    """Rows in the grid's order (runs not in the current grid last)."""
    position = {r["run"]: i for i, r in enumerate(spec.get("runs", []))}
    return sorted(rows, key=lambda r: position.get(r["run"], len(position)))


def report(sweep_dir: str, *, metric: str | None = None, quiet: bool = False) -> dict[str, str]:
    """Prints the table and writes the plots; returns {plot name: path}."""
    sweep_dir = str(sweep_dir)
    results = sweep_lib.join_path(sweep_dir, RESULTS_FILE)
    rows = read_results(sweep_dir)
    if not rows and not epath.Path(results).exists():
        raise FileNotFoundError(f"{results} not found: is {sweep_dir!r} a sweep directory "
                                "(python -m experiments.sweep --workdir DIR)?")
    spec_path = epath.Path(sweep_lib.join_path(sweep_dir, SPEC_FILE))
    spec = json.loads(spec_path.read_text()) if spec_path.exists() else {}
    settings = spec.get("report", {})
    metric = metric or settings.get("metric", "best_eval_top1")
    rows = _order(rows, spec)
    if not rows:
        raise ValueError(f"{results} has no rows yet")
    fields = spec.get("swept_fields") or sorted({f for r in rows for f in r.get("swept_fields", [])})
    fields = [f for f in fields if any(f in r for r in rows)]

    ok = [r for r in rows if r.get("status") == "ok"]
    failed = [r for r in rows if r.get("status") != "ok"]
    wall = sum(r.get("wall_time_s", 0.0) for r in rows)
    # The same accounting as `experiments.sweep --dry_run`: grid runs without a row are not done.
    have = {r["run"] for r in rows}
    not_run = [r["run"] for r in spec.get("runs", []) if r["run"] not in have]
    if not quiet:
        print(f"sweep {spec.get('sweep', os.path.basename(os.path.abspath(sweep_dir)))}: "
              f"{len(ok)} ok, {len(failed)} failed"
              + (f", {len(not_run)} of {len(spec['runs'])} not run yet" if not_run else "")
              + f", {wall / 60:.1f} min of training ({rows[0].get('device', '?')})")
        print(plots.format_table(rows, fields, metric))
        for r in failed:
            print(f"failed {r['run']}: {r.get('error', '?')}")

    with _plots_dir(sweep_dir) as (out, copied):
        written = _draw(rows, sweep_dir, out, settings, fields, metric)
        written = {name: copied(path) for name, path in written.items()}
    if not quiet:
        for name, path in written.items():
            print(f"plot {name}: {path}")
    return written


@contextlib.contextmanager
def _plots_dir(sweep_dir: str):
    """(directory to draw into, fn mapping a drawn file to where it ends up): ``DIR/plots``
    itself on a local disk; else a temporary directory whose files are copied to DIR/plots."""
    final = sweep_lib.join_path(sweep_dir, PLOTS_DIR)
    if not is_remote(sweep_dir):
        yield os.path.join(sweep_dir, PLOTS_DIR), lambda path: path
        return
    tmp = tempfile.mkdtemp(prefix="jaxconv_report_")
    try:
        def copied(path: str) -> str:
            target = epath.Path(final) / os.path.relpath(path, tmp)
            target.write_bytes(open(path, "rb").read())
            return str(target)
        yield tmp, copied
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _draw(rows, sweep_dir, out, settings, fields, metric) -> dict[str, str]:
    written = {}
    compare, group = settings.get("compare"), settings.get("group")
    color_by = compare or group or (fields[0] if fields else None)
    written["metric_vs_cost"] = plots.plot_metric_vs_cost(
        rows, os.path.join(out, "metric_vs_cost.png"), metric=metric, color_by=color_by)
    curves = {}
    for r in rows:
        path = sweep_lib.join_path(sweep_dir, r.get("workdir", ""), "metrics.jsonl")
        metrics, _ = sweep_lib.read_jsonl_file(path)
        if metrics:
            curves[r["run"]] = metrics
    written["learning_curves"] = plots.plot_learning_curves(
        curves, os.path.join(out, "learning_curves.png"))
    if compare:
        written["compare"] = plots.plot_comparison(
            rows, os.path.join(out, f"compare_{compare.rsplit('.', 1)[-1]}.png"), compare=compare,
            fields=fields, metric=metric, average=settings.get("average", ("seed",)))
    if settings.get("versus"):
        versus = settings["versus"]
        written["versus"] = plots.plot_versus(
            rows, os.path.join(out, f"versus_{versus.rsplit('.', 1)[-1]}.png"), x=versus,
            lines=settings.get("lines", "model"), metric=metric)
    if group:
        written["scaling"] = plots.plot_scaling(rows, os.path.join(out, "scaling.png"),
                                                group=group, shared=settings.get("shared"),
                                                metric=metric)
    return written


def main(argv=None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", help="the --workdir of experiments.sweep")
    parser.add_argument("--metric", default=None,
                        help="row key to rank and plot (default: the sweep's, or best_eval_top1)")
    parser.add_argument("--verbose", action="store_true", help="show tracebacks of errors")
    args = parser.parse_args(argv)
    try:
        return report(args.sweep_dir, metric=args.metric)
    except (FileNotFoundError, ValueError) as e:
        if args.verbose:
            raise
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
