"""Kernel-size sweep: how far does a larger depthwise kernel help a RepLKNet-style net ('Scaling
Up Your Kernels to 31x31', Ding et al. 2022, arXiv:2203.06717)?

Model ``replknet_tiny_cifar`` (jaxconv/models/replknet.py): 3 stages of one RepLKBlock + ConvFFN
each, every stage's large depthwise kernel set by ``model_overrides.kernel_size`` (3..31), with
and without the parallel 5x5 re-parameterization branch (``small_kernel`` 5 / None; a 3x3 kernel
never has one). The depthwise convs are ``jaxconv.layers.DepthwiseConv2D``; on CPU the op uses
an FFT for large kernels, so a 31x31 kernel costs about what a 7x7 does there (the rows record
FLOPs and images/s beside accuracy). The report's ``compare_kernel_size.png`` puts the kernel
sizes side by side.

    python -m experiments.sweep --config experiments/configs/sweeps/kernel_size.py \\
        --workdir runs/kernel_size --report

Default: 10 runs on the offline digits32 (sklearn digits at 32x32, 1 channel), kernel sizes
{3, 7, 13, 21, 31} x small kernel {5, None}, widths 32/64/128, stem stride 2 (stages at 16x16,
8x8, 4x4), 600 steps of batch 32 each. Expected on the 2-core CPU (jax 0.10.2): ~60 min (not
measured; scaled from `:small` and the runlocal of cifar10_replknet.py, cores shared).
`:small`: 3 runs (kernel 3, 13, 31 with the 5x5 branch; 2 stages of widths 16/32; 150 steps),
measured 9.7 min for the whole command with --report on the 2-core CPU shared with other jobs
(load ~10; the process itself used 2.7 min of CPU), test top-1 0.42 / 0.73 / 0.82 for kernels
3 / 13 / 31 (one seed, 150 steps: a smoke test, and params grow with the kernel, 16K to 63K).
"""
from experiments.configs import cifar10_replknet
from jaxconv.train.sweep import axis, product

REPORT = {"compare": "model_overrides.kernel_size"}
ARGS = ("small",)
KERNEL_SIZES = (3, 7, 13, 21, 31)


def get_config(arg=None):
    if arg not in (None, *ARGS):
        raise ValueError(f"unknown sweep argument {arg!r}; valid: {ARGS}")
    c = cifar10_replknet.get_config("replknet_tiny_cifar,runlocal")  # digits32, AdamW recipe
    c.model_overrides.channels = (32, 64, 128)
    c.model_overrides.stem_stride = 2
    c.num_train_steps = 600
    c.warmup_steps = 60
    c.log_every_steps = 50
    c.eval_every_steps = 200
    c.checkpoint_every_steps = 200
    if arg == "small":
        c.model_overrides.channels = (16, 32)
        c.model_overrides.layers = (1, 1)
        c.model_overrides.large_kernel_sizes = (13, 13)  # replaced by kernel_size
        c.num_train_steps = 150
        c.warmup_steps = 15
        c.eval_every_steps = 0
        c.checkpoint_every_steps = 150
    return c


def get_sweep(arg=None):
    if arg == "small":
        return product(axis("model_overrides.kernel_size", [3, 13, 31]))
    return product(axis("model_overrides.small_kernel", [5, None]),
                   axis("model_overrides.kernel_size", list(KERNEL_SIZES)))
