"""The training loop: ``train_and_evaluate(config, workdir)``.

Resumable by construction: everything a run depends on is in the checkpointed ``TrainState``
(params, optimizer state, step, RNG) or is a pure function of the config and the step (the data
order and augmentation), so re-running the same command continues exactly where the last
checkpoint left off; on CPU the result is bitwise equal to an uninterrupted run.
"""
from __future__ import annotations

import json
import logging
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from etils import epath

import jaxconv
from jaxconv import data
from jaxconv.data.mix import mix_config_from
from jaxconv.layers.conv import cpu_compiler_options
from jaxconv.quantize.qat import qat_config_from, qat_training_model
from jaxconv.train import mesh as mesh_lib
from jaxconv.train import sharding as sharding_lib
from jaxconv.train.checkpoint import Checkpointer, non_finite_parts
from jaxconv.train.config import default_config
from jaxconv.train.metrics import MetricsWriter
from jaxconv.train import distill, optim, pretrained
from jaxconv.train.optim import make_optimizer
from jaxconv.train.preemption import Preempted, PreemptionGuard
from jaxconv.train.profiling import StepProfiler, parse_profile_steps
from jaxconv.train.steps import make_eval_step, make_train_step
from jaxconv.train.validation import (check_batch_fits_data, check_memory, check_ranges,
                                     check_recipe)
from jaxconv.train.workdir import prepare_workdir

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _choice(field: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"config.{field}={value!r} is not valid; choose one of {sorted(valid)}")


#: Free-form fields: checked against a model's own fields (by create_model), not the schema.
MODEL_FIELDS = ("config.model_overrides", "config.distill.teacher_overrides")


def _check_keys(config, schema, prefix="config") -> None:
    for key in config.keys():
        if key not in schema:
            raise ValueError(f"{prefix}.{key} is not a training config field; valid fields of "
                             f"{prefix}: {sorted(schema.keys())}")
        if f"{prefix}.{key}" not in MODEL_FIELDS and hasattr(schema[key], "keys"):
            _check_keys(config[key], schema[key], f"{prefix}.{key}")


def validate_config(config, *, check_fits_machine: bool = True) -> None:
    """Checks a training config before anything heavy runs; raises ValueError naming the field.

    Fields are checked against ``default_config()``; ``model_overrides`` against the model's own
    fields (by the registry). ``check_fits_machine=False`` skips the one check that depends on
    where the run trains (activation memory against this machine's RAM / device memory), e.g.
    to check a TPU pod config on a laptop.
    """
    _check_keys(config, default_config())
    check_ranges(config)
    optim.check_config(config)
    _choice("dtype", config.dtype, DTYPES)
    mesh_axes = mesh_lib.parse_mesh(config.mesh)  # ValueErrors name config.mesh
    sharding_lib.check_sharding(config.sharding, [a for a, _ in mesh_axes])
    parse_profile_steps(config.profile_steps)
    pretrained.check_init_config(config)
    try:
        info = data.dataset_info(config.dataset, data_dir=config.data_dir)
    except ValueError as e:
        raise ValueError(f"config.dataset: {e}") from None
    jaxconv.create_model(config.model, **config.model_overrides)  # unknown name/field -> ValueError
    qat_config_from(config.get("quantization"))  # scheme, start / BN-freeze steps
    if config.batch_size <= 0 or config.batch_size % jax.device_count():
        raise ValueError(f"config.batch_size={config.batch_size} must be a positive multiple of "
                         f"the device count ({jax.device_count()})")
    if (config.num_train_steps or 0) <= 0 and (config.num_epochs or 0) <= 0:
        raise ValueError("set config.num_train_steps or config.num_epochs to a positive number "
                         f"(got {config.num_train_steps}, {config.num_epochs})")
    check_recipe(config, info)  # loss, mixing, EMA, accumulation, distillation (builds the teacher)
    augment = data.AugmentConfig(**config.augment)  # policy strings, probabilities, modes
    if info.is_sequence and augment.enabled:
        raise ValueError(f"config.augment={dict(config.augment)}: the image augmentations do not "
                         f"apply to the sequence dataset {config.dataset}; leave them off")
    if not info.is_sequence:  # policy ops need uint8 images with 1 or 3 channels
        data.augment.make_transform(info, augment, train=True)
    if config.image_size is not None and info.is_sequence:
        raise ValueError(f"config.image_size={config.image_size!r}: resizing applies to images; "
                         f"{config.dataset} is a sequence dataset (leave it None)")
    if config.image_size is not None:
        h, w, _ = info.image_shape
        if isinstance(config.image_size, bool) or not isinstance(config.image_size, int) \
                or config.image_size <= 0 or h == 1 or w == 1:
            raise ValueError(f"config.image_size={config.image_size!r}: must be None (native size) "
                             f"or a positive int, for 2-D image datasets ({config.dataset} is "
                             f"{h}x{w})")
    if not 0 < config.step_factor <= 1:
        raise ValueError(f"config.step_factor={config.step_factor!r} must be in (0, 1]: the "
                         "factor the learning rate is multiplied by at each step boundary")
    for field in ("log_every_steps", "checkpoint_every_steps", "eval_every_steps"):
        if config[field] < 0:
            raise ValueError(f"config.{field}={config[field]} must be >= 0 (0 disables)")
    check_batch_fits_data(config, info)
    if check_fits_machine:
        check_memory(config, info, model_input_shape(config, info))  # last: it traces the model


def build_model(config, info):
    overrides = dict(config.model_overrides)
    overrides.setdefault("num_classes", info.num_classes)
    model = jaxconv.create_model(config.model, dtype=DTYPES[config.dtype], **overrides)
    # QAT: same params, fake-quantized ops (from config.quantization.start_step on).
    return qat_training_model(model, config.get("quantization"))


def model_input_shape(config, info) -> tuple[int, ...]:
    """(H, W, C) the model sees: the dataset's image shape, or ``config.image_size`` square;
    (L, C) or (L,) for sequence datasets."""
    if info.is_sequence:
        return tuple(info.image_shape)
    h, w, c = info.image_shape
    return (h, w, c) if config.image_size is None else (config.image_size, config.image_size, c)


def _first_non_finite(host_metrics: list[dict], last_step: int) -> int | None:
    """The first step among the fetched per-step metrics (ending at ``last_step``) whose loss is
    not finite, or None."""
    first = last_step - len(host_metrics) + 1
    return next((first + i for i, m in enumerate(host_metrics) if not np.isfinite(m["loss"])),
                None)


def _diverged(what: str, step: int, config, checkpointer) -> FloatingPointError:
    """The divergence error: the step, the last checkpoint that really exists, the fix."""
    steps = checkpointer.finished_steps()
    where = (f"the last good checkpoint is step {steps[-1]} in {checkpointer.directory} (every "
             "saved step is checked finite); re-running resumes there" if steps else
             "no checkpoint exists yet (nothing was saved)")
    return FloatingPointError(
        f"non-finite {what} at step {step} ({config.model} on {config.dataset}): {where}. To "
        f"avoid it, lower config.learning_rate (now {config.learning_rate}), warm up longer "
        f"(config.warmup_steps, now {config.warmup_steps}) or clip gradients "
        f"(config.grad_clip_norm, now {config.grad_clip_norm}; e.g. 1.0)")


def _save_finite(checkpointer, state, config) -> None:
    """Saves ``state`` unless a parameter, optimizer or batch statistic is not finite."""
    bad = non_finite_parts(state)
    if bad:
        raise _diverged(" and ".join(bad), int(mesh_lib.to_host(state.step)), config,
                        checkpointer)
    checkpointer.save(state)


def _due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


def recipe_step_options(config) -> dict:
    """The ``make_train_step`` keyword arguments of the recipe fields (all off by default)."""
    return dict(loss=config.loss, bce_target_thresh=config.bce_target_thresh,
                mix=mix_config_from(config), grad_accum_steps=config.grad_accum_steps,
                distill_temperature=float(config.distill.temperature),
                distill_weight=float(config.distill.weight), ema_decay=config.ema_decay,
                ema_warmup=bool(config.ema_warmup))


def evaluate_all(eval_step, state, source, config, mesh) -> dict:
    """:func:`evaluate` of the raw weights, and of the EMA weights (``eval_ema_*``) if any."""
    row = evaluate(eval_step, state, source, config, mesh)
    if state.ema is not None:
        ema_state = state.replace(params=state.ema["params"],
                                  model_state=state.ema["model_state"])
        row.update({k.replace("eval_", "eval_ema_", 1): v for k, v in
                    evaluate(eval_step, ema_state, source, config, mesh).items()
                    if k != "eval_count"})
    return row


def evaluate(eval_step, state, source, config, mesh) -> dict:
    it = data.eval_iterator(source, global_batch_size=config.batch_size,
                            process_index=jax.process_index(), process_count=jax.process_count())
    totals = None
    for batch in it:
        sums = eval_step(state, mesh_lib.global_batch(batch, mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = mesh_lib.to_host(totals)
    count = max(float(totals["count"]), 1.0)
    row = {"eval_loss": float(totals["loss_sum"]) / count, "eval_count": int(totals["count"])}
    if "correct" in totals:  # regression has no accuracy (eval_loss is the MSE)
        row["eval_top1"] = float(totals["correct"]) / count
    return row


def _in_mesh(mesh, fn):
    """``fn`` called with ``mesh`` as the context mesh (``jax.set_mesh``)."""
    def call(*args):
        with jax.set_mesh(mesh):
            return fn(*args)
    return call


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains ``config.model`` on ``config.dataset``; returns the final metrics row."""
    validate_config(config)
    info = data.dataset_info(config.dataset, data_dir=config.data_dir)
    model = build_model(config, info)
    augment = data.AugmentConfig(**config.augment)
    train_src = data.get_source(config.dataset, config.train_split or info.train_split,
                                data_dir=config.data_dir)
    eval_src = data.get_source(config.dataset, config.eval_split or info.eval_split,
                               data_dir=config.data_dir)
    if config.batch_size % jax.process_count():
        raise ValueError(f"config.batch_size={config.batch_size} must be divisible by the number of "
                         f"processes ({jax.process_count()})")
    steps_per_epoch = data.steps_per_epoch(len(train_src), config.batch_size)  # may be fractional
    total_steps = int(config.num_train_steps or math.ceil(config.num_epochs * steps_per_epoch))

    check_batch_fits_data(config, info, len(train_src))

    is_main = jax.process_index() == 0
    prepare_workdir(config, workdir, is_main=is_main)  # another config's run: stop here

    mesh = mesh_lib.make_mesh(config)  # config.mesh; the batch is split over every axis
    repl, batch_sh = mesh_lib.replicated(mesh), mesh_lib.batch_sharded(mesh)
    tx, schedule = make_optimizer(config, total_steps)
    # config.sharding: params, optimizer and EMA state replicated or fsdp-sharded, initialized
    # straight into that layout (bitwise the same values as the replicated state).
    state, state_sh = sharding_lib.create_sharded_train_state(
        model, tx, (1, *model_input_shape(config, info)), config.seed, mesh, config,
        input_dtype=info.input_dtype, ema=config.ema_decay is not None)
    # The distillation teacher: frozen, read again on every (re)start, never checkpointed.
    teacher, teacher_variables = distill.load_teacher(config, info.num_classes,
                                                      DTYPES[config.dtype])
    teacher_args = () if teacher is None else (jax.device_put(teacher_variables, repl),)

    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
    if config.init_from and checkpointer.latest_step() is None:  # fine-tuning, first start
        state = jax.device_put(pretrained.init_from_pretrained(state, config, model, tx),
                               state_sh)
    state = checkpointer.restore_latest(state)
    start_step = int(mesh_lib.to_host(state.step))
    writer = MetricsWriter(workdir, enabled=is_main)
    writer.truncate_after(start_step)
    if start_step:
        log.info("resuming from step %d in %s", start_step, workdir)

    # No buffer donation on CPU: there a checkpoint being written in the background may still
    # alias the state's host buffers, and CPU runs are small enough not to need it.
    donate = () if jax.default_backend() == "cpu" else (0,)
    train_step = jax.jit(make_train_step(model, tx, schedule, num_classes=info.num_classes,
                                         label_smoothing=config.label_smoothing,
                                         image_size=config.image_size, task=info.task,
                                         teacher=teacher, **recipe_step_options(config)),
                         in_shardings=(state_sh, batch_sh) + (repl,) * len(teacher_args),
                         out_shardings=(state_sh, repl), donate_argnums=donate,
                         compiler_options=cpu_compiler_options())
    eval_step = jax.jit(make_eval_step(model, num_classes=info.num_classes,
                                       image_size=config.image_size, task=info.task),
                        in_shardings=(state_sh, batch_sh), out_shardings=repl,
                        compiler_options=cpu_compiler_options())
    # Trace and run with the mesh as context mesh: ops that run per batch shard (Pallas kernels
    # under shard_map, kernels_pallas.core.shard_batch) look it up when jit traces them.
    train_step, eval_step = _in_mesh(mesh, train_step), _in_mesh(mesh, eval_step)

    batches = data.train_iterator(
        train_src, global_batch_size=config.batch_size, seed=config.seed, start_step=start_step,
        augment=augment, process_index=jax.process_index(), process_count=jax.process_count(),
        num_threads=config.num_data_threads)

    summary = {"step": start_step}
    pending = []                          # per-step device metrics since the last flush
    interval_start, interval_steps = time.perf_counter(), 0
    run_start = time.perf_counter()
    bar = tqdm.tqdm(total=total_steps, initial=start_step, disable=not is_main, unit="step",
                    dynamic_ncols=True, mininterval=1.0, desc=f"{config.model} on {config.dataset}")
    def save_interrupted(marker: str) -> bool:
        """Ctrl-C or preemption: keeps the progress since the last checkpoint, unless it has
        diverged, and logs the metrics of the interrupted interval too (resuming keeps rows up to
        the saved step), so the last partial interval is not lost."""
        last = int(mesh_lib.to_host(state.step))
        host = mesh_lib.to_host(pending)
        if _first_non_finite(host, last) is not None or non_finite_parts(state):
            return False
        if host and last > summary["step"]:
            writer.write({"step": last, "epoch": last / steps_per_epoch,
                          **{k: float(np.mean([m[k] for m in host])) for k in host[0]},
                          "images_per_sec": interval_steps * config.batch_size
                          / (time.perf_counter() - interval_start),
                          "wall_time": time.perf_counter() - run_start, marker: True})
        checkpointer.save(state, wait=True)
        return True

    # SIGTERM (spot / preemptible VMs): save at the next step boundary, then stop.
    guard = PreemptionGuard()
    profiler = StepProfiler(config.profile_steps, workdir, enabled=is_main)
    try:
        guard.start()
        for step in range(start_step + 1, total_steps + 1):
            profiler.before_step(step)
            state, metrics = train_step(state, mesh_lib.global_batch(next(batches), mesh),
                                        *teacher_args)
            profiler.after_step(step, metrics)
            pending.append(metrics)
            interval_steps += 1
            bar.update(1)
            eval_due = _due(step, config.eval_every_steps, total_steps)
            ckpt_due = _due(step, config.checkpoint_every_steps, total_steps)
            if _due(step, config.log_every_steps, total_steps) or eval_due or ckpt_due:
                # Fetching checks every pending step for a non-finite loss before anything is
                # saved, so no checkpoint ever holds a diverged state.
                host = mesh_lib.to_host(pending)
                first_bad = _first_non_finite(host, step)
                if first_bad is not None:
                    raise _diverged("training loss", first_bad, config, checkpointer)
                elapsed = time.perf_counter() - interval_start
                row = {"step": step, "epoch": step / steps_per_epoch,
                       **{k: float(np.mean([m[k] for m in host])) for k in host[0]},
                       "images_per_sec": interval_steps * config.batch_size / elapsed,
                       "wall_time": time.perf_counter() - run_start}
                pending.clear()
                if eval_due:
                    row.update(evaluate_all(eval_step, state, eval_src, config, mesh))
                writer.write(row)
                summary = row
                bar.set_postfix(loss=f"{row['loss']:.3f}",
                                **{k: f"{row[k]:.3f}" for k in ("top1", "eval_top1") if k in row})
                if ckpt_due:
                    _save_finite(checkpointer, state, config)
                interval_start, interval_steps = time.perf_counter(), 0
            if step < total_steps and guard.reached(step):
                saved = save_interrupted("preempted")
                raise Preempted(step, saved, checkpointer.directory)
    except KeyboardInterrupt:
        if save_interrupted("interrupted"):
            log.warning("interrupted: saved step %d; re-run the command to resume",
                        int(mesh_lib.to_host(state.step)))
        raise
    finally:
        guard.stop()
        profiler.stop()
        bar.close()
        checkpointer.close()
    if "eval_loss" not in summary:  # nothing left to train (a finished run re-run): report anyway
        summary.update(evaluate_all(eval_step, state, eval_src, config, mesh))
    summary = dict(summary, model=config.model, dataset=config.dataset,
                   num_params=int(sum(x.size for x in jax.tree.leaves(state.params))),
                   run_wall_time=time.perf_counter() - run_start)
    if is_main:  # through epath, so a gs:// workdir works too
        (epath.Path(workdir) / "final_metrics.json").write_text(
            json.dumps(summary, indent=2, sort_keys=True))
    return summary
