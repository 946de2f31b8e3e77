"""gs:// workdirs against a local GCS server (tests/gcs.py): metrics, checkpoints, the config guard,
and (slow) a training run in the bucket that is SIGKILLed and resumed.

Every check compares with what the same operations give on a local directory, or with an
uninterrupted local run.
"""
import json
import os
import signal
import subprocess
import sys
import time

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from jaxconv.train import checkpoint, workdir
from jaxconv.train.metrics import MetricsWriter, read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@flax.struct.dataclass
class _State:
    step: jax.Array
    params: dict
    opt_state: dict
    model_state: dict


def _state(step, scale):
    return _State(step=jnp.int32(step), params={"w": scale * jnp.arange(12.0).reshape(3, 4)},
                  opt_state={"mu": jnp.full((3, 4), scale)}, model_state={})


def _names(path):
    workdir.refresh(path)
    return sorted(p.name for p in epath.Path(path).iterdir()) if epath.Path(path).exists() else []


def test_emulator_refuses_stale_conditional_writes_as_gcs_does(gcs_bucket):
    """tensorstore's OCDBT (orbax's format) relies on it; tests/gcs.py adds it to the emulator."""
    import tensorstore as ts
    kv = ts.KvStore.open({"driver": "gcs", "bucket": gcs_bucket[len("gs://"):],
                          "path": "conditional/"}).result()
    first = kv.write("k", b"one").result()
    second = kv.write("k", b"two", if_equal=first.generation).result()
    assert second.generation not in (b"", first.generation)
    stale = kv.write("k", b"three", if_equal=first.generation).result()
    assert stale.generation == b""                                # refused: not "three"
    assert kv.read("k").result().value == b"two"
    assert kv.read("k", if_not_equal=second.generation).result().state == "unspecified"


def test_metrics_rows_on_gcs_match_a_local_file(gcs_path, tmp_path):
    rows = [{"step": s, "loss": 1.0 / s, "note": "x" * s} for s in range(1, 8)]
    for target in (gcs_path, str(tmp_path)):
        writer = MetricsWriter(target)
        for row in rows:
            writer.write(row)
        writer.truncate_after(5)       # a resumed run drops the rows after its checkpoint
        writer.write(rows[-1])
    remote = read_metrics(f"{gcs_path}/metrics.jsonl")
    assert remote == read_metrics(str(tmp_path / "metrics.jsonl")) == rows[:5] + rows[-1:]
    assert _names(gcs_path) == ["metrics.jsonl"]  # no part objects of the compose left behind
    # Another process appends: this one sees it (gcsfs's cached listing is refreshed).
    code = (f"from jaxconv.train.metrics import MetricsWriter; "
            f"MetricsWriter({gcs_path!r}).write({{'step': 9}})")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)
    assert [r["step"] for r in read_metrics(f"{gcs_path}/metrics.jsonl")] == [1, 2, 3, 4, 5, 7, 9]


def test_checkpoints_on_gcs_verify_fall_back_and_set_aside(gcs_path):
    ckpt = checkpoint.Checkpointer(gcs_path, keep=3)
    ckpt.save(_state(4, 1.0))
    ckpt.save(_state(8, 2.0), wait=True)
    assert ckpt.finished_steps() == [4, 8]
    restored = ckpt.restore_latest(_state(0, 0.0))
    np.testing.assert_array_equal(restored.params["w"], _state(8, 2.0).params["w"])
    step, host = checkpoint.load_checkpoint(gcs_path)
    assert step == 8 and isinstance(host["params"]["w"], np.ndarray)
    np.testing.assert_array_equal(host["params"]["w"], _state(8, 2.0).params["w"])

    # Flip one bit of an array file of step 8: the checksums catch it.
    step_dir = f"{ckpt.directory}/8"
    manifest = json.loads(epath.Path(step_dir, checkpoint.MANIFEST).read_text())["sha256"]
    victim = next(k for k in sorted(manifest) if "/d/" in k)
    data = bytearray(epath.Path(step_dir, victim).read_bytes())
    data[-1] ^= 1
    epath.Path(step_dir, victim).write_bytes(bytes(data))
    assert "changed" in checkpoint.verify_step(step_dir)
    assert checkpoint.load_checkpoint(gcs_path)[0] == 4          # skipped, left in place
    with pytest.raises(ValueError, match="damaged"):
        checkpoint.load_checkpoint(gcs_path, step=8)

    restored = ckpt.restore_latest(_state(0, 0.0))               # sets step 8 aside
    assert int(restored.step) == 4
    np.testing.assert_array_equal(restored.params["w"], _state(4, 1.0).params["w"])
    ckpt.close()
    assert _names(ckpt.directory) == ["4"]
    # Copied, then deleted: every object arrived, the flipped one as it was found.
    quarantined = f"{gcs_path}/corrupt_checkpoints/8"
    copied = dict(checkpoint._digests(quarantined))
    assert set(copied) == set(manifest)
    assert [k for k in manifest if copied[k] != manifest[k]] == [victim]


def test_an_unfinished_step_in_the_bucket_is_ignored_and_saved_again(gcs_path):
    ckpt = checkpoint.Checkpointer(gcs_path)
    ckpt.save(_state(4, 1.0))
    ckpt.save(_state(8, 2.0), wait=True)
    ckpt.close()
    # A save killed before orbax marked it finished (GCS has no rename: the marker is the commit).
    for name in ("commit_success.txt", checkpoint.MANIFEST):
        epath.Path(gcs_path, "checkpoints", "8", name).unlink()
    ckpt = checkpoint.Checkpointer(gcs_path)
    assert ckpt.finished_steps() == [4]
    assert checkpoint.load_checkpoint(gcs_path)[0] == 4
    assert int(ckpt.restore_latest(_state(0, 0.0)).step) == 4
    ckpt.save(_state(8, 3.0), wait=True)
    restored = ckpt.restore_latest(_state(0, 0.0))
    ckpt.close()
    np.testing.assert_array_equal(restored.params["w"], _state(8, 3.0).params["w"])
    assert checkpoint.verify_step(f"{gcs_path}/checkpoints/8") is None


def test_config_guard_and_overwrite_on_gcs(gcs_path):
    from jaxconv.train.config import default_config
    config = default_config()
    workdir.prepare_workdir(config, gcs_path)
    MetricsWriter(gcs_path).write({"step": 1})                   # now it holds a run

    changed = default_config()
    changed.learning_rate = config.learning_rate * 2
    with pytest.raises(ValueError, match="learning_rate"):
        workdir.prepare_workdir(changed, gcs_path)
    resumable = default_config()                                 # fields a resume may change
    resumable.num_train_steps, resumable.profile_steps = 7, "2:4"
    resumable.sharding = "fsdp"
    workdir.prepare_workdir(resumable, gcs_path)

    changed.overwrite = True
    workdir.prepare_workdir(changed, gcs_path)
    assert _names(gcs_path) == ["config.json", workdir.REPLACED_DIR]
    (old,) = _names(f"{gcs_path}/{workdir.REPLACED_DIR}")
    old_dir = f"{gcs_path}/{workdir.REPLACED_DIR}/{old}"
    assert _names(old_dir) == ["config.json", "metrics.jsonl"]
    assert read_metrics(f"{old_dir}/metrics.jsonl") == [{"step": 1}]
    saved = json.loads(epath.Path(gcs_path, "config.json").read_text())
    assert saved["learning_rate"] == changed.learning_rate


# --------------------------------------------------------------------------- the whole command

# residual_stack (2 layers of 4 channels) on digits: compiles in seconds, still a real model.
RUN = {"model": "residual_stack", "model_overrides.features": 4, "model_overrides.num_layers": 2,
       "num_train_steps": 120, "batch_size": 32, "log_every_steps": 5, "eval_every_steps": 60,
       "checkpoint_every_steps": 20, "warmup_steps": 5, "num_data_threads": 1}
CONFIG = os.path.join(REPO, "experiments", "configs", "digits_resnet.py")


def _cli(run_dir, **overrides):
    flags = [f"--config.{k}={v}" for k, v in {**RUN, **overrides}.items()]
    return [sys.executable, "-m", "experiments.train", f"--config={CONFIG}",
            f"--workdir={run_dir}", *flags]


def _leaves(state):
    return jax.tree.leaves({k: state[k] for k in ("params", "opt_state", "model_state")})


@pytest.mark.slow
def test_train_in_gcs_killed_and_resumed_equals_a_local_run(gcs_path, tmp_path):
    from experiments.configs.digits_resnet import get_config
    from jaxconv import train
    config = get_config()
    for key, value in RUN.items():
        if "." in key:
            group, field = key.split(".")
            config[group][field] = value
        else:
            config[key] = value
    train.train_and_evaluate(config, str(tmp_path))              # the uninterrupted reference

    proc = subprocess.Popen(_cli(gcs_path), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    directory, deadline = f"{gcs_path}/checkpoints", time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        workdir.refresh(directory)
        if ocp.step.checkpoint_steps(directory):                  # a finished checkpoint
            break
        time.sleep(0.1)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    killed_at = checkpoint.load_checkpoint(gcs_path)[0]
    assert 0 < killed_at < RUN["num_train_steps"]

    # The config guard works in the bucket: another learning rate is refused, nothing changed.
    refused = subprocess.run(_cli(gcs_path, learning_rate=0.2), cwd=REPO, capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode == 1 and "another config" in refused.stderr, refused.stderr[-2000:]
    assert checkpoint.load_checkpoint(gcs_path)[0] == killed_at

    resumed = subprocess.run(_cli(gcs_path), cwd=REPO, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step" in resumed.stderr

    step, state = checkpoint.load_checkpoint(gcs_path)
    ref_step, ref_state = checkpoint.load_checkpoint(str(tmp_path))
    assert step == ref_step == RUN["num_train_steps"]
    for a, b in zip(_leaves(state), _leaves(ref_state), strict=True):
        np.testing.assert_array_equal(a, b)
    rows = read_metrics(f"{gcs_path}/metrics.jsonl")
    ref_rows = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows]
    for key in ("loss", "top1", "learning_rate", "eval_loss", "eval_top1"):
        assert [r.get(key) for r in rows] == [r.get(key) for r in ref_rows], key
    final = json.loads(epath.Path(gcs_path, "final_metrics.json").read_text())
    assert final["eval_top1"] == json.loads((tmp_path / "final_metrics.json").read_text())[
        "eval_top1"]


def test_storage_check_names_what_to_install(monkeypatch):
    import importlib.util
    workdir.check_storage("/tmp/local/run")                     # local: nothing to check
    workdir.check_storage("gs://bucket/run")                    # gcsfs is installed here
    with pytest.raises(ValueError, match=r"config.data_dir='hdfs://x/y'.*valid: .*gs://"):
        workdir.check_storage("hdfs://x/y", "config.data_dir")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in (
        "gcsfs", "tensorflow") else find_spec(name, *a))
    with pytest.raises(ValueError, match=r"--workdir='gs://bucket/run' needs gcsfs.*jaxconv\[gcs\]"):
        workdir.check_storage("gs://bucket/run")
