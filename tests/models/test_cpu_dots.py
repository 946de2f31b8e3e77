"""Zoo models' train-step gradients contract ONE non-trivial dimension per dot: the 1x1 convs and
Dense layers on [B, H, W, C] maps are 2-D matmuls (``jaxconv.layers.conv.flat_matmul``), whose
kernel gradients XLA:CPU computes without a transposed copy of the activation gradient (the
copy cost 1.25-1.28x of a resnet50 / mobilenet train step)."""
import jax
import jax.numpy as jnp
import pytest

import jaxconv
from tests.helpers import dot_contractions


@pytest.mark.parametrize("name", ["mobilenetv1_100", "resnet50", "convnext_tiny",
                                  "inception_next_tiny", "coatnet_0_224", "cvt_13",
                                  "unireplknet_a"])
# (NAT is left out: its neighborhood attention contracts the 2-D window, x and y, by design.)
def test_train_gradient_dots_contract_one_dimension(name):
    model = jaxconv.create_model(name)
    x = jnp.zeros((2, 64, 64, 3))
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}

    def gradients(x):
        variables = model.init(rngs, x, train=False)

        def loss(params):
            out, _ = model.apply({**variables, "params": params}, x, train=True,
                                 rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"])
            return jnp.sum(out)
        return jax.grad(loss)(variables["params"])

    # Contracting more than one dimension of size > 1.
    wide = [f"{stack} {shape} contracting {dims}"
            for shape, dims, stack in dot_contractions(jax.make_jaxpr(gradients)(x).jaxpr)
            if sum(shape[d] > 1 for d in dims) > 1]
    assert not wide, "\n".join(wide[:5])
