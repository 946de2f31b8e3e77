"""experiments.bench costs: parameters, FLOPs and activations per model, printed and in CSV."""

from __future__ import annotations

import csv

import pytest

import jaxconv
from experiments import bench
from jaxconv import analysis


def test_costs_rows_match_analysis(tmp_path, capsys):
    out = tmp_path / "costs.csv"
    rows = bench.main(["costs", "--models", "resnet20,resnet18", "--image_size", "64",
                       "--csv", str(out)])
    assert [r["model"] for r in rows] == ["resnet20", "resnet18"]
    model = jaxconv.create_model("resnet18")
    shape = (1, 64, 64, 3)
    assert rows[1]["input"] == "64x64x3"
    assert rows[1]["activations_M"] == round(analysis.model_activations(model, shape) / 1e6, 3)
    assert rows[1]["gmacs_fwd"] == pytest.approx(rows[1]["gflops_fwd"] / 2, abs=1e-3)
    assert rows[1]["params_M"] == 11.690
    with open(out) as f:
        assert [r["model"] for r in csv.DictReader(f)] == ["resnet20", "resnet18"]
    assert "device:" in capsys.readouterr().out


def test_unknown_model_fails_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["costs", "--models", "resnet_20", "--csv", str(tmp_path / "x.csv")])
    err = capsys.readouterr().err  # the registry's own message, with its close matches
    assert "Unknown model 'resnet_20'. Did you mean 'resnet20'" in err
    assert "Traceback" not in err and not (tmp_path / "x.csv").exists()


def test_bad_override_fails_before_any_work(capsys):
    with pytest.raises(SystemExit):
        bench.main(["models", "--models", "resnet20", "--model_overrides", "depth=3"])
    assert "unknown override(s) ['depth']" in capsys.readouterr().err


def test_csv_defaults_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bench.main(["costs", "--models", "resnet20"])
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.csv")] == [
        "runs/bench/bench_costs.csv"]


def test_models_times_each_implementation_of_models_that_have_one(tmp_path, monkeypatch):
    """One row per (model, implementation) for models with an ``implementation`` field, one row
    for the others; ratios are against the first row. Timing itself is stubbed out here."""
    calls = []

    def fake_bench_model(name, *, overrides, **kwargs):
        calls.append((name, overrides.get("implementation", "-")))
        speed = 10.0 * len(calls)
        return {"model": name, "overrides": overrides, "train_img_per_s": speed,
                "infer_img_per_s": 2 * speed}

    monkeypatch.setattr(bench, "bench_model", fake_bench_model)
    rows = bench.main(["models", "--models", "resnet20,convnext_tiny",
                       "--implementations", "xla,pallas", "--csv", str(tmp_path / "m.csv")])
    assert calls == [("resnet20", "-"), ("convnext_tiny", "xla"), ("convnext_tiny", "pallas")]
    assert [r["train_vs_resnet20"] for r in rows] == [1.0, 2.0, 3.0]
    assert [r["infer_vs_resnet20"] for r in rows] == [1.0, 2.0, 3.0]
    with pytest.raises(SystemExit):
        bench.main(["models", "--implementations", "triton"])
