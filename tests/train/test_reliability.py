"""Nothing a user saved is lost (issue 19): a workdir keeps its config, checkpoints are verified
and never hold non-finite values, damaged ones are set aside (never deleted), bad configs fail
before any work, and Ctrl-C keeps the interrupted interval's metrics row.

In-process runs of a tiny real model (residual_stack, 2 layers of 4 channels) on digits.
"""
import logging
import os
import shutil
import time

import jax
import numpy as np
import pytest

from jaxconv import data, train
from jaxconv.train import checkpoint
from jaxconv.train.config import default_config
from jaxconv.train.metrics import read_metrics


def tiny_config(**overrides):
    c = default_config()
    c.model = "residual_stack"
    c.model_overrides.features = 4
    c.model_overrides.num_layers = 2
    c.dataset = "digits"
    c.batch_size = 32
    c.num_train_steps = 6
    c.num_data_threads = 0
    c.log_every_steps = 2
    c.checkpoint_every_steps = 2
    c.eval_every_steps = 0
    c.learning_rate = 0.05
    for key, value in overrides.items():
        if key.startswith("model_overrides."):
            c.model_overrides[key.split(".", 1)[1]] = value
        else:
            c[key] = value
    return c


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A finished 6-step run with checkpoints at 2, 4, 6 (copy it before changing it)."""
    workdir = tmp_path_factory.mktemp("base") / "run"
    train.train_and_evaluate(tiny_config(), str(workdir))
    return workdir


def copy_of(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def leaves(workdir, step=None):
    return jax.tree.leaves(train.load_checkpoint(str(workdir), step)[1])


def snapshot(workdir):
    """Every file under workdir with its size and mtime."""
    out = {}
    for root, _, files in os.walk(workdir):
        for name in files:
            st = os.stat(os.path.join(root, name))
            out[os.path.relpath(os.path.join(root, name), workdir)] = (st.st_size, st.st_mtime_ns)
    return out


def flip_bits(step_dir):
    """Flips one bit in the middle of every array data file of a checkpoint step."""
    flipped = 0
    for root, _, files in os.walk(step_dir):
        if os.path.basename(root) != "d":
            continue
        for name in files:
            path = os.path.join(root, name)
            raw = bytearray(open(path, "rb").read())
            raw[len(raw) // 2] ^= 0x10
            open(path, "wb").write(bytes(raw))
            flipped += 1
    assert flipped
    return flipped


# ------------------------------------------------------------------ the workdir keeps its config


def test_another_config_stops_before_touching_the_workdir(base_run, tmp_path):
    run = copy_of(base_run, tmp_path)
    before = snapshot(run)
    with pytest.raises(ValueError) as err:
        train.train_and_evaluate(tiny_config(**{"model_overrides.features": 8,
                                                "learning_rate": 0.1}), str(run))
    message = str(err.value)
    assert "model_overrides.features: 4 -> 8" in message and "learning_rate: 0.05 -> 0.1" in message
    assert "new --workdir" in message and "--config.overwrite=True" in message
    assert snapshot(run) == before  # nothing moved, rewritten or deleted
    assert not (run / "corrupt_checkpoints").exists()

    # Safe fields may change: a longer run resumes from step 6.
    summary = train.train_and_evaluate(tiny_config(num_train_steps=8, log_every_steps=1),
                                       str(run))
    assert summary["step"] == 8
    assert [r["step"] for r in read_metrics(str(run / "metrics.jsonl"))] == [2, 4, 6, 7, 8]

    # The explicit way out moves the old run aside, never deletes it.
    train.train_and_evaluate(tiny_config(**{"model_overrides.features": 8, "overwrite": True,
                                            "num_train_steps": 2}), str(run))
    [old] = os.listdir(run / "replaced")
    assert sorted(os.listdir(run / "replaced" / old / "checkpoints")) == ["4", "6", "8"]
    assert sorted(os.listdir(run / "checkpoints")) == ["2"]


def test_an_intact_checkpoint_of_other_shapes_is_not_treated_as_damage(base_run, tmp_path):
    run = copy_of(base_run, tmp_path)
    os.remove(run / "config.json")  # e.g. a workdir from before config.json existed
    before = snapshot(run)
    with pytest.raises(checkpoint.IncompatibleCheckpointError, match="other shapes"):
        train.train_and_evaluate(tiny_config(**{"model_overrides.features": 8}), str(run))
    after = snapshot(run)
    assert {k: v for k, v in after.items() if k != "config.json"} == before


# ---------------------------------------------------------------------- integrity and fallback


def test_flipped_bits_in_the_latest_checkpoint_fall_back_to_the_previous(base_run, tmp_path,
                                                                         caplog, capfd):
    run = copy_of(base_run, tmp_path)
    flip_bits(run / "checkpoints" / "6")
    # load_checkpoint skips the damaged step (and leaves it in place), with one warning line.
    with caplog.at_level(logging.WARNING, logger="jaxconv"):
        step, _ = train.load_checkpoint(str(run))
    assert step == 4
    [warning] = [r for r in caplog.records if r.name.startswith("jaxconv")]
    assert "step 6" in warning.getMessage() and "checksum" in warning.getMessage()
    with pytest.raises(ValueError, match="step 6 .*damaged"):
        train.load_checkpoint(str(run), step=6)
    caplog.clear()

    # The training loop sets it aside, resumes from step 4 and ends where the clean run ended.
    with caplog.at_level(logging.WARNING, logger="jaxconv"):
        summary = train.train_and_evaluate(tiny_config(), str(run))
    assert summary["step"] == 6
    [warning] = [r for r in caplog.records if r.name.startswith("jaxconv")]
    assert "step 6 is damaged" in warning.getMessage() and "resuming from step 4" in warning.getMessage()
    assert os.listdir(run / "corrupt_checkpoints") == ["6"]
    for a, b in zip(leaves(run), leaves(base_run), strict=True):
        np.testing.assert_array_equal(a, b)
    assert "Event loop is closed" not in capfd.readouterr().err


def test_a_damaged_checkpoint_without_checksums_falls_back_quietly(base_run, tmp_path, capfd):
    # A checkpoint from before checksums: the read itself fails, inside tensorstore/orbax.
    run = copy_of(base_run, tmp_path)
    for step in ("2", "4", "6"):
        os.remove(run / "checkpoints" / step / checkpoint.MANIFEST)
    for root, _, files in os.walk(run / "checkpoints" / "6"):
        for name in files:
            if os.path.basename(root) == "d":
                (run / root / name).write_bytes(b"\x00garbage")
    capfd.readouterr()
    train.train_and_evaluate(tiny_config(), str(run))
    err = capfd.readouterr().err
    assert "Event loop is closed" not in err and "Traceback" not in err, err[-3000:]
    assert "Metadata file does not exist" not in err
    assert os.listdir(run / "corrupt_checkpoints") == ["6"]


def test_damage_is_set_aside_under_a_fresh_name_and_only_one_step(base_run, tmp_path):
    run = copy_of(base_run, tmp_path)
    (run / "corrupt_checkpoints" / "6").mkdir(parents=True)  # set aside by an earlier run
    (run / "corrupt_checkpoints" / "6" / "keep.txt").write_text("earlier")
    flip_bits(run / "checkpoints" / "6")
    flip_bits(run / "checkpoints" / "4")
    with pytest.raises(checkpoint.DamagedCheckpointsError, match="steps 6 and 4.*nothing else"):
        train.train_and_evaluate(tiny_config(), str(run))
    assert (run / "corrupt_checkpoints" / "6" / "keep.txt").read_text() == "earlier"
    assert sorted(os.listdir(run / "corrupt_checkpoints")) == ["6", "6.1"]
    assert sorted(os.listdir(run / "checkpoints")) == ["2", "4"]


# ------------------------------------------------------------------------ nothing non-finite saved


def test_non_finite_parameters_are_never_saved(tmp_path):
    # The first update overflows the parameters (1e300 is inf in float32) while the first loss (of
    # the initial parameters) is still finite.
    config = tiny_config(learning_rate=1e300, checkpoint_every_steps=1, log_every_steps=1,
                         optimizer="sgd", weight_decay=0.0)
    with pytest.raises(FloatingPointError) as err:
        train.train_and_evaluate(config, str(tmp_path))
    message = str(err.value)
    assert "non-finite params" in message and "at step 1 " in message
    assert "no checkpoint exists yet" in message and "learning_rate" in message
    assert "grad_clip_norm" in message
    assert not os.listdir(tmp_path / "checkpoints")


def test_divergence_names_the_last_checkpoint_that_exists(tmp_path, monkeypatch):
    real = data.train_iterator

    def poisoned(*args, start_step=0, **kwargs):
        for step, batch in enumerate(real(*args, start_step=start_step, **kwargs),
                                     start=start_step + 1):
            yield dict(batch, image=np.full_like(batch["image"], np.nan)) if step >= 5 else batch

    monkeypatch.setattr(data, "train_iterator", poisoned)
    # This model's loss stays finite on NaN inputs (a loss-only check saved NaN parameters); the
    # check of the state before the save at step 6 catches it.
    with pytest.raises(FloatingPointError,
                       match=r"non-finite .*params at step 6 .*last good checkpoint is step 4 in "):
        train.train_and_evaluate(tiny_config(log_every_steps=3), str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]


# ------------------------------------------------------------------------- validation before work


@pytest.mark.parametrize("field, value, match", [
    ("learning_rate", -0.1, r"learning_rate=-0.1 must be a number in \(0, inf\)"),
    ("learning_rate", 0.0, r"learning_rate"),
    ("learning_rate", float("nan"), r"learning_rate"),
    ("keep_checkpoints", 0, r"keep_checkpoints=0 must be an int in \[1, inf\)"),
    ("momentum", 1.5, r"momentum=1.5 .*\[0, 1\)"),
    ("weight_decay", -1e-4, r"weight_decay"),
    ("label_smoothing", 1.0, r"label_smoothing=1.0 .*\[0, 1\)"),
    ("grad_clip_norm", 0.0, r"grad_clip_norm=0.0 .*or None"),
    ("warmup_steps", -1, r"warmup_steps"),
    ("num_train_steps", -5, r"num_train_steps"),
    ("seed", -1, r"seed"),
    ("num_data_threads", -2, r"num_data_threads"),
    ("step_boundaries", (0.75, 0.5), r"step_boundaries"),
    ("batch_size", 5000, r"batch_size=5000 is larger than the train split digits:train "
                         r"\(\d+ examples\).*repeat_data_in_batch"),
])
def test_bad_values_are_refused_naming_the_field_and_range(field, value, match):
    config = tiny_config()
    config[field] = value
    with pytest.raises(ValueError, match=match):
        train.validate_config(config)


def test_repeating_data_in_a_batch_is_allowed_when_asked_for():
    train.validate_config(tiny_config(batch_size=5000, repeat_data_in_batch=True))


def test_an_image_size_that_cannot_fit_in_memory_fails_in_seconds():
    config = tiny_config()
    config.image_size = 100000
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"batch_size=32 at config.image_size=100000 .* GiB.*"
                                         r"lower image_size or batch_size"):
        train.validate_config(config)
    assert time.perf_counter() - start < 10
    # The estimate comes from the model's activations, not only the input size.
    config.image_size = 2048
    config.model_overrides.features = 2048
    with pytest.raises(ValueError, match="GiB of activations"):
        train.validate_config(config)


# ---------------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_keeps_the_interrupted_rows_and_resumes_bitwise(base_run, tmp_path, monkeypatch):
    real = data.train_iterator

    def interrupted(*args, start_step=0, **kwargs):
        for step, batch in enumerate(real(*args, start_step=start_step, **kwargs),
                                     start=start_step + 1):
            if step == 6:
                raise KeyboardInterrupt  # while fetching step 6: steps 4 and 5 are done
            yield batch

    monkeypatch.setattr(data, "train_iterator", interrupted)
    config = tiny_config(log_every_steps=4, checkpoint_every_steps=4)
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(config, str(tmp_path))
    rows = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [4, 5] and rows[-1]["interrupted"]
    assert np.isfinite(rows[-1]["loss"])
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "5"]

    monkeypatch.setattr(data, "train_iterator", real)
    train.train_and_evaluate(config, str(tmp_path))
    assert [r["step"] for r in read_metrics(str(tmp_path / "metrics.jsonl"))] == [4, 5, 6]
    for a, b in zip(leaves(tmp_path), leaves(base_run), strict=True):
        np.testing.assert_array_equal(a, b)


def test_non_finite_ema_weights_are_named():
    import jax.numpy as jnp
    from jaxconv.train.state import TrainState
    state = TrainState(step=jnp.zeros((), jnp.int32), params={"w": jnp.ones(3)}, model_state={},
                       opt_state=(), rng=jnp.zeros(2, jnp.uint32),
                       ema={"params": {"w": jnp.array([1.0, jnp.nan, 1.0])}, "model_state": {}})
    assert checkpoint.non_finite_parts(state) == ["ema (EMA weights)"]
    assert checkpoint.non_finite_parts(state.replace(ema=None)) == []
