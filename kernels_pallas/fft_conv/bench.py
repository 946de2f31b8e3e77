"""Benchmark of fft_conv: ``python -m kernels_pallas.bench fft_conv``.

One row per (batch, length L, channels H, kernel length Lk, implementation): forward ms and
forward+backward ms (gradients of u, k and bias; warm-up call first, ``block_until_ready``,
median of repeats), FLOP/s under one counting model, and speed-ups over the baselines measured
in the same process:

* ``jnp.fft``: the plain FFT convolution anyone would write in JAX, channels last:
  ``irfft(rfft(u, 2L, axis=1) * rfft(k.T, 2L, axis=0))[:, :L] + bias * u``, JAX's autodiff.
* ``direct``: the direct sum (``fft_conv_reference``), only where B*L*Lk*H <= --direct_max_macs.
* PyTorch (``--torch_python PATH``): the same ``torch.fft`` convolution on [B, H, L]
  (``torch_timing.py``, run by that interpreter), as its own row.

Implementations timed: ``auto`` (``implementation=None``), optionally under forced XLA plans
(``--plans 1/1,1000000/1000000``: all FFT, all direct), and ``pallas`` off CPU (on CPU it only
interprets: a correctness path). The counting model, the same for every row so they compare:
an FFT convolution at N = 2L, 2.5 N log2 N FLOPs per real transform; forward = transforms of u
and of the inverse per (b, h) plus the kernel's per h, and 3N for the spectral product;
forward+backward adds three transforms per (b, h) (cotangent, input and kernel gradients) and
two products.

    python -m kernels_pallas.bench fft_conv --quick --torch_python /work/torchvenv/bin/python \
        --csv kernels_pallas/results/fft_conv_cpu.csv
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.analysis import device_name, median_seconds
from kernels_pallas.bench import append_csv
from kernels_pallas.core import platform
from kernels_pallas.fft_conv import fft_conv, fft_conv_reference, tuning

FIELDS = ["device", "batch", "length", "channels", "kernel_len", "implementation", "fwd_ms",
          "fwdbwd_ms", "fwd_gflops", "fwdbwd_gflops", "speedup_vs_jnp_fft", "speedup_vs_torch",
          "speedup_vs_direct", "note"]
QUICK = dict(lengths="256,1024,4096,16384,65536", channels="64,768", batch=1, repeats=5,
             max_elements=4_000_000, direct_max_macs=1e8)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help=f"the CPU setting: {QUICK} (overrides those options)")
    parser.add_argument("--lengths", default="256,1024,4096,16384,65536",
                        help="comma-separated sequence lengths L (default %(default)s)")
    parser.add_argument("--channels", default="64,768", help="comma-separated H values")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--kernel_lens", default="L",
                        help="comma-separated kernel lengths; 'L' = as long as the sequence")
    parser.add_argument("--implementations", default=None,
                        help="comma-separated of auto,pallas (default: auto on CPU, "
                             "auto,pallas elsewhere)")
    parser.add_argument("--plans", default=None,
                        help="time the auto path under these tuning.XlaPlan thresholds, "
                             "comma-separated FORWARD/TRAIN, e.g. '1/1,1000000/1000000' "
                             "(always FFT, always direct)")
    parser.add_argument("--max_elements", type=float, default=None,
                        help="skip shapes whose B*L*H exceeds this")
    parser.add_argument("--direct_max_macs", type=float, default=2e9,
                        help="skip the direct baseline above B*L*Lk*H multiply-adds")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--forward_only", action="store_true",
                        help="time forwards only (fwdbwd columns left empty)")
    parser.add_argument("--torch_python", default=None,
                        help="a Python interpreter with torch; its timings become extra rows")
    parser.add_argument("--torch_threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice); 1 is steadier "
                             "on a shared machine, where a descheduled thread stalls the rest")
    parser.add_argument("--csv", default=None, help="append the rows to this CSV file")
    parser.add_argument("--note", default="", help="free text for the note column")


def model_flops(batch, length, channels):
    """(forward, forward+backward) FLOPs of the counting model (module docstring)."""
    n = 2 * length
    transform = 2.5 * n * math.log2(n)
    fwd = batch * channels * (2 * transform + 3 * n) + channels * transform
    return fwd, fwd + batch * channels * (3 * transform + 6 * n)


def jnp_fft_conv(u, k, bias):
    """The plain JAX FFT convolution (causal, N = 2L): the baseline."""
    length = u.shape[1]
    n = 2 * length
    spectrum = jnp.fft.rfft(u, n=n, axis=1) * jnp.fft.rfft(k.T, n=n, axis=0)
    return jnp.fft.irfft(spectrum, n=n, axis=1)[:, :length] + bias * u


def time_op(op, u, k, bias, repeats, forward_only=False):
    forward = jax.jit(op)
    if forward_only:
        return median_seconds(forward, u, k, bias, repeats=repeats), float("nan")
    grads = jax.jit(jax.grad(lambda u, k, b: jnp.sum(op(u, k, b).astype(jnp.float32)),
                             argnums=(0, 1, 2)))
    return median_seconds(forward, u, k, bias, repeats=repeats), \
        median_seconds(grads, u, k, bias, repeats=repeats)


@contextlib.contextmanager
def _xla_plan(text: str):
    forward, train = (int(v) for v in text.split("/"))
    saved = tuning.XLA_PLANS
    tuning.XLA_PLANS = {"default": tuning.XlaPlan(forward, train)}
    try:
        yield
    finally:
        tuning.XLA_PLANS = saved


def torch_row(python, batch, length, channels, taps, repeats, threads=None):
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_timing.py")
    command = [python, script, "--batch", str(batch), "--length", str(length),
               "--channels", str(channels), "--kernel_len", str(taps), "--repeats", str(repeats)]
    if threads:
        command += ["--threads", str(threads)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if out.returncode:
        print(f"torch timing failed: {out.stderr[-2000:]}", file=sys.stderr)
        return None
    t = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")][0]
    return (f"torch {t['torch']} {t['device']} {t['threads']} threads",
            (t["fwd_ms"] / 1e3, t["fwdbwd_ms"] / 1e3))


def _ratio(base, mine):
    if base is None:
        return ""
    return f"fwd {base[0] / mine[0]:.2f}x / fwd+bwd {base[1] / mine[1]:.2f}x"


def run(args) -> list[dict]:
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    lengths = [int(v) for v in str(args.lengths).split(",")]
    channel_list = [int(v) for v in str(args.channels).split(",")]
    impls = (args.implementations.split(",") if args.implementations else
             (["auto"] if platform() == "cpu" else ["auto", "pallas"]))
    device = device_name()
    print(f"device: {device}\nload average: {os.getloadavg()}", flush=True)
    rng = np.random.default_rng(0)
    rows = []
    for channels in channel_list:
        for length in lengths:
            for taps_text in args.kernel_lens.split(","):
                taps = length if taps_text == "L" else int(taps_text)
                too_big = args.max_elements and args.batch * length * channels > \
                    args.max_elements
                if taps > length or too_big:
                    continue
                batch = args.batch
                u = jnp.asarray(rng.standard_normal((batch, length, channels), np.float32))
                k = jnp.asarray(rng.standard_normal((channels, taps), np.float32)
                                / np.sqrt(taps))
                bias = jnp.asarray(rng.standard_normal(channels), np.float32)
                timings = {}
                if taps == length:  # the jnp baseline is the full-length causal convolution
                    timings["jnp.fft"] = time_op(jnp_fft_conv, u, k, bias, args.repeats,
                                                 args.forward_only)
                if batch * length * taps * channels <= args.direct_max_macs:
                    timings["direct"] = time_op(
                        lambda u, k, b: fft_conv_reference(u, k, bias=b), u, k, bias,
                        args.repeats, args.forward_only)
                for impl in impls:
                    def op(u, k, b, impl=impl):
                        return fft_conv(u, k, bias=b,
                                        implementation=None if impl == "auto" else impl)
                    if impl == "auto" and args.plans:
                        for m in args.plans.split(","):
                            with _xla_plan(m):
                                timings[f"auto plan={m}"] = time_op(
                                    op, u, k, bias, args.repeats, args.forward_only)
                        continue
                    timings[impl] = time_op(op, u, k, bias, args.repeats,
                                            args.forward_only)
                if args.torch_python and taps == length:
                    found = torch_row(args.torch_python, batch, length, channels, taps,
                                      args.repeats, args.torch_threads)
                    if found:
                        timings[found[0]] = found[1]
                torch_time = next((v for n, v in timings.items() if n.startswith("torch")),
                                  None)
                fwd_flops, fwdbwd_flops = model_flops(batch, length, channels)
                for impl, (fwd, fwdbwd) in timings.items():
                    row = {
                        "device": device if not impl.startswith("torch") else
                        f"{device} (torch)", "batch": batch, "length": length,
                        "channels": channels, "kernel_len": taps, "implementation": impl,
                        "fwd_ms": round(fwd * 1e3, 3), "fwdbwd_ms": round(fwdbwd * 1e3, 3),
                        "fwd_gflops": round(fwd_flops / fwd / 1e9, 3),
                        "fwdbwd_gflops": round(fwdbwd_flops / fwdbwd / 1e9, 3),
                        "speedup_vs_jnp_fft": _ratio(timings.get("jnp.fft"), (fwd, fwdbwd)),
                        "speedup_vs_torch": _ratio(torch_time, (fwd, fwdbwd)),
                        "speedup_vs_direct": _ratio(timings.get("direct"), (fwd, fwdbwd)),
                        "note": args.note,
                    }
                    rows.append(row)
                    print(", ".join(f"{key}={row[key]}" for key in FIELDS[1:]
                                    if row[key] != ""), flush=True)
    if args.csv:
        append_csv(args.csv, FIELDS, rows)
    return rows
