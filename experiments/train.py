"""Train a model: ``python -m experiments.train --config CONFIG.py[:ARG] --workdir DIR``.

Writes DIR/metrics.jsonl, DIR/final_metrics.json and orbax checkpoints under DIR/checkpoints;
re-running the same command resumes from the latest checkpoint. DIR may be a bucket,
``--workdir gs://BUCKET/runs/NAME`` (needs ``pip install 'jaxconv[gcs]'``). Override any config field with
``--config.FIELD=value`` (e.g. ``--config.model=resnet56 --config.batch_size=256``).
``config.model`` is a registered name (``python -m experiments.list models``), or a factory
outside the registry: ``--config.model=path/to/my_model.py:factory`` or ``package.module:factory``
(called with num_classes, dtype and config.model_overrides; returns a Flax Linen module).

Multi-process: pass ``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` in every
process, or ``--distributed`` on Cloud TPU pod slices (and other clusters JAX detects itself).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments import distributed_flags


def _config_fields() -> str:
    """The training config fields and their defaults, for ``--help``. jaxconv/train/config.py is
    loaded by path: importing the jaxconv package (JAX, every model) would make --help slow."""
    root = importlib.util.find_spec("jaxconv").submodule_search_locations[0]
    spec = importlib.util.spec_from_file_location(
        "_train_config_for_help", os.path.join(root, "train", "config.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def lines(config, prefix):
        for key, value in config.items():
            if hasattr(value, "items") and len(value):
                yield from lines(value, f"{prefix}{key}.")
            elif hasattr(value, "items"):  # model_overrides: open, checked against the model
                yield f"  --config.{prefix}{key}.FIELD=VALUE  (any field of the model)"
            else:
                yield f"  --config.{prefix}{key}={value!r}"

    return "\n".join(lines(module.default_config(), ""))


__doc__ += ("\nConfig fields (--config.FIELD=VALUE; defaults of jaxconv/train/config.py, which a "
            f"config file changes):\n{_config_fields()}\n")

# New attributes are accepted so that --config.model_overrides.FIELD=V works; every key is then
# checked against the schema by train.validate_config before anything runs.
_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (Python).",
                                          lock_config=False, accept_new_attributes=True)
#: Exit status after a SIGTERM that was handled by saving the step (128 + 15, as a shell reports
#: a process ended by SIGTERM).
PREEMPTED_EXIT_STATUS = 143

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics and checkpoints.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show tracebacks of errors and of checkpoint "
                             "fallbacks (default: one line each).")
flags.mark_flags_as_required(["config", "workdir"])
flags.adopt_module_key_flags(distributed_flags)  # --help lists the multi-process flags too


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU" notices
    if _VERBOSE.value:
        os.environ["JAXCONV_VERBOSE"] = "1"  # = jaxconv.train.checkpoint.VERBOSE_ENV
    from jaxconv import train  # after flag parsing, so --help is fast
    from jaxconv.train.workdir import check_storage

    distributed_flags.initialize()
    config = _CONFIG.value
    try:
        train.validate_config(config)
        # A gs:// path this environment cannot open fails now, not after loading data.
        check_storage(_WORKDIR.value, "--workdir")
        check_storage(config.get("data_dir"), "config.data_dir")
    except ValueError as err:  # bad config: the library's own message, in one line
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        summary = train.train_and_evaluate(config, _WORKDIR.value)
    except (ValueError, FloatingPointError, FileNotFoundError,
            train.checkpoint.DamagedCheckpointsError) as err:
        # What the library found wrong (a workdir made by another config, a diverged run, an
        # unprepared dataset, damaged checkpoints) reads best as its own message.
        if _VERBOSE.value:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    except train.preemption.Preempted as stop:
        # SIGTERM (spot / preemptible VM): the step is saved; the exit status is 128 + SIGTERM,
        # as if the signal had ended the process, so supervisors can tell it from success.
        print(stop, file=sys.stderr)
        return PREEMPTED_EXIT_STATUS
    import jax
    if jax.process_index() == 0:
        print("final:", json.dumps(summary, sort_keys=True))
        if "eval_top1" in summary:
            print(f"{summary['model']} on {summary['dataset']}: test top-1 "
                  f"{summary['eval_top1']:.4f} over {summary['eval_count']} images after "
                  f"{summary['step']} steps ({summary['run_wall_time'] / 60:.1f} min, "
                  f"{summary['num_params']:,} parameters)")


if __name__ == "__main__":
    sys.exit(app.run(main))
