"""Multi-host sweeps: every process agrees on each run's outcome, and no process waits forever.

The fast tests run the agreement on a real jax.distributed coordination service with several
clients in one process (one thread per "host"). The slow ones start two processes on localhost
(gloo collectives on CPU) running the sweep command, with a failure or a hang injected into one
run on process 1 only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from jaxconv.train import sweep

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def clients():
    """``clients(n)``: n connected clients of a fresh coordination service (shut down after)."""
    from jax._src.lib import _jax
    made = []

    def make(n):
        address = f"127.0.0.1:{_free_port()}"
        service = _jax.get_distributed_runtime_service(address, n)
        group = [_jax.get_distributed_runtime_client(address, i) for i in range(n)]
        _each(lambda i: group[i].connect(), n)  # connect waits for all of them
        made.append((service, group))
        return group

    yield make
    for service, group in made:
        _each(lambda i, g=group: g[i].shutdown(), len(group))  # a barrier of all clients
        service.shutdown()


def _each(fn, n, *, only=None) -> list:
    """fn(i) for i in range(n) (or in ``only``) in threads at once; results or raised errors."""
    out = [None] * n

    def call(i):
        try:
            out[i] = fn(i)
        except Exception as e:  # pylint: disable=broad-except
            out[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in (only or range(n))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _agreements(group, timeout_s=30.0):
    return [sweep.HostAgreement(c, i, len(group), timeout_s, namespace="t") for i, c in
            enumerate(group)]


def test_every_process_gets_every_value_in_process_order(clients):
    agree = _agreements(clients(3))
    out = _each(lambda i: agree[i].exchange("start", {"me": i}), 3)
    assert out == [[{"me": 0}, {"me": 1}, {"me": 2}]] * 3


def test_a_process_that_never_answers_is_named_and_nobody_waits_forever(clients):
    agree = _agreements(clients(3), timeout_s=0.5)
    start = time.monotonic()
    out = _each(lambda i: agree[i].exchange("run/a", {"status": "ok"}), 3, only=[0, 1])
    assert time.monotonic() - start < 10
    for i in (0, 1):
        assert isinstance(out[i], sweep.HostTimeoutError)
        assert f"process 2 (of 3) did not answer within 0.5 s at 'run/a' (seen from process {i})" \
            in str(out[i])
    # Process 2, answering late, learns that both left (and why): it must not go on alone.
    gone = agree[2].departed()
    assert sorted(gone) == [0, 1] and "process 2 (of 3) did not answer" in gone[0]
    assert agree[0].departed() == {1: str(out[1])}
    # Alone, process 0 names both others.
    agree = _agreements(clients(3), timeout_s=0.3)
    with pytest.raises(sweep.HostTimeoutError, match=r"process 1, 2 \(of 3\)"):
        agree[0].exchange("x", {})


def test_a_run_failing_on_one_host_is_failed_on_all(clients):
    agree = _agreements(clients(3))
    rows = [{"run": "r", "status": "ok", "final_eval_top1": 0.5} for _ in range(3)]
    rows[1] = {"run": "r", "status": "failed", "error": "OSError: disk full"}
    out = _each(lambda i: sweep._agree_on_outcome(agree[i], rows[i]), 3)
    for row in out:
        assert row["status"] == "failed" and row["failed_processes"] == [1]
        assert row["error"] == "process 1: OSError: disk full"
    assert out[0]["final_eval_top1"] == 0.5  # what process 0 measured is kept
    # The next run succeeds everywhere: nothing of the failure sticks.
    ok = [{"run": "s", "status": "ok"}] * 3
    assert _each(lambda i: sweep._agree_on_outcome(agree[i], ok[i]), 3) == ok


def test_the_hosts_agree_on_the_grid_and_on_starting(clients, write_sweep, tmp_path):
    spec = sweep.load_sweep(write_sweep(tmp_path))
    runs = sweep.expand_runs(spec.base, spec.grid)
    other = sweep.expand_runs(spec.base, spec.grid[:1])
    agree = _agreements(clients(3))
    # Process 0's list of what is left is everybody's (another host may see other files).
    out = _each(lambda i: sweep._agree_on_start(agree[i], runs, runs[1:] if i == 0 else None,
                                                None), 3)
    assert out == [[runs[1].name]] * 3
    # Process 2 has other runs: all refuse to start, naming it.
    agree = _agreements(clients(3))
    out = _each(lambda i: sweep._agree_on_start(agree[i], other if i == 2 else runs,
                                                runs if i == 0 else None, None), 3)
    assert all(isinstance(e, ValueError) and "process 2 has other runs" in str(e) for e in out)
    # Process 1 could not start: it raises its own error, the others name it.
    agree = _agreements(clients(3))
    boom = sweep.SweepLockedError("in use")
    out = _each(lambda i: sweep._agree_on_start(agree[i], runs, runs if i == 0 else None,
                                                boom if i == 1 else None), 3)
    assert out[1] is boom
    for i in (0, 2):
        assert isinstance(out[i], sweep.OtherHostError)
        assert "did not start on every host: process 1: SweepLockedError: in use" in str(out[i])


def test_bad_host_timeout_is_refused(tmp_path, write_sweep):
    with pytest.raises(ValueError, match="host_timeout_s must be > 0 seconds, got 0"):
        sweep.HostAgreement(None, 0, 2, 0)
    result = subprocess.run([sys.executable, "-m", "experiments.sweep",
                             f"--config={write_sweep(tmp_path)}", f"--workdir={tmp_path / 'o'}",
                             "--host_timeout=-5", "--dry_run"], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert "--host_timeout must be > 0 seconds, got -5.0" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------- two real processes

# The sweep command, with one run made to fail (after training, so the collectives are done) or
# to hang on this process only: the environment variables are given to process 1 alone.
DRIVER = textwrap.dedent('''
    import os, sys, time
    from absl import app
    from jaxconv.train import loop

    real = loop.train_and_evaluate

    def train_and_evaluate(config, workdir, *args, **kwargs):
        run = os.path.basename(str(workdir).rstrip("/"))
        if run == os.environ.get("FAIL_EARLY_RUN"):  # the other host goes into the collectives
            raise RuntimeError("injected failure before training on this host only")
        summary = real(config, workdir, *args, **kwargs)
        if run == os.environ.get("FAIL_RUN"):
            raise RuntimeError("injected failure on this host only")
        if run == os.environ.get("HANG_RUN"):
            print("hanging", flush=True)
            time.sleep(3600)
        return summary

    loop.train_and_evaluate = train_and_evaluate
    from experiments import sweep
    sys.exit(app.run(sweep.main))
''')

FIRST, SECOND = "dataset=digits,layout=sequential", "dataset=digits,layout=parallel"


def _start_two(tmp_path, spec, out, env1, *flags):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    address = f"127.0.0.1:{_free_port()}"
    procs = []
    for i in range(2):
        env = dict(os.environ, PYTHONPATH=REPO, **(env1 if i == 1 else {}))
        procs.append(subprocess.Popen(
            [sys.executable, str(driver), f"--config={spec}", f"--workdir={out}",
             f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}",
             *flags], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    return procs


@pytest.mark.slow
def test_two_processes_a_run_failing_on_one_is_failed_on_both_and_the_sweep_goes_on(
        tmp_path, write_sweep):
    spec, out = write_sweep(tmp_path, steps=4), tmp_path / "out"
    procs = _start_two(tmp_path, spec, out, {"FAIL_RUN": FIRST})
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    rows = {r["run"]: r for r in sweep.read_results(str(out))}
    assert rows[FIRST]["status"] == "failed" and rows[FIRST]["failed_processes"] == [1]
    assert rows[FIRST]["error"] == "process 1: RuntimeError: injected failure on this host only"
    assert "injected failure" in (out / "runs" / FIRST / "error.process1.txt").read_text()
    assert not (out / "runs" / FIRST / "error.txt").exists()  # process 0's run went fine
    # The next run was trained by both processes together, to the end.
    assert rows[SECOND]["status"] == "ok" and rows[SECOND]["steps"] == 4
    lines = (out / sweep.RESULTS_FILE).read_text().splitlines()
    assert sorted(json.loads(line)["run"] for line in lines) == sorted([FIRST, SECOND])
    assert "2/2 done, 1 failed" in outputs[0][0]


@pytest.mark.slow
def test_two_processes_a_host_that_never_answers_is_named_and_the_other_stops(
        tmp_path, write_sweep):
    spec, out = write_sweep(tmp_path, steps=4), tmp_path / "out"
    procs = _start_two(tmp_path, spec, out, {"HANG_RUN": FIRST}, "--host_timeout=10")
    try:
        _, err0 = procs[0].communicate(timeout=600)
        assert procs[0].returncode == 1, err0[-3000:]
        assert "error: process 1 (of 2) did not answer within 10 s at 'run/" + FIRST in err0
        rows = sweep.read_results(str(out))
        assert [r["run"] for r in rows] == [FIRST] and rows[0]["status"] == "failed"
        assert "process 1 (of 2) did not answer" in rows[0]["error"]
        # Process 1, left without its coordinator, is ended too instead of sleeping on.
        procs[1].wait(timeout=300)
        assert procs[1].returncode != 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.slow
def test_two_processes_a_host_failing_while_the_other_is_in_a_collective_ends_both(
        tmp_path, write_sweep):
    # Process 1 fails the second run before its first step; process 0 is then left waiting in a
    # collective (gloo's context is set up by the first run). Nobody may wait forever.
    spec, out = write_sweep(tmp_path, steps=4), tmp_path / "out"
    procs = _start_two(tmp_path, spec, out, {"FAIL_EARLY_RUN": SECOND}, "--host_timeout=15")
    try:
        outputs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    # Process 1 waited --host_timeout for process 0 and left, naming it; that freed process 0
    # from the collective (gloo: connection closed), which failed its run, saw process 1 gone and
    # stopped too. Both exit with the error (not killed by jax.distributed's shutdown barrier).
    assert [p.returncode for p in procs] == [1, 1], [e[-3000:] for _, e in outputs]
    assert "error: process 0 (of 2) did not answer within 15 s at 'run/" + SECOND in outputs[1][1]
    assert "error: process 1 left the sweep (process 0 (of 2) did not answer" in outputs[0][1]
    rows = {r["run"]: r for r in sweep.read_results(str(out))}
    assert rows[FIRST]["status"] == "ok"
    assert rows[SECOND]["status"] == "failed" and 1 in rows[SECOND]["failed_processes"]
    assert ("process 1: RuntimeError: injected failure before training on this host only"
            in rows[SECOND]["error"])
