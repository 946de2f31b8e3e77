"""jaxconv against PyTorch on the same CPU, in one run: train and inference images/s with ratios.

    python -m experiments.bench_torch --torch_python /work/torchvenv/bin/python
    python -m experiments.bench_torch --torch_python PY --models resnet20 --repeats 5

For each model (issue 16's table: resnet20 at batch 128, 32 px; resnet50, convnext_tiny and
mobilenetv1_100 at batch 16, 128 px; float32) this times jaxconv's SGD train step and inference
with ``experiments.bench.bench_model`` (the ``bench models`` numbers), then the same model
written in PyTorch below, in the interpreter ``--torch_python`` names (torch is never a
dependency of this project: that interpreter runs this file with ``--worker``), in NCHW and
channels_last. Printed: the device, thread counts, every row, and jaxconv / PyTorch ratios
against channels_last (PyTorch's faster layout on CPU). Medians of ``--repeats`` after a
warm-up; run the rows of one comparison in one invocation, the machine's load changes.

The PyTorch models follow jaxconv's (and timm's) definitions closely enough for timing: the
same layer shapes, norms and activations, random weights: resnet20 with option-A shortcuts,
resnet50 (torchvision bottleneck), ConvNeXt-T (7x7 depthwise, LayerNorm, 4x MLP, layer scale),
MobileNet v1 1.0 (3x3 depthwise + 1x1 pointwise blocks).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

#: model -> (batch size, image size, classes): the rows of issue 16's table.
MODELS = {"resnet20": (128, 32, 10), "resnet50": (16, 128, 1000),
          "convnext_tiny": (16, 128, 1000), "mobilenetv1_100": (16, 128, 1000)}


# ------------------------------------------------------------------ jaxconv side (repo venv)
def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch_python", required=True,
                        help="an interpreter with torch (e.g. /work/torchvenv/bin/python)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip_jax", action="store_true", help="PyTorch rows only")
    args = parser.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        raise SystemExit(f"error: --models {unknown} not supported; valid: {list(MODELS)}")
    if not os.access(args.torch_python, os.X_OK):
        raise SystemExit(f"error: --torch_python {args.torch_python!r} is not an executable")

    import jax

    from experiments import bench
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"{os.cpu_count()} CPUs visible, jax {jax.__version__}, float32", flush=True)
    rows = []
    for name in names:
        batch, size, _ = MODELS[name]
        jax_row = None
        if not args.skip_jax:
            jax_row = bench.bench_model(name, batch_size=batch, image_size=size,
                                        dtype="float32", repeats=args.repeats, overrides={})
            print(f"jaxconv {name} b{batch} {size}px: train {jax_row['train_img_per_s']} img/s, "
                  f"infer {jax_row['infer_img_per_s']} img/s (compile "
                  f"{jax_row['compile_train_s']} s)", flush=True)
        result = subprocess.run(
            [args.torch_python, os.path.abspath(__file__), "--worker", "--model", name,
             "--repeats", str(args.repeats)], capture_output=True, text=True)
        if result.returncode:
            raise SystemExit(f"error: the PyTorch worker failed:\n{result.stderr[-3000:]}")
        torch_rows = [json.loads(line) for line in result.stdout.splitlines()
                      if line.startswith("{")]
        for t in torch_rows:
            print(f"torch {t['torch']} {name} {t['memory_format']} ({t['threads']} threads): "
                  f"train {t['train_img_per_s']:.1f} img/s, infer {t['infer_img_per_s']:.1f} "
                  f"img/s", flush=True)
        rows.append({"model": name, "batch": batch, "size": size, "jax": jax_row,
                     "torch": {t["memory_format"]: t for t in torch_rows}})
    if not args.skip_jax:
        print("\n| model, batch, input | jaxconv train | torch CL train | ratio | jaxconv infer "
              "| torch CL infer | ratio |\n|---|---|---|---|---|---|---|")
        for r in rows:
            j, t = r["jax"], r["torch"]["channels_last"]
            print(f"| {r['model']}, {r['batch']}, {r['size']}x{r['size']} | "
                  f"{j['train_img_per_s']:.1f} | {t['train_img_per_s']:.1f} | "
                  f"{j['train_img_per_s'] / t['train_img_per_s']:.2f} | "
                  f"{j['infer_img_per_s']:.1f} | {t['infer_img_per_s']:.1f} | "
                  f"{j['infer_img_per_s'] / t['infer_img_per_s']:.2f} |")
    return rows


# ------------------------------------------------------- PyTorch side (--torch_python only)
def _torch_model(name: str, classes: int):
    import torch
    from torch import nn

    def bn_relu_conv(cin, cout, k, stride=1, groups=1):
        return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    class Basic(nn.Module):  # resnet20: post-activation, option-A shortcut
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(*bn_relu_conv(cin, cout, 3, stride),
                                      nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                      nn.BatchNorm2d(cout))
            self.stride, self.pad = stride, cout - cin

        def forward(self, x):
            short = x[:, :, ::self.stride, ::self.stride]
            if self.pad:
                short = nn.functional.pad(short, (0, 0, 0, 0, self.pad // 2,
                                                  self.pad - self.pad // 2))
            return torch.relu(self.body(x) + short)

    class Bottleneck(nn.Module):  # resnet50 (torchvision: stride on the 3x3)
        def __init__(self, cin, width, stride):
            super().__init__()
            cout = 4 * width
            self.body = nn.Sequential(*bn_relu_conv(cin, width, 1), *bn_relu_conv(width, width, 3,
                                                                                  stride),
                                      nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                        nn.BatchNorm2d(cout))
                          if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.short(x))

    class LayerNorm2d(nn.LayerNorm):  # over channels of an NCHW tensor
        def forward(self, x):
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    class ConvNeXtBlock(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
            self.norm = nn.LayerNorm(dim, eps=1e-6)
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
            self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

        def forward(self, x):
            y = self.mlp(self.norm(self.dw(x).permute(0, 2, 3, 1))) * self.gamma
            return x + y.permute(0, 3, 1, 2)

    head = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if name == "resnet20":
        layers, cin = bn_relu_conv(3, 16, 3), 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                layers.append(Basic(cin, cout, stride if i == 0 else 1))
                cin = cout
        return nn.Sequential(*layers, *head, nn.Linear(64, classes))
    if name == "resnet50":
        layers, cin = [*bn_relu_conv(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)], 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(blocks):
                layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
                cin = 4 * width
        return nn.Sequential(*layers, *head, nn.Linear(2048, classes))
    if name == "convnext_tiny":
        dims, depths = (96, 192, 384, 768), (3, 3, 9, 3)
        layers = [nn.Conv2d(3, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6)]
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            if i:
                layers += [LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, 2)]
            layers += [ConvNeXtBlock(dim) for _ in range(depth)]
        return nn.Sequential(*layers, *head, nn.LayerNorm(768, eps=1e-6), nn.Linear(768, classes))
    if name == "mobilenetv1_100":
        layers, cin = bn_relu_conv(3, 32, 3, 2), 32
        for cout, stride in ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                             *((512, 1),) * 5, (1024, 2), (1024, 1)):
            layers += bn_relu_conv(cin, cin, 3, stride, groups=cin) + bn_relu_conv(cin, cout, 1)
            cin = cout
        return nn.Sequential(*layers, *head, nn.Linear(1024, classes))
    raise ValueError(f"model={name!r} not supported; valid: {list(MODELS)}")


def worker(name: str, repeats: int) -> None:
    import statistics
    import time

    import torch

    batch, size, classes = MODELS[name]
    torch.manual_seed(0)

    def median_s(fn):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    for memory_format in ("contiguous_format", "channels_last"):
        fmt = getattr(torch, memory_format)
        model = _torch_model(name, classes).to(memory_format=fmt)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
        labels = torch.randint(0, classes, (batch,))

        def train_step():
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), labels)
            loss.backward()
            opt.step()

        def infer():
            with torch.no_grad():
                model(x)

        model.train()
        train_s = median_s(train_step)
        model.eval()
        infer_s = median_s(infer)
        print(json.dumps({"torch": torch.__version__, "memory_format": memory_format,
                          "threads": torch.get_num_threads(),
                          "train_img_per_s": batch / train_s, "infer_img_per_s": batch / infer_s}),
              flush=True)


def torch_op_class(name: str) -> str:
    """``experiments.profile_cpu``'s class of a PyTorch (aten) op, by its name."""
    n = name.lower()
    if "convolution_backward" in n or "conv_depthwise2d_backward" in n:
        return "conv dx+dw"
    if "conv" in n:
        return "conv fwd"
    if "batch_norm" in n or "layer_norm" in n:
        return "norm bwd" if "backward" in n else "norm fwd"
    if n.startswith("optimizer") or "_foreach" in n or "sgd" in n:
        return "optimizer+glue"
    if re.search(r"(^|::)(addmm|mm|bmm|matmul|linear)(_|$)", n):
        return "matmul bwd" if "backward" in n else "matmul fwd"
    if "pool" in n or "max_pool" in n:
        return "pooling"
    if re.search(r"nll_loss|log_softmax|cross_entropy", n):
        return "loss"
    if re.search(r"(^|::)(copy_|contiguous|clone|permute|transpose|t|pad|constant_pad_nd|cat|"
                 r"slice|as_strided|view|reshape|empty|empty_like|zeros|zero_|fill_|to|_to_copy|"
                 r"expand|select|narrow|unsqueeze|squeeze|flatten|detach|resize_)(_|$)", n):
        return "layout"
    if re.search(r"sum|mean|reduce|amax", n):
        return "reduce"
    return "elementwise bwd" if "backward" in n else "elementwise fwd"


def profile_worker(name: str, batch: int, size: int, repeats: int) -> None:
    """One JSON line: the channels_last train step's ops (self CPU µs per step) by class."""
    import statistics
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    classes = MODELS[name][2]
    torch.manual_seed(0)
    fmt = torch.channels_last
    model = _torch_model(name, classes).to(memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
    labels = torch.randint(0, classes, (batch,))

    def train_step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), labels).backward()
        opt.step()

    train_step()
    times, cpu_times = [], []
    for _ in range(max(repeats, 3)):
        start, cpu = time.perf_counter(), time.process_time()
        train_step()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            train_step()
    rows: dict = {}
    for event in prof.key_averages():
        if event.self_cpu_time_total <= 0 or not event.key.startswith("aten::"):
            continue
        row = rows.setdefault(torch_op_class(event.key), {"us": 0.0, "flops": 0.0, "count": 0})
        row["us"] += event.self_cpu_time_total / repeats
        row["count"] += event.count
    print(json.dumps({"torch": torch.__version__, "memory_format": "channels_last",
                      "threads": torch.get_num_threads(),
                      "wall_ms": statistics.median(times) * 1e3,
                      "cpu_ms": statistics.median(cpu_times) * 1e3, "classes": rows}), flush=True)


if __name__ == "__main__":
    if "--worker" in sys.argv:
        p = argparse.ArgumentParser()
        p.add_argument("--worker", action="store_true")
        p.add_argument("--profile", action="store_true")
        p.add_argument("--model", required=True)
        p.add_argument("--batch", type=int, default=None)
        p.add_argument("--image_size", type=int, default=None)
        p.add_argument("--repeats", type=int, default=3)
        a = p.parse_args()
        if a.profile:
            profile_worker(a.model, a.batch or MODELS[a.model][0],
                           a.image_size or MODELS[a.model][1], a.repeats)
        else:
            worker(a.model, a.repeats)
    else:
        main()
