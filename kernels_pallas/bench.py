"""Kernel benchmarks: ``python -m kernels_pallas.bench <op> [options]``.

Each op's ``bench.py`` defines its options and rows; run ``python -m kernels_pallas.bench <op>
--help``. Every row names the device and carries the baseline measured in the same process.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import os

#: op name -> module with ``add_arguments(parser)`` and ``run(args)``.
OPS = {"depthwise_conv2d": "kernels_pallas.depthwise_conv2d.bench"}
OPS["flash_attention"] = "kernels_pallas.flash_attention.bench"
OPS["neighborhood_attention"] = "kernels_pallas.neighborhood_attention.bench"
OPS["fft_conv"] = "kernels_pallas.fft_conv.bench"


def append_csv(path: str, fields, rows: list[dict]) -> None:
    """Appends ``rows`` to the CSV at ``path`` (header written when the file is new)."""
    new = not os.path.exists(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        if new:
            writer.writeheader()
        writer.writerows(rows)
    print(f"appended {len(rows)} rows to {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m kernels_pallas.bench",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="op", required=True)
    modules = {}
    for op, module_name in OPS.items():
        module = importlib.import_module(module_name)
        modules[op] = module
        module.add_arguments(sub.add_parser(op, help=module.__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    return modules[args.op].run(args)


if __name__ == "__main__":
    main()
