"""Run a sweep: ``python -m experiments.sweep --config experiments/configs/sweeps/NAME.py[:ARG]
--workdir DIR``.

Each run of the sweep's grid trains with the ordinary training loop in ``DIR/runs/RUN`` and adds a
row to ``DIR/results.jsonl`` (swept values, final and best metrics, params, FLOPs, activations,
images/s, wall time, status); ``DIR/sweep.json`` records the grid. Re-running the command skips
finished runs, resumes an interrupted one from its checkpoints and retries failed ones. A failing
run is recorded with its error and the sweep goes on. ``--dry-run`` lists the runs and exits.
Then ``python -m experiments.report DIR`` prints the table and draws the plots (``--report`` does
that at the end of the sweep).

Side by side: ``--parallel N`` trains N runs at a time, each in its own process; on a machine
with several GPUs each process gets an equal share of them (CUDA_VISIBLE_DEVICES). Cloud TPU pod
slice: run the same command on every worker with ``--distributed``; every run then uses all hosts
and all chips, one run after another (process 0 writes the results).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time

from absl import app, flags

from experiments import distributed_flags

_CONFIG = flags.DEFINE_string("config", None, "Sweep file, PATH.py[:ARG].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Sweep directory (results.jsonl, runs/).")
_DRY_RUN = flags.DEFINE_bool("dry-run", False, "List the runs and their status, then exit.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Runs trained at the same time, each in its "
                                 "own process (GPUs are shared out between them).")
_ONLY = flags.DEFINE_multi_string("only", None, "Train only this run (by name; repeatable).")
_REPORT = flags.DEFINE_bool("report", False, "Print the table and write the plots at the end.")
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
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[slot * per:(slot + 1) * per])
        envs.append(env)
    return envs


def run_parallel(spec, sweep_dir: str, parallel: int) -> None:
    """Trains the unfinished runs ``parallel`` at a time, each in a worker process that runs this
    command with ``--only RUN`` (and writes its own row)."""
    from jaxconv.train import sweep
    runs = sweep.expand_runs(spec.base, spec.grid)
    os.makedirs(sweep_dir, exist_ok=True)
    sweep.write_spec(sweep_dir, spec, runs)
    finished, todo = sweep.pending_runs(runs, sweep_dir)
    progress = sweep.Progress(spec.name, len(runs), len(finished))
    if finished:
        progress.message(f"{len(finished)} of {len(runs)} runs already finished; skipping them")
    free = list(enumerate(_worker_envs(parallel)))
    active: dict[subprocess.Popen, tuple] = {}
    queue = list(enumerate(todo, start=len(finished) + 1))
    try:
        while queue or active:
            while queue and free:
                (index, run), (slot, env) = queue.pop(0), free.pop(0)
                log_path = os.path.join(sweep_dir, sweep.RUNS_DIR, run.name + ".log")
                os.makedirs(os.path.dirname(log_path), exist_ok=True)
                log_file = open(log_path, "a")  # pylint: disable=consider-using-with
                cmd = [sys.executable, "-m", "experiments.sweep", f"--config={_CONFIG.value}",
                       f"--workdir={sweep_dir}", f"--only={run.name}"]
                proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
                active[proc] = (run, slot, env, log_file)
                progress.started(run, index)
            time.sleep(0.5)
            for proc in [p for p in active if p.poll() is not None]:
                run, slot, env, log_file = active.pop(proc)
                log_file.close()
                free.append((slot, env))
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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU" notices
    if _PARALLEL.value < 1:
        raise app.UsageError(f"--parallel must be >= 1, got {_PARALLEL.value}")
    if _PARALLEL.value > 1 and (_ONLY.value or distributed_flags.DISTRIBUTED.value
                                or distributed_flags.NUM_PROCESSES.value):
        raise app.UsageError("--parallel cannot be combined with --only or multi-process flags")
    if _PARALLEL.value > 1 or _DRY_RUN.value:
        # This process only validates and schedules: keep it off the accelerators, which the
        # workers need (a JAX GPU client would reserve most of the memory).
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from jaxconv.train import sweep  # after flag parsing, so --help is fast

    spec = sweep.load_sweep(_CONFIG.value)
    if _DRY_RUN.value:
        runs = sweep.expand_runs(spec.base, spec.grid)
        finished, _ = sweep.pending_runs(runs, _WORKDIR.value)
        done = {r.name for r in finished}
        print(f"sweep {spec.name}: {len(runs)} runs ({len(done)} finished) in {_WORKDIR.value}")
        for i, run in enumerate(runs, 1):
            print(f"  {i:3d}. [{'done' if run.name in done else 'todo'}] {run.name}")
        return
    if _PARALLEL.value > 1:
        run_parallel(spec, _WORKDIR.value, _PARALLEL.value)
    else:
        distributed_flags.initialize()
        import jax
        sweep.run_sweep(spec, _WORKDIR.value, only=_ONLY.value,
                        is_main=jax.process_index() == 0)
        if jax.process_index() != 0:
            return
    if _REPORT.value and not _ONLY.value:
        from experiments import report
        report.report(_WORKDIR.value)


if __name__ == "__main__":
    sys.exit(app.run(main))
