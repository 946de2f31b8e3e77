"""A workdir remembers the config that made it (``config.json``).

Re-running a workdir resumes it, so the config must describe the same training: a changed model,
optimizer, dataset or shape stops the run before anything is touched, naming the fields and the
two ways out. ``config.overwrite=True`` moves an existing run aside to ``WORKDIR/replaced/TIME/``
(never deleted) and starts afresh, whatever its config.

Paths are anything ``etils.epath`` opens: local directories or ``gs://bucket/...`` (through gcsfs).
Object storage has no rename and no append, so :func:`move_aside` copies and then deletes there,
and whole files are written in one PUT (atomic for readers) instead of temp file + rename.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time

from etils import epath

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
REPLACED_DIR = "replaced"

#: Fields that may change when a run is resumed: how long to train, how often to log, evaluate
#: and save, where the data lives, how it is loaded, and what is evaluated. Anything else (model,
#: optimizer, data, shapes, seed, ...) must match the run's config.json.
SAFE_TO_CHANGE = ("num_epochs", "num_train_steps", "log_every_steps", "eval_every_steps",
                  "checkpoint_every_steps", "keep_checkpoints", "num_data_threads", "data_dir",
                  "eval_split", "overwrite", "profile_steps", "mesh", "sharding")
# mesh and sharding: orbax restores a sharded checkpoint onto whatever mesh the new run builds.


# ------------------------------------------------------------------------- paths on any storage


def is_remote(path) -> bool:
    """True for ``scheme://`` paths (gs://, s3://...), which have no rename, append or lock."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", os.fspath(path)) is not None


# The fsspec package epath needs for each scheme (TensorFlow's gfile can serve gs:// instead).
_FSSPEC_PACKAGE = {"gs": ("gcsfs", "jaxconv[gcs]"), "s3": ("s3fs", "s3fs"), "az": ("adlfs", "adlfs")}


def check_storage(path, name: str = "--workdir") -> None:
    """Raises ValueError (naming ``name``, the path and what to install) when ``path`` is on a
    storage this environment cannot open; call it before any long work starts."""
    if not path or not is_remote(path):
        return
    import importlib.util
    scheme = os.fspath(path).split("://", 1)[0].lower()
    if scheme not in _FSSPEC_PACKAGE:
        raise ValueError(f"{name}={path!r}: unsupported storage {scheme}://; valid: a local "
                         f"path or {', '.join(s + '://' for s in _FSSPEC_PACKAGE)}")
    package, install = _FSSPEC_PACKAGE[scheme]
    tf_serves = (scheme == "gs" and importlib.util.find_spec("tensorflow") is not None
                 and os.environ.get("EPATH_USE_TF", "").lower() not in ("0", "false", "no"))
    if importlib.util.find_spec(package) is None and not tf_serves:
        raise ValueError(f"{name}={path!r} needs {package}, which is not installed: "
                         f"pip install '{install}'")


def join(path, *names) -> str:
    """``os.path.join`` that keeps ``gs://`` paths as they are (local ones made absolute)."""
    joined = os.path.join(os.fspath(path), *names)
    return joined if is_remote(joined) else os.path.abspath(joined)


def refresh(path) -> None:
    """Forgets the directory listings gcsfs (epath's gs:// backend) cached in this process: they
    never see objects written since by another process, or by tensorstore (orbax's arrays)."""
    if not is_remote(path):
        return
    # epath has no public handle on its fsspec file system (TensorFlow's backend has no cache).
    backend = getattr(epath.Path(path), "_backend", None)
    fs = getattr(backend, "fs", None)
    if callable(fs):
        fs(os.fspath(path)).invalidate_cache()


def write_text_atomic(path, text: str) -> None:
    """Writes a whole file so that readers see the old or the new content, never a part: temp
    file + rename locally; one upload on object storage (an object is replaced whole)."""
    path = os.fspath(path)
    if is_remote(path):
        epath.Path(path).write_text(text)
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def list_files(top) -> list[str]:
    """Every file under ``top`` as a relative "a/b/c" path (local or remote)."""
    top = os.fspath(top)
    if not is_remote(top):
        return [os.path.relpath(os.path.join(root, name), top)
                for root, _, files in os.walk(top) for name in files]
    out = []
    for child in epath.Path(top).iterdir():
        if child.is_dir():
            out.extend(f"{child.name}/{rel}" for rel in list_files(os.fspath(child)))
        else:
            out.append(child.name)
    return out


def move_tree(src, dst) -> None:
    """Moves ``src`` (a file or a directory) to ``dst`` (must not exist). Object storage has no
    rename: every object is copied, and only then is ``src`` deleted, so an interruption leaves
    ``src`` whole (and perhaps part of a copy)."""
    src, dst = os.fspath(src), os.fspath(dst)
    if not is_remote(src):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.move(src, dst)
        return
    source = epath.Path(src)
    if not source.is_dir():
        source.copy(epath.Path(dst))
        source.unlink()
        return
    for rel in list_files(src):
        target = epath.Path(dst, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        epath.Path(src, rel).copy(target)
    source.rmtree()


def _flat(tree, prefix="") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    """``field: old -> new`` for every field that differs and may not change on resume. A field
    missing from an older config.json counts as its default (added to the schema later)."""
    from jaxconv.train.config import default_config
    before = _flat(json.loads(default_config().to_json_best_effort()))
    before.update(_flat(old))
    after = _flat(new)
    fields = sorted(set(before) | set(after))
    return [f"{k}: {before.get(k, '(unset)')!r} -> {after.get(k, '(unset)')!r}" for k in fields
            if k.split(".")[0] not in SAFE_TO_CHANGE and before.get(k) != after.get(k)]


def _has_run(workdir: str) -> bool:
    refresh(workdir)
    return any(epath.Path(workdir, name).exists() for name in ("checkpoints", "metrics.jsonl"))


def move_aside(workdir: str) -> str:
    """Moves everything in ``workdir`` (but earlier replaced runs) to a fresh
    ``workdir/replaced/TIME[.N]``; returns that directory. On object storage this copies every
    object and then deletes the original (there is no rename): slow for big checkpoints."""
    refresh(workdir)
    base = os.path.join(os.fspath(workdir), REPLACED_DIR,
                        time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
    dst, n = base, 1
    while epath.Path(dst).exists():
        dst, n = f"{base}.{n}", n + 1
    epath.Path(dst).mkdir(parents=True)
    for child in epath.Path(workdir).iterdir():
        if child.name != REPLACED_DIR:
            move_tree(os.fspath(child), os.path.join(dst, child.name))
    return dst


def prepare_workdir(config, workdir: str, *, is_main: bool = True) -> None:
    """Checks ``config`` against the workdir's config.json (before anything is written), moves
    the old run aside when ``config.overwrite`` is set, then writes config.json.

    Raises ValueError naming the differing fields when the workdir holds a run of another config.
    """
    workdir = os.fspath(workdir)
    check_storage(workdir)
    path = os.path.join(workdir, CONFIG_FILE)
    new = json.loads(config.to_json_best_effort())
    if config.get("overwrite") and _has_run(workdir):
        if is_main:
            log.warning("config.overwrite: moved the previous run in %s to %s", workdir,
                        move_aside(workdir))
    elif _has_run(workdir) and epath.Path(path).exists():
        try:
            old = json.loads(epath.Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e}); cannot tell whether "
                             "this config may resume the run in it. Train in a new workdir, or "
                             "pass --config.overwrite=True to move the old run aside") from None
        diffs = config_differences(old, new)
        if diffs:
            shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8
                                            else "")
            raise ValueError(
                f"workdir {workdir} holds a run of another config ({shown}); nothing was changed. "
                f"Train in a new --workdir, or pass --config.overwrite=True to move the old run "
                f"to {os.path.join(workdir, REPLACED_DIR)}/ and start afresh. Fields that may "
                f"change on resume: {', '.join(SAFE_TO_CHANGE)}")
    if is_main:
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, config.to_json_best_effort(indent=2, sort_keys=True))
    import jax
    if jax.process_count() > 1:  # the others wait until the old run is out of the way
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("jaxconv_prepare_workdir")
