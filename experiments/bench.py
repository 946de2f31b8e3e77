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

``memory``: per-device bytes of a compiled train step (adamw) under each mesh and sharding:
parameters and optimizer state from their shardings, and XLA's memory analysis of the compiled
step (arguments, outputs, temporaries: activations, gradients, gathered parameters). Nothing
runs; the state is abstract. Needs as many devices as the mesh has; on CPU fake them:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m experiments.bench memory \
        --models convnext_base,resnet152 --batch_size 8 \
        --mesh data=8 --mesh data=4,fsdp=2 --mesh data=2,fsdp=4 --mesh data=1,fsdp=8

A mesh with an ``fsdp`` axis larger than 1 uses ``config.sharding="fsdp"``, others replicate.
``--batch_size`` is per device.

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
from jaxconv.layers.conv import cpu_compiler_options
from jaxconv.train import mesh as mesh_lib
from jaxconv.train import sharding as sharding_lib
from jaxconv.train.config import default_config
from jaxconv.train.optim import make_optimizer
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

    step = jax.jit(make_train_step(model, tx, lambda _: 0.01, num_classes=info.num_classes),
                   compiler_options=cpu_compiler_options())  # XLA:CPU conv routing (conv.py)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    train_s = analysis.median_seconds(lambda s, b: compiled(s, b)[1]["loss"], state, batch, repeats=repeats)

    variables = {"params": state.params, **state.model_state}
    infer = jax.jit(lambda v, x: model.apply(v, x, train=False),
                    compiler_options=cpu_compiler_options())
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


def bench_memory(name: str, mesh_spec, *, batch_size: int, image_size: int | None,
                 dtype: str, overrides: dict | None = None,
                 min_size: int = sharding_lib.FSDP_MIN_SIZE) -> dict:
    """Per-device memory of ``name``'s adamw train step on ``mesh_spec`` (``((axis, size),
    ...)``), ``batch_size`` images per device; compiled from abstract inputs, never run."""
    info = jaxconv.model_info(name)
    h, w, c = info.input_size if image_size is None else (image_size, image_size,
                                                          info.input_size[2])
    mesh = mesh_lib.make_mesh(mesh_spec)
    fsdp = dict(mesh.shape).get(mesh_lib.FSDP_AXIS, 1)
    sharding = "fsdp" if fsdp > 1 else "replicate"
    config = default_config()
    config.optimizer, config.learning_rate, config.weight_decay = "adamw", 1e-3, 0.05
    model = jaxconv.create_model(name, dtype=jnp.dtype(dtype), **(overrides or {}))
    tx, schedule = make_optimizer(config, 1000)
    abstract = jax.eval_shape(lambda: create_train_state(model, tx, (1, h, w, c), seed=0))
    shardings = sharding_lib.state_shardings(abstract, mesh, sharding, min_size=min_size)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         abstract, shardings)
    global_batch = batch_size * mesh.size
    batch_sh = mesh_lib.batch_sharded(mesh)
    batch = {"image": jax.ShapeDtypeStruct((global_batch, h, w, c), jnp.float32,
                                           sharding=batch_sh),
             "label": jax.ShapeDtypeStruct((global_batch,), jnp.int32, sharding=batch_sh)}
    # The state is donated, as on an accelerator: the updated state reuses its buffers.
    step = jax.jit(make_train_step(model, tx, schedule, num_classes=info.num_classes),
                   in_shardings=(shardings, batch_sh),
                   out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=0)
    start = time.perf_counter()
    with jax.set_mesh(mesh):
        compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    mem = compiled.memory_analysis()
    mb = lambda n: round(n / 2**20, 3)  # noqa: E731
    params = sharding_lib.per_device_bytes(abstract.params, shardings.params)
    opt = sharding_lib.per_device_bytes(abstract.opt_state, shardings.opt_state)
    args, out = mem.argument_size_in_bytes, mem.output_size_in_bytes
    temp, alias = mem.temp_size_in_bytes, mem.alias_size_in_bytes
    return {
        "device": analysis.device_name(), "model": name,
        "mesh": ",".join(f"{a}={n}" for a, n in mesh.shape.items()), "sharding": sharding,
        "input": f"{global_batch}x{h}x{w}x{c}", "dtype": dtype,
        "params_M": round(analysis.count_params(abstract.params) / 1e6, 2),
        "params_MB_per_dev": mb(params), "opt_MB_per_dev": mb(opt),
        "arguments_MB": mb(args), "temp_MB": mb(temp), "outputs_MB": mb(out),
        "aliased_MB": mb(alias), "total_MB": mb(args + out + temp - alias),
        "compile_s": round(compile_s, 1), "jax": jax.__version__,
    }


def _mesh_arg(text: str) -> tuple[tuple[str, int], ...]:
    """'data=2,fsdp=4' -> (('data', 2), ('fsdp', 4)); sizes may be -1 (the rest)."""
    axes = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        axis, sep, size = item.partition("=")
        try:
            axes.append((axis.strip(), int(size)))
        except ValueError:
            sep = ""
        if not sep:
            raise argparse.ArgumentTypeError(f"--mesh {text!r}: expected AXIS=SIZE,... with axes "
                                             f"from {list(mesh_lib.MESH_AXES)}, e.g. "
                                             "data=2,fsdp=4")
    try:
        mesh_lib.parse_mesh(axes, jax.device_count())
    except ValueError as err:
        hint = (" (on CPU fake devices with XLA_FLAGS=--xla_force_host_platform_device_count=N)"
                if jax.default_backend() == "cpu" else "")
        raise argparse.ArgumentTypeError(f"--mesh {text!r}: {err}{hint}") from None
    return tuple(axes)


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
    y = sub.add_parser("memory", help="per-device bytes of a compiled adamw train step, "
                                      "replicated vs fsdp, per mesh")
    y.add_argument("--models", type=_model_list, default="convnext_base")
    y.add_argument("--mesh", type=_mesh_arg, action="append", default=None,
                   help="AXIS=SIZE,... (repeatable); default: data=N, and data=N/k,fsdp=k "
                        "for k = 2, 4, ... up to the device count N")
    y.add_argument("--batch_size", type=int, default=8, help="images per device")
    y.add_argument("--image_size", type=int, default=None,
                   help="square input size (default: each model's own)")
    y.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    y.add_argument("--model_overrides", type=_overrides, default={},
                   help="model fields for every model, e.g. drop_path_rate=0.1")
    y.add_argument("--csv", default=os.path.join(RUNS, "bench_memory.csv"))
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
        elif args.command == "memory":
            n = jax.device_count()
            meshes = args.mesh or [(("data", n),)] + [
                (("data", n // k), ("fsdp", k)) for k in (2 ** i for i in range(1, 16))
                if k <= n and n % k == 0]
            for spec in meshes:
                rows.append(bench_memory(name, spec, batch_size=args.batch_size,
                                         image_size=args.image_size, dtype=args.dtype,
                                         overrides=args.model_overrides))
                print(f"  {name} {rows[-1]['mesh']}: {rows[-1]['total_MB']} MB per device",
                      flush=True)
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
