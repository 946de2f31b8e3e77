"""Live parity against timm at full default resolution; runs only where torch and timm import.

CI and the CPU venv have no torch, so this module is skipped there; the seeded fixtures in
test_timm_parity.py cover them. On a machine with torch + timm (the GPU machine has both) it
compares jaxconv with timm at each model's default input size, for seeded weights and for
timm's own random initialisation (zero-initialised last BNs, other statistics), and round-trips
a state_dict through a ``.safetensors`` file written by torch. Tolerance as in
test_timm_parity.py (2e-5 of the logit scale, matmul precision "highest", torch TF32 off).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import jaxconv  # noqa: E402
from jaxconv.convert import from_timm, load_state_dict  # noqa: E402
from jaxconv.convert.seeded import seeded_input, seeded_state_dict  # noqa: E402

RELATIVE_TOLERANCE = 2e-5
LIVE = ["resnet18", "wide_resnet50_2", "vgg11_bn", "mobilenetv1_100"]


@pytest.fixture(autouse=True)
def _exact_float32():
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    with jax.default_matmul_precision("highest"):
        yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _timm_logits(model, x_nchw):
    with torch.no_grad():
        return model.eval()(torch.from_numpy(x_nchw)).numpy()


def _jaxconv_logits(name, state_dict, x_nchw):
    model = jaxconv.create_model(name)
    variables = from_timm(name, state_dict)
    x_nhwc = x_nchw.transpose(0, 2, 3, 1)
    return np.asarray(jax.jit(lambda v, x: model.apply(v, x))(variables, x_nhwc))


def _assert_close(got, expected, name):
    scale = float(np.abs(expected).max())
    error = float(np.abs(got - expected).max())
    print(f"{name}: max |error| {error:.2e}, logit scale {scale:.3g}")
    assert scale > 0 and error <= RELATIVE_TOLERANCE * scale, (name, error, scale)


@pytest.mark.parametrize("name", LIVE)
def test_live_parity_seeded(name):
    model = timm.create_model(name)
    entries = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    state = seeded_state_dict(entries, seed=11)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=False)
    h, w, c = jaxconv.model_info(name).input_size
    x = seeded_input((1, c, h, w), seed=12)
    _assert_close(_jaxconv_logits(name, state, x), _timm_logits(model, x), name)


def test_live_parity_timm_init():
    """timm's own init (zero-init last BN of each block, unit running stats)."""
    torch.manual_seed(0)
    model = timm.create_model("resnet50")
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    x = seeded_input((2, 3, 224, 224), seed=13)
    _assert_close(_jaxconv_logits("resnet50", state, x), _timm_logits(model, x), "resnet50")


def test_safetensors_from_torch(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv1_100")
    safetensors_torch.save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    state = load_state_dict(tmp_path / "model.safetensors")
    x = seeded_input((1, 3, 160, 160), seed=14)
    _assert_close(_jaxconv_logits("mobilenetv1_100", state, x), _timm_logits(model, x),
                  "mobilenetv1_100 (safetensors)")
