"""Benchmark of neighborhood_attention: ``python -m kernels_pallas.bench neighborhood_attention``.

One row per (case, implementation): forward ms and forward+backward ms (gradients of q, k, v;
warm-up call first, ``block_until_ready``, median of repeats) and the achieved useful FLOP/s,
with speed-ups over the naive masked reference and over dense attention
(``jax.nn.dot_product_attention`` on the same tokens, every query attending every key), all
measured in the same process. Implementations: ``pallas`` (the fused kernels), ``xla`` (the
tiled XLA path, what ``None`` picks on CPU), ``naive`` (``reference.py``: the [N, N] masked
softmax) and ``dense`` (plus ``dense_cudnn`` on GPU).

Counting model (the same for every row, so rows compare): useful forward FLOPs
4*B*H*N*K*D (QK^T and PV over each query's K = k or kx*ky neighbours), forward+backward 3x that
(dq, dk, dv and dP are four more matmuls of the same size). Dense attention does N/K times more
work than it is credited with here: its FLOP/s column is neighbourhood-useful FLOP/s.

On CPU the Pallas kernels only run interpreted (a correctness path that says nothing about
speed): their rows are skipped unless ``--interpret_pallas`` is given, and then only make sense
at tiny sizes. ``--quick`` runs reduced CPU sizes; the defaults are the issue's GPU/TPU shapes
(2-D 56x56 and 28x28 with 7x7 and 13x13 windows, NAT-tiny heads/dims; 1-D 4K..32K with windows
255..2047). The naive reference is skipped where its [B, H, N, N] logits exceed
``--naive_max_logits``.

    python -m kernels_pallas.bench neighborhood_attention --quick \
        --csv kernels_pallas/results/neighborhood_attention_cpu.csv
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.analysis import device_name, median_seconds
from kernels_pallas.bench import append_csv
from kernels_pallas.core import platform
from kernels_pallas.neighborhood_attention import (neighborhood_attention,
                                                   neighborhood_attention_reference, tuning)

#: BxXxYxHxD/k (2-D) or BxLxHxD/k (1-D) cases.
FULL_CASES = ("8x56x56x2x32/7,8x56x56x2x32/13,8x28x28x4x32/7,8x28x28x4x32/13,"
              "1x4096x4x32/255,1x16384x4x32/1023,1x32768x4x32/2047")
QUICK_CASES = ("1x28x28x2x32/7,1x28x28x2x32/13,1x56x56x2x32/7,1x56x56x2x32/13,"
               "1x2048x2x32/255,1x4096x2x32/255")
FIELDS = ["device", "case", "dtype", "implementation", "fwd_ms", "fwdbwd_ms", "fwd_gflops",
          "fwdbwd_gflops", "speedup_vs_naive", "speedup_vs_dense", "note"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", default=None,
                        help="comma-separated BxXxYxHxD/k (2-D) or BxLxHxD/k (1-D) cases "
                             f"(default: {FULL_CASES}; with --quick: {QUICK_CASES})")
    parser.add_argument("--quick", action="store_true", help="reduced sizes for the CPU")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="default float32 on CPU, bfloat16 elsewhere")
    parser.add_argument("--implementations", default=None,
                        help="comma-separated of pallas,xla,naive,dense,dense_cudnn (default: "
                             "xla,naive,dense on CPU; all elsewhere)")
    parser.add_argument("--interpret_pallas", action="store_true",
                        help="CPU: also time the interpreted Pallas kernels (tiny cases only)")
    parser.add_argument("--xla_tiles", default=None,
                        help="time the xla path under several tilings: comma-separated "
                             "TILE_1D/TILE_2D (tuning.XlaTiles), e.g. '32/4,64/8,128/14'")
    parser.add_argument("--naive_max_logits", type=float, default=2e8,
                        help="skip the naive reference above this many B*H*N*N logits")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--csv", default=None, help="append the rows to this CSV file")
    parser.add_argument("--note", default="", help="free text for the note column")


def parse_case(text: str):
    shape_text, kernel = text.split("/")
    shape = tuple(int(v) for v in shape_text.split("x"))
    if len(shape) not in (4, 5):
        raise ValueError(f"case {text!r}: give BxLxHxD/k or BxXxYxHxD/k")
    return shape, int(kernel)


def useful_flops(shape, kernel: int) -> int:
    ndim = len(shape) - 3
    tokens = math.prod(shape[1:1 + ndim])
    return 4 * shape[0] * shape[-2] * tokens * kernel ** ndim * shape[-1]


@contextlib.contextmanager
def _xla_tiles(text: str | None):
    saved = tuning.XLA_TILES
    if text:
        one, two = (int(v) for v in text.split("/"))
        tuning.XLA_TILES = {"default": tuning.XlaTiles(tile_1d=one, tile_2d=two)}
    try:
        yield
    finally:
        tuning.XLA_TILES = saved


def _op(implementation: str, kernel: int):
    if implementation in ("pallas", "xla"):
        return lambda q, k, v: neighborhood_attention(q, k, v, kernel_size=kernel,
                                                      implementation=implementation)
    if implementation == "naive":
        return lambda q, k, v: neighborhood_attention_reference(q, k, v, kernel_size=kernel)
    backend = "cudnn" if implementation == "dense_cudnn" else None

    def dense(q, k, v):
        flat = [t.reshape(t.shape[0], -1, *t.shape[-2:]) for t in (q, k, v)]
        return jax.nn.dot_product_attention(*flat, implementation=backend).reshape(q.shape)
    return dense


def time_implementation(implementation, q, k, v, kernel, repeats):
    op = _op(implementation, kernel)
    forward = jax.jit(op)
    grads = jax.jit(jax.grad(lambda q, k, v: jnp.sum(op(q, k, v).astype(jnp.float32)),
                             argnums=(0, 1, 2)))
    return (median_seconds(forward, q, k, v, repeats=repeats),
            median_seconds(grads, q, k, v, repeats=repeats))


def run(args) -> list[dict]:
    on_cpu = platform() == "cpu"
    cases = [parse_case(c) for c in (args.cases or (QUICK_CASES if args.quick else FULL_CASES))
             .split(",")]
    dtype = jnp.dtype(args.dtype or ("float32" if on_cpu else "bfloat16"))
    if args.implementations:
        impls = args.implementations.split(",")
    else:
        impls = ["xla", "naive", "dense"] if on_cpu else ["pallas", "xla", "naive", "dense"]
        if platform() == "gpu":
            impls.append("dense_cudnn")
    if on_cpu and "pallas" in impls and not args.interpret_pallas:
        impls.remove("pallas")
        print("pallas: skipped, on CPU the kernels only run interpreted "
              "(--interpret_pallas to time that anyway)")
    device = device_name()
    print(f"device: {device}\nload average: {os.getloadavg()}", flush=True)
    rng = np.random.default_rng(0)
    rows = []
    for shape, kernel in cases:
        q, k, v = (jnp.asarray(rng.standard_normal(shape, np.float32), dtype) for _ in range(3))
        flops = useful_flops(shape, kernel)
        tokens = math.prod(shape[1:-2])
        timings = {}
        for impl in impls:
            if impl == "naive" and shape[0] * shape[-2] * tokens ** 2 > args.naive_max_logits:
                print(f"naive: skipped at {shape} (logits > --naive_max_logits)")
                continue
            variants = args.xla_tiles.split(",") if impl == "xla" and args.xla_tiles else [None]
            for variant in variants:
                name = impl if variant is None else f"xla tiles={variant}"
                try:
                    with _xla_tiles(variant):
                        timings[name] = time_implementation(impl, q, k, v, kernel,
                                                            args.repeats)
                except Exception as error:  # e.g. cudnn refusing a shape: report, go on
                    print(f"{name}: failed at {shape}: {type(error).__name__}: "
                          f"{str(error)[:200]}")
        naive, dense = timings.get("naive"), timings.get("dense")
        window = "x".join([str(kernel)] * (len(shape) - 3))
        for name, (fwd, fwdbwd) in timings.items():
            row = {
                "device": device, "case": f"{'x'.join(map(str, shape))} window {window}",
                "dtype": dtype.name, "implementation": name + (
                    " (interpreted)" if name == "pallas" and on_cpu else ""),
                "fwd_ms": round(fwd * 1e3, 2), "fwdbwd_ms": round(fwdbwd * 1e3, 2),
                "fwd_gflops": round(flops / fwd / 1e9, 2),
                "fwdbwd_gflops": round(3 * flops / fwdbwd / 1e9, 2),
                "speedup_vs_naive": "" if naive is None else
                f"fwd {naive[0] / fwd:.2f}x / fwd+bwd {naive[1] / fwdbwd:.2f}x",
                "speedup_vs_dense": "" if dense is None else
                f"fwd {dense[0] / fwd:.2f}x / fwd+bwd {dense[1] / fwdbwd:.2f}x",
                "note": args.note,
            }
            rows.append(row)
            print(", ".join(f"{f}={row[f]}" for f in FIELDS[1:] if row[f] != ""), flush=True)
    if args.csv:
        append_csv(args.csv, FIELDS, rows)
    return rows
