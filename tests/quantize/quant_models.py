"""A tiny ConvNet with every layer kind PTQ handles, and random variables with non-trivial
BatchNorm statistics drawn without running ``init`` (cheap on the shared CPU)."""
from __future__ import annotations

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.layers import DepthwiseConv2D, batch_norm, conv2d, matmul_conv


class TinyNet(nn.Module):
    """conv-BN-relu, Pallas-op depthwise-BN, grouped nn.Conv depthwise-BN, 1x1 (matmul_conv)
    -BN, global pool, dense."""

    num_classes: int = 5

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(batch_norm(train, name="bn0")(conv2d(8, 3, name="conv0")(x)))
        x = DepthwiseConv2D(3, 2, use_bias=False, name="dw1")(x)
        x = nn.relu(batch_norm(train, name="bn1")(x))
        x = nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=8, use_bias=False,
                    name="dw2")(x)
        x = nn.relu(batch_norm(train, name="bn2")(x))
        x = nn.Conv(16, (1, 1), padding="VALID", use_bias=False,
                    conv_general_dilated=matmul_conv, name="pw")(x)
        x = nn.relu(batch_norm(train, name="bn3")(x))
        return nn.Dense(self.num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


def random_variables(model, input_shape, seed=0, bn_spread=1.0):
    """He-normal kernels (fan-in), random BN scale/bias/mean/var (``bn_spread`` widens how
    much the channels' BN factors differ, which is what hurts per-tensor weight scales)."""
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                              jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
    rng = np.random.default_rng(seed)
    flat = flax.traverse_util.flatten_dict(abstract)
    out = {}
    for key, leaf in flat.items():
        shape, name = leaf.shape, key[-1]
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1])) if len(shape) != 3 else shape[0] * shape[1]
            a = rng.normal(0, np.sqrt(2.0 / fan_in), shape)
        elif name == "scale":
            a = np.exp(rng.normal(0, 0.5 * bn_spread, shape))
        elif name == "bias":
            a = rng.normal(0, 0.2, shape)
        elif name == "mean":
            a = rng.normal(0, 0.3, shape)
        elif name == "var":
            a = np.exp(rng.normal(0, bn_spread, shape))
        else:
            raise AssertionError(key)
        out[key] = jnp.asarray(a, jnp.float32)
    return flax.traverse_util.unflatten_dict(out)


def with_data_statistics(model, variables, x):
    """``variables`` whose BatchNorm statistics are exactly those of batch ``x`` (what a
    network trained on that data stores), from one train-mode pass: Flax keeps
    ``m * old + (1 - m) * batch``, solved here for ``batch``."""
    _, new = model.apply(variables, x, train=True, mutable=["batch_stats"])
    momentum = 0.9   # jaxconv.layers.BN_MOMENTUM
    stats = jax.tree.map(lambda n, o: (n - momentum * o) / (1 - momentum),
                         new["batch_stats"], variables["batch_stats"])
    return {**variables, "batch_stats": stats}
