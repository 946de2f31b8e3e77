"""Benchmark of depthwise_conv2d: ``python -m kernels_pallas.bench depthwise_conv2d``.

One row per (shape, kernel size, dtype, implementation): forward ms and forward+backward ms
(device-only: warm-up call first, ``block_until_ready``, median of repeats), achieved FLOP/s and
bytes/s, fraction of the device roofline, and the speed-up over XLA's
``lax.conv_general_dilated(feature_group_count=C)`` measured in the same process
(``implementation="reference"`` rows). With ``--torch_python PATH`` the same shapes are timed in
PyTorch (``torch_timing.py`` run by that interpreter, in both memory formats) and reported as
their own rows, with the same ratio column.

Counting model (the same for every implementation, so rows compare): forward FLOPs
2*B*Ho*Wo*C*KH*KW (multiply-adds of the direct formulation, whatever the path computes);
forward+backward three times that (input and kernel gradients cost one forward each). Bytes: the
minimum traffic, forward = x + w + y, backward adds g, x, w, dx, dw. Roofline time =
max(FLOPs / peak FLOP/s, bytes / peak bytes/s); the fraction is roofline time / measured time.
Peaks: GPUs from ``PEAKS`` (non-tensor-core FP32 FMA rate: a depthwise conv has no channel
reduction for tensor cores); CPU FLOP/s from ``--cpu_ghz`` (AVX2: 2 FMA pipes x 8 float32
lanes x 2 = 32 FLOP/cycle/core) and CPU bytes/s measured here (a large copy), both printed.

    python -m kernels_pallas.bench depthwise_conv2d --shapes 8x56x56x128 \
        --kernel_sizes 7,13,31 --dtype float32 --torch_python /work/timm-venv/bin/python \
        --csv kernels_pallas/results/depthwise_conv2d_cpu.csv
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.analysis import device_name, median_seconds
from kernels_pallas.bench import append_csv
from kernels_pallas.core import device_kind, platform
from kernels_pallas.depthwise_conv2d import depthwise_conv2d, depthwise_conv2d_reference, tuning

#: Peak (FP32 non-tensor FLOP/s, HBM bytes/s) per device-kind prefix (vendor data sheets, SXM).
PEAKS = {
    "NVIDIA H100": (67e12, 3.35e12),
    "NVIDIA H200": (67e12, 4.8e12),
    "NVIDIA A100": (19.5e12, 2.0e12),
}
FIELDS = ["device", "shape", "kernel", "dtype", "implementation", "fwd_ms", "fwdbwd_ms",
          "fwdbwd_gflops", "fwdbwd_gbytes_per_s", "roofline_fraction", "speedup_vs_lax_conv",
          "note"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shapes", default="8x56x56x128",
                        help="comma-separated BxHxWxC (default %(default)s)")
    parser.add_argument("--kernel_sizes", default="7,13,31",
                        help="comma-separated k (square kxk) or kxl (band) sizes")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--implementations", default=None,
                        help="comma-separated of auto,xla,pallas,reference (default: "
                             "auto,reference on CPU, where pallas only interprets; "
                             "auto,xla,pallas,reference elsewhere)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline_repeats", type=int, default=None,
                        help="repeats for the lax.conv baseline (default: --repeats)")
    parser.add_argument("--torch_python", default=None,
                        help="a Python interpreter with torch; its timings become extra rows")
    parser.add_argument("--cpu_plans", default=None,
                        help="CPU only: comma-separated FORWARD/TRAIN tap thresholds "
                             "(tuning.CpuPlan) to time the auto path under, e.g. "
                             "'90/36,1/1,100000/100000' (tuned, all FFT, all direct)")
    parser.add_argument("--cpu_ghz", type=float, default=3.0,
                        help="CPU clock assumed for the CPU FLOP/s peak (default %(default)s)")
    parser.add_argument("--csv", default=None, help="append the rows to this CSV file")
    parser.add_argument("--note", default="", help="free text for the note column "
                        "(e.g. the machine load)")


def _parse_kernel(text: str) -> tuple[int, int]:
    parts = [int(v) for v in text.lower().split("x")]
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def cpu_bandwidth() -> float:
    """Host memory bytes/s: best of 5 passes of a 64 MiB read + write into a preallocated buffer
    (numpy; a jitted op would mostly time the page faults of its fresh output buffer)."""
    a = np.ones(16 * 1024 * 1024, np.float32)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        np.multiply(a, 1.0001, out=b)
        best = min(best, time.perf_counter() - start)
    return 2 * a.nbytes / best


def device_peaks(cpu_ghz: float) -> tuple[float | None, float | None, str]:
    if platform() == "cpu":
        flops = os.cpu_count() * cpu_ghz * 1e9 * 32
        bandwidth = cpu_bandwidth()
        return flops, bandwidth, (f"CPU peak assumed {flops / 1e9:.0f} GFLOP/s "
                                  f"({os.cpu_count()} cores x {cpu_ghz} GHz x 32 FLOP/cycle), "
                                  f"bandwidth measured {bandwidth / 1e9:.1f} GB/s")
    kind = device_kind()
    for prefix, (flops, bandwidth) in PEAKS.items():
        if kind.startswith(prefix):
            return flops, bandwidth, f"{kind}: {flops / 1e12:.0f} TFLOP/s, " \
                                     f"{bandwidth / 1e12:.2f} TB/s"
    return None, None, f"{kind}: no peak known, no roofline fraction"


def work(shape, kernel, itemsize):
    batch, height, width, channels = shape
    flops_fwd = 2 * batch * height * width * channels * kernel[0] * kernel[1]
    act = batch * height * width * channels * itemsize
    wbytes = kernel[0] * kernel[1] * channels * 4
    bytes_fwd = 2 * act + wbytes
    bytes_fwdbwd = bytes_fwd + 3 * act + 2 * wbytes
    return 3 * flops_fwd, bytes_fwdbwd


def time_implementation(x, w, b, implementation, repeats):
    """(forward s, forward+backward s) for one path ("reference" = lax.conv)."""
    if implementation == "reference":
        k = w.shape[:2]
        pad = tuple((kk // 2, kk - 1 - kk // 2) for kk in k)
        op = lambda x, w, b: depthwise_conv2d_reference(x, w, padding=pad, bias=b)  # noqa: E731
    else:
        impl = None if implementation == "auto" else implementation
        op = lambda x, w, b: depthwise_conv2d(  # noqa: E731
            x, w, padding=tuple((kk // 2, kk - 1 - kk // 2) for kk in w.shape[:2]), bias=b,
            implementation=impl)
    forward = jax.jit(op)
    grads = jax.jit(jax.grad(lambda x, w, b: jnp.sum(op(x, w, b).astype(jnp.float32)),
                             argnums=(0, 1, 2)))
    return median_seconds(forward, x, w, b, repeats=repeats), \
        median_seconds(grads, x, w, b, repeats=repeats)


@contextlib.contextmanager
def _cpu_plan(text: str):
    """Times the CPU path under another formulation plan (``FORWARD/TRAIN`` tap thresholds)."""
    forward, train = (int(v) for v in text.split("/"))
    saved = tuning.CPU_PLANS
    tuning.CPU_PLANS = {"default": tuning.CpuPlan(forward, train)}
    try:
        yield
    finally:
        tuning.CPU_PLANS = saved


def torch_rows(python, shape, kernel, dtype, repeats):
    if kernel[0] != kernel[1]:
        return []
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_timing.py")
    out = subprocess.run([python, script, "--shape", ",".join(map(str, shape)),
                          "--kernel_size", str(kernel[0]), "--dtype", dtype,
                          "--repeats", str(repeats)], capture_output=True, text=True,
                         timeout=3600)
    if out.returncode:
        print(f"torch timing failed: {out.stderr[-2000:]}", file=sys.stderr)
        return []
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def run(args) -> list[dict]:
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    kernels = [_parse_kernel(k) for k in args.kernel_sizes.split(",")]
    impls = (args.implementations.split(",") if args.implementations else
             (["auto", "reference"] if platform() == "cpu"
              else ["auto", "xla", "pallas", "reference"]))
    peak_flops, peak_bytes, peak_note = device_peaks(args.cpu_ghz)
    device = device_name()
    print(f"device: {device}\n{peak_note}\nload average: {os.getloadavg()}", flush=True)
    dtype = jnp.dtype(args.dtype)
    rng = np.random.default_rng(0)
    rows = []
    for shape in shapes:
        for kernel in kernels:
            x = jnp.asarray(rng.standard_normal(shape, np.float32), dtype)
            w = jnp.asarray(rng.standard_normal((*kernel, shape[3]), np.float32)
                            / np.sqrt(kernel[0] * kernel[1]))
            b = jnp.zeros((shape[3],), jnp.float32)
            flops, nbytes = work(shape, kernel, dtype.itemsize)
            timings = {}
            for impl in ["reference"] + [i for i in impls if i != "reference"]:
                if impl == "reference" and "reference" not in impls:
                    continue
                repeats = args.baseline_repeats if impl == "reference" and \
                    args.baseline_repeats else args.repeats
                if impl == "auto" and args.cpu_plans:
                    for plan in args.cpu_plans.split(","):
                        with _cpu_plan(plan):
                            timings[f"auto plan={plan}"] = time_implementation(
                                x, w, b, impl, repeats)
                    continue
                timings[impl] = time_implementation(x, w, b, impl, repeats)
            extra = []
            if args.torch_python:
                for t in torch_rows(args.torch_python, shape, kernel, args.dtype, args.repeats):
                    name = f"torch {t['torch']} {t['device']} {t['memory_format']} " \
                           f"{t['threads']} threads"
                    extra.append((name, (t["fwd_ms"] / 1e3, t["fwdbwd_ms"] / 1e3)))
            base = timings.get("reference")
            for impl, (fwd, fwdbwd) in list(timings.items()) + extra:
                roofline = None
                if peak_flops and peak_bytes:
                    roofline = max(flops / peak_flops, nbytes / peak_bytes) / fwdbwd
                row = {
                    "device": device, "shape": "x".join(map(str, shape)),
                    "kernel": f"{kernel[0]}x{kernel[1]}", "dtype": args.dtype,
                    "implementation": impl, "fwd_ms": round(fwd * 1e3, 2),
                    "fwdbwd_ms": round(fwdbwd * 1e3, 2),
                    "fwdbwd_gflops": round(flops / fwdbwd / 1e9, 2),
                    "fwdbwd_gbytes_per_s": round(nbytes / fwdbwd / 1e9, 2),
                    "roofline_fraction": "" if roofline is None else round(roofline, 4),
                    "speedup_vs_lax_conv": "" if base is None else
                    f"fwd {base[0] / fwd:.2f}x / fwd+bwd {base[1] / fwdbwd:.2f}x",
                    "note": args.note,
                }
                rows.append(row)
                print(", ".join(f"{k}={row[k]}" for k in FIELDS[1:] if row[k] != ""),
                      flush=True)
    if args.csv:
        append_csv(args.csv, FIELDS, rows)
    return rows
