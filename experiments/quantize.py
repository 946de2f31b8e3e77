"""Post-training quantization of a trained run, float vs quantized top-1 on its eval split.

    python -m experiments.quantize --workdir RUN --scheme int8_per_channel [--calib_batches 32 |
        --data_free] [--calibration absmax|percentile|mse] [--export]

RUN is a workdir of ``experiments.train`` (config.json + checkpoints; a QAT run's checkpoint
works the same, it has the float model's parameters). Writes ``RUN/quantized/<name>/``:
``metrics.json`` (float_top1, quantized_top1, float_bytes, quantized_bytes, timings, ...),
``quantized_variables.npz`` (int8 / packed int4 weights, float32 scales), ``float_variables.npz``
(the float checkpoint's variables in the same format, for the size comparison) and, with
``--export``, ``model.jaxexport`` (serialised StableHLO of the quantized deploy model; serve it
with ``jax.export.deserialize(blob).call(images)``). ``<name>`` is the scheme, with
``_datafree`` appended for ``--data_free`` and ``_<calibration>`` for non-absmax ranges.
Schemes: ``jaxconv.quantize.SCHEMES`` (int8/int4 x per_channel/per_tensor); a bad value fails
at once naming them. Calibration batches come from the train split in order, no augmentation;
``--data_free`` uses one ZeroQ batch distilled from the BN statistics instead (no data).
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "run directory of experiments.train")
_SCHEME = flags.DEFINE_string("scheme", "int8_per_channel", "a jaxconv.quantize.SCHEMES name")
_CALIBRATION = flags.DEFINE_string("calibration", "absmax", "absmax | percentile | mse")
_CALIB_BATCHES = flags.DEFINE_integer("calib_batches", 32, "train batches for calibration")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 0, "eval/calibration batch (0: the run's)")
_DATA_FREE = flags.DEFINE_bool("data_free", False, "ZeroQ: calibrate on a distilled batch")
_ZEROQ_STEPS = flags.DEFINE_integer("zeroq_steps", 200, "Adam steps distilling the batch")
_EXPORT = flags.DEFINE_bool("export", False, "write model.jaxexport and check it reloads")
_SWEEP_DIR = flags.DEFINE_string("sweep_dir", None, "quantize every run of a quantization sweep "
                                 "(experiments/configs/sweeps/quantization.py) and tabulate")

#: The table's columns: (title, which runs (float/QAT training), scheme, data_free).
SWEEP_COLUMNS = (("float", "float", None, False),
                 ("int8 per-layer", "float", "int8_per_tensor", False),
                 ("int8 per-channel", "float", "int8_per_channel", False),
                 ("int4 per-channel PTQ", "float", "int4_per_channel", False),
                 ("int4 per-channel QAT", "int4_per_channel", "int4_per_channel", False),
                 ("int8 per-channel data-free", "float", "int8_per_channel", True))


def load_run(workdir: str):
    """``(config dict, float model, variables, dataset info)`` of a trained run."""
    import jaxconv
    from jaxconv import data
    from jaxconv.train.checkpoint import load_checkpoint

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise ValueError(f"--workdir={workdir!r} has no config.json: not a training run")
    with open(path) as f:
        config = json.load(f)
    info = data.dataset_info(config["dataset"], data_dir=config.get("data_dir"))
    overrides = {"num_classes": info.num_classes, **config.get("model_overrides", {})}
    model = jaxconv.create_model(config["model"], **overrides)
    _, state = load_checkpoint(workdir)
    variables = {"params": state["params"], **state.get("model_state", {})}
    return config, model, jax.tree.map(jnp.asarray, variables), info


def batches(config, info, split, batch_size, limit=None):
    """``(images, labels, mask)`` of ``split`` in order (resized as the run trained)."""
    from jaxconv import data
    from jaxconv.train.steps import resize_images

    src = data.get_source(config["dataset"], split, data_dir=config.get("data_dir"))
    for i, batch in enumerate(data.eval_iterator(src, global_batch_size=batch_size)):
        if limit is not None and i >= limit:
            return
        images = resize_images(jnp.asarray(batch["image"]), config.get("image_size"))
        yield images, np.asarray(batch["label"]), np.asarray(batch["mask"])


def top1(apply, config, info, batch_size) -> float:
    correct = total = 0
    for images, labels, mask in batches(config, info, config.get("eval_split") or
                                        info.eval_split, batch_size):
        pred = np.asarray(jnp.argmax(apply(images), -1))
        correct += int(((pred == labels) & mask).sum())
        total += int(mask.sum())
    return correct / max(total, 1)


def time_ms(fn, x, repeats: int = 5) -> float:
    """Median wall time of ``fn(x)`` after one warm-up call, in ms."""
    jax.block_until_ready(fn(x))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(x))
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def run(workdir: str, scheme: str, calibration: str = "absmax", calib_batches: int = 32,
        batch_size: int = 0, data_free: bool = False, zeroq_steps: int = 200,
        export: bool = False) -> dict:
    from jaxconv.quantize import export as qexport
    from jaxconv.quantize import get_scheme, quantize
    from jaxconv.quantize.zeroq import bn_statistics_loss, distill_batch

    qconfig = get_scheme(scheme, calibration)      # bad scheme/calibration: fails here, first
    if calib_batches <= 0:
        raise ValueError(f"--calib_batches must be positive, got {calib_batches}")
    config, model, variables, info = load_run(workdir)
    batch_size = batch_size or int(config.get("batch_size", 64))
    name = scheme + ("_datafree" if data_free else "") + \
        ("" if calibration == "absmax" else f"_{calibration}")
    out = os.path.join(workdir, "quantized", name)
    os.makedirs(out, exist_ok=True)

    first = next(batches(config, info, config.get("train_split") or info.train_split,
                         batch_size, 1))[0]
    extra = {}
    if data_free:
        distilled = distill_batch(model, variables, first.shape, jax.random.key(0),
                                  steps=zeroq_steps)
        extra["zeroq_bn_loss_start"] = float(bn_statistics_loss(
            model, variables, jax.random.normal(jax.random.key(0), first.shape)))
        extra["zeroq_bn_loss_end"] = float(bn_statistics_loss(model, variables, distilled))
        calib = [distilled]
    else:
        calib = [x for x, _, _ in batches(config, info, config.get("train_split") or
                                          info.train_split, batch_size, calib_batches)]
    qm = quantize(model, variables, calib, qconfig)
    float_apply = jax.jit(lambda x: model.apply(variables, x, train=False))
    quant_apply = jax.jit(qm.apply)
    metrics = {
        "scheme": scheme, "calibration": calibration, "data_free": data_free,
        "calib_batches": 0 if data_free else len(calib), "batch_size": batch_size,
        "model": config["model"], "dataset": config["dataset"],
        "float_top1": top1(float_apply, config, info, batch_size),
        "quantized_top1": top1(quant_apply, config, info, batch_size),
        "float_bytes": qexport.save_variables(os.path.join(out, "float_variables.npz"),
                                              variables),
        "quantized_bytes": qexport.save_variables(
            os.path.join(out, "quantized_variables.npz"), qm.variables, qconfig.bits),
        "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()}), jax "
                  f"{jax.__version__}",
        "timing_batch_shape": list(first.shape),
        "float_ms_per_batch": time_ms(float_apply, first),
        "quantized_ms_per_batch": time_ms(quant_apply, first),
        **extra,
    }
    if export:
        blob = qexport.export_model(qm.apply, (None, *first.shape[1:]))
        with open(os.path.join(out, "model.jaxexport"), "wb") as f:
            f.write(blob)
        reloaded = qexport.load_exported(blob).call(first)
        metrics["export_bytes"] = len(blob)
        metrics["export_max_abs_diff"] = float(jnp.max(jnp.abs(reloaded - quant_apply(first))))
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
    return metrics


def sweep(sweep_dir: str, calib_batches: int = 8) -> list[dict]:
    """Quantizes the runs of a quantization sweep (its module docstring); returns the rows and
    writes quantization.jsonl, quantization_table.md and plots/quantization.png."""
    runs_dir = os.path.join(sweep_dir, "runs")
    if not os.path.isdir(runs_dir):
        raise ValueError(f"--sweep_dir={sweep_dir!r} has no runs/ directory: not a sweep")
    runs = {}
    for name in sorted(os.listdir(runs_dir)):
        path = os.path.join(runs_dir, name, "config.json")
        if os.path.exists(path):
            with open(path) as f:
                config = json.load(f)
            training = config.get("quantization", {}).get("scheme") or "float"
            runs[(config["model"], training)] = os.path.join(runs_dir, name)
    rows = []
    for (model, training), workdir in sorted(runs.items()):
        for title, trained, scheme, data_free in SWEEP_COLUMNS:
            if trained != training or scheme is None:
                continue
            name = scheme + ("_datafree" if data_free else "")
            done = os.path.join(workdir, "quantized", name, "metrics.json")
            if os.path.exists(done):        # re-running the command skips finished cells
                with open(done) as f:
                    m = json.load(f)
            else:
                try:
                    m = run(workdir, scheme, calib_batches=calib_batches, data_free=data_free,
                            zeroq_steps=200)
                except FileNotFoundError as e:   # a run still training: no checkpoint yet
                    print(f"skipping {workdir}: {e}")
                    break
            rows.append({"model": model, "column": title, "training": training, **m})
            if title == "int8 per-layer" or (title == "int4 per-channel QAT"):
                rows.append({"model": model, "column": "float" if training == "float"
                             else "float (QAT run, unquantized)", "quantized_top1":
                             m["float_top1"], "training": training})
    with open(os.path.join(sweep_dir, "quantization.jsonl"), "w") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True) + "\n")
    models = sorted({r["model"] for r in rows})
    titles = [t for t, *_ in SWEEP_COLUMNS]
    value = {(r["model"], r["column"]): r["quantized_top1"] for r in rows}
    lines = ["| model | " + " | ".join(titles) + " | float bytes | int8 bytes | int4 bytes |",
             "|---" * (len(titles) + 4) + "|"]
    for model in models:
        size = {r["scheme"]: (r["float_bytes"], r["quantized_bytes"]) for r in rows
                if r["model"] == model and "scheme" in r and not r["data_free"]}
        cells = [f"{value[(model, t)]:.3f}" if (model, t) in value else "-" for t in titles]
        fb = size.get("int8_per_channel", (0, 0))[0]
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {fb} | "
                     f"{size.get('int8_per_channel', (0, 0))[1]} | "
                     f"{size.get('int4_per_channel', (0, 0))[1]} |")
    with open(os.path.join(sweep_dir, "quantization_table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(titles)
    for i, title in enumerate(titles):
        ax.bar(np.arange(len(models)) + i * width, [value.get((m, title), 0) for m in models],
               width, label=title)
    ax.set_xticks(np.arange(len(models)) + 0.4 - width / 2, models)
    ax.set_ylabel("eval top-1")
    ax.set_title("Post-training quantization vs QAT (digits32)")
    ax.legend(fontsize=7, loc="lower right")
    os.makedirs(os.path.join(sweep_dir, "plots"), exist_ok=True)
    fig.savefig(os.path.join(sweep_dir, "plots", "quantization.png"), dpi=120,
                bbox_inches="tight")
    return rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _SWEEP_DIR.value:
        sweep(_SWEEP_DIR.value, _CALIB_BATCHES.value)
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir (or --sweep_dir) is required")
    metrics = run(_WORKDIR.value, _SCHEME.value, _CALIBRATION.value, _CALIB_BATCHES.value,
                  _BATCH_SIZE.value, _DATA_FREE.value, _ZEROQ_STEPS.value, _EXPORT.value)
    print(json.dumps(metrics, indent=2, sort_keys=True))


if __name__ == "__main__":
    app.run(main)
