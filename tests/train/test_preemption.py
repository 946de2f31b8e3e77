"""SIGTERM (preemption of spot / preemptible VMs) saves the step it happens in and stops cleanly;
re-running resumes bitwise. ``config.profile_steps`` writes a profiler trace into the workdir."""
import os
import signal

import jax
import numpy as np
import pytest

from jaxconv import data, train
from jaxconv.train.metrics import read_metrics
from jaxconv.train.preemption import Preempted
from jaxconv.train.profiling import parse_profile_steps

from tests.train.test_reliability import tiny_config


def leaves(workdir, step=None):
    return jax.tree.leaves(train.load_checkpoint(str(workdir), step)[1])


def test_sigterm_saves_that_step_stops_and_resumes_bitwise(tmp_path, monkeypatch):
    config = tiny_config(log_every_steps=4, checkpoint_every_steps=4)
    full = tmp_path / "full"
    train.train_and_evaluate(config, str(full))

    real = data.train_iterator

    def terminated(*args, start_step=0, **kwargs):
        for step, batch in enumerate(real(*args, start_step=start_step, **kwargs),
                                     start=start_step + 1):
            if step == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # arrives while step 3's batch is fetched
            yield batch

    monkeypatch.setattr(data, "train_iterator", terminated)
    run = tmp_path / "run"
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted, match="saved step 3"):
        train.train_and_evaluate(config, str(run))
    assert signal.getsignal(signal.SIGTERM) is handler  # the loop's handler is removed again
    assert sorted(os.listdir(run / "checkpoints")) == ["3"]
    rows = read_metrics(str(run / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [3] and rows[0]["preempted"]

    monkeypatch.setattr(data, "train_iterator", real)
    train.train_and_evaluate(config, str(run))
    assert [r["step"] for r in read_metrics(str(run / "metrics.jsonl"))] == [3, 4, 6]
    for a, b in zip(leaves(run), leaves(full), strict=True):
        np.testing.assert_array_equal(a, b)


def test_profile_steps_writes_a_trace_into_the_workdir(tmp_path):
    train.train_and_evaluate(tiny_config(profile_steps="2:3", num_train_steps=4), str(tmp_path))
    traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0


@pytest.mark.parametrize("value", ["3", "0:2", "4:2", "a:b", "1:2:3"])
def test_bad_profile_steps_are_refused_before_training(value):
    with pytest.raises(ValueError, match="config.profile_steps"):
        parse_profile_steps(value)
    with pytest.raises(ValueError, match="config.profile_steps"):
        train.validate_config(tiny_config(profile_steps=value))


def test_a_preempted_sweep_run_stops_the_sweep_instead_of_being_recorded_failed(tmp_path,
                                                                                  monkeypatch):
    from jaxconv.train import loop, sweep

    def preempted(config, workdir):
        raise Preempted(3, True, workdir)

    monkeypatch.setattr(loop, "train_and_evaluate", preempted)
    run = sweep.expand_runs(tiny_config(), sweep.axis("seed", [0]))[0]
    with pytest.raises(Preempted):
        sweep.train_one(run, str(tmp_path))
    assert not list(tmp_path.rglob("error*.txt"))
