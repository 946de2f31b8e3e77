"""Sweeps: grid expansion, results rows, skip/resume/retry, failures, report, parallel workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from experiments import report
from jaxconv.train import sweep
from jaxconv.train.config import default_config
from jaxconv.train.metrics import read_metrics
from jaxconv.train.sweep import axis, chain, product, zipped

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLED = os.path.join(REPO, "experiments", "configs", "sweeps")

def sweep_cli(spec, workdir, *flags):
    return [sys.executable, "-m", "experiments.sweep", f"--config={spec}", f"--workdir={workdir}",
            *flags]


# ------------------------------------------------------------------------------------- the grid


def test_grid_expands_as_declared():
    grid = product(axis("model", ["a", "b"]),
                   zipped(axis("learning_rate", [0.1, 0.2, 0.3]), axis("seed", [0, 1, 2])))
    assert len(grid) == 6
    assert grid[0] == {"model": "a", "learning_rate": 0.1, "seed": 0}
    assert grid[4] == {"model": "b", "learning_rate": 0.2, "seed": 1}
    assert [p["model"] for p in grid] == ["a"] * 3 + ["b"] * 3
    joined = chain(axis("model", ["a"]), product(axis("model", ["b"]), axis("seed", [5, 6])))
    assert joined == [{"model": "a"}, {"model": "b", "seed": 5}, {"model": "b", "seed": 6}]


@pytest.mark.parametrize("make, match", [
    (lambda: zipped(axis("seed", [0, 1]), axis("learning_rate", [0.1])), "equal lengths"),
    (lambda: product(axis("seed", [0]), axis("seed", [1])), "more than one grid"),
    (lambda: axis("seed", []), "no values"),
])
def test_grid_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_run_names_are_readable_unique_and_bounded():
    assert sweep.run_name({"model": "resnet20", "learning_rate": 0.1}) == \
        "model=resnet20,learning_rate=0.1"
    assert sweep.run_name({"model_overrides.widths": (16, 32)}) == "widths=16-32"
    # The same last component twice: the full paths keep the names apart.
    name = sweep.run_name({"augment.flip": True, "model_overrides.flip": False})
    assert "augment.flip=True" in name and "model_overrides.flip=False" in name
    long_a = sweep.run_name({"model_overrides.widths": tuple(range(100))})
    long_b = sweep.run_name({"model_overrides.widths": tuple(range(1, 101))})
    assert len(long_a) <= 100 and long_a != long_b


def test_expand_runs_sets_fields_and_keeps_labels_out_of_the_config():
    base = default_config()
    grid = product(axis("augment.crop_padding", [0, 2]),
                   axis("model_overrides.drop_path_rate", [0.1]),
                   axis("label.note", ["x"]))
    runs = sweep.expand_runs(base, grid)
    assert [r.config.augment.crop_padding for r in runs] == [0, 2]
    assert all(r.config.model_overrides.drop_path_rate == 0.1 for r in runs)
    assert all("label" not in r.config and r.values["label.note"] == "x" for r in runs)
    assert base.augment.crop_padding == 0 and "drop_path_rate" not in base.model_overrides


@pytest.mark.parametrize("grid, match", [
    (axis("learning_rte", [0.1]), "learning_rte.*valid fields"),
    (axis("augment.flipp", [True]), "augment.flipp.*valid fields of augment"),
    (axis("model_overrides.no_such_field", [1]), "no_such_field"),
    (axis("model", ["resnet_20"]), "resnet20"),
    (axis("optimizer", ["adam"]), "adamw"),
    ([{"seed": 1}, {"seed": 1}], "twice"),
])
def test_bad_grids_fail_before_training(grid, match):
    with pytest.raises(ValueError, match=match):
        sweep.expand_runs(default_config(), grid)


@pytest.mark.parametrize("name", sorted(f[:-3] for f in os.listdir(BUNDLED)
                                        if f.endswith(".py") and not f.startswith("_")))
def test_bundled_sweeps_expand_and_validate(name):
    spec = sweep.load_sweep(os.path.join(BUNDLED, f"{name}.py"))
    runs = sweep.expand_runs(spec.base, spec.grid)
    assert len(runs) >= 2 and spec.doc.count("python -m experiments.sweep") >= 1
    assert "Expected" in spec.doc  # the command's time on a named machine


# ------------------------------------------------------------------------------- running sweeps


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, write_sweep):
    """A 4-run sweep, one dataset of which is not prepared: 2 runs train, 2 fail."""
    tmp = tmp_path_factory.mktemp("sweep")
    spec = sweep.load_sweep(write_sweep(tmp, datasets=("digits", "cifar10")))
    rows = sweep.run_sweep(spec, str(tmp / "out"))
    return spec, tmp / "out", rows


def test_rows_carry_swept_values_metrics_and_costs(finished_sweep):
    _, out, rows = finished_sweep
    assert [r["run"] for r in rows] == [
        "dataset=digits,layout=sequential", "dataset=digits,layout=parallel",
        "dataset=cifar10,layout=sequential", "dataset=cifar10,layout=parallel"]
    stored = sweep.read_results(str(out))
    assert {r["run"] for r in stored} == {r["run"] for r in rows}
    for row in stored:
        assert row["swept_fields"] == ["dataset", "model_overrides.layout"]
        assert row["model_overrides.layout"] in ("sequential", "parallel")
        assert row["dataset"] in ("digits", "cifar10")
    ok = [r for r in stored if r["status"] == "ok"]
    assert len(ok) == 2
    for row in ok:
        assert row["steps"] == 12 and 0 <= row["final_eval_top1"] <= 1
        assert row["best_eval_top1"] >= row["final_eval_top1"]
        assert row["best_eval_step"] in (6, 12)
        assert row["params"] > 0 and row["flops"] > 0 and row["activations"] > 0
        assert row["train_images_per_sec"] > 0
        assert 0 < row["train_wall_time_s"] <= row["wall_time_s"]
        assert row["device"].startswith("cpu:")
        assert row["input_size"] == "8x8x1"
        assert os.path.exists(out / row["workdir"] / "metrics.jsonl")
    # The two layouts have the same parameters and differ in nothing else that is costed.
    assert ok[0]["params"] == ok[1]["params"]
    spec = json.loads((out / "sweep.json").read_text())
    assert spec["swept_fields"] == ["dataset", "model_overrides.layout"]
    assert len(spec["runs"]) == 4 and spec["report"] == {"compare": "model_overrides.layout"}


def test_a_failing_run_is_recorded_and_the_others_finish(finished_sweep):
    _, out, _ = finished_sweep
    failed = [r for r in sweep.read_results(str(out)) if r["status"] != "ok"]
    assert len(failed) == 2
    for row in failed:
        assert row["dataset"] == "cifar10"
        assert "DatasetNotPreparedError" in row["error"] and "prepare" in row["error"]
        assert "Traceback" in (out / row["workdir"] / "error.txt").read_text()
    # The sweep did not stop at the first failure: the last run was attempted too.
    assert any(r["run"] == "dataset=cifar10,layout=parallel" for r in failed)


def test_rerun_skips_finished_runs_and_retries_failed_ones(finished_sweep):
    spec, out, _ = finished_sweep
    ok_metrics = {r["run"]: (out / r["workdir"] / "metrics.jsonl").stat().st_mtime_ns
                  for r in sweep.read_results(str(out)) if r["status"] == "ok"}
    rows = sweep.run_sweep(spec, str(out))
    assert sorted(r["run"] for r in rows) == ["dataset=cifar10,layout=parallel",
                                              "dataset=cifar10,layout=sequential"]
    for run, mtime in ok_metrics.items():
        assert (out / "runs" / run / "metrics.jsonl").stat().st_mtime_ns == mtime


def test_report_prints_table_and_writes_plots(finished_sweep, capsys):
    _, out, _ = finished_sweep
    written = report.report(str(out))
    text = capsys.readouterr().out
    assert "2 ok, 2 failed" in text
    assert "sequential" in text and "parallel" in text and "DatasetNotPreparedError" in text
    assert set(written) == {"metric_vs_cost", "learning_curves", "compare"}
    assert written["compare"].endswith("compare_layout.png")
    for path in written.values():
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_report_of_a_directory_without_results_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.jsonl"):
        report.report(str(tmp_path))


def test_dry_run_lists_runs_without_training(tmp_path, write_sweep):
    spec = write_sweep(tmp_path)
    result = subprocess.run(sweep_cli(spec, tmp_path / "out", "--dry_run"), cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "2 runs (0 finished)" in result.stdout
    assert "[todo] dataset=digits,layout=parallel" in result.stdout
    assert not (tmp_path / "out" / "runs").exists()


def test_killed_sweep_resumes_without_redoing_finished_runs(tmp_path, write_sweep):
    spec, out = write_sweep(tmp_path, steps=18), tmp_path / "out"
    proc = subprocess.Popen(sweep_cli(spec, out), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    second = out / "runs" / "dataset=digits,layout=parallel" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill mid-way through the 2nd run
        if second.exists() and len(read_metrics(str(second))) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    [first] = sweep.read_results(str(out))
    first_mtime = (out / first["workdir"] / "metrics.jsonl").stat().st_mtime_ns

    result = subprocess.run(sweep_cli(spec, out), cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 of 2 runs already finished" in result.stdout
    rows = sweep.read_results(str(out))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert (out / first["workdir"] / "metrics.jsonl").stat().st_mtime_ns == first_mtime
    # The killed run continued from its checkpoint (each step logged once, in order).
    steps = [r["step"] for r in read_metrics(str(second))]
    assert steps == sorted(set(steps)) and steps[-1] == 18


def test_parallel_workers_train_side_by_side(tmp_path, write_sweep):
    spec, out = write_sweep(tmp_path, steps=4), tmp_path / "out"
    result = subprocess.run(sweep_cli(spec, out, "--parallel=2", "--report"), cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = sweep.read_results(str(out))
    assert sorted(r["run"] for r in rows) == ["dataset=digits,layout=parallel",
                                              "dataset=digits,layout=sequential"]
    assert all(r["status"] == "ok" for r in rows)
    assert "2/2 done" in result.stdout and (out / "plots" / "compare_layout.png").exists()
    assert (out / "runs" / "dataset=digits,layout=parallel.log").exists()


@pytest.mark.slow
def test_sigterm_to_a_parallel_sweep_saves_every_worker_and_resumes(tmp_path, write_sweep):
    spec, out = write_sweep(tmp_path, steps=18), tmp_path / "out"
    proc = subprocess.Popen(sweep_cli(spec, out, "--parallel=2"), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    logs = [out / "runs" / name / "metrics.jsonl" for name in
            ("dataset=digits,layout=parallel", "dataset=digits,layout=sequential")]
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # both workers mid-run
        if all(m.exists() and len(read_metrics(str(m))) >= 3 for m in logs):
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "preempted (SIGTERM)" in err and not sweep.read_results(str(out))

    result = subprocess.run(sweep_cli(spec, out, "--parallel=2"), cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [r["status"] for r in sweep.read_results(str(out))] == ["ok", "ok"]
    for metrics in logs:  # each resumed from the step it saved: every step logged once
        steps = [r["step"] for r in read_metrics(str(metrics))]
        assert steps == sorted(set(steps)) and steps[-1] == 18


def test_sweep_file_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="sweeps"):
        sweep.load_sweep(str(tmp_path / "missing.py"))
    bad = tmp_path / "bad.py"
    bad.write_text(textwrap.dedent("""
        def get_config(arg=None):
            return None
    """))
    with pytest.raises(ValueError, match="get_sweep"):
        sweep.load_sweep(str(bad))


def test_image_size_trains_at_the_resized_resolution(tmp_path, write_sweep):
    spec = sweep.load_sweep(write_sweep(tmp_path, steps=2))
    spec.grid = product(axis("image_size", [8, 12]), axis("model_overrides.layout", ["parallel"]))
    rows = sweep.run_sweep(spec, str(tmp_path / "out"))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert [r["input_size"] for r in rows] == ["8x8x1", "12x12x1"]
    # Convolution FLOPs grow with the number of pixels, (12 / 8) ** 2 = 2.25, a little more here
    # because XLA does not count taps in the zero padding, a smaller share at 12x12.
    assert 2.25 < rows[1]["flops"] / rows[0]["flops"] < 2.5


@pytest.mark.parametrize("dataset, size", [("mnist1d", 16), ("digits", 0), ("digits", -4)])
def test_bad_image_size_is_rejected(dataset, size):
    from jaxconv.train import validate_config
    config = default_config()
    config.dataset = dataset
    with config.unlocked():
        config.image_size = size
    with pytest.raises(ValueError, match="image_size"):
        validate_config(config)


# ------------------------------------------------------------------- reliability (issue 19)


def test_a_torn_last_line_does_not_swallow_the_next_row(tmp_path, caplog):
    path = tmp_path / sweep.RESULTS_FILE
    path.write_text(json.dumps({"run": "a", "status": "ok"}) + "\n" + '{"run": "b", "sta')
    with caplog.at_level("WARNING"):
        sweep.record_result(str(tmp_path), {"run": "c", "status": "ok"})
        rows = sweep.read_results(str(tmp_path))
    assert sorted(r["run"] for r in rows) == ["a", "c"]
    assert "skipped 1 damaged line(s) (line 2" in caplog.text
    # results.jsonl is rewritten whole from what was read: one whole line per run, torn one gone.
    assert [json.loads(line)["run"] for line in path.read_text().splitlines()] == ["a", "c"]


def test_a_second_sweep_on_the_directory_stops_naming_the_holder(tmp_path, write_sweep):
    spec = sweep.load_sweep(write_sweep(tmp_path, steps=2))
    out = tmp_path / "out"
    with sweep.SweepLock(str(out)):
        with pytest.raises(sweep.SweepLockedError, match=rf"in use by another sweep \(host "
                                                         rf".*pid {os.getpid()}, started "):
            sweep.run_sweep(spec, str(out))
        assert sweep.SweepLock.holder(str(out))["pid"] == os.getpid()
    assert not (out / "runs").exists() and sweep.SweepLock.holder(str(out)) is None


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, caplog):
    (tmp_path / sweep.LOCK_FILE).write_text(json.dumps(
        {"host": "elsewhere", "pid": 999999, "started": "yesterday"}))
    with caplog.at_level("WARNING"), sweep.SweepLock(str(tmp_path)):
        assert sweep.SweepLock.holder(str(tmp_path))["pid"] == os.getpid()
    assert "host elsewhere, pid 999999, started yesterday" in caplog.text


def test_dry_run_and_report_agree_with_the_disk(finished_sweep, capsys):
    spec, out, _ = finished_sweep
    status = sweep.run_status(sweep.expand_runs(spec.base, spec.grid), str(out))
    assert sorted(status.values()) == ["done", "done", "failed", "failed"]
    report.report(str(out), quiet=False)
    assert "2 ok, 2 failed," in capsys.readouterr().out
    # --only on an already finished run still records the sweep.
    os.remove(out / sweep.SPEC_FILE)
    assert sweep.run_sweep(spec, str(out), only=["dataset=digits,layout=parallel"]) == []
    assert json.loads((out / sweep.SPEC_FILE).read_text())["sweep"] == spec.name


def test_config_overrides_apply_to_every_run_but_not_to_swept_fields(tmp_path, write_sweep):
    spec = sweep.load_sweep(write_sweep(tmp_path))
    sweep.apply_overrides(spec, {"learning_rate": 0.3, "model_overrides.features": 8})
    runs = sweep.expand_runs(spec.base, spec.grid)
    assert all(r.config.learning_rate == 0.3 and r.config.model_overrides.features == 8
               for r in runs)
    with pytest.raises(ValueError, match="swept by the grid"):
        sweep.apply_overrides(spec, {"model_overrides.layout": "parallel"})


@pytest.mark.parametrize("flag, expected", [
    ("--config.learning_rate=-1.0", "learning_rate=-1.0 must be a number in (0, inf)"),
    ("--config.model=resnet_20", "resnet20"),
    ("--config.model_overrides.layout=parallel", "swept by the grid"),
])
def test_sweep_cli_errors_are_one_line_without_traceback(tmp_path, write_sweep, flag, expected):
    result = subprocess.run(sweep_cli(write_sweep(tmp_path), tmp_path / "out", "--dry-run", flag),
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, result.stderr[-2000:]
