"""PyTorch timing of an FFT long convolution, run as a script in an interpreter that has torch.

Used by ``python -m kernels_pallas.bench fft_conv --torch_python PATH`` so that torch is never a
dependency of this project: the bench runs this file with that interpreter and reads one JSON
line from stdout. Standalone (imports nothing from the repo). The convolution is the usual
``torch.fft`` one (as in the H3/Hyena code): ``irfft(rfft(u, n=2L) * rfft(k, n=2L), n=2L)[..., :L]
+ D * u`` on [B, H, L] (channels first, the layout those codes use), causal, forward and
forward+backward (gradients of u, k and D).

    PATH/bin/python kernels_pallas/fft_conv/torch_timing.py --batch 1 --length 4096 \
        --channels 64 --kernel_len 4096 --repeats 3
"""
import argparse
import json
import statistics
import time


def main():
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--length", type=int, required=True)
    parser.add_argument("--channels", type=int, required=True)
    parser.add_argument("--kernel_len", type=int, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    length, n = args.length, 2 * args.length
    u = torch.randn(args.batch, args.channels, length, device=device, requires_grad=True)
    k = torch.randn(args.channels, args.kernel_len, device=device, requires_grad=True)
    d = torch.randn(args.channels, 1, device=device, requires_grad=True)

    def conv():
        spectrum = torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n)
        return torch.fft.irfft(spectrum, n=n)[..., :length] + d * u

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def median_ms(fn):
        for _ in range(2):  # the first calls set up thread pools and FFT plans
            fn()
        sync()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3

    def forward():
        with torch.no_grad():
            return conv()

    def forward_backward():
        y = conv()
        y.backward(torch.ones_like(y))

    print(json.dumps({"torch": torch.__version__, "device": device,
                      "threads": torch.get_num_threads(), "fwd_ms": median_ms(forward),
                      "fwdbwd_ms": median_ms(forward_backward)}), flush=True)


if __name__ == "__main__":
    main()
