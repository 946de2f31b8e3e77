"""Tables and plots of sweep results (rows of ``results.jsonl``), shared by
``python -m experiments.report`` and the notebooks.

Every plot function takes plain rows (dicts) and writes one PNG, so it works from the command
line, from a notebook (``pandas.DataFrame.to_dict("records")``) and in tests. matplotlib runs
with the non-interactive Agg backend unless a notebook has chosen one.
"""
from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "COST_AXES", "format_table", "group_rows", "plot_comparison", "plot_learning_curves",
    "plot_metric_vs_cost", "plot_scaling", "plot_versus", "value_label",
]

#: (row key, axis label) of the cost measures the report plots a metric against.
COST_AXES = (("params", "parameters"), ("flops", "forward FLOPs / image"),
             ("activations", "activations / image"),
             ("train_images_per_sec", "train images / s"))

_METRIC_LABELS = {"best_eval_top1": "best test top-1", "final_eval_top1": "final test top-1",
                  "best_eval_loss": "best test loss", "final_train_loss": "final train loss"}


def _pyplot():
    import matplotlib  # pylint: disable=g-import-not-at-top
    if "matplotlib.pyplot" not in __import__("sys").modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    return plt


def _cost_axis(ax, values, label: str) -> None:
    """Log scale when the values span more than a decade, with readable (1.2M-style) ticks."""
    from matplotlib.ticker import EngFormatter, NullFormatter  # pylint: disable=g-import-not-at-top
    values = [v for v in values if _finite(v) and v > 0]
    if values and max(values) / min(values) > 10:
        ax.set_xscale("log")
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(label)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def value_label(value, separator: str = "x") -> str:
    """A swept value as short text: floats in %g, sequences joined by ``separator``
    (``(16, 32)`` -> ``16x32``; run directory names use ``-``)."""
    if isinstance(value, (list, tuple)):
        return separator.join(value_label(v, separator) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _short(field: str) -> str:
    return field.rsplit(".", 1)[-1]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def group_rows(rows: Iterable[dict], keys: Sequence[str]) -> dict[tuple, list[dict]]:
    """Rows by their values of ``keys`` (in first-seen order)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(value_label(row.get(k)) for k in keys)].append(row)
    return dict(groups)


def _mean(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if _finite(r.get(key))]
    return float(np.mean(values)) if values else float("nan")


def _human(value) -> str:
    if not _finite(value):
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_table(rows: list[dict], fields: Sequence[str], metric: str = "best_eval_top1") -> str:
    """A fixed-width table: swept fields, status, metrics and costs; ``*`` marks the best run."""
    columns = [(f, _short(f)) for f in fields] + [
        ("status", "status"), ("final_eval_top1", "final top1"), (metric, _short(metric)),
        ("params", "params"), ("flops", "FLOPs"), ("activations", "acts"),
        ("train_images_per_sec", "img/s"), ("wall_time_s", "wall s")]
    columns = list(dict(columns).items())  # the metric may already be a column
    scores = [r.get(metric) if r.get("status") == "ok" else None for r in rows]
    finite = [s for s in scores if _finite(s)]
    best = (min(finite) if "loss" in metric else max(finite)) if finite else None

    def cell(row, key):
        value = row.get(key)
        if key in ("final_eval_top1", metric) and _finite(value) and "loss" not in key:
            return f"{value:.4f}"
        if key == "wall_time_s" and _finite(value):
            return f"{value:.0f}"
        if key in fields or key == "status":
            return value_label(value) if value is not None else "-"
        return _human(value)

    table = [[title for _, title in columns]]
    for row, score in zip(rows, scores):
        table.append([cell(row, key) for key, _ in columns])
        if best is not None and score == best:
            table[-1][0] = "*" + table[-1][0]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_metric_vs_cost(rows: list[dict], path: str, *, metric: str = "best_eval_top1",
                        color_by: str | None = None, title: str = "") -> str:
    """The metric against parameters, FLOPs, activations and train images/s (log x), one
    colour per value of ``color_by``."""
    plt = _pyplot()
    rows = [r for r in rows if r.get("status") == "ok" and _finite(r.get(metric))]
    axes_keys = [(k, label) for k, label in COST_AXES if any(_finite(r.get(k)) for r in rows)]
    fig, axes = plt.subplots(1, max(len(axes_keys), 1), figsize=(4.2 * max(len(axes_keys), 1), 3.6),
                             squeeze=False, layout="constrained")
    groups = group_rows(rows, [color_by]) if color_by else {("all",): rows}
    for ax, (key, label) in zip(axes[0], axes_keys):
        for (value,), members in groups.items():
            pts = [(r[key], r[metric]) for r in members if _finite(r.get(key))]
            if pts:
                xs, ys = zip(*pts)
                ax.scatter(xs, ys, label=f"{_short(color_by)}={value}" if color_by else None,
                           s=28, alpha=0.85)
        _cost_axis(ax, [r.get(key) for r in rows], label)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(_METRIC_LABELS.get(metric, metric))
    if color_by:
        axes[0][-1].legend(fontsize=8, loc="best")
    fig.suptitle(title or f"{_METRIC_LABELS.get(metric, metric)} against cost")
    return _save(fig, path)


def plot_learning_curves(curves: dict[str, list[dict]], path: str, *, title: str = "") -> str:
    """Train loss and test top-1 against step, one line per run (``curves``: run name -> its
    metrics.jsonl rows)."""
    plt = _pyplot()
    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    cmap = plt.get_cmap("viridis", max(len(curves), 2))
    for i, (name, rows) in enumerate(curves.items()):
        train = [(r["step"], r["loss"]) for r in rows if _finite(r.get("loss"))]
        evals = [(r["step"], r["eval_top1"]) for r in rows if _finite(r.get("eval_top1"))]
        if train:
            ax_loss.plot(*zip(*train), color=cmap(i), lw=1.2, label=name)
        if evals:
            ax_eval.plot(*zip(*evals), color=cmap(i), lw=1.2, marker=".", label=name)
    ax_loss.set(xlabel="step", ylabel="train loss", yscale="log")
    ax_eval.set(xlabel="step", ylabel="test top-1")
    for ax in (ax_loss, ax_eval):
        ax.grid(alpha=0.3)
    if curves:
        ax_eval.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(title or "learning curves")
    return _save(fig, path)


def plot_comparison(rows: list[dict], path: str, *, compare: str, fields: Sequence[str],
                    metric: str = "best_eval_top1", average: Sequence[str] = ("seed",),
                    title: str = "") -> str:
    """Runs that differ only in ``compare``, side by side.

    Left: grouped bars, one group per setting of the other swept ``fields`` (``average`` fields,
    e.g. seeds, are averaged). Right, when ``compare`` has exactly two values: each setting as a
    point (metric with the first value, metric with the second) against the diagonal — points
    above it favour the second value.
    """
    plt = _pyplot()
    rows = [r for r in rows if r.get("status") == "ok" and _finite(r.get(metric))]
    others = [f for f in fields if f != compare and f not in average]
    values = list(group_rows(rows, [compare]))
    settings = group_rows(rows, others)
    table = {s: {v: _mean([r for r in members if (value_label(r.get(compare)),) == v], metric)
                 for v in values} for s, members in settings.items()}
    paired = len(values) == 2
    fig, axes = plt.subplots(1, 2 if paired else 1, figsize=(13 if paired else 9, 4.2),
                             squeeze=False, layout="constrained",
                             gridspec_kw={"width_ratios": [2.2, 1] if paired else [1]})
    ax = axes[0][0]
    width = 0.8 / max(len(values), 1)
    names = [",".join(f"{_short(f)}={v}" for f, v in zip(others, s)) or "all" for s in table]
    for j, v in enumerate(values):
        ax.bar(np.arange(len(table)) + (j - (len(values) - 1) / 2) * width,
               [table[s][v] for s in table], width, label=f"{_short(compare)}={v[0]}")
    ax.set_xticks(np.arange(len(table)), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(_METRIC_LABELS.get(metric, metric))
    finite = [x for s in table for x in table[s].values() if _finite(x)]
    if finite:
        low, high = min(finite), max(finite)
        ax.set_ylim(max(0.0, low - 0.1 * (high - low + 1e-3)), high + 0.05 * (high - low + 1e-3))
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    if paired:
        ax2 = axes[0][1]
        (a,), (b,) = values
        pts = [(table[s][values[0]], table[s][values[1]]) for s in table]
        pts = [p for p in pts if _finite(p[0]) and _finite(p[1])]
        if pts:
            xs, ys = zip(*pts)
            ax2.scatter(xs, ys, s=30)
            lo, hi = min(xs + ys), max(xs + ys)
            ax2.plot([lo, hi], [lo, hi], "k--", lw=1)
            wins = sum(y > x for x, y in pts)
            ax2.set_title(f"{_short(compare)}={b} better in {wins}/{len(pts)}", fontsize=9)
        ax2.set(xlabel=f"{_short(compare)}={a}", ylabel=f"{_short(compare)}={b}")
        ax2.grid(alpha=0.3)
    fig.suptitle(title or f"{_short(compare)}: {', '.join(v[0] for v in values)}")
    return _save(fig, path)


def plot_scaling(rows: list[dict], path: str, *, group: str, shared: str | None = None,
                 order: str = "flops", metric: str = "best_eval_top1", title: str = "") -> str:
    """Scaling strategies (one line per value of ``group``), each line in increasing ``order``:
    the metric, train images/s and activations against FLOPs (Dollar et al. 2021's view:
    runtime follows activations more than FLOPs). Rows whose ``group`` value is ``shared`` (the
    unscaled base model) start every line."""
    plt = _pyplot()
    rows = [r for r in rows if r.get("status") == "ok"]
    base = [r for r in rows if shared is not None and value_label(r.get(group)) == shared]
    rows = [r for r in rows if r not in base]
    panels = [(metric, _METRIC_LABELS.get(metric, metric)),
              ("train_images_per_sec", "train images / s"), ("activations", "activations / image")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), layout="constrained")
    for (value,), members in group_rows(rows, [group]).items():
        members = sorted(base + members, key=lambda r: r.get(order, 0) or 0)
        for ax, (key, _) in zip(axes, panels):
            pts = [(r["flops"], r[key]) for r in members
                   if _finite(r.get("flops")) and _finite(r.get(key))]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{_short(group)}={value}")
    for ax, (_, label) in zip(axes, panels):
        _cost_axis(ax, [r.get("flops") for r in rows], "forward FLOPs / image")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title or f"scaling by {_short(group)}")
    return _save(fig, path)


def plot_versus(rows: list[dict], path: str, *, x: str, lines: str,
                metric: str = "best_eval_top1", title: str = "") -> str:
    """The metric, train throughput, FLOPs and parameters against a swept numeric field ``x``
    (e.g. the sequence length of the long-range sweep), one line per value of ``lines`` (e.g.
    the model); log-2 x axis when ``x`` spans more than a factor of 4."""
    plt = _pyplot()
    rows = [r for r in rows if r.get("status") == "ok" and _finite(r.get(x))]
    panels = [(metric, _METRIC_LABELS.get(metric, metric)),
              ("train_images_per_sec", "train examples / s"),
              ("flops", "forward FLOPs / example"), ("params", "parameters")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8),
                             layout="constrained")
    xs_all = [r[x] for r in rows]
    for (value,), members in group_rows(rows, [lines]).items():
        members = sorted(members, key=lambda r: r[x])
        for ax, (key, _) in zip(axes, panels):
            pts = [(r[x], r[key]) for r in members if _finite(r.get(key))]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=value)
    for ax, (key, label) in zip(axes, panels):
        if xs_all and max(xs_all) > 4 * min(xs_all) > 0:
            ax.set_xscale("log", base=2)
        if key != metric and any(_finite(r.get(key)) and r[key] > 0 for r in rows):
            ax.set_yscale("log")
        ax.set(xlabel=_short(x), ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title or f"{_METRIC_LABELS.get(metric, metric)} and costs vs {_short(x)}")
    return _save(fig, path)
