"""Sweeps on object storage: results, lock and report in a gs:// bucket (the local GCS emulator of
tests/gcs.py, which enforces GCS's generation preconditions)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from etils import epath

from experiments import report
from jaxconv.train import sweep

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _row(run, status="ok", **extra):
    return {"run": run, "status": status, "workdir": f"runs/{run}", "swept_fields": ["seed"],
            "seed": int(run[-1]), "wall_time_s": 1.0, **extra}


def test_rows_are_one_object_per_run_merged_with_an_old_results_file(gcs_path):
    # A sweep directory as an older version left it: rows appended to results.jsonl only, the
    # newest per run last, and a line torn by a crash.
    old = [_row("seed=0", "failed", error="boom"), _row("seed=1"), _row("seed=0", steps=3)]
    epath.Path(gcs_path, sweep.RESULTS_FILE).write_text(
        "".join(json.dumps(r) + "\n" for r in old) + '{"run": "seed=9", "sta')
    rows = {r["run"]: r for r in sweep.read_results(gcs_path)}
    assert set(rows) == {"seed=0", "seed=1"} and rows["seed=0"]["steps"] == 3

    sweep.record_result(gcs_path, _row("seed=2", best_eval_top1=0.5))
    sweep.record_result(gcs_path, _row("seed=1", "failed", error="retried, failed"))
    objects = sorted(p.name for p in epath.Path(gcs_path, sweep.RESULTS_DIR).iterdir())
    assert objects == ["seed=1.json", "seed=2.json"]
    rows = {r["run"]: r for r in sweep.read_results(gcs_path)}
    assert rows["seed=1"]["error"] == "retried, failed"  # the run's object wins over its line
    assert rows["seed=2"]["best_eval_top1"] == 0.5 and rows["seed=0"]["steps"] == 3
    # results.jsonl is rewritten from all of them: one whole line per run.
    lines = epath.Path(gcs_path, sweep.RESULTS_FILE).read_text().splitlines()
    assert sorted(json.loads(line)["run"] for line in lines) == ["seed=0", "seed=1", "seed=2"]
    assert sweep.read_results(os.path.join(gcs_path, sweep.RESULTS_FILE)) == \
        sweep.read_results(gcs_path)


def test_lock_object_excludes_a_second_sweep_and_is_removed_on_release(gcs_path):
    lock_path = epath.Path(gcs_path, sweep.LOCK_FILE)
    with sweep.SweepLock(gcs_path):
        held = json.loads(lock_path.read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        assert sweep.SweepLock.holder(gcs_path)["pid"] == os.getpid()
        with pytest.raises(sweep.SweepLockedError,
                           match=rf"in use by another sweep \(host .*pid {os.getpid()}.*delete "
                                 rf"{gcs_path}/sweep.lock"):
            sweep.SweepLock(gcs_path).acquire()
    assert not lock_path.exists() and sweep.SweepLock.holder(gcs_path) is None


def test_two_sweeps_starting_at_once_cannot_both_hold_the_lock(gcs_path, monkeypatch):
    # The other sweep creates the lock between our look and our create: the create carries
    # ifGenerationMatch=0, so the bucket refuses it (412) and we stop naming the holder.
    probe = f"{gcs_path}/probe".split("://", 1)[1]
    fs = sweep._fs(gcs_path)
    fs.pipe_file(probe, b"1", mode="create")
    try:
        fs.pipe_file(probe, b"2", mode="create")
    except FileExistsError:
        pass
    else:  # a small upload names its object in the body, where tests/gcs.py does not look yet
        pytest.skip("the emulator of tests/gcs.py ignores ifGenerationMatch on multipart uploads")
    other = {"host": "tpu-vm-7", "pid": 4242, "started": "now", "token": "theirs"}
    real = sweep._read_remote_holder
    calls = []

    def look(path):
        calls.append(path)
        if len(calls) == 1:
            epath.Path(path).write_text(json.dumps(other))
            return None
        return real(path)

    monkeypatch.setattr(sweep, "_read_remote_holder", look)
    lock = sweep.SweepLock(gcs_path)
    with pytest.raises(sweep.SweepLockedError, match="host tpu-vm-7, pid 4242"):
        lock.acquire()
    lock.release()  # not ours: left in place
    assert json.loads(epath.Path(gcs_path, sweep.LOCK_FILE).read_text())["token"] == "theirs"


def test_stale_lock_of_a_dead_local_process_is_taken_over_another_hosts_is_not(gcs_path,
                                                                                caplog):
    lock_path = epath.Path(gcs_path, sweep.LOCK_FILE)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                     "started": "yesterday"}))
    with caplog.at_level("WARNING"), sweep.SweepLock(gcs_path):
        assert sweep.SweepLock.holder(gcs_path)["pid"] == os.getpid()
    assert f"pid {dead.pid}, started yesterday" in caplog.text
    lock_path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "yesterday"}))
    with pytest.raises(sweep.SweepLockedError, match="host elsewhere"):
        sweep.SweepLock(gcs_path).acquire()


def test_report_reads_the_bucket_and_writes_its_plots_there(gcs_path, capsys):
    for seed, top1 in ((0, 0.5), (1, 0.7)):
        run = f"seed={seed}"
        sweep.record_result(gcs_path, _row(run, best_eval_top1=top1, final_eval_top1=top1,
                                           params=100, flops=1000, activations=10,
                                           train_images_per_sec=50.0))
        epath.Path(gcs_path, "runs", run, "metrics.jsonl").write_text(
            "".join(json.dumps({"step": s, "loss": 1.0 / s, "eval_top1": top1 * s / 4}) + "\n"
                    for s in range(1, 5)))
    sweep.record_result(gcs_path, _row("seed=2", "failed", error="ValueError: nope"))
    written = report.report(gcs_path)
    text = capsys.readouterr().out
    assert "2 ok, 1 failed" in text and "ValueError: nope" in text
    assert set(written) == {"metric_vs_cost", "learning_curves"}
    for name, path in written.items():
        assert path == f"{gcs_path}/plots/{name}.png"
        assert epath.Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_of_an_empty_bucket_prefix_fails_clearly(gcs_path):
    with pytest.raises(FileNotFoundError, match=f"{gcs_path}/results.jsonl not found"):
        report.report(gcs_path)


@pytest.mark.slow
def test_sweep_and_report_in_a_bucket_and_rerun_skips_finished_runs(gcs_path, write_sweep,
                                                                     tmp_path):
    spec = write_sweep(tmp_path, steps=3)
    cmd = [sys.executable, "-m", "experiments.sweep", f"--config={spec}",
           f"--workdir={gcs_path}"]
    result = subprocess.run(cmd + ["--report"], cwd=REPO, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = sweep.read_results(gcs_path)
    assert sorted(r["run"] for r in rows) == ["dataset=digits,layout=parallel",
                                              "dataset=digits,layout=sequential"]
    assert all(r["status"] == "ok" and r["steps"] == 3 for r in rows), rows
    for row in rows:
        assert epath.Path(gcs_path, row["workdir"], "metrics.jsonl").exists()
        assert epath.Path(gcs_path, sweep.RESULTS_DIR, f"{row['run']}.json").exists()
    assert epath.Path(gcs_path, "plots", "compare_layout.png").read_bytes()[:4] == b"\x89PNG"
    assert not epath.Path(gcs_path, sweep.LOCK_FILE).exists()  # released at the end
    # Re-run: nothing left to train; the dry run reads the same from the bucket.
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 of 2 runs already finished" in again.stdout
    dry = subprocess.run(cmd + ["--dry_run"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert "2 runs (2 finished)" in dry.stdout, dry.stdout + dry.stderr[-2000:]
    assert sweep.read_results(gcs_path) == rows


@pytest.mark.slow
def test_parallel_workers_in_a_bucket(gcs_path, write_sweep, tmp_path):
    spec = write_sweep(tmp_path, steps=2)
    result = subprocess.run([sys.executable, "-m", "experiments.sweep", f"--config={spec}",
                             f"--workdir={gcs_path}", "--parallel=2"], cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = sweep.read_results(gcs_path)
    assert sorted((r["run"], r["status"]) for r in rows) == [
        ("dataset=digits,layout=parallel", "ok"), ("dataset=digits,layout=sequential", "ok")]
    # Both workers rewrote results.jsonl; the parent's last rewrite has both rows.
    lines = epath.Path(gcs_path, sweep.RESULTS_FILE).read_text().splitlines()
    assert sorted(json.loads(line)["run"] for line in lines) == sorted(r["run"] for r in rows)
    for row in rows:  # each worker's output, written locally, was copied to the bucket
        assert epath.Path(gcs_path, "runs", row["run"] + ".log").exists()
    assert not epath.Path(gcs_path, sweep.LOCK_FILE).exists()
