"""``metrics.jsonl``: one JSON object per line, appended and flushed as training goes."""
from __future__ import annotations

import fcntl
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
        append_line(self.path, json.dumps(row, sort_keys=True))

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


def append_line(path: str, line: str) -> None:
    """Appends one newline-terminated line in a single write, under an exclusive lock. A line
    torn by an earlier crash (no final newline) is ended first, so it cannot swallow this one."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        torn = False
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                torn = f.read(1) != b"\n"
        os.write(fd, (("\n" if torn else "") + line + "\n").encode())
    finally:
        os.close(fd)  # releases the lock


def read_jsonl(path: str) -> tuple[list[dict], list[int]]:
    """(rows, numbers of the damaged lines) of a JSON-lines file; a damaged line (torn by a crash
    mid-write) is skipped, never merged with the next."""
    rows, damaged = [], []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                damaged.append(number)
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                damaged.append(number)
    return rows, damaged


def read_metrics(path: str) -> list[dict]:
    """Reads a metrics.jsonl, skipping a line torn by a crash mid-write."""
    return read_jsonl(path)[0]
