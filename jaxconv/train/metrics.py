"""``metrics.jsonl``: one JSON object per line, appended and flushed as training goes."""
from __future__ import annotations

import json
import os


class MetricsWriter:
    """Appends rows to ``DIR/metrics.jsonl`` (only process 0 writes)."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = enabled

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()

    def truncate_after(self, step: int) -> None:
        """Drops rows logged after ``step`` (a resumed run recomputes them) and any torn last line;
        the rewrite is atomic (temp file + rename)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        kept = [json.dumps(r, sort_keys=True) for r in read_metrics(self.path) if r.get("step", 0) <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)


def read_metrics(path: str) -> list[dict]:
    """Reads a metrics.jsonl, skipping a line torn by a crash mid-write."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
