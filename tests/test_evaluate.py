"""experiments.evaluate and jaxconv.data.eval_preprocess.

* the preprocessing equals timm's `create_transform(is_training=False, ...)` on committed images
  (fixtures written by tests/data/eval_fixtures/make_fixtures.py in the torch+timm venv);
* the per-model defaults equal timm's pretrained configs (same fixture script);
* top-1 / top-5 on tfds-mocked imagenet2012 equal what a direct forward pass of the reference
  preprocessing gives (labels chosen from those logits, padding in the last batch);
* a digits workdir: top-1 equals the training loop's own eval (raw and EMA weights) [slow];
* bad arguments fail before any weights or data are read, naming the flag.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import evaluate as ev
from jaxconv.data import eval_preprocess as ep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "data", "eval_fixtures")


def test_preprocessing_equals_timm_create_transform():
    with np.load(os.path.join(FIXTURES, "timm_eval.npz")) as f:
        arrays = {k: f[k] for k in f.files}
    settings = json.loads(str(arrays["settings"]))
    images = [k for k in arrays if k.startswith("image")]
    assert len(images) >= 4 and len(settings) >= 6
    interpolations = set()
    for i in range(len(images)):
        for j, (size, crop_pct, interpolation, (mean, std)) in enumerate(settings):
            s = ep.EvalSettings(size, crop_pct, interpolation, mean, std)
            out = ep.timm_eval_transform(arrays[f"image{i}"], s)
            ref = arrays[f"out{i}_{j}"]
            assert out.shape == ref.shape == (size, size, 3) and out.dtype == np.float32
            np.testing.assert_allclose(out, ref, atol=1e-5, err_msg=f"image{i} {settings[j]}")
            interpolations.add(interpolation)
    assert interpolations == set(ep.INTERPOLATIONS)


def test_default_settings_are_timms_pretrained_configs():
    with open(os.path.join(FIXTURES, "timm_pretrained_cfgs.json")) as f:
        cfgs = json.load(f)["cfgs"]
    assert set(cfgs) == set(ep.TIMM_PRETRAINED_EVAL)
    for name, cfg in cfgs.items():
        s = ep.timm_eval_settings(name)
        assert (s.image_size, s.interpolation) == (cfg["image_size"], cfg["interpolation"]), name
        np.testing.assert_allclose([s.crop_pct, *s.mean, *s.std],
                                   [cfg["crop_pct"], *cfg["mean"], *cfg["std"]], err_msg=name)
    # Models timm lacks: timm's generic defaults at the model's own input size.
    s = ep.timm_eval_settings("resnet20")
    assert (s.image_size, s.crop_pct, s.interpolation) == (32, 0.875, "bicubic")
    assert ep.timm_eval_settings("resnet50", crop_pct=1.0).crop_pct == 1.0


def _smooth_image(rng, h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    x = 128 + 90 * np.sin(xx[..., None] / rng.uniform(2, 6, 3) + yy[..., None] / 4.0)
    return np.clip(x + rng.normal(0, 15, (h, w, 3)), 0, 255).astype(np.uint8)


def _fake_tfds_dir(root, name, version, split):
    vdir = os.path.join(root, name, version)
    os.makedirs(vdir)
    with open(os.path.join(vdir, "dataset_info.json"), "w") as f:
        json.dump({}, f)
    open(os.path.join(vdir, f"{name}-{split}.array_record-00000-of-00001"), "wb").close()
    return str(root)


def test_timm_weights_on_mocked_imagenet_equal_a_direct_forward_pass(tmp_path):
    import jax
    import tensorflow_datasets as tfds
    import jaxconv
    from jaxconv.convert import from_timm, timm_key_map
    from jaxconv.convert.seeded import seeded_state_dict

    name = "resnet18"
    state_dict = seeded_state_dict([(k, shape) for k, (_, shape) in timm_key_map(name).items()],
                                   seed=0)
    weights = str(tmp_path / "resnet18.npz")
    np.savez(weights, **state_dict)
    model = jaxconv.create_model(name)
    variables = from_timm(name, state_dict, model=model)

    # Reference: the timm-equal preprocessing (tested above) and one forward pass of all images.
    settings = ep.timm_eval_settings(name, image_size=32)
    rng = np.random.default_rng(0)
    images = [_smooth_image(rng, int(rng.integers(30, 60)), int(rng.integers(30, 60)))
              for _ in range(10)]
    logits = np.asarray(model.apply(
        variables, np.stack([ep.timm_eval_transform(x, settings) for x in images]), train=False))
    order = np.argsort(-logits, axis=1)
    # Labels: 4 top-1 hits, 3 more hits at rank 3 (top-5 only), 3 misses (the lowest logit).
    labels = [int(order[i, 0]) for i in range(4)] + [int(order[i, 2]) for i in range(4, 7)] + \
             [int(order[i, -1]) for i in range(7, 10)]
    examples = [{"image": x, "label": y} for x, y in zip(images, labels)]

    data_dir = _fake_tfds_dir(tmp_path / "tfds", "imagenet2012", "5.1.0", "validation")
    with tfds.testing.mock_data(as_data_source_fn=lambda *a, **k: examples):
        plan = ev.plan(model=name, weights=weights, data_dir=data_dir, image_size=32,
                       batch_size=4)           # 3 batches, the last one half padding
        row = ev.evaluate(plan, num_threads=0, log=lambda *_: None)
    assert row["count"] == 10
    assert row["top1"] == pytest.approx(0.4) and row["top5"] == pytest.approx(0.7)
    assert (row["image_size"], row["crop_pct"], row["interpolation"]) == (32, 0.95, "bicubic")
    assert row["dataset"] == "imagenet2012" and row["split"] == "validation"
    assert jax.numpy.isfinite(logits).all()


@pytest.mark.slow
def test_digits_workdir_top1_equals_the_training_loops_eval(tmp_path):
    from experiments.configs.digits_resnet import get_config
    from jaxconv import train
    c = get_config()
    for k, v in {"num_train_steps": 12, "batch_size": 32, "log_every_steps": 12,
                 "eval_every_steps": 12, "checkpoint_every_steps": 12, "warmup_steps": 2,
                 "num_data_threads": 1, "ema_decay": 0.9}.items():
        c[k] = v
    workdir = str(tmp_path / "run")
    summary = train.train_and_evaluate(c, workdir)
    row = ev.evaluate(ev.plan(weights=workdir), log=lambda *_: None)
    assert row["count"] == summary["eval_count"] == 300
    assert row["top1"] == summary["eval_top1"] and row["step"] == 12
    ema = ev.evaluate(ev.plan(weights=workdir, ema=True), log=lambda *_: None)
    assert ema["top1"] == summary["eval_ema_top1"]
    assert row["top5"] >= row["top1"]
    # A slice of the split through the command line, written to a file as well.
    out = tmp_path / "row.json"
    proc = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--weights={workdir}",
                           "--split=test[:100]", f"--output={out}"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["count"] == 100


@pytest.fixture
def fake_workdir(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"model": "resnet20", "dataset": "digits"}))
    return str(workdir)


@pytest.fixture
def weights_file(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, x=np.zeros(1))
    return str(path)


@pytest.mark.parametrize("kwargs, expected", [
    ({"weights": None}, r"--weights is required"),
    ({"weights": "MISSING.npz"}, r"--weights=.*MISSING.npz.* does not exist"),
    ({"weights": "PTH"}, r"--weights=.*\.pth.*expected a state dict"),
    ({"model": None}, r"--model is required"),
    ({"model": "resnet19"}, r"resnet19.*resnet18"),
    ({"weights": "WORKDIR", "model": "resnet50"}, r"--model='resnet50' differs.*'resnet20'"),
    ({"ema": True}, r"--ema applies to training workdirs"),
    ({"batch_size": 0}, r"--batch_size=0"),
    ({"dataset": "imagenet2013"}, r"Unknown dataset 'imagenet2013'.*imagenet2012"),
    ({"split": "test"}, r"--split: Invalid split 'test'.*\['train', 'validation'\]"),
    ({"crop_pct": 1.5}, r"--crop_pct=1.5"),
    ({"interpolation": "cubic"}, r"--interpolation='cubic' is not one of.*bicubic"),
    ({"mean": ["0.5", "0.5"]}, r"--mean=\[0.5, 0.5\]"),
    ({"mean": ["a", "b", "c"]}, r"--mean=a,b,c: expected 3"),
    ({"preprocess": "dataset", "crop_pct": 0.9}, r"--crop_pct apply to --preprocess=timm"),
    ({"preprocess": "torch"}, r"--preprocess='torch' is not one of"),
    ({"dataset": "seq_digits"}, r"--dataset='seq_digits' is a classification sequence"),
])
def test_bad_arguments_fail_fast_naming_them(kwargs, expected, fake_workdir, weights_file,
                                              tmp_path):
    args = {"model": "resnet18", "weights": weights_file, **kwargs}
    replace = {"WORKDIR": fake_workdir, "PTH": str(tmp_path / "w.pth"),
               "MISSING.npz": str(tmp_path / "MISSING.npz")}
    if args["weights"] == "PTH":
        open(replace["PTH"], "wb").close()
    args["weights"] = replace.get(args["weights"], args["weights"])
    with pytest.raises(ValueError, match=expected):
        ev.plan(**args)


def test_command_line_error_exits_nonzero_naming_the_flag(weights_file):
    proc = subprocess.run([sys.executable, "-m", "experiments.evaluate", "--model=resnet18",
                           f"--weights={weights_file}", "--interpolation=cubic"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "--interpolation='cubic'" in proc.stderr and "bicubic" in proc.stderr
