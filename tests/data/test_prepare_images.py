"""experiments.prepare_images: an image folder -> tfds ArrayRecord data jaxconv trains on.

The folders are written by the tests (PNG and JPEG of several modes and sizes, corrupt files);
what is read back is compared with PIL's own decoding of the source files.
"""
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxconv import data
from jaxconv.data import folder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write(path, array, fmt, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(array)
    if mode:
        im = im.convert(mode)
    im.save(path, format=fmt)


def _mixed_folder(root, rng):
    """3 classes, 5 images each (+1 CMYK JPEG): RGB/gray/palette/RGBA, PNG and JPEG, sizes vary."""
    src = os.path.join(root, "src")
    for c, cls in enumerate(["b_cat", "a_dog", "c_owl"]):   # sorted: a_dog=0, b_cat=1, c_owl=2
        for i in range(5):
            h, w = 9 + i, 11 + c
            rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            kind = (i + c) % 5
            sub = "nested" if i == 4 else ""
            if kind == 0:
                _write(os.path.join(src, cls, sub, f"{i}.png"), rgb, "PNG")
            elif kind == 1:
                _write(os.path.join(src, cls, sub, f"{i}.jpg"), rgb, "JPEG")
            elif kind == 2:
                _write(os.path.join(src, cls, sub, f"{i}.PNG"), rgb, "PNG", mode="L")
            elif kind == 3:
                _write(os.path.join(src, cls, sub, f"{i}.png"), rgb, "PNG", mode="P")
            else:
                rgba = np.concatenate([rgb, rng.integers(0, 256, (h, w, 1), np.uint8)], -1)
                _write(os.path.join(src, cls, sub, f"{i}.png"), rgba, "PNG")
    # A CMYK JPEG (stored converted to RGB, as PNG).
    _write(os.path.join(src, "c_owl", "cmyk.jpg"), rng.integers(0, 256, (12, 10, 3), np.uint8),
           "JPEG", mode="CMYK")
    with open(os.path.join(src, "a_dog", "README.txt"), "w") as f:
        f.write("not an image")
    return src


def _reference(path, channels):
    """What a reader must get for `path`: PIL's decoding converted to the dataset's channels."""
    with Image.open(path) as im:
        x = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    return x[..., None] if x.ndim == 2 else x


def _source_files(src):
    out = []
    for root, _, names in os.walk(src):
        out += [os.path.join(root, n) for n in names if not n.endswith(".txt")]
    return out


def test_corrupt_files_are_all_named_and_nothing_is_written(tmp_path):
    src = _mixed_folder(str(tmp_path), np.random.default_rng(0))
    with open(os.path.join(src, "b_cat", "broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(good, format="PNG")
    with open(os.path.join(src, "c_owl", "truncated.png"), "wb") as f:
        f.write(good.getvalue()[:len(good.getvalue()) // 2])
    Image.fromarray(np.full((5, 5), 4000, np.uint16)).save(os.path.join(src, "a_dog", "deep.png"))
    out = tmp_path / "data"
    with pytest.raises(folder.BadImagesError) as exc:
        folder.prepare_image_folder(src, "pets", out, log=lambda *_: None)
    message = str(exc.value)
    assert os.path.join(src, "b_cat", "broken.jpg") in message
    assert os.path.join(src, "c_owl", "truncated.png") in message
    assert os.path.join(src, "a_dog", "deep.png") in message and "16-bit" in message
    assert len(exc.value.bad) == 3
    assert not (out / "pets").exists() or not any((out / "pets").iterdir())

    # The command line: exit status 1, the corrupt files named, nothing written.
    proc = subprocess.run([sys.executable, "-m", "experiments.prepare_images", src, "--name=pets",
                           f"--data_dir={out}"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "broken.jpg" in proc.stderr and "truncated.png" in proc.stderr
    assert not (out / "pets").exists() or not any((out / "pets").iterdir())


def test_read_back_equals_the_files_with_a_stratified_split(tmp_path):
    src = _mixed_folder(str(tmp_path), np.random.default_rng(1))
    out = str(tmp_path / "data")
    path = folder.prepare_image_folder(src, "pets", out, val_fraction=0.4, seed=3,
                                       log=lambda *_: None)
    assert path == os.path.join(out, "pets", "1.0.0")

    info = data.dataset_info("pets", data_dir=out)
    assert info.num_classes == 3 and info.splits == ("train", "validation")
    assert info.split_sizes == (10, 6) and info.eval_split == "validation"
    assert info.variable_size and info.image_shape == (224, 224, 3)

    files = _source_files(src)
    label_of = {p: ["a_dog", "b_cat", "c_owl"].index(os.path.relpath(p, src).split(os.sep)[0])
                for p in files}
    seen, train_pixels = [], []
    for split in ("train", "validation"):
        src_split = data.get_source("pets", split, data_dir=out)
        per_class = np.zeros(3, int)
        for i in range(len(src_split)):
            example = src_split[i]
            # Each stored image equals exactly one source file (PIL's decoding), with its label.
            match = [p for p in files if _reference(p, 3).shape == example["image"].shape
                     and np.array_equal(_reference(p, 3), example["image"])]
            assert len(match) == 1, (split, i)
            assert example["label"] == label_of[match[0]]
            per_class[example["label"]] += 1
            seen.append(match[0])
            if split == "train":
                train_pixels.append(example["image"].reshape(-1, 3).astype(np.float64))
        if split == "validation":
            assert per_class.tolist() == [2, 2, 2]    # 40% of 16, quotas 1.875/1.875/2.25
    assert sorted(seen) == sorted(files)               # nothing dropped, nothing twice
    pixels = np.concatenate(train_pixels)
    np.testing.assert_allclose(info.mean, pixels.mean(0), atol=1e-3)
    np.testing.assert_allclose(info.std, pixels.std(0), atol=1e-3)

    # tfds reads it by itself too (no jaxconv), as data_source and from the directory.
    import tensorflow_datasets as tfds
    ds = tfds.data_source("pets", split="validation", data_dir=out, download=False)
    assert len(ds) == 6
    builder = tfds.builder_from_directory(path)
    assert builder.info.features["label"].names == ["a_dog", "b_cat", "c_owl"]
    assert np.array_equal(builder.as_data_source("train")[0]["image"],
                          data.get_source("pets", "train", data_dir=out)[0]["image"])

    # Same seed, same split; another seed, another one (new versions beside the first).
    folder.prepare_image_folder(src, "pets", out, val_fraction=0.4, seed=3, version="1.0.1",
                                log=lambda *_: None)
    folder.prepare_image_folder(src, "pets", out, val_fraction=0.4, seed=4, version="1.0.2",
                                log=lambda *_: None)
    def val_images(name):
        s = data.get_source(name, "validation", data_dir=out)
        return [s[i]["image"].tobytes() for i in range(len(s))]
    assert val_images("pets:1.0.1") == val_images("pets:1.0.0")
    assert val_images("pets") != val_images("pets:1.0.0")     # newest = 1.0.2, seed 4


def test_existing_dataset_is_never_overwritten(tmp_path):
    src = _mixed_folder(str(tmp_path), np.random.default_rng(2))
    out = str(tmp_path / "data")
    path = folder.prepare_image_folder(src, "pets", out, log=lambda *_: None)
    before = {n: os.path.getmtime(os.path.join(path, n)) for n in os.listdir(path)}
    with pytest.raises(ValueError, match=r"already exists.*--version=1\.0\.1"):
        folder.prepare_image_folder(src, "pets", out, log=lambda *_: None)
    assert {n: os.path.getmtime(os.path.join(path, n)) for n in os.listdir(path)} == before
    assert sorted(os.listdir(os.path.join(out, "pets"))) == ["1.0.0"]   # no staging left
    info = data.dataset_info("pets", data_dir=out)
    assert info.splits == ("train",) and info.eval_split == "train"
    with pytest.raises(ValueError, match="version 9.9.9 is not prepared"):
        data.dataset_info("pets:9.9.9", data_dir=out)


@pytest.mark.parametrize("kwargs, expected", [
    ({"name": "My Pets"}, r"--name='My Pets'"),
    ({"name": "cifar10"}, r"--name='cifar10'.*already knows"),
    ({"name": "listops_500"}, r"--name='listops_500'"),
    ({"val_fraction": 1.0}, r"--val_fraction=1.0"),
    ({"val_fraction": 0.01}, r"--val_fraction=0.01 .* is 0 images"),
    ({"seed": -1}, r"--seed=-1"),
    ({"image_size": 0}, r"--image_size=0"),
    ({"version": "1.0"}, r"--version='1.0'"),
    ({"src": "missing"}, r"SRC_DIR=.*missing.* is not a folder"),
])
def test_bad_arguments_fail_fast_naming_them(tmp_path, kwargs, expected):
    src = _mixed_folder(str(tmp_path), np.random.default_rng(3))
    kwargs = dict(kwargs)
    src = str(tmp_path / kwargs.pop("src")) if "src" in kwargs else src
    name = kwargs.pop("name", "pets")
    with pytest.raises(ValueError, match=expected):
        folder.prepare_image_folder(src, name, str(tmp_path / "data"), log=lambda *_: None,
                                    **kwargs)


def test_unknown_name_says_where_it_looked(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown dataset 'nothere'.*data_dir="):
        data.dataset_info("nothere", data_dir=str(tmp_path))
    # A tfds folder jaxconv did not write (no statistics): a clear error, not a guess.
    vdir = tmp_path / "foreign" / "1.0.0"
    vdir.mkdir(parents=True)
    (vdir / "dataset_info.json").write_text(json.dumps({"name": "foreign"}))
    with pytest.raises(ValueError, match="without jaxconv's metadata"):
        data.dataset_info("foreign", data_dir=str(tmp_path))


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    """The offline digits train/test splits written out as one PNG per image."""
    root = tmp_path_factory.mktemp("digits_folder")
    for split in ("train", "test"):
        src = data.get_source("digits", split)
        for i in range(len(src)):
            example = src[i]
            _write(os.path.join(root, split, f"class{example['label']}", f"{i:04d}.png"),
                   example["image"][..., 0], "PNG")
    return root


def test_fixed_size_gray_folder_has_the_registered_statistics(digits_folder, tmp_path):
    """digits' train split as PNGs: the computed stats equal the registry's digits stats."""
    out = str(tmp_path / "data")
    folder.prepare_image_folder(digits_folder / "train", "digits_png", out, log=lambda *_: None)
    info = data.dataset_info("digits_png", data_dir=out)
    reference = data.dataset_info("digits")
    assert info.image_shape == (8, 8, 1) and not info.variable_size
    assert info.num_classes == 10 and info.split_sizes == (1497,)
    np.testing.assert_allclose(info.mean, reference.mean, atol=1e-3)
    np.testing.assert_allclose(info.std, reference.std, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("image_size", [None, 16])
def test_a_few_training_steps_on_a_prepared_folder(digits_folder, tmp_path, monkeypatch,
                                                   image_size):
    """Train + eval through the normal loop on a prepared folder (fixed-size, and variable-size
    through random-resized-crop / resize + center crop)."""
    from experiments.configs.digits_resnet import get_config
    from jaxconv import train
    out = str(tmp_path / "data")
    folder.prepare_image_folder(digits_folder / "train", "digits_png", out, val_fraction=0.1,
                                image_size=image_size, log=lambda *_: None)
    # The loop looks the dataset up without config.data_dir until it passes it (lead's diff):
    monkeypatch.setenv("TFDS_DATA_DIR", out)
    c = get_config()
    c.dataset, c.data_dir = "digits_png", out
    c.num_train_steps, c.batch_size, c.eval_every_steps = 6, 16, 6
    c.log_every_steps, c.checkpoint_every_steps, c.num_data_threads = 1, 6, 1
    c.augment.crop_padding, c.augment.flip = 1, True
    summary = train.train_and_evaluate(c, str(tmp_path / "run"))
    assert summary["step"] == 6 and np.isfinite(summary["loss"])
    assert summary["eval_count"] == 150           # round(1497 * 0.1) validation images
    assert data.dataset_info("digits_png").variable_size == (image_size is not None)


def test_prepare_and_read_on_gcs(gcs_emulator, gcs_path, tmp_path, monkeypatch):
    """gs:// data_dir against the local emulator: written, refused on re-run, read back equal."""
    # array_record reads gs:// with its own (google-cloud-cpp) client, which finds an emulator
    # through this variable only.
    monkeypatch.setenv("CLOUD_STORAGE_EMULATOR_ENDPOINT", gcs_emulator.url)
    src = _mixed_folder(str(tmp_path), np.random.default_rng(5))
    local = str(tmp_path / "data")
    folder.prepare_image_folder(src, "pets", local, val_fraction=0.4, log=lambda *_: None)
    remote = f"{gcs_path}/data"
    path = folder.prepare_image_folder(src, "pets", remote, val_fraction=0.4,
                                       log=lambda *_: None)
    assert path == f"{remote}/pets/1.0.0"
    assert data.dataset_info("pets", data_dir=remote) == data.dataset_info("pets", data_dir=local)
    with pytest.raises(ValueError, match="already exists"):
        folder.prepare_image_folder(src, "pets", remote, log=lambda *_: None)
    for split in ("train", "validation"):
        a = data.get_source("pets", split, data_dir=remote)
        b = data.get_source("pets", split, data_dir=local)
        assert len(a) == len(b)
        for i in range(len(a)):
            assert np.array_equal(a[i]["image"], b[i]["image"]) and a[i]["label"] == b[i]["label"]
