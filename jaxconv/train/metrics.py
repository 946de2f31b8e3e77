"""``metrics.jsonl``: one JSON object per line, appended and flushed as training goes.

Paths may be local or ``gs://`` (anything ``etils.epath`` opens). Objects in a bucket cannot be
appended to, so there :func:`append_line` uploads the new line as a small object and has the
bucket concatenate it onto the file (GCS ``compose``): each row costs three small requests, never
a re-upload of the whole file, and readers see the file with or without the row, never a part.
Where the store has no compose (s3://...), the file is read and rewritten whole (quadratic in the
number of rows). Neither is safe against two writers appending to one object at once; the
training loop has one writer (process 0).
"""
from __future__ import annotations

import fcntl
import json
import os
import uuid

from etils import epath

from jaxconv.train.workdir import is_remote, refresh, write_text_atomic


class MetricsWriter:
    """Appends rows to ``DIR/metrics.jsonl`` (only process 0 writes)."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.path = os.path.join(os.fspath(workdir), "metrics.jsonl")
        self.enabled = enabled

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        append_line(self.path, json.dumps(row, sort_keys=True))

    def truncate_after(self, step: int) -> None:
        """Drops rows logged after ``step`` (a resumed run recomputes them) and any torn last line;
        the rewrite is atomic (temp file + rename; one upload on object storage)."""
        if not self.enabled:
            return
        refresh(self.path)
        if not epath.Path(self.path).exists():
            return
        kept = [json.dumps(r, sort_keys=True) for r in read_metrics(self.path) if r.get("step", 0) <= step]
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))


def append_line(path: str, line: str) -> None:
    """Appends one newline-terminated line in a single write, under an exclusive lock. A line
    torn by an earlier crash (no final newline) is ended first, so it cannot swallow this one.
    On object storage: compose (or read + rewrite), see the module docstring; no lock there."""
    if is_remote(path):
        _append_remote(os.fspath(path), line)
        return
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


def _append_remote(path: str, line: str) -> None:
    refresh(path)
    target = epath.Path(path)
    if not target.exists():
        target.write_text(line + "\n")
        return
    fs = getattr(getattr(target, "_backend", None), "fs", None)
    fs = fs(path) if callable(fs) else None
    if fs is None or not hasattr(fs, "merge"):  # no compose: rewrite the whole object
        text = target.read_text()
        target.write_text(text + ("" if not text or text.endswith("\n") else "\n") + line + "\n")
        return
    # An upload is whole, so every line ends in "\n": nothing is ever torn in a bucket.
    part = epath.Path(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}")
    part.write_text(line + "\n")
    try:
        fs.merge(path, [path, os.fspath(part)])
    finally:
        part.unlink()


def read_jsonl(path: str) -> tuple[list[dict], list[int]]:
    """(rows, numbers of the damaged lines) of a JSON-lines file; a damaged line (torn by a crash
    mid-write) is skipped, never merged with the next."""
    refresh(path)
    rows, damaged = [], []
    with epath.Path(path).open() as f:
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
