"""Where one CPU train step's time goes: per-op-class breakdown from a profiler trace, beside PyTorch.

    python -m experiments.profile_cpu --model resnet20
    python -m experiments.profile_cpu --model resnet50 --torch_python /work/torchvenv/bin/python
    python -m experiments.profile_cpu --model resnet20 --batch 128 --image_size 32 --steps 3 \\
        --override scan_blocks=False --top 15
    python -m experiments.profile_cpu --model resnet50 --compare --steps 5
    python -m experiments.profile_cpu --model resnet50 --compare --compare_without strided_pointwise_conv
    python -m experiments.profile_cpu --model resnet20 --compare \\
        --compiler_option xla_cpu_experimental_ynn_fusion_type=  # no YNNPACK fusions at all

jaxconv side: the SGD train step ``experiments.bench`` times (``make_train_step``, momentum
0.9), compiled once with bench's options (``CPU_COMPILER_OPTIONS``; ``--xla_defaults``: XLA's
own), run ``--steps`` times under ``jax.profiler.trace``. XLA:CPU records one
trace event per executed thunk (a fusion, a convolution, a loop...), named by its HLO
instruction; each is classified from the compiled HLO (its opcode, the ops fused into it, and
the ``op_name`` metadata JAX writes: ``transpose(jvp(...))`` marks the backward pass):

* ``conv fwd`` / ``conv dx`` / ``conv dw``: convolutions (also fused into a YNNPACK fusion);
  a backward convolution whose output batch dimension is not the batch size is a kernel gradient;
* ``matmul fwd`` / ``matmul bwd``: dots (Dense layers, 1x1 convs that ``cpu_conv`` makes a matmul);
* ``norm fwd`` / ``norm bwd``: fusions of a norm module (``bn*``, ``*norm*``) not holding a conv;
* ``elementwise fwd`` / ``bwd``, ``reduce``, ``pooling``, ``layout`` (thunks that only move data:
  transpose, copy, pad, slice, broadcast), ``optimizer+glue`` (outside the loss's autodiff:
  the optax update, step counters), ``loop/cond control`` (while/conditional thunks' own time).

A thunk's time is exclusive (its nested thunks subtracted). Convolutions XLA hands to Eigen
(rather than to YNNPACK) run asynchronously: their events end early, and the report says so
when the events cover less than the wall time. XLA:CPU runs independent thunks on
several threads at once, so the summed thread time exceeds the wall time; each class's share of
the summed time is also shown scaled to the measured wall time of a step (``est. wall ms``).
With ``--torch_python``, the same model in PyTorch (``experiments.bench_torch``'s definition,
channels_last) is profiled with ``torch.profiler`` in that interpreter and its ops (self CPU
time) are put in the same classes (PyTorch's ``convolution_backward`` computes dx and dw together:
``conv dx+dw``), scaled to its wall time the same way; ratio = jaxconv / PyTorch (> 1: jaxconv
slower). Printed: device, thread counts, shapes, compile time, the class table and the ``--top``
most expensive thunks with shapes and GFLOP/s.

``--compare``: the step compiled with XLA's defaults and with the ``--compiler_option`` values
(default: ``jaxconv.layers.conv.CPU_COMPILER_OPTIONS``),
timed in turn for ``--steps`` rounds (medians of wall and of process CPU time, which a loaded
machine disturbs far less), and the largest difference of the updated parameters.
``--compare_without strided_pointwise_conv``: instead, the step with that ``cpu_conv``
reformulation replaced by ``lax.conv_general_dilated`` against the current one.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time

#: Classes in print order; PyTorch's ``conv dx+dw`` row stands for jaxconv's dx and dw rows.
CLASSES = ("conv fwd", "conv dx", "conv dw", "conv dx+dw", "matmul fwd", "matmul bwd",
           "norm fwd", "norm bwd", "elementwise fwd", "elementwise bwd", "reduce", "pooling",
           "layout", "loss", "optimizer+glue", "loop/cond control", "other")

_LAYOUT_OPS = {"transpose", "copy", "bitcast", "reshape", "parameter", "broadcast", "constant",
               "slice", "concatenate", "pad", "dynamic-slice", "dynamic-update-slice", "tuple",
               "get-tuple-element", "iota", "reverse", "copy-start", "copy-done"}
_CONTROL_OPS = {"while", "conditional", "call"}
_NORM_MODULE = re.compile(r"/(bn\d*|[\w]*norm[\w]*|batch_norm\w*|ln\w*|BatchNorm_\d+|"
                          r"LayerNorm_\d+)/", re.IGNORECASE)
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (.*)$")
_OPCODE = re.compile(r"(?:^|[\s}])([a-z][\w\-]*)\(")
_SHAPE = re.compile(r"^\(?([a-z]+\d*)\[([\d,]*)\]")


# ------------------------------------------------------------------------------ HLO parsing
def parse_hlo(text: str) -> dict[str, dict]:
    """Instruction name -> {opcode, shape, op_name, calls, dim_labels, window, operands,
    position} for every instruction of a scheduled HLO module's text (``compiled.as_text()``).
    ``position`` is the index in the entry computation of the instruction itself or of the
    entry instruction (a loop, a fusion) that runs it. ``'%computations'`` maps computation
    names to their instruction names, ``'%backward_from'`` is the first entry position JAX's
    metadata marks as backward (``transpose(...)``)."""
    instrs, comps, current, entry = {}, {}, None, None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.endswith("{") and " = " not in stripped.split("(")[0]:
            current = stripped.split()[1 if stripped.startswith("ENTRY") else 0].lstrip("%")
            entry = current if stripped.startswith("ENTRY") else entry
            comps[current] = []
            continue
        m = _INSTR.match(line)
        if not m or current is None:
            continue
        name, rest = m.groups()
        op = _OPCODE.search(rest)
        shape = _SHAPE.match(rest)
        meta = re.search(r'op_name="([^"]*)"', rest)
        labels = re.search(r"dim_labels=([\w]+_[\w]+->[\w]+)", rest)
        window = re.search(r"window=\{([^}]*)\}", rest)
        args = rest[op.end():] if op else ""
        instrs[name] = {
            "opcode": op.group(1) if op else "?", "computation": current,
            "shape": tuple(int(d) for d in shape.group(2).split(",") if d) if shape else (),
            "op_name": meta.group(1) if meta else "",
            "calls": re.findall(r"(?:calls|body|condition|to_apply|branch_computations)="
                                r"\{?%?([\w.\-]+)", rest),
            "dim_labels": labels.group(1) if labels else None,
            "window": window.group(1) if window else "",
            "operand_names": re.findall(r"%([\w.\-]+)", args.split(")", 1)[0]),
            "contracting": re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest),
        }
        comps[current].append(name)
    for ins in instrs.values():
        ins["operands"] = [instrs[o]["shape"] for o in ins["operand_names"] if o in instrs]
    # Entry positions, pushed down into called computations.
    backward_from = None
    for i, name in enumerate(comps.get(entry, ())):
        todo = [name]
        while todo:
            ins = instrs[todo.pop()]
            ins["position"] = i
            for called in ins["calls"]:
                todo.extend(comps.get(called, ()))
        if backward_from is None and "transpose(" in instrs[name]["op_name"]:
            backward_from = i
    instrs["%computations"] = comps
    instrs["%backward_from"] = backward_from
    return instrs


def _fused(instrs: dict, name: str) -> list[dict]:
    """The instruction and, for a fusion, every instruction of its fused computation(s)."""
    out, todo = [instrs[name]], [instrs[name]]
    while todo:
        ins = todo.pop()
        if ins["opcode"] in _CONTROL_OPS:
            continue
        for called in ins["calls"]:
            for inner in instrs["%computations"].get(called, ()):
                out.append(instrs[inner])
                todo.append(instrs[inner])
    return out


def conv_flops(ins: dict) -> float:
    """FLOPs of an HLO convolution: 2 x output elements x kernel elements / output features."""
    if not ins["dim_labels"] or len(ins["operands"]) < 2:
        return 0.0
    rhs_labels = ins["dim_labels"].split("->")[0].split("_")[1]
    rhs = ins["operands"][1]
    out_features = rhs[rhs_labels.index("o")] if "o" in rhs_labels and rhs else 1
    n_out = 1
    for d in ins["shape"]:
        n_out *= d
    n_rhs = 1
    for d in rhs:
        n_rhs *= d
    return 2.0 * n_out * n_rhs / max(out_features, 1)


def dot_flops(ins: dict) -> float:
    """FLOPs of an HLO dot: 2 x output elements x contracted size (from the lhs)."""
    m = ins["contracting"]
    if not ins["operands"]:
        return 0.0
    lhs = ins["operands"][0]
    n_out = 1
    for d in ins["shape"]:
        n_out *= d
    contracted = 1
    for i in (int(v) for v in (m.group(1).split(",") if m and m.group(1) else [])):
        contracted *= lhs[i]
    return 2.0 * n_out * contracted


def classify(instrs: dict, name: str, batch: int) -> tuple[str, float, str]:
    """(class, FLOPs, description) of the thunk that runs instruction ``name`` (module doc)."""
    ins = instrs.get(name)
    if ins is None:
        return "other", 0.0, name
    members = _fused(instrs, name)
    ops = {m["opcode"] for m in members}
    op_name = next((m["op_name"] for m in members if m["op_name"]), "")
    # Without metadata (XLA-made fusions), the schedule position tells forward from backward.
    start = instrs["%backward_from"]
    backward = ("transpose(" in op_name if op_name else
                start is not None and ins.get("position", -1) >= start)
    in_loss = "jvp(" in op_name or backward or not op_name
    convs = [m for m in members if m["opcode"] == "convolution"]
    if convs:
        c = convs[0]
        out_labels = c["dim_labels"].split("->")[1] if c["dim_labels"] else "b01f"
        out_batch = c["shape"][out_labels.index("b")] if c["shape"] else batch
        kind = "fwd" if not backward else ("dx" if out_batch == batch else "dw")
        desc = (f"{c['operands'][0] if c['operands'] else '?'} * "
                f"{c['operands'][1] if len(c['operands']) > 1 else '?'} -> {c['shape']} "
                f"{c['window']} {c['dim_labels']}")
        return f"conv {kind}", sum(conv_flops(m) for m in convs), desc
    dots = [m for m in members if m["opcode"] == "dot"]
    if dots:
        d = dots[0]
        desc = f"{d['operands']} -> {d['shape']}"
        return f"matmul {'bwd' if backward else 'fwd'}", sum(dot_flops(m) for m in dots), desc
    desc = f"{ins['opcode']} {ins['shape']} {op_name[-80:]}"
    if ins["opcode"] in _CONTROL_OPS:
        return "loop/cond control", 0.0, desc
    if ops & {"reduce-window", "select-and-scatter"}:
        return "pooling", 0.0, desc
    if ops <= _LAYOUT_OPS:
        return "layout", 0.0, desc
    if not in_loss:
        return "optimizer+glue", 0.0, desc
    if re.search(r"cross_entropy|log_softmax|logsumexp|one_hot", op_name):
        return "loss", 0.0, desc
    if _NORM_MODULE.search(op_name):
        return f"norm {'bwd' if backward else 'fwd'}", 0.0, desc
    if "reduce" in ops:
        return "reduce", 0.0, desc
    return f"elementwise {'bwd' if backward else 'fwd'}", 0.0, desc


# ----------------------------------------------------------------------------- trace parsing
def exclusive_times(events: list[dict]) -> list[tuple[str, float]]:
    """(name, exclusive µs) of complete ("X") events: each event's duration less the events
    nested inside it on the same thread."""
    by_thread = collections.defaultdict(list)
    for e in events:
        if e.get("ph") == "X" and "dur" in e:
            by_thread[e["tid"]].append(e)
    out = []
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[list] = []  # [end, name, exclusive]
        for e in evs:
            while stack and e["ts"] >= stack[-1][0] - 1e-3:
                end, name, excl = stack.pop()
                out.append((name, excl))
            if stack:
                stack[-1][2] -= e["dur"]
            stack.append([e["ts"] + e["dur"], e["name"], e["dur"]])
        out.extend((name, excl) for _, name, excl in stack)
    return out


def thunk_times(trace_dir: str, module: str) -> dict[str, float]:
    """HLO instruction -> summed exclusive µs of its thunks in the trace of jit module
    ``module`` found under ``trace_dir``."""
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))
    if not files:
        raise RuntimeError(f"no *.trace.json.gz under {trace_dir}: the profiler wrote nothing")
    with gzip.open(files[-1]) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    thunks = [e for e in events
              if e.get("ph") == "X" and e.get("args", {}).get("hlo_module") == module
              and not e["name"].startswith("ThunkExecutor")]
    totals: dict[str, float] = collections.defaultdict(float)
    for name, excl in exclusive_times(thunks):
        totals[name] += max(excl, 0.0)
    return dict(totals)


# ------------------------------------------------------------------------------ jaxconv side
def profile_jax(name: str, batch: int, image_size: int | None, steps: int,
                overrides: dict, compiler_options: dict | None = None,
                hlo_out: str | None = None) -> dict:
    """Profile ``steps`` train steps of registry model ``name``; returns the class table."""
    import jax

    from jaxconv import analysis

    lowered, state, data, init_s = _lowered_step(name, batch, image_size, overrides)
    h, w, c = data["image"].shape[1:]
    start = time.perf_counter()
    compiled = lowered.compile(compiler_options=compiler_options or None)
    compile_s = time.perf_counter() - start
    wall_s, cpu_s = _wall_and_cpu_seconds(lambda: compiled(state, data), max(steps, 3))
    if hlo_out:
        with open(hlo_out, "w") as f:
            f.write(compiled.as_text())
    instrs = parse_hlo(compiled.as_text())
    module = compiled.as_text().split("HloModule ", 1)[1].split(",", 1)[0].split()[0]
    with tempfile.TemporaryDirectory(prefix="profile_cpu_") as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(steps):
                jax.block_until_ready(compiled(state, data))
        times = thunk_times(trace_dir, module)
    rows = collections.defaultdict(lambda: {"us": 0.0, "flops": 0.0, "count": 0})
    top = []
    for instr, us in times.items():
        cls, flops, desc = classify(instrs, instr, batch)
        rows[cls]["us"] += us / steps
        rows[cls]["flops"] += flops
        rows[cls]["count"] += 1
        top.append((us / steps, cls, instr, flops, desc))
    top.sort(reverse=True)
    return {"device": analysis.device_name(), "jax": jax.__version__, "model": name,
            "input": (batch, h, w, c), "init_s": init_s, "compile_s": compile_s,
            "wall_ms": wall_s * 1e3, "cpu_ms": cpu_s * 1e3, "classes": dict(rows), "top": top}


def _lowered_step(name: str, batch: int, image_size: int | None, overrides: dict):
    """(lowered train step, state, batch, init seconds): ``experiments.bench``'s SGD step."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import jaxconv
    from jaxconv.train import create_train_state, make_train_step

    info = jaxconv.model_info(name)
    h, w, c = info.input_size if image_size is None else (image_size, image_size,
                                                          info.input_size[2])
    model = jaxconv.create_model(name, **overrides)
    tx = optax.sgd(0.01, momentum=0.9)
    start = time.perf_counter()
    state = create_train_state(model, tx, (1, h, w, c), seed=0)
    init_s = time.perf_counter() - start
    rng = np.random.default_rng(0)
    data = {"image": jnp.asarray(rng.standard_normal((batch, h, w, c), dtype=np.float32)),
            "label": jnp.asarray(rng.integers(0, info.num_classes, batch), jnp.int32)}
    step = jax.jit(make_train_step(model, tx, lambda _: 0.01, num_classes=info.num_classes))
    return step.lower(state, data), state, data, init_s


#: ``--compare_without`` choices: a ``jaxconv.layers.conv`` reformulation -> what the baseline
#: step computes instead (``lax.conv_general_dilated`` on the same arguments).
_REFORMULATIONS = ("strided_pointwise_conv",)


def _lax_instead(name: str):
    from jax import lax

    if name == "strided_pointwise_conv":
        return lambda x, w, strides, precision=None: lax.conv_general_dilated(
            x, w, strides, ((0, 0), (0, 0)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=precision)
    raise ValueError(f"--compare_without {name!r} is not one of {list(_REFORMULATIONS)}")


def compare_options(name: str, batch: int, image_size: int | None, overrides: dict,
                    options: dict, repeats: int, without: str | None = None) -> dict:
    """The train step compiled twice, with XLA's defaults and with ``options``, timed in turn
    (``repeats`` rounds): medians of wall and process CPU ms, and the largest difference of
    the updated parameters (the options must not change results beyond round-off). With
    ``without`` (a ``jaxconv.layers.conv`` reformulation), the baseline ("default") is the
    step traced with that reformulation replaced by ``lax.conv_general_dilated`` and the other
    ("options") the current code, both with ``options`` (may be empty)."""
    import statistics
    from unittest import mock

    import jax
    import jax.numpy as jnp

    from jaxconv import analysis
    from jaxconv.layers import conv as conv_lib

    if without is None:
        lowered, state, data, _ = _lowered_step(name, batch, image_size, overrides)
        steps = {"default": lowered.compile(),
                 "options": lowered.compile(compiler_options=options)}
    else:
        with mock.patch.object(conv_lib, without, _lax_instead(without)):
            base, state, data, _ = _lowered_step(name, batch, image_size, overrides)
        lowered = _lowered_step(name, batch, image_size, overrides)[0]
        steps = {"default": base.compile(compiler_options=options or None),
                 "options": lowered.compile(compiler_options=options or None)}
    outs = {k: fn(state, data) for k, fn in steps.items()}
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
        jax.tree.leaves(outs["default"][0].params), jax.tree.leaves(outs["options"][0].params)))
    walls = {k: [] for k in steps}
    cpus = {k: [] for k in steps}
    for _ in range(repeats):
        for k, fn in steps.items():
            cpu, wall = time.process_time(), time.perf_counter()
            jax.block_until_ready(fn(state, data))
            walls[k].append(time.perf_counter() - wall)
            cpus[k].append(time.process_time() - cpu)
    row = {"device": analysis.device_name(), "model": name,
           "input": "x".join(map(str, data["image"].shape)), "options": options,
           "baseline": f"lax instead of {without}" if without else "XLA defaults",
           "max_param_diff": diff, "load": round(os.getloadavg()[0], 1)}
    for k in steps:
        row[f"{k}_wall_ms"] = round(statistics.median(walls[k]) * 1e3, 1)
        row[f"{k}_cpu_ms"] = round(statistics.median(cpus[k]) * 1e3, 1)
    row["speedup_wall"] = round(row["default_wall_ms"] / row["options_wall_ms"], 3)
    row["speedup_cpu"] = round(row["default_cpu_ms"] / row["options_cpu_ms"], 3)
    return row


def _wall_and_cpu_seconds(fn, repeats: int) -> tuple[float, float]:
    """Medians of wall and process CPU seconds (all threads) of ``fn()`` after one warm-up
    call. On a machine shared with other work the CPU seconds vary far less than the wall
    seconds (what comparisons under load should use); on an idle one wall is the figure."""
    import statistics

    import jax

    jax.block_until_ready(fn())
    walls, cpus = [], []
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        jax.block_until_ready(fn())
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def profile_torch(torch_python: str, name: str, batch: int, image_size: int,
                  steps: int) -> dict:
    """The PyTorch side through ``experiments.bench_torch --worker --profile``."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_torch.py")
    result = subprocess.run(
        [torch_python, script, "--worker", "--profile", "--model", name, "--batch", str(batch),
         "--image_size", str(image_size), "--repeats", str(steps)],
        capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"error: the PyTorch worker failed:\n{result.stderr[-3000:]}")
    return json.loads([ln for ln in result.stdout.splitlines() if ln.startswith("{")][-1])


def _scaled(classes: dict, wall_ms: float) -> dict[str, float]:
    total = sum(v["us"] for v in classes.values()) or 1.0
    return {k: v["us"] / total * wall_ms for k, v in classes.items()}


def print_report(jx: dict, th: dict | None, top: int) -> None:
    """The class table (and PyTorch's beside it) and the top thunks."""
    b, h, w, c = jx["input"]
    print(f"device: {jx['device']}, jax {jx['jax']}, float32; model {jx['model']}, input "
          f"{b}x{h}x{w}x{c}; init {jx['init_s']:.1f} s, compile {jx['compile_s']:.1f} s; "
          f"train step wall {jx['wall_ms']:.1f} ms ({b / jx['wall_ms'] * 1e3:.1f} img/s), "
          f"process CPU time {jx['cpu_ms']:.1f} ms; load average {os.getloadavg()[0]:.1f}")
    thread_ms = sum(v["us"] for v in jx["classes"].values()) / 1e3
    print(f"summed thunk thread time {thread_ms:.1f} ms per step (threads overlap: "
          f"{thread_ms / jx['wall_ms']:.2f}x wall)")
    if thread_ms < 0.9 * jx["wall_ms"]:
        print("note: the thunks' events cover less than the wall time: work that runs "
              "asynchronously (XLA's Eigen convolutions do) or a loaded machine's waits are not "
              "attributed, and those classes' rows and GFLOP/s read low / high")
    js = _scaled(jx["classes"], jx["wall_ms"])
    ts = {}
    if th:
        print(f"torch {th['torch']} ({th['threads']} threads, {th['memory_format']}): train step "
              f"wall {th['wall_ms']:.1f} ms ({b / th['wall_ms'] * 1e3:.1f} img/s), process CPU "
              f"time {th['cpu_ms']:.1f} ms; step time ratio jaxconv/torch wall "
              f"{jx['wall_ms'] / th['wall_ms']:.2f}, CPU {jx['cpu_ms'] / th['cpu_ms']:.2f}")
        ts = _scaled(th["classes"], th["wall_ms"])
    head = "| class | jaxconv thread ms | share | est. wall ms | GFLOP/s (thread) |"
    if th:
        head += " torch ms | torch share | ratio jax/torch |"
    print("\n" + head)
    print("|" + "---|" * (head.count("|") - 1))
    total = sum(v["us"] for v in jx["classes"].values()) or 1.0
    ttotal = sum(v["us"] for v in th["classes"].values()) if th else 1.0
    keys = [k for k in CLASSES if k in jx["classes"] or (th and k in th["classes"])]
    for k in keys:
        v = jx["classes"].get(k, {"us": 0.0, "flops": 0.0})
        rate = f"{v['flops'] / v['us'] / 1e3:.1f}" if v["flops"] and v["us"] else ""
        row = (f"| {k} | {v['us'] / 1e3:.1f} | {v['us'] / total:.1%} | {js.get(k, 0.0):.1f} | "
               f"{rate} |")
        if th:
            tv = th["classes"].get(k, {"us": 0.0})["us"]
            tk = ts.get(k, 0.0)
            ref = js.get(k, 0.0) + (js.get("conv dx", 0.0) + js.get("conv dw", 0.0)
                                    if k == "conv dx+dw" else 0.0)
            ratio = f"{ref / tk:.2f}" if tk > 0.05 else ""
            row += f" {tk:.1f} | {tv / ttotal:.1%} | {ratio} |"
        print(row)
    if th:
        dxdw = js.get("conv dx", 0.0) + js.get("conv dw", 0.0)
        print(f"(jaxconv conv dx + dw est. wall {dxdw:.1f} ms, against torch's conv dx+dw row)")
    print(f"\ntop {top} thunks (thread ms per step, class, HLO name, GFLOP/s, what):")
    for us, cls, instr, flops, desc in jx["top"][:top]:
        rate = f"{flops / us / 1e3:6.1f}" if flops and us else "      "
        print(f"  {us / 1e3:8.2f}  {cls:16s} {instr:32s} {rate}  {desc[:110]}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=None,
                        help="default: experiments.bench_torch's row for the model, else 16")
    parser.add_argument("--image_size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--override", action="append", default=[],
                        help="model field=value (Python literal), e.g. scan_blocks=False")
    parser.add_argument("--compiler_option", action="append", default=[],
                        help="XLA option=value for the step's compile, e.g. "
                             "xla_cpu_experimental_ynn_fusion_type= (empty: no YNNPACK fusions); "
                             "default: jaxconv.layers.conv.CPU_COMPILER_OPTIONS, the options "
                             "experiments.bench and the training loop compile with")
    parser.add_argument("--xla_defaults", action="store_true",
                        help="profile the step compiled with XLA's default options instead")
    parser.add_argument("--compare", action="store_true",
                        help="instead of profiling: the step with and without the "
                             "--compiler_option values, timed in turn (--steps rounds)")
    parser.add_argument("--compare_without", default=None, choices=_REFORMULATIONS,
                        help="with --compare: the baseline step computes this cpu_conv "
                             "reformulation with lax instead (XLA options: --compiler_option "
                             "only, none by default)")
    parser.add_argument("--torch_python", default=None,
                        help="an interpreter with torch: profile the PyTorch model beside")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", default=None, help="also write the result here")
    parser.add_argument("--hlo_out", default=None, help="write the compiled step's HLO here")
    args = parser.parse_args(argv)

    import ast

    from experiments.bench_torch import MODELS
    import jaxconv
    from jaxconv.layers.conv import CPU_COMPILER_OPTIONS

    if args.model not in jaxconv.list_models():
        raise SystemExit(f"error: --model {args.model!r} is not registered; see "
                         "python -m experiments.list models")
    if args.torch_python and args.model not in MODELS:
        raise SystemExit(f"error: --model {args.model!r} has no PyTorch twin for "
                         f"--torch_python; valid: {list(MODELS)}")
    if args.torch_python and not os.access(args.torch_python, os.X_OK):
        raise SystemExit(f"error: --torch_python {args.torch_python!r} is not an executable")
    if args.steps < 1:
        raise SystemExit(f"error: --steps {args.steps} must be >= 1")
    options = {}
    for item in args.compiler_option:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --compiler_option {item!r} must be option=value")
        options[key] = value
    overrides = {}
    for item in args.override:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"error: --override {item!r} must be field=value")
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    batch, size, _ = MODELS.get(args.model, (16, None, None))
    batch = args.batch or batch
    size = args.image_size or size
    if args.compare:
        if not options and not args.compare_without:  # the options jaxconv.layers.conv proposes
            options = dict(CPU_COMPILER_OPTIONS)
        row = compare_options(args.model, batch, size, overrides, options, args.steps,
                              args.compare_without)
        print(json.dumps(row))
        return row
    if not options and not args.xla_defaults:  # the step experiments.bench times
        options = dict(CPU_COMPILER_OPTIONS)
    jx = profile_jax(args.model, batch, size, args.steps, overrides, options, args.hlo_out)
    th = None
    if args.torch_python:
        th = profile_torch(args.torch_python, args.model, batch, jx["input"][1], args.steps)
    print_report(jx, th, args.top)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"jax": {k: v for k, v in jx.items() if k != "top"}, "torch": th}, f,
                      indent=1, default=str)
    return {"jax": jx, "torch": th}


if __name__ == "__main__":
    main()
    sys.stdout.flush()
