"""PyTorch timing of a depthwise conv, run as a script in an interpreter that has torch.

Used by ``python -m kernels_pallas.bench depthwise_conv2d --torch_python PATH`` so that torch is
never a dependency of this project: the bench runs this file with that interpreter and reads
one JSON line per memory format from stdout. Standalone (imports nothing from the repo).

    PATH/bin/python kernels_pallas/depthwise_conv2d/torch_timing.py \
        --shape 8,56,56,128 --kernel_size 31 --dtype float32 --repeats 3
"""
import argparse
import json
import statistics
import time


def main():
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", required=True, help="B,H,W,C")
    parser.add_argument("--kernel_size", type=int, required=True)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    batch, height, width, channels = (int(v) for v in args.shape.split(","))
    dtype = getattr(torch, args.dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def median_ms(fn):
        fn()
        sync()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3

    torch.manual_seed(0)
    k = args.kernel_size
    for memory_format in ("contiguous_format", "channels_last"):
        fmt = getattr(torch, memory_format)
        conv = torch.nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels,
                               bias=True).to(device=device, dtype=dtype, memory_format=fmt)
        x = torch.randn(batch, channels, height, width, device=device, dtype=dtype)
        x = x.contiguous(memory_format=fmt).requires_grad_(True)

        def forward():
            with torch.no_grad():
                return conv(x)

        def forward_backward():
            y = conv(x)
            y.backward(torch.ones_like(y))

        print(json.dumps({"torch": torch.__version__, "device": device,
                          "memory_format": memory_format, "threads": torch.get_num_threads(),
                          "fwd_ms": median_ms(forward), "fwdbwd_ms": median_ms(forward_backward)}),
              flush=True)


if __name__ == "__main__":
    main()
