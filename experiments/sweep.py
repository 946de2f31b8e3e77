"""Run a sweep: ``python -m experiments.sweep --config experiments/configs/sweeps/NAME.py[:ARG]
--workdir DIR``.

Each run of the sweep's grid trains with the ordinary training loop in ``DIR/runs/RUN`` and adds a
row to ``DIR/results.jsonl`` (swept values, final and best metrics, params, FLOPs, activations,
images/s, wall time, status); ``DIR/sweep.json`` records the grid. Re-running the command skips
finished runs, resumes an interrupted one from its checkpoints and retries failed ones. A failing
run is recorded with its error and the sweep goes on. ``--dry_run`` lists the runs and what is on
disk for each (done, failed, partial with its checkpoint step, todo) and exits.
``--config.FIELD=value`` sets a base-config field of every run (the syntax of experiments.train;
a field the grid sweeps is refused). One sweep at a time per directory: a second one exits naming
the holder (host, pid, start time). Errors are one line; ``--verbose`` shows tracebacks.
Then ``python -m experiments.report DIR`` prints the table and draws the plots (``--report`` does
that at the end of the sweep).

Side by side: ``--parallel N`` trains N runs at a time, each in its own process; on a machine
with several GPUs each process gets an equal share of them (CUDA_VISIBLE_DEVICES). Cloud TPU pod
slice: run the same command on every worker with ``--distributed``; every run then uses all hosts
and all chips, one run after another (process 0 writes the results). The hosts agree on each
run's outcome before the next starts: a run that failed on any host is recorded as failed, naming
the host, and the sweep goes on; a host that does not answer within ``--host_timeout`` seconds is
named in the error, and the sweep stops on every host instead of hanging.

``--workdir`` may be ``gs://bucket/path`` (any etils.epath): rows are written one object per run
and merged into ``results.jsonl``; see jaxconv.train.sweep.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

from experiments import distributed_flags

#: Exit status of a preempted sweep or worker (128 + SIGTERM, as experiments.train).
PREEMPTED_EXIT_STATUS = 143

# The sweep file's get_config(ARG) is the base config, so --config.FIELD=value overrides a field
# of every run as in experiments.train (checked against the schema before anything runs).
_CONFIG = config_flags.DEFINE_config_file("config", None, "Sweep file, PATH.py[:ARG].",
                                          lock_config=False, accept_new_attributes=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory (results.jsonl, runs/).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "List the runs and their status, then exit.")
flags.DEFINE_alias("dry-run", "dry_run")  # the spelling of earlier versions still works
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Runs trained at the same time, each in its "
                                 "own process (GPUs are shared out between them).")
_ONLY = flags.DEFINE_multi_string("only", None, "Train only this run (by name; repeatable).")
_REPORT = flags.DEFINE_bool("report", False, "Print the table and write the plots at the end.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show tracebacks of errors (default: one line).")
_HOST_TIMEOUT = flags.DEFINE_float("host_timeout", 900.0, "Multi-host: seconds a host waits for "
                                   "the others to report a run's outcome before it stops the "
                                   "sweep, naming the host that did not answer.")
flags.mark_flags_as_required(["config", "workdir"])


def _visible_gpus() -> list[str]:
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
        return [str(i) for i, line in enumerate(out.stdout.splitlines())
                if line.startswith("GPU ")]
    return []


def _worker_envs(parallel: int) -> list[dict]:
    """Environment of each of ``parallel`` worker slots: a disjoint share of the GPUs, if any."""
    gpus = _visible_gpus()
    if gpus and len(gpus) < parallel:
        raise app.UsageError(f"--parallel={parallel} needs at least {parallel} GPUs, found "
                             f"{len(gpus)}")
    per = len(gpus) // parallel if gpus else 0
    envs = []
    for slot in range(parallel):
        env = dict(os.environ, **{_LOCK_ENV: str(os.getpid())})
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[slot * per:(slot + 1) * per])
        envs.append(env)
    return envs


def _spec_arg() -> str:
    return flags.FLAGS["config"].config_filename  # PATH.py[:ARG]


def _override_args() -> list[str]:
    """The --config.FIELD=value arguments as given (forwarded to the workers)."""
    return [a for a in sys.argv[1:] if a.startswith(("--config.", "-config."))]


def run_parallel(spec, sweep_dir: str, parallel: int) -> None:
    """Trains the unfinished runs ``parallel`` at a time, each in a worker process that runs this
    command with ``--only RUN`` (and writes its own row); this process holds the directory's
    lock for them."""
    from jaxconv.train import sweep
    runs = sweep.expand_runs(spec.base, spec.grid)
    with sweep.SweepLock(sweep_dir):
        sweep.write_spec(sweep_dir, spec, runs)
        _run_workers(spec, runs, sweep_dir, parallel)


def _run_workers(spec, runs, sweep_dir: str, parallel: int) -> None:
    from jaxconv.train import sweep
    from jaxconv.train.workdir import is_remote
    finished, todo = sweep.pending_runs(runs, sweep_dir)
    progress = sweep.Progress(spec.name, len(runs), len(finished))
    if finished:
        progress.message(f"{len(finished)} of {len(runs)} runs already finished; skipping them")
    free = list(enumerate(_worker_envs(parallel)))
    active: dict[subprocess.Popen, tuple] = {}
    queue = list(enumerate(todo, start=len(finished) + 1))
    preempted = []  # the runs whose worker stopped on SIGTERM (they saved their step)

    def on_sigterm(signum, frame):  # preemption: every worker saves its step; start no more runs
        queue.clear()
        for proc in active:
            proc.send_signal(signal.SIGTERM)

    previous_handler = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        while queue or active:
            while queue and free:
                (index, run), (slot, env) = queue.pop(0), free.pop(0)
                log_path = _log_path(sweep_dir, run.name)
                os.makedirs(os.path.dirname(log_path), exist_ok=True)
                log_file = open(log_path, "a")  # pylint: disable=consider-using-with
                cmd = [sys.executable, "-m", "experiments.sweep", f"--config={_spec_arg()}",
                       f"--workdir={sweep_dir}", f"--only={run.name}", *_override_args()]
                proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
                active[proc] = (run, slot, env, log_file)
                progress.started(run, index)
            time.sleep(0.5)
            for proc in [p for p in active if p.poll() is not None]:
                run, slot, env, log_file = active.pop(proc)
                log_file.close()
                if proc.returncode == PREEMPTED_EXIT_STATUS:
                    preempted.append(run.name)
                    queue.clear()
                free.append((slot, env))
                if is_remote(sweep_dir):  # the log was written locally: copy it over
                    from etils import epath
                    epath.Path(sweep.join_path(sweep_dir, sweep.RUNS_DIR, run.name + ".log")
                               ).write_text(epath.Path(log_file.name).read_text())
                # Workers rewrite results.jsonl concurrently (the last one wins); this rewrite,
                # after each, leaves it with every recorded row.
                sweep.rewrite_results_file(sweep_dir)
                rows = [r for r in sweep.read_results(sweep_dir) if r["run"] == run.name]
                row = rows[0] if rows else {
                    "run": run.name, "status": "failed", "wall_time_s": 0.0,
                    "error": f"worker exited with code {proc.returncode} before writing a row; "
                             f"see {sweep.RUNS_DIR}/{run.name}.log"}
                progress.finished(row)
    except KeyboardInterrupt:
        for proc in active:  # the workers' training loops save their current step
            proc.send_signal(2)
        for proc in active:
            proc.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    if preempted:
        print(f"preempted (SIGTERM): runs {', '.join(preempted)} saved their step; re-run the "
              "same command to resume them", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_STATUS)


def _log_path(sweep_dir: str, run_name: str) -> str:
    """Where a worker's output goes: ``DIR/runs/RUN.log``, or a local file for a remote DIR (a
    child's stdout must be a local file; it is copied to DIR/runs/ when the worker ends)."""
    from jaxconv.train import sweep
    from jaxconv.train.workdir import is_remote
    if not is_remote(sweep_dir):
        return os.path.join(sweep_dir, sweep.RUNS_DIR, run_name + ".log")
    return os.path.join(tempfile.gettempdir(), f"jaxconv_sweep_{os.getpid()}", run_name + ".log")


_LOCK_ENV = "JAXCONV_SWEEP_LOCK_HOLDER"  # = jaxconv.train.sweep.LOCK_HOLDER_ENV


def main(argv):
    try:
        _main(argv)
    except Exception as e:  # pylint: disable=broad-except
        from jaxconv.train import sweep
        from jaxconv.train.preemption import Preempted
        if isinstance(e, Preempted):  # the run saved its step; re-running the sweep resumes it
            print(e, file=sys.stderr)
            sys.exit(PREEMPTED_EXIT_STATUS)
        if isinstance(e, sweep.HostTimeoutError):
            # The hosts are out of step: exiting normally would wait at jax.distributed's
            # shutdown barrier for the host that does not answer. Leave at once; the coordination
            # service going away then ends the other processes too, so none waits forever.
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(1)  # pylint: disable=protected-access
        if _VERBOSE.value or not isinstance(e, (ValueError, FileNotFoundError,
                                                 sweep.SweepLockedError, sweep.OtherHostError)):
            raise
        sys.exit(f"error: {e}")


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _VERBOSE.value:
        os.environ["JAXCONV_VERBOSE"] = "1"  # checkpoint fallbacks with tracebacks, in workers too
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU" notices
    if _PARALLEL.value < 1:
        raise app.UsageError(f"--parallel must be >= 1, got {_PARALLEL.value}")
    if not _HOST_TIMEOUT.value > 0:
        raise app.UsageError(f"--host_timeout must be > 0 seconds, got {_HOST_TIMEOUT.value}")
    if _PARALLEL.value > 1 and (_ONLY.value or distributed_flags.DISTRIBUTED.value
                                or distributed_flags.NUM_PROCESSES.value):
        raise app.UsageError("--parallel cannot be combined with --only or multi-process flags")
    if _PARALLEL.value > 1 or _DRY_RUN.value:
        # This process only validates and schedules: keep it off the accelerators, which the
        # workers need (a JAX GPU client would reserve most of the memory).
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from jaxconv.train import sweep  # after flag parsing, so --help is fast

    spec = sweep.load_sweep(_spec_arg())
    sweep.apply_overrides(spec, config_flags.get_override_values(flags.FLAGS["config"]))
    if _DRY_RUN.value:
        runs = sweep.expand_runs(spec.base, spec.grid)
        status = sweep.run_status(runs, _WORKDIR.value)
        done = sum(s == "done" for s in status.values())
        print(f"sweep {spec.name}: {len(runs)} runs ({done} finished) in {_WORKDIR.value}")
        holder = sweep.SweepLock.holder(_WORKDIR.value)
        if holder:
            print(f"  in use by a running sweep: host {holder.get('host')}, pid "
                  f"{holder.get('pid')}, started {holder.get('started')}")
        for i, run in enumerate(runs, 1):
            state = status[run.name]
            print(f"  {i:3d}. [{'done' if state == 'done' else 'todo'}] {run.name}"
                  + ("" if state in ("done", "todo") else f" ({state})"))
        return
    if _PARALLEL.value > 1:
        run_parallel(spec, _WORKDIR.value, _PARALLEL.value)
    else:
        distributed_flags.initialize()
        import jax
        sweep.run_sweep(spec, _WORKDIR.value, only=_ONLY.value,
                        is_main=jax.process_index() == 0, host_timeout_s=_HOST_TIMEOUT.value)
        if jax.process_index() != 0:
            return
    if _REPORT.value and not _ONLY.value:
        from experiments import report
        report.report(_WORKDIR.value)


if __name__ == "__main__":
    sys.exit(app.run(main))
