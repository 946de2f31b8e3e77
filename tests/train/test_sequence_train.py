"""The training loop on sequence datasets (issue 12): token inputs, per-position labels,
regression, and the metrics of each task. A tiny model of the test's own stands in for the
sequence zoo (looked up through a patched `jaxconv.create_model`)."""
from __future__ import annotations

import json
import os
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from jaxconv import train
from jaxconv.train.metrics import read_metrics

TINY = "tiny_sequence_model_for_tests"


class TinySequenceModel(nn.Module):
    """Tokens or [B, L, C] floats -> a causal running mean of per-step features (so per-position
    outputs see only the past) -> [B, L, K] (pool="none") or, pooled, [B, K] from the
    flattened features (a linear classifier over the whole sequence)."""

    num_classes: int = 10
    pool: str = "flatten"
    vocab_size: int | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        if jnp.issubdtype(x.dtype, jnp.integer):
            x = nn.Embed(self.vocab_size, 16)(x)
        h = nn.relu(nn.Dense(16)(x))
        if self.pool == "none":
            steps = jnp.arange(1, h.shape[1] + 1, dtype=h.dtype)[None, :, None]
            return nn.Dense(self.num_classes)(jnp.concatenate([h, jnp.cumsum(h, 1) / steps], -1))
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


@pytest.fixture(autouse=True)
def tiny_model(monkeypatch):
    create = jaxconv.create_model

    def create_model(name, **overrides):
        if name == TINY:
            return TinySequenceModel(**overrides)
        return create(name, **overrides)
    monkeypatch.setattr(jaxconv, "create_model", create_model)


def config(dataset, steps, **model_overrides):
    c = train.default_config()
    c.model = TINY
    c.dataset = dataset
    c.eval_split = "test[:64]"
    c.batch_size = 16
    c.num_train_steps = steps
    c.optimizer = "adamw"
    c.learning_rate = 1e-2
    c.weight_decay = 0.0
    c.log_every_steps = 1
    c.checkpoint_every_steps = 0
    c.num_data_threads = 0
    for key, value in model_overrides.items():
        c.model_overrides[key] = value
    return c


def test_tokens_with_per_position_labels(tmp_path):
    summary = train.train_and_evaluate(
        config("assoc_recall_16", 12, pool="none", vocab_size=20), str(tmp_path))
    rows = read_metrics(os.path.join(tmp_path, "metrics.jsonl"))
    assert len(rows) == 12 and all(0 <= r["top1"] <= 1 for r in rows)
    # The test split labels one position per sequence: accuracy is over those 64 positions.
    assert summary["eval_count"] == 64 and 0 <= summary["eval_top1"] <= 1
    assert rows[-1]["loss"] < rows[0]["loss"]
    final = json.load(open(os.path.join(tmp_path, "final_metrics.json")))
    assert final["dataset"] == "assoc_recall_16" and final["num_params"] > 0


def test_regression_trains_with_mse_and_reports_no_accuracy(tmp_path):
    summary = train.train_and_evaluate(config("adding_10", 30, num_classes=1), str(tmp_path))
    rows = read_metrics(os.path.join(tmp_path, "metrics.jsonl"))
    assert "top1" not in rows[0] and "eval_top1" not in summary
    assert summary["eval_count"] == 64 and np.isfinite(summary["eval_loss"])
    # The targets (sums of two U(0, 1)) have mean 1 and variance 1/6: a learned mean beats 1/6.
    assert summary["eval_loss"] < 0.3 < rows[0]["loss"]


def test_sequence_classification_learns(tmp_path):
    summary = train.train_and_evaluate(config("seq_digits", 40), str(tmp_path))
    assert summary["eval_count"] == 64 and summary["eval_top1"] > 0.5  # chance: 0.1


@pytest.mark.parametrize("field, value, match", [
    ("augment.crop_padding", 2, "do not apply"),
    ("image_size", 32, "sequence dataset"),
    ("dataset", "assoc_recall_17", "even"),
])
def test_bad_sequence_configs_fail_validation(field, value, match):
    c = config("assoc_recall_16", 1, pool="none", vocab_size=20)
    parent, _, leaf = field.rpartition(".")
    (c[parent] if parent else c)[leaf] = value
    with pytest.raises(ValueError, match=match):
        train.validate_config(c)


@pytest.mark.parametrize("arg", ["", ":runlocal"])
def test_long_range_sweep_fits_every_model_to_every_task(arg):
    from jaxconv import data
    from jaxconv.train.sweep import expand_runs, load_sweep
    spec = load_sweep(os.path.join(os.path.dirname(__file__), "..", "..", "experiments",
                                   "configs", "sweeps", "long_range.py" + arg))
    runs = expand_runs(spec.base, spec.grid)  # validates every run's config
    assert {"tcn_tiny", "seq_attention_tiny"} <= {r.config.model for r in runs}
    for run in runs:
        info = data.dataset_info(run.config.dataset)
        overrides = run.config.model_overrides
        assert run.values["label.length"] == info.image_shape[0]
        if info.task == "per_position":
            assert overrides.vocab_size == info.vocab_size and overrides.pool == "none"
        else:
            assert "vocab_size" not in overrides and overrides.get("pool") != "none"
        if "max_len" in overrides:
            assert overrides.max_len == info.image_shape[0]


def test_plot_versus_length(tmp_path):
    from jaxconv.analysis.plots import plot_versus
    rows = [{"status": "ok", "model": m, "label.length": n, "best_eval_top1": a,
             "train_images_per_sec": 1e4 / n, "flops": 1e3 * n, "params": 1000}
            for m, a in (("tcn", 0.5), ("hyena", 0.9)) for n in (256, 1024, 4096)]
    rows.append({"status": "failed", "model": "x", "label.length": 64})
    path = plot_versus(rows, str(tmp_path / "v.png"), x="label.length", lines="model")
    assert os.path.getsize(path) > 1000
