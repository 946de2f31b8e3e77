"""Training: train state, steps, loop, mesh/sharding, checkpointing, metrics.

The entry point is ``train_and_evaluate(config, workdir)``; ``python -m experiments.train`` wraps it.
"""
from jaxconv.train.checkpoint import load_checkpoint
from jaxconv.train.config import default_config
from jaxconv.train.loop import train_and_evaluate, validate_config
from jaxconv.train.mesh import initialize_distributed, make_data_mesh
from jaxconv.train.state import TrainState, create_train_state
from jaxconv.train.steps import make_eval_step, make_train_step

__all__ = [
    "TrainState", "create_train_state", "default_config", "initialize_distributed",
    "load_checkpoint", "make_data_mesh", "make_eval_step", "make_train_step",
    "train_and_evaluate", "validate_config",
]
