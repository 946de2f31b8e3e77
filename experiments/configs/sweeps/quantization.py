"""Quantization sweep (issue 15): a MobileNet v1 and a ResNet trained here on offline data, then
quantized every way the whitepaper compares (Krishnamoorthi 2018, Tables 2-5 in small).

    python -m experiments.sweep --config experiments/configs/sweeps/quantization.py:runlocal \\
        --workdir runs/quant_sweep
    python -m experiments.quantize --sweep_dir runs/quant_sweep

The sweep trains (model x training): mobilenetv1_025 and resnet20 on digits32 (scikit-learn's
8x8 digits at 32x32, 1 channel), each in float and with int4 per-channel QAT
(``config.quantization.scheme``). ``experiments.quantize --sweep_dir`` then quantizes every
run: the float runs with PTQ int8 per-tensor ("per-layer"), int8 per-channel, int4 per-channel
and data-free (ZeroQ) int8 per-channel; the QAT runs with int4 per-channel; and writes
``quantization_table.md``, ``quantization.jsonl`` and ``plots/quantization.png`` in the sweep
directory.

Expected time, measured (2-core CPU shared with ~7 other jobs, load 10-23, jax 0.10.2, 2026-12-06), `:runlocal`
(150 steps of batch 32 per run): the sweep 54.7 min (QAT resnet20 alone 35 min under the load),
``--sweep_dir`` ~6 min. Eval top-1 over the 300 digits32 test images:

| model | float | int8 per-layer | int8 per-channel | int4 PTQ | int4 QAT | int8 data-free |
|---|---|---|---|---|---|---|
| mobilenetv1_025 | 0.490 | 0.100 | 0.500 | 0.280 | 0.430 | 0.523 |
| resnet20 | 0.947 | 0.937 | 0.940 | 0.807 | 0.907 | 0.940 |

As in the whitepaper: per-layer int8 collapses the depthwise MobileNet to chance but not the
ResNet; per-channel int8 matches float; 4-bit PTQ loses most and QAT recovers much of it.
"""
from experiments.configs import cifar10_mobilenet
from jaxconv.train.sweep import axis, product

REPORT = {"compare": "quantization.scheme"}
MODELS = ("mobilenetv1_025", "resnet20")


def get_config(arg=None):
    c = cifar10_mobilenet.get_config("mobilenetv1_025,runlocal")   # digits32, batch 32
    c.num_train_steps = 400
    c.checkpoint_every_steps = 200
    c.log_every_steps = 50
    c.eval_every_steps = 0
    if arg == "runlocal":
        c.num_train_steps = 150
        c.checkpoint_every_steps = 150
    elif arg:
        raise ValueError(f"unknown sweep argument {arg!r}; valid: 'runlocal'")
    return c


def get_sweep(arg=None):
    return product(axis("model", MODELS), axis("quantization.scheme", ["", "int4_per_channel"]))
