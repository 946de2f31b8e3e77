"""A workdir remembers the config that made it (``config.json``).

Re-running a workdir resumes it, so the config must describe the same training: a changed model,
optimizer, dataset or shape stops the run before anything is touched, naming the fields and the
two ways out. ``config.overwrite=True`` moves an existing run aside to ``WORKDIR/replaced/TIME/``
(never deleted) and starts afresh, whatever its config.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
REPLACED_DIR = "replaced"

#: Fields that may change when a run is resumed: how long to train, how often to log, evaluate
#: and save, where the data lives, how it is loaded, and what is evaluated. Anything else (model,
#: optimizer, data, shapes, seed, ...) must match the run's config.json.
SAFE_TO_CHANGE = ("num_epochs", "num_train_steps", "log_every_steps", "eval_every_steps",
                  "checkpoint_every_steps", "keep_checkpoints", "num_data_threads", "data_dir",
                  "eval_split", "overwrite")


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
    return any(os.path.exists(os.path.join(workdir, name))
               for name in ("checkpoints", "metrics.jsonl"))


def move_aside(workdir: str) -> str:
    """Moves everything in ``workdir`` (but earlier replaced runs) to a fresh
    ``workdir/replaced/TIME[.N]``; returns that directory."""
    base = os.path.join(workdir, REPLACED_DIR, time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
    dst, n = base, 1
    while os.path.exists(dst):
        dst, n = f"{base}.{n}", n + 1
    os.makedirs(dst)
    for name in os.listdir(workdir):
        if name != REPLACED_DIR:
            shutil.move(os.path.join(workdir, name), os.path.join(dst, name))
    return dst


def prepare_workdir(config, workdir: str, *, is_main: bool = True) -> None:
    """Checks ``config`` against the workdir's config.json (before anything is written), moves
    the old run aside when ``config.overwrite`` is set, then writes config.json.

    Raises ValueError naming the differing fields when the workdir holds a run of another config.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    new = json.loads(config.to_json_best_effort())
    if config.get("overwrite") and _has_run(workdir):
        if is_main:
            log.warning("config.overwrite: moved the previous run in %s to %s", workdir,
                        move_aside(workdir))
    elif os.path.exists(path) and _has_run(workdir):
        try:
            with open(path) as f:
                old = json.load(f)
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
        os.makedirs(workdir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))
        os.replace(tmp, path)
    import jax
    if jax.process_count() > 1:  # the others wait until the old run is out of the way
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("jaxconv_prepare_workdir")
