"""Numerical parity with timm, from seeded weights (no torch needed).

Every ``tests/models/timm_fixtures/*.npz`` holds timm's logits for the weights that
``jaxconv.convert.seeded`` derives from the fixture's (key, shape) list and seed (see
``make_fixtures.py``). Here the same state_dict is rebuilt with NumPy, converted with
``from_timm`` and run through jaxconv; the logits must agree.

Tolerance: ``max |jaxconv - timm| <= 2e-5 * max |timm logits|``. Float32's unit roundoff is
6e-8, and the two frameworks sum the same products in other orders (oneDNN vs XLA:CPU) through
11 to 150 layers: over the 16 ResNet/VGG/MobileNet fixtures the worst error was 2.5e-6 of the
logit scale (measured, jax 0.10.2 vs torch 2.13 CPU), so 2e-5 leaves ~8x headroom for other
CPUs. A real conversion error is four orders of magnitude larger (see
``test_parity_detects_a_wrong_conversion``).
Matmul precision is pinned to "highest" so GPUs do not use TF32.
"""

from __future__ import annotations

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from jaxconv.convert import from_timm
from jaxconv.convert.seeded import read_fixture
from tests.helpers import FAST_COMPILE

FIXTURE_DIR = pathlib.Path(__file__).resolve().parents[1] / "models" / "timm_fixtures"
FIXTURES = sorted(FIXTURE_DIR.glob("*.npz"))
RELATIVE_TOLERANCE = 2e-5

# The deep ResNets run with scan_blocks=True: from_timm stacks the converted blocks, and the
# scanned model compiles several times faster on CPU (same arithmetic; scan == unrolled is tested
# in tests/models/test_resnet.py). This also covers converting into the scanned layout.
MODEL_OVERRIDES = {
    "resnet101": {"scan_blocks": True},
    "resnet152": {"scan_blocks": True},
    "wide_resnet101_2": {"scan_blocks": True},
}
# Test-only XLA:CPU options that cut compile time 2-5x (as in tests/models/test_resnet.py).


def _params():
    for path in FIXTURES:
        marks = [pytest.mark.slow] if read_fixture(path).slow else []
        yield pytest.param(path, id=path.stem, marks=marks)


def _compiled_forward(model, variables, x_nhwc):
    """``(variables, x) -> logits``, compiled once for these shapes."""
    with jax.default_matmul_precision("highest"):
        lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x_nhwc)
    try:
        compiled = lowered.compile(
            compiler_options=FAST_COMPILE if jax.default_backend() == "cpu" else None)
    except Exception as err:  # an XLA without one of the options
        if "compile option" not in str(err):
            raise
        compiled = lowered.compile()
    return lambda v, x: np.asarray(compiled(v, x))


def _convert_and_run(fixture, state_dict=None):
    state_dict = fixture.state_dict() if state_dict is None else state_dict
    model = jaxconv.create_model(fixture.name, **MODEL_OVERRIDES.get(fixture.name, {}))
    variables = from_timm(fixture.name, state_dict, model=model)
    x = jnp.asarray(fixture.input_nchw().transpose(0, 2, 3, 1))
    return model, variables, x


def _max_error(fixture, logits) -> tuple[float, float]:
    scale = float(np.abs(fixture.logits).max())
    return float(np.abs(logits - fixture.logits).max()), scale


def test_default_run_covers_every_family():
    """Fixtures not marked slow include a model of each family with timm weights here."""
    fast = {p.stem for p in FIXTURES if not read_fixture(p).slow}
    assert {"resnet18", "resnet50", "wide_resnet50_2", "vgg11_bn", "mobilenetv1_100"} <= fast


def test_every_table_entry_has_a_fixture():
    """make_fixtures.FIXTURES (read without importing torch) and the .npz files agree."""
    tree = ast.parse((FIXTURE_DIR / "make_fixtures.py").read_text())
    table = next(
        node.value for node in tree.body
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "FIXTURES"
    )
    entries = ast.literal_eval(table)
    names = {p.stem for p in FIXTURES}
    assert set(entries) <= names, sorted(set(entries) - names)
    for name, (size, slow) in entries.items():
        fixture = read_fixture(FIXTURE_DIR / f"{name}.npz")
        assert fixture.input_shape[2:] == (size, size) and fixture.slow == slow, name


@pytest.mark.parametrize("path", list(_params()))
def test_parity_with_timm(path):
    fixture = read_fixture(path)
    state_dict = fixture.state_dict()
    fixture.check_fingerprint(state_dict)
    model, variables, x = _convert_and_run(fixture, state_dict)
    logits = _compiled_forward(model, variables, x)(variables, x)
    assert logits.shape == fixture.logits.shape
    error, scale = _max_error(fixture, logits)
    print(f"{fixture.name}: max |error| {error:.2e}, logit scale {scale:.3g}, "
          f"relative {error / scale:.2e} ({fixture.versions})")
    # Non-degenerate logits: the comparison must be able to fail.
    assert fixture.logits.std() > 0.1 * scale
    assert error <= RELATIVE_TOLERANCE * scale, (error, scale)


def test_parity_detects_a_wrong_conversion():
    """The tolerance is far below the effect of a plausible conversion bug."""
    fixture = read_fixture(FIXTURE_DIR / "resnet18.npz")
    model, variables, x = _convert_and_run(fixture)
    forward = _compiled_forward(model, variables, x)
    error, scale = _max_error(fixture, forward(variables, x))
    assert error <= RELATIVE_TOLERANCE * scale
    params, stats = variables["params"], variables["batch_stats"]
    corruptions = {
        # OIHW read as OIWH: the stem kernel transposed in space.
        "stem kernel transposed": {**variables, "params": {
            **params, "conv1": {"kernel": params["conv1"]["kernel"].transpose(1, 0, 2, 3)}}},
        # running_mean and running_var swapped in one BatchNorm.
        "bn statistics swapped": {**variables, "batch_stats": {
            **stats, "bn1": {"mean": stats["bn1"]["var"], "var": stats["bn1"]["mean"] ** 2}}},
    }
    for what, bad in corruptions.items():
        error, scale = _max_error(fixture, forward(bad, x))
        assert error > 100 * RELATIVE_TOLERANCE * scale, (what, error, scale)
