"""Model benchmarks: ``python -m experiments.bench {models,compile} ...``.

``models``: train and inference images/s, compile time, parameters and FLOPs (XLA cost analysis)
per model, printed as a table and appended to a CSV, with the device named in every row.

    python -m experiments.bench models --models resnet20,resnet50 --batch_size 128

``--implementations xla,pallas`` times each model once per kernel path (the ``implementation``
field of models built on ``kernels_pallas`` ops; models without it run once). On CPU the Pallas
path is interpreted: a correctness path, minutes per step at real sizes.

``costs``: parameters, forward FLOPs and activations per image at each model's input size (no
timing, nothing compiled: the 'Fast and Accurate Model Scaling' view, where activations rather
than FLOPs predict runtime on memory-bound accelerators).

    python -m experiments.bench costs --models resnet50,densenet121,vgg16,mobilenetv1_100

``compile``: how compile time of a forward+backward step grows with depth, with the repeated
blocks of a stage compiled once (``scan_blocks=True``) and unrolled (``False``).

    python -m experiments.bench compile --models resnet56,resnet1202 --scan both

Timing is device-only: warm-up, ``block_until_ready``, median of repeats. ``--models`` takes
registered names and ``path/to/file.py:factory`` / ``package.module:factory`` specs whose
factory is decorated with ``register_model`` (for its input size). Rows are appended to
``runs/bench/<command>.csv`` unless ``--csv`` names another file.
"""
from __future__ import annotations

import argparse
import ast
import csv
import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxconv
from jaxconv import analysis
from jaxconv.train.state import create_train_state
from jaxconv.train.steps import make_train_step

#: Where the CSVs go by default (git-ignored), relative to the working directory.
RUNS = os.path.join("runs", "bench")


def bench_model(name: str, *, batch_size: int, image_size: int | None, dtype: str,
                repeats: int, overrides: dict) -> dict:
    info = jaxconv.model_info(name)
    h, w, c = info.input_size if image_size is None else (image_size, image_size,
                                                          info.input_size[2])
    shape = (batch_size, h, w, c)
    model = jaxconv.create_model(name, dtype=jnp.dtype(dtype), **overrides)
    tx = optax.sgd(0.01, momentum=0.9)
    state = create_train_state(model, tx, (1, h, w, c), seed=0)
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.standard_normal(shape, dtype=np.float32)),
             "label": jnp.asarray(rng.integers(0, info.num_classes, batch_size), jnp.int32)}

    step = jax.jit(make_train_step(model, tx, lambda _: 0.01, num_classes=info.num_classes))
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    train_s = analysis.median_seconds(lambda s, b: compiled(s, b)[1]["loss"], state, batch, repeats=repeats)

    variables = {"params": state.params, **state.model_state}
    infer = jax.jit(lambda v, x: model.apply(v, x, train=False))
    infer_s = analysis.median_seconds(infer, variables, batch["image"], repeats=repeats)
    return {
        "device": analysis.device_name(), "model": name,
        "overrides": ",".join(f"{k}={v}" for k, v in overrides.items()) or "-",
        "input": "x".join(map(str, shape)), "dtype": dtype, "params": analysis.count_params(state.params),
        "gflops_fwd_per_image": analysis.model_flops(model, (1, h, w, c)) / 1e9,
        "compile_train_s": round(compile_s, 2),
        "train_step_ms": round(train_s * 1e3, 1),
        "train_img_per_s": round(batch_size / train_s, 1),
        "infer_img_per_s": round(batch_size / infer_s, 1),
        "jax": jax.__version__,
    }


def bench_compile(name: str, *, scan: bool, batch_size: int) -> dict:
    info = jaxconv.model_info(name)
    model = jaxconv.create_model(name, scan_blocks=scan)
    shape = (batch_size, *info.input_size)
    return {
        "device": analysis.device_name(), "model": name, "scan_blocks": scan,
        "params": analysis.count_params(analysis.init_variables(model, shape)["params"]),
        "compile_fwd_s": round(analysis.compile_time(model, shape, train=False), 2),
        "compile_fwd_bwd_s": round(analysis.compile_time(model, shape, train=True), 2),
        "jax": jax.__version__,
    }


def model_costs(name: str, *, image_size: int | None) -> dict:
    info = jaxconv.model_info(name)
    h, w, c = info.input_size if image_size is None else (image_size, image_size,
                                                          info.input_size[2])
    model = jaxconv.create_model(name)
    shape = (1, h, w, c)
    acts = analysis.model_activations(model, shape)
    flops = analysis.model_flops(model, shape)
    return {
        "model": name, "input": f"{h}x{w}x{c}",
        "params_M": round(analysis.count_params(analysis.init_variables(model, shape)["params"])
                          / 1e6, 3),
        "gflops_fwd": round(flops / 1e9, 3),
        "gmacs_fwd": round(flops / 2e9, 3),  # the unit most papers print as 'FLOPs'
        "activations_M": round(acts / 1e6, 3),
        "activation_MB_f32": round(acts * 4 / 2**20, 1),
        "jax": jax.__version__,
    }


def print_table(rows: list[dict]) -> None:
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(_fmt(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(_fmt(r[k]).ljust(widths[k]) for k in keys))


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) and abs(v) < 1 else str(v)


def append_csv(path: str, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)


def _model_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        try:
            jaxconv.model_info(n)  # unknown names fail here, before any compile
        except ValueError as err:  # argparse shows this message (a ValueError's it would drop)
            raise argparse.ArgumentTypeError(str(err)) from None
    return names


def _fields(name: str) -> set[str]:
    return {f.name for f in dataclasses.fields(jaxconv.create_model(name))}


def _implementations(text: str) -> list[str | None]:
    """'xla,pallas,auto' -> ['xla', 'pallas', None] (auto: the op picks per backend)."""
    valid = {"xla": "xla", "pallas": "pallas", "auto": None}
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown implementation(s) {bad}; valid: {list(valid)}")
    return [valid[n] for n in names]


def _overrides(text: str) -> dict:
    """'scan_blocks=False,drop_path_rate=0.1' -> {'scan_blocks': False, 'drop_path_rate': 0.1}."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("models", help="images/s, compile time, params, FLOPs per model")
    m.add_argument("--models", type=_model_list, default="resnet20,resnet50")
    m.add_argument("--batch_size", type=int, default=128)
    m.add_argument("--image_size", type=int, default=None,
                   help="square input size (default: each model's own)")
    m.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    m.add_argument("--repeats", type=int, default=5)
    m.add_argument("--model_overrides", type=_overrides, default={},
                   help="model fields for every model, e.g. scan_blocks=False")
    m.add_argument("--implementations", type=_implementations, default=[None],
                   help="comma-separated kernel paths (xla, pallas, auto) to time for models "
                        "with an `implementation` field")
    m.add_argument("--csv", default=os.path.join(RUNS, "bench_models.csv"))
    k = sub.add_parser("costs", help="params, FLOPs and activations per model (no timing)")
    k.add_argument("--models", type=_model_list,
                   default="resnet50,densenet121,vgg16,mobilenetv1_100,inception_v3")
    k.add_argument("--image_size", type=int, default=None,
                   help="square input size (default: each model's own)")
    k.add_argument("--csv", default=os.path.join(RUNS, "bench_costs.csv"))
    c = sub.add_parser("compile", help="compile time against depth, scanned vs unrolled blocks")
    c.add_argument("--models", type=_model_list, default="resnet20,resnet56,resnet110,resnet1202")
    c.add_argument("--scan", choices=["on", "off", "both"], default="on")
    c.add_argument("--batch_size", type=int, default=8)
    c.add_argument("--csv", default=os.path.join(RUNS, "bench_compile.csv"))
    args = parser.parse_args(argv)
    for name in args.models:  # bad overrides: the registry's message, before any compile
        try:
            jaxconv.create_model(name, **getattr(args, "model_overrides", {}))
        except ValueError as err:
            parser.error(str(err))

    print(f"device: {analysis.device_name()}  jax {jax.__version__}")
    rows = []
    for name in args.models:
        if args.command == "costs":
            rows.append(model_costs(name, image_size=args.image_size))
        elif args.command == "models":
            has_field = "implementation" in _fields(name)
            for implementation in args.implementations if has_field else [None]:
                overrides = dict(args.model_overrides)
                if has_field and implementation is not None:
                    overrides["implementation"] = implementation
                rows.append(bench_model(name, batch_size=args.batch_size,
                                        image_size=args.image_size, dtype=args.dtype,
                                        repeats=args.repeats, overrides=overrides))
        else:
            for scan in {"on": [True], "off": [False], "both": [True, False]}[args.scan]:
                rows.append(bench_compile(name, scan=scan, batch_size=args.batch_size))
        print(f"  done {name}", flush=True)
    if args.command == "models":  # ratios against the first model, measured in this process
        for r in rows:
            for mode in ("train", "infer"):
                r[f"{mode}_vs_{rows[0]['model']}"] = round(
                    r[f"{mode}_img_per_s"] / rows[0][f"{mode}_img_per_s"], 3)
    print_table(rows)
    append_csv(args.csv, rows)
    print(f"appended {len(rows)} rows to {args.csv}")
    return rows


if __name__ == "__main__":
    main()
