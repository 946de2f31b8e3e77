"""Benchmark of flash_attention: ``python -m kernels_pallas.bench flash_attention``.

One row per (sequence length, implementation): forward ms and forward+backward ms (device-only:
warm-up call first, ``block_until_ready``, median of ``--repeats`` rounds that time every path
once in turn), achieved TFLOP/s, and the ratio
to ``jax.nn.dot_product_attention(implementation="xla")`` (row ``dpa_xla``) measured in the
same process at the same shapes. Rows: ``dpa_xla`` and, on NVIDIA GPUs, ``dpa_cudnn``
(``jax.nn.dot_product_attention(implementation="cudnn")``; bfloat16 only)
as baselines; ``auto`` (``implementation=None``) and ``pallas`` for this op. On CPU the Pallas
kernels only run interpreted (a correctness path, orders of magnitude slower): they are skipped
unless named in ``--implementations``, and the CPU rows compare the XLA paths.

Shapes: L = S = each of ``--seq_lens``, H heads of dim D, batch ``--tokens // L`` (at least 1),
so every length does about the same number of query tokens; ``--bias`` adds a float32 bias
[1, H, L, S] (CoAtNet's relative bias) that gets its gradient; ``--causal`` masks.

Counting model (every row the same): forward FLOPs = 4*B*H*D*P with P the number of unmasked
(query, key) pairs (L*S, or L(L+1)/2 causal): the two matmuls. Forward+backward = 3.5x that
(the backward's five matmuls, the score recomputation included, as in the FlashAttention-2
paper), whatever a path actually computes.

    python -m kernels_pallas.bench flash_attention --seq_lens 256,1024,4096,16384 \\
        --dtype bfloat16 --bias --csv kernels_pallas/results/flash_attention_gpu.csv
    python -m kernels_pallas.bench flash_attention --quick   # CPU: small sizes, XLA paths
"""
from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.analysis import device_name, median_seconds
from kernels_pallas.bench import append_csv
from kernels_pallas.core import platform
from kernels_pallas.flash_attention import flash_attention

FIELDS = ["device", "batch", "seq_len", "heads", "head_dim", "dtype", "bias", "causal",
          "implementation", "fwd_ms", "fwdbwd_ms", "fwd_tflops", "fwdbwd_tflops",
          "speedup_vs_dpa_xla", "note"]
QUICK = dict(seq_lens="128,256,512", tokens=512, heads=2, head_dim=32, dtype="float32",
             repeats=3)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seq_lens", default="256,1024,4096,16384",
                        help="comma-separated L = S (default %(default)s)")
    parser.add_argument("--tokens", type=int, default=16384,
                        help="query tokens per call: batch = tokens // L (default %(default)s)")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16",
                        choices=["float32", "bfloat16"])
    parser.add_argument("--bias", action="store_true", help="add a [1, H, L, S] float32 bias")
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--implementations", default=None,
                        help="comma-separated of dpa_xla,dpa_cudnn,auto,pallas (default: "
                             "dpa_xla,auto on CPU; dpa_xla,dpa_cudnn,auto,pallas on GPU; "
                             "dpa_xla,auto,pallas on TPU)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--quick", action="store_true",
                        help=f"CPU smoke run: {QUICK} unless given explicitly")
    parser.add_argument("--csv", default=None, help="append the rows to this CSV file")
    parser.add_argument("--note", default="", help="free text for the note column "
                        "(e.g. the machine load)")


def forward_flops(batch, q_len, kv_len, heads, head_dim, causal) -> int:
    pairs = sum(min(i + 1, kv_len) for i in range(q_len)) if causal else q_len * kv_len
    return 4 * batch * heads * head_dim * pairs


def _default_implementations() -> list[str]:
    plat = platform()
    if plat == "cpu":
        return ["dpa_xla", "auto"]
    if plat == "gpu":
        return ["dpa_xla", "dpa_cudnn", "auto", "pallas"]
    return ["dpa_xla", "auto", "pallas"]


def _op(implementation: str, causal: bool):
    if implementation.startswith("dpa_"):
        backend = implementation[4:]
        return lambda q, k, v, b: jax.nn.dot_product_attention(  # noqa: E731
            q, k, v, bias=b, is_causal=causal, implementation=backend)
    impl = None if implementation == "auto" else implementation
    return lambda q, k, v, b: flash_attention(  # noqa: E731
        q, k, v, bias=b, causal=causal, implementation=impl)


def compiled_pair(implementation, q, k, v, b, causal):
    """(forward, forward+backward) jitted callables of one path, each run once (compiled and
    warmed up); gradients w.r.t. q, k, v (and the bias if any)."""
    op = _op(implementation, causal)
    argnums = (0, 1, 2) if b is None else (0, 1, 2, 3)
    pair = (jax.jit(op),
            jax.jit(jax.grad(lambda q, k, v, b: jnp.sum(op(q, k, v, b).astype(jnp.float32)),
                             argnums=argnums)))
    for fn in pair:
        jax.block_until_ready(fn(q, k, v, b))
    return pair


def time_round_robin(pairs, args, repeats):
    """{implementation: (forward s, forward+backward s)}: medians over ``repeats`` rounds, each
    round timing every path once in turn, so a load change on a shared machine hits all paths
    alike instead of whichever ran last."""
    times = {impl: ([], []) for impl in pairs}
    for _ in range(repeats):
        for impl, pair in pairs.items():
            for fn, bucket in zip(pair, times[impl]):
                bucket.append(median_seconds(fn, *args, repeats=1, warmup=0))
    return {impl: (float(np.median(f)), float(np.median(fb))) for impl, (f, fb) in times.items()}


def run(args) -> list[dict]:
    if args.quick:
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        defaults = parser.parse_args([])
        for name, value in QUICK.items():
            if getattr(args, name) == getattr(defaults, name):
                setattr(args, name, value)
    impls = args.implementations.split(",") if args.implementations else \
        _default_implementations()
    device = device_name()
    print(f"device: {device}\nload average: {os.getloadavg()}", flush=True)
    if platform() == "cpu":
        print("CPU: the Pallas kernels only run interpreted here (not a speed path); "
              + ("timing them anyway (--implementations)" if "pallas" in impls
                 else "skipped, rows compare the XLA paths"), flush=True)
    dtype = jnp.dtype(args.dtype)
    rng = np.random.default_rng(0)
    rows = []
    for seq_len in (int(s) for s in args.seq_lens.split(",")):
        batch = max(1, args.tokens // seq_len)
        shape = (batch, seq_len, args.heads, args.head_dim)
        q, k, v = (jnp.asarray(rng.standard_normal(shape, np.float32), dtype) for _ in range(3))
        b = (jnp.asarray(rng.standard_normal((1, args.heads, seq_len, seq_len), np.float32))
             if args.bias else None)
        flops = forward_flops(batch, seq_len, seq_len, args.heads, args.head_dim, args.causal)
        pairs, notes = {}, {}
        for impl in impls:
            try:
                pairs[impl] = compiled_pair(impl, q, k, v, b, args.causal)
            except Exception as error:  # noqa: BLE001 - e.g. cuDNN refusing a shape, OOM
                notes[impl] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
                print(f"seq_len={seq_len} {impl}: {notes[impl]}", flush=True)
        timings = time_round_robin(pairs, (q, k, v, b), args.repeats)
        del pairs
        base = timings.get("dpa_xla")
        for impl in impls:
            fwd, fwdbwd = timings.get(impl, (None, None))
            row = {
                "device": device, "batch": batch, "seq_len": seq_len, "heads": args.heads,
                "head_dim": args.head_dim, "dtype": args.dtype,
                "bias": "1,H,L,S" if args.bias else "none", "causal": args.causal,
                "implementation": impl,
                "fwd_ms": "" if fwd is None else round(fwd * 1e3, 3),
                "fwdbwd_ms": "" if fwd is None else round(fwdbwd * 1e3, 3),
                "fwd_tflops": "" if fwd is None else round(flops / fwd / 1e12, 4),
                "fwdbwd_tflops": "" if fwd is None else round(3.5 * flops / fwdbwd / 1e12, 4),
                "speedup_vs_dpa_xla": "" if fwd is None or base is None else
                f"fwd {base[0] / fwd:.2f}x / fwd+bwd {base[1] / fwdbwd:.2f}x",
                "note": "; ".join(n for n in (args.note, notes.get(impl, "")) if n),
            }
            rows.append(row)
            print(", ".join(f"{key}={row[key]}" for key in FIELDS[1:] if row[key] != ""),
                  flush=True)
    if args.csv:
        append_csv(args.csv, FIELDS, rows)
    return rows
