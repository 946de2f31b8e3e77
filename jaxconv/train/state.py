"""The train state: everything a resumed run needs besides the data position (which is the step)."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxconv.train.ema import init_ema


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array                 # int32 scalar: optimizer steps taken
    params: Any
    model_state: Any                # non-param collections, e.g. {"batch_stats": ...}
    opt_state: Any
    rng: jax.Array                  # raw uint32 key; per-step keys are fold_in(rng, step)
    # EMA of params and model_state ({"params", "model_state"}, jaxconv.train.ema); None: off.
    ema: Any = None


def create_train_state(model, tx: optax.GradientTransformation, input_shape, seed: int, *,
                       input_dtype="float32", ema: bool = False) -> TrainState:
    """Initializes parameters with the model's own initializers (jitted once, on the default
    device), tracing the model on zeros of ``input_shape`` and ``input_dtype`` (int32 for token
    ids). ``ema=True`` starts an EMA of the weights (a copy of them, ``jaxconv.train.ema``)."""
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))

    @jax.jit
    def init():
        variables = dict(model.init(init_rng, jnp.zeros(input_shape, input_dtype), train=False))
        params = variables.pop("params")
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=variables,
                          opt_state=tx.init(params), rng=train_rng,
                          ema=init_ema(params, variables) if ema else None)

    return init()
