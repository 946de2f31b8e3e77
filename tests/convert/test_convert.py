"""from_timm key mapping, layout transforms and refusals; load_state_dict; the seeded module.

Numerical parity with timm is in test_timm_parity.py; nothing here compiles a model.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxconv
from jaxconv.analysis import init_variables
from jaxconv.convert import (
    TimmFamily, from_timm, load_state_dict, register_timm_family, timm_key_map,
)
from jaxconv.convert import seeded
from jaxconv.convert import timm as timm_convert
from jaxconv.models.resnet import stack_scanned_blocks

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURE_DIR = ROOT / "tests" / "models" / "timm_fixtures"
FIXTURES = sorted(FIXTURE_DIR.glob("*.npz"))


def _state_dict(name, model=None, seed=0):
    """A seeded state_dict with exactly the keys and shapes from_timm expects."""
    keys = timm_key_map(name, model=model)
    return seeded.seeded_state_dict([(k, shape) for k, (_, shape) in keys.items()], seed)


# ----------------------------------------------------------------------------- key mapping


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_expected_keys_are_timms(path):
    """For every fixture model, the keys and shapes from_timm expects are timm's state_dict
    (num_batches_tracked aside): the naming of slow-marked models is checked here too."""
    fixture = seeded.read_fixture(path)
    timm_keys = {k: tuple(s) for k, s in fixture.entries if not k.endswith("num_batches_tracked")}
    expected = {k: tuple(shape) for k, (_, shape) in timm_key_map(fixture.name).items()}
    assert expected.keys() == timm_keys.keys()
    for key, shape in timm_keys.items():
        # A 1x1 conv implemented as a dense layer (CoAtNet) takes timm's [O, I, 1, 1] as [O, I].
        assert expected[key] in (shape, shape[:2] if shape[2:] == (1, 1) else None), key


def test_key_map_entries():
    keys = timm_key_map("resnet50")
    assert keys["conv1.weight"] == ("params/conv1/kernel", (64, 3, 7, 7))
    assert keys["layer1.0.downsample.0.weight"] == (
        "params/layer1_0/downsample_conv/kernel", (256, 64, 1, 1))
    assert keys["layer1.0.downsample.1.running_var"] == (
        "batch_stats/layer1_0/downsample_bn/var", (256,))
    assert keys["fc.weight"] == ("params/fc/kernel", (1000, 2048))
    mobilenet = timm_key_map("mobilenetv1_100")
    assert mobilenet["blocks.1.0.conv_dw.weight"] == (
        "params/blocks_1_0/conv_dw/kernel", (64, 1, 3, 3))
    assert timm_key_map("vgg11_bn")["features.4.weight"] == (
        "params/features_4/kernel", (128, 64, 3, 3))


@pytest.mark.parametrize("flax_path, rule, timm_name", [
    (("layer1_0", "downsample_conv"), "resnet", "layer1.0.downsample.0"),
    (("layer4_2", "downsample_bn"), "resnet", "layer4.2.downsample.1"),
    (("blocks_1_0", "conv_dw"), None, "blocks.1.0.conv_dw"),
    (("features_10",), None, "features.10"),
    (("pre_logits", "fc1"), None, "pre_logits.fc1"),
    (("Conv2d_1a_3x3", "conv"), None, "Conv2d_1a_3x3.conv"),
    (("Mixed_5b", "branch1x1"), None, "Mixed_5b.branch1x1"),
    (("features", "denseblock1", "denselayer12", "norm1"), None,
     "features.denseblock1.denselayer12.norm1"),
])
def test_module_names(flax_path, rule, timm_name):
    family = timm_convert._FAMILIES[rule] if rule else TimmFamily()
    assert family.module_key(flax_path) == timm_name


def test_index_suffixes_off():
    family = TimmFamily(index_suffixes=False)
    assert family.module_key(("Mixed_6b", "branch7x7_1", "conv")) == "Mixed_6b.branch7x7_1.conv"
    assert TimmFamily().module_key(("Mixed_6b", "branch7x7_1")) == "Mixed_6b.branch7x7.1"


def test_register_family_validates():
    with pytest.raises(ValueError, match="TimmFamily"):
        register_timm_family("nofamily", {"renames": ()})
    with pytest.raises(re.error):
        TimmFamily(renames=(("(unclosed", "x"),))


def test_register_family_never_silently_replaces(monkeypatch):
    monkeypatch.setitem(timm_convert._FAMILIES, "vgg", timm_convert._FAMILIES["vgg"])
    register_timm_family("vgg")  # the same rule again: a no-op
    with pytest.raises(ValueError, match="already has a timm rule.*replace=True"):
        register_timm_family("vgg", TimmFamily(index_suffixes=False))
    assert timm_convert._FAMILIES["vgg"] == TimmFamily()
    register_timm_family("vgg", TimmFamily(index_suffixes=False), replace=True)
    assert timm_convert._FAMILIES["vgg"] == TimmFamily(index_suffixes=False)


@pytest.mark.parametrize("name, dw_names", [
    ("convnext_tiny", {"conv_dw"}), ("inception_next_tiny", {"dwconv_hw", "dwconv_w", "dwconv_h"}),
    ("mobilenetv1_025", {"conv_dw"}), ("coatnet_0_rw_224", {"conv2_kxk"})])
def test_depthwise_kernels_found_by_module_type(name, dw_names):
    """Exactly the DepthwiseConv2D kernels expect timm's [C, 1, kh, kw] (no twin model)."""
    keys = timm_key_map(name)
    dw = {path for path, shape in keys.values()
          if path.endswith("/kernel") and len(shape) == 4 and shape[1] == 1 and shape[2:] != (1, 1)}
    named = {path for path in (p for p, _ in keys.values())
             if path.endswith("/kernel") and path.split("/")[-2] in dw_names}
    assert dw and dw == named


def test_family_without_rule(monkeypatch):
    monkeypatch.delitem(timm_convert._FAMILIES, "vgg")
    with pytest.raises(ValueError, match=r"family 'vgg'.*'resnet'"):
        from_timm("vgg11", {})


# ------------------------------------------------------------------------------- refusals


def test_refuses_mismatched_state_dict():
    state = _state_dict("resnet18")
    del state["layer1.0.conv1.weight"]
    del state["bn1.running_var"]
    state["layer5.0.conv1.weight"] = np.zeros((3, 3, 3, 3), np.float32)
    state["fc.weight"] = np.zeros((10, 512), np.float32)
    state["layer2.0.conv2.weight"] = np.zeros((128, 128, 3, 3, 1), np.float32)
    state["layer1.0.bn1.num_batches_tracked"] = np.array(5)  # ignored, not "unexpected"
    with pytest.raises(ValueError) as info:
        from_timm("resnet18", state)
    message = str(info.value)
    assert "missing keys (2): bn1.running_var, layer1.0.conv1.weight" in message
    assert "unexpected keys (1): layer5.0.conv1.weight" in message
    assert "wrongly shaped keys (2" in message
    assert "fc.weight: expected (1000, 512), got (10, 512)" in message
    assert "layer2.0.conv2.weight: expected (128, 128, 3, 3), got (128, 128, 3, 3, 1)" in message
    assert "num_batches_tracked" not in message.split("\n", 1)[1]


def test_prefix_hint():
    state = {f"module.{k}": v for k, v in _state_dict("resnet18").items()}
    with pytest.raises(ValueError, match="prefix 'module.'; strip it"):
        from_timm("resnet18", state)


def test_empty_state_dict_lists_every_key():
    with pytest.raises(ValueError) as info:
        from_timm("mobilenetv1_025", {})
    assert f"missing keys ({len(timm_key_map('mobilenetv1_025'))})" in str(info.value)


# ------------------------------------------------------------------------------- transforms


def test_layout_transforms_and_bn_mapping():
    state = _state_dict("mobilenetv1_050")
    variables = from_timm("mobilenetv1_050", state)
    params, stats = variables["params"], variables["batch_stats"]
    np.testing.assert_array_equal(  # conv OIHW -> HWIO
        params["conv_stem"]["kernel"], state["conv_stem.weight"].transpose(2, 3, 1, 0))
    # DepthwiseConv2D (found by module type): [C, 1, kh, kw] -> [kh, kw, C]
    dw = params["blocks_1_0"]["conv_dw"]["kernel"]
    assert dw.shape == (3, 3, 32)
    np.testing.assert_array_equal(dw, state["blocks.1.0.conv_dw.weight"][:, 0].transpose(1, 2, 0))
    np.testing.assert_array_equal(dw[1, 2, 5], state["blocks.1.0.conv_dw.weight"][5, 0, 1, 2])
    np.testing.assert_array_equal(  # linear [out, in] -> [in, out]
        params["classifier"]["kernel"], state["classifier.weight"].T)
    bn = "blocks.3.2.bn2"
    np.testing.assert_array_equal(params["blocks_3_2"]["bn2"]["scale"], state[f"{bn}.weight"])
    np.testing.assert_array_equal(params["blocks_3_2"]["bn2"]["bias"], state[f"{bn}.bias"])
    np.testing.assert_array_equal(stats["blocks_3_2"]["bn2"]["mean"], state[f"{bn}.running_mean"])
    np.testing.assert_array_equal(stats["blocks_3_2"]["bn2"]["var"], state[f"{bn}.running_var"])
    # Exactly the collections and tree of the model's own init, float32 jax Arrays.
    abstract = init_variables(jaxconv.create_model("mobilenetv1_050"), (1, 32, 32, 3))
    assert jax.tree.map(lambda a: (a.shape, a.dtype), variables) == jax.tree.map(
        lambda a: (a.shape, a.dtype), abstract)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(variables))


def test_values_are_float32_copies():
    state = {k: v.astype(np.float16) for k, v in _state_dict("mobilenetv1_025").items()}
    variables = from_timm("mobilenetv1_025", state)
    before = np.asarray(variables["params"]["bn1"]["scale"]).copy()
    state["bn1.weight"][:] = 7
    assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(variables))
    np.testing.assert_array_equal(variables["params"]["bn1"]["scale"], before)


def test_linear_and_conv_weight_layouts_interchange():
    """VGG's pre-logits: a torchvision-style linear [O, I*7*7] weight for the 7x7 conv, a 2-D
    weight for the 1x1 conv and a [O, I, 1, 1] weight for the linear classifier all convert to
    the same variables as timm's native shapes."""
    model = jaxconv.create_model("vgg11", head_width=16, num_classes=3)
    state = _state_dict("vgg11", model=model)
    native = from_timm("vgg11", state, model=model)
    reshaped = dict(state)
    reshaped["pre_logits.fc1.weight"] = state["pre_logits.fc1.weight"].reshape(16, 512 * 49)
    reshaped["pre_logits.fc2.weight"] = state["pre_logits.fc2.weight"].reshape(16, 16)
    reshaped["head.fc.weight"] = state["head.fc.weight"].reshape(3, 16, 1, 1)
    other = from_timm("vgg11", reshaped, model=model)
    jax.tree.map(np.testing.assert_array_equal, other, native)
    # A reshape that does not fit is still refused.
    reshaped["pre_logits.fc1.weight"] = np.zeros((16, 512 * 48), np.float32)
    with pytest.raises(ValueError, match=r"pre_logits.fc1.weight: expected \(16, 512, 7, 7\)"):
        from_timm("vgg11", reshaped, model=model)


def test_num_classes_override():
    model = jaxconv.create_model("resnet18", num_classes=10)
    state = _state_dict("resnet18", model=model)
    assert state["fc.weight"].shape == (10, 512)
    variables = from_timm("resnet18", state, model=model)
    np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], state["fc.weight"].T)
    with pytest.raises(ValueError, match=r"fc.weight: expected \(1000, 512\), got \(10, 512\)"):
        from_timm("resnet18", state)  # the registered 1000-class model


def test_scanned_resnet_layout():
    state = _state_dict("resnet34")
    unrolled = from_timm("resnet34", state)
    scanned_model = jaxconv.create_model("resnet34", scan_blocks=True)
    scanned = from_timm("resnet34", state, model=scanned_model)
    assert "layer3_scan" in scanned["params"] and "layer3_5" not in scanned["params"]
    assert scanned["params"]["layer3_scan"]["conv1"]["kernel"].shape == (5, 3, 3, 256, 256)
    jax.tree.map(np.testing.assert_array_equal, scanned, stack_scanned_blocks(unrolled))
    np.testing.assert_array_equal(scanned["params"]["layer3_scan"]["bn2"]["scale"][4],
                                  state["layer3.5.bn2.weight"])


# --------------------------------------------------------------------------- load_state_dict


def test_load_state_dict_npz_roundtrip(tmp_path):
    state = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
             "a.num_batches_tracked": np.array(3, np.int64),
             "b.bias": np.ones(4, np.float16)}
    np.savez(tmp_path / "w.npz", **state)
    loaded = load_state_dict(tmp_path / "w.npz")
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert loaded[key].dtype == value.dtype
        np.testing.assert_array_equal(loaded[key], value)


def test_load_state_dict_then_from_timm(tmp_path):
    state = _state_dict("mobilenetv1_025")
    np.savez(tmp_path / "mobilenet.npz", **state)
    variables = from_timm("mobilenetv1_025", load_state_dict(str(tmp_path / "mobilenet.npz")))
    np.testing.assert_array_equal(variables["params"]["classifier"]["bias"],
                                  state["classifier.bias"])


def test_load_state_dict_refuses_other_files(tmp_path):
    with pytest.raises(ValueError, match=r"unsupported file type '\.json'.*'\.safetensors', "
                                         r"'\.npz'"):
        load_state_dict(tmp_path / "w.json")
    with pytest.raises(ValueError, match="pickled torch checkpoint.*np.savez"):
        load_state_dict(tmp_path / "w.pth")


def test_load_safetensors_roundtrip(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    state = {"x.weight": np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32)}
    st.save_file(state, str(tmp_path / "w.safetensors"))
    loaded = load_state_dict(tmp_path / "w.safetensors")
    np.testing.assert_array_equal(loaded["x.weight"], state["x.weight"])


def test_safetensors_missing_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(ImportError, match="pip install safetensors"):
        load_state_dict(tmp_path / "w.safetensors")


# ---------------------------------------------------------------------------------- seeded


def test_seeded_is_numpy_only():
    """The fixture generator loads seeded.py by path in an environment without JAX."""
    code = (
        "import importlib.util, sys\n"
        f"path = {str(ROOT / 'jaxconv' / 'convert' / 'seeded.py')!r}\n"
        "spec = importlib.util.spec_from_file_location('s', path)\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['s'] = m\n"
        "spec.loader.exec_module(m)\n"
        "m.seeded_state_dict([('a.weight', (2, 3))], 0)\n"
        "banned = [n for n in sys.modules if n.split('.')[0] in ('jax', 'flax', 'jaxconv')]\n"
        "assert not banned, banned\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_seeded_values_follow_the_key_role():
    entries = [("conv.weight", (64, 32, 3, 3)), ("bn.weight", (1000,)), ("bn.bias", (1000,)),
               ("bn.running_mean", (1000,)), ("bn.running_var", (1000,)),
               ("bn.num_batches_tracked", ())]
    state = seeded.seeded_state_dict(entries, seed=3)
    assert "bn.num_batches_tracked" not in state
    assert all(v.dtype == np.float32 for v in state.values())
    assert abs(state["conv.weight"].std() * np.sqrt(32 * 9) - 1) < 0.05
    assert 0.5 <= state["bn.weight"].min() and state["bn.weight"].max() <= 1.5
    assert 0.5 <= state["bn.running_var"].min() and state["bn.running_var"].max() <= 2.0
    assert abs(state["bn.bias"].std() - 0.1) < 0.01
    assert abs(state["bn.running_mean"].std() - 0.1) < 0.01


def test_seeded_is_deterministic_and_per_key():
    a = seeded.seeded_state_dict([("x.weight", (4, 4)), ("y.bias", (3,))], seed=1)
    b = seeded.seeded_state_dict([("y.bias", (3,)), ("x.weight", (4, 4))], seed=1)
    c = seeded.seeded_state_dict([("x.weight", (4, 4))], seed=2)
    np.testing.assert_array_equal(a["x.weight"], b["x.weight"])  # order-independent
    np.testing.assert_array_equal(a["y.bias"], b["y.bias"])
    assert not np.array_equal(a["x.weight"], c["x.weight"])  # the seed matters
    # Each key has its own stream.
    assert not np.array_equal(seeded.seeded_tensor("p.bias", (5,), 0),
                              seeded.seeded_tensor("q.bias", (5,), 0))


def test_fixture_roundtrip_and_fingerprint(tmp_path):
    entries = [("a.weight", (3, 2)), ("a.bias", (3,)), ("bn.num_batches_tracked", ())]
    state = seeded.seeded_state_dict(entries, seed=5)
    seeded.write_fixture(tmp_path / "m.npz", entries=entries, state_dict=state, seed=5,
                         input_seed=6, input_shape=(1, 3, 4, 4),
                         logits=np.ones((1, 3)), slow=True, versions="v")
    fixture = seeded.read_fixture(tmp_path / "m.npz")
    assert fixture.name == "m" and fixture.entries == entries and fixture.slow
    assert fixture.input_nchw().shape == (1, 3, 4, 4) and fixture.logits.dtype == np.float32
    fixture.check_fingerprint(fixture.state_dict())
    state["a.bias"] = state["a.bias"] + 1e-3
    with pytest.raises(AssertionError, match="random stream changed"):
        fixture.check_fingerprint(state)
