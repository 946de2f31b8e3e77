"""Demo sweep: ResNet depth x learning rate on the offline digits (what `make demo` runs).

    python -m experiments.sweep --config experiments/configs/sweeps/demo.py \
        --workdir runs/demo_sweep --report

Six runs: resnet20/32/44 (He et al. 2016's CIFAR ResNets, 0.27M-0.66M parameters) at learning
rates 0.02 and 0.1, 10 epochs each on scikit-learn's 8x8 digits (1497 train / 300 test images),
then the summary table and plots in runs/demo_sweep/plots/. Expected on a 2-core CPU
(jax 0.10.2): 4.4 min for the whole command; test top-1 0.97-0.98. `:quick` trains 2 epochs per run (a smoke
test, ~1.5 min).
"""
from experiments.configs import digits_resnet
from jaxconv.train.sweep import axis, product

REPORT = {"compare": "learning_rate"}


def get_config(arg=None):
    c = digits_resnet.get_config()
    c.num_epochs = 10.0
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 100
    c.log_every_steps = 20
    if arg == "quick":
        c.num_epochs = 2.0
        c.eval_every_steps = 0
    elif arg:
        raise ValueError(f"unknown sweep argument {arg!r}; valid: 'quick'")
    return c


def get_sweep(arg=None):
    return product(axis("model", ["resnet20", "resnet32", "resnet44"]),
                   axis("learning_rate", [0.02, 0.1]))
