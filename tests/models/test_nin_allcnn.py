"""Network in Network (nin_cifar) and All-CNN-C (allcnn_c): paper parameter counts, structure,
class-map ReLU and dropout options, forward/backward/jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from jaxconv.analysis import count_params, init_variables
from tests.helpers import compile_fast
from tests.models.test_densenet import numpy_variables

# Springenberg et al. 2014 (arXiv:1412.6806), Table 3 (CIFAR-10 error and "# params"):
# All-CNN-C "1.3 M", Network in Network "~1 M" (Lin et al. print no count). Both are
# approximate; our exact counts (weights + biases, 10 classes) are 1,369,738 and 966,986, i.e.
# 1.37M (the paper truncates) and 0.97M. The exact figures are checked against counts derived
# from the layer tables in the module docstrings.
def _conv(k, c_in, c_out):
    return k * k * c_in * c_out + c_out


# conv1-3: 3x3 96 | conv4-6: 3x3 192 | conv7: 3x3 192 (valid), conv8: 1x1 192, conv9: 1x1 10.
ALLCNN_C = (_conv(3, 3, 96) + 2 * _conv(3, 96, 96) + _conv(3, 96, 192) + 2 * _conv(3, 192, 192)
            + _conv(3, 192, 192) + _conv(1, 192, 192) + _conv(1, 192, 10))
NIN_CIFAR = (_conv(5, 3, 192) + _conv(1, 192, 160) + _conv(1, 160, 96)
             + _conv(5, 96, 192) + 2 * _conv(1, 192, 192)
             + _conv(3, 192, 192) + _conv(1, 192, 192) + _conv(1, 192, 10))


def test_param_counts():
    def count(name):
        return count_params(init_variables(jaxconv.create_model(name), (1, 32, 32, 3))["params"])

    allcnn, nin = count("allcnn_c"), count("nin_cifar")
    assert allcnn == ALLCNN_C == 1_369_738
    assert nin == NIN_CIFAR == 966_986
    assert 1.3e6 <= allcnn < 1.4e6            # "1.3 M"
    assert round(nin / 1e6) == 1              # "~1 M"


def test_allcnn_layers():
    params = init_variables(jaxconv.create_model("allcnn_c"), (1, 32, 32, 3))["params"]
    assert set(params) == {f"conv{i}" for i in range(1, 10)}
    assert params["conv9"]["kernel"].shape == (1, 1, 192, 10)


def test_nin_layers():
    params = init_variables(jaxconv.create_model("nin_cifar"), (1, 32, 32, 3))["params"]
    assert set(params) == {"conv1", "cccp1", "cccp2", "conv2", "cccp3", "cccp4", "conv3",
                           "cccp5", "cccp6"}
    assert params["cccp6"]["kernel"].shape == (1, 1, 192, 10)


@pytest.mark.parametrize("name, class_map_side", [("allcnn_c", 6), ("nin_cifar", 8)])
def test_class_maps_are_pooled(name, class_map_side):
    """Strided convs (All-CNN) / pools (NiN) take 32x32 to the paper's class-map size."""
    model = jaxconv.create_model(name, num_classes=7)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    variables = init_variables(model, (1, 32, 32, 3))
    _, state = jax.eval_shape(lambda v, x: model.apply(v, x, mutable=["intermediates"]),
                              variables, x)
    (maps,) = state["intermediates"]["stage2"]
    assert maps.shape == (1, class_map_side, class_map_side, 7)


@pytest.mark.parametrize("name", ["allcnn_c", "nin_cifar"])
def test_forward_backward_jit_and_options(name):
    """Train/eval, gradients to every parameter, dropout only in train mode, class-map ReLU."""
    model = jaxconv.create_model(name)
    relu_maps = model.clone(class_map_relu=True)
    shape = (4, 32, 32, 3)
    variables = numpy_variables(model, shape)
    x = jnp.asarray(np.random.default_rng(3).normal(size=shape), jnp.float32)

    def step(v, x, k1, k2):
        def loss(params, key):
            logits = model.apply({"params": params}, x, train=True, rngs={"dropout": key})
            return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[:, 0]), logits

        (_, train1), grads = jax.value_and_grad(loss, has_aux=True)(v["params"], k1)
        _, train2 = loss(v["params"], k2)
        return grads, train1, train2, model.apply(v, x), model.apply(v, x), relu_maps.apply(v, x)

    k1, k2 = jax.random.key(1), jax.random.key(2)
    grads, train1, train2, eval1, eval2, eval_relu = compile_fast(step, variables, x, k1, k2)(
        variables, x, k1, k2)
    assert eval1.shape == (4, 10) and eval1.dtype == jnp.float32
    dead = [k for k, g in grads.items() if not np.any(np.asarray(g["kernel"]) != 0)]
    assert not dead, dead
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert not np.allclose(train1, train2)               # dropout draws differ
    np.testing.assert_array_equal(eval1, eval2)          # eval mode is deterministic
    assert np.any(np.asarray(eval1) < 0)                 # default: signed logits
    assert np.all(np.asarray(eval_relu) >= 0)            # class_map_relu: the papers' ReLU'd maps


@pytest.mark.parametrize("name, field, value, words", [
    ("allcnn_c", "input_dropout_rate", 1.0, "[0, 1)"),
    ("allcnn_c", "class_map_relu", "no", "True or False"),
    ("nin_cifar", "dropout_rate", -1, "[0, 1)"),
    ("nin_cifar", "num_classes", 0, "positive"),
])
def test_bad_arguments_name_the_field(name, field, value, words):
    with pytest.raises(ValueError) as err:
        jaxconv.create_model(name, **{field: value})
    assert field in str(err.value) and words in str(err.value)
