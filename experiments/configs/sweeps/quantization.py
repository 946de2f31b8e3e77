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
directory. Measured time: see the README's quantization section (2-core shared CPU).
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
