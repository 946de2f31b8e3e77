"""Tests for jaxconv.data sources: registry/info, offline datasets, tfds (mocked, no network)."""

import json
import os
import random
import time

import numpy as np
import pytest

from jaxconv import data
from jaxconv.data import sources

ALL = ["cifar10", "cifar100", "digits", "digits32", "fashion_mnist", "imagenet2012", "mnist", "mnist1d"]


def _prepare_fake_tfds_dir(root, name, version, splits, fmt="array_record"):
  """Files the pre-check looks for; the contents are served by tfds.testing.mock_data."""
  vdir = os.path.join(root, name, version)
  os.makedirs(vdir)
  with open(os.path.join(vdir, "dataset_info.json"), "w") as f:
    json.dump({}, f)
  for split in splits:
    open(os.path.join(vdir, f"{name}-{split}.{fmt}-00000-of-00001"), "wb").close()
  return str(root)


# ---------------------------------------------------------------------------------------------
# registry and static info


def test_list_datasets_and_static_info():
  assert [n for n in data.list_datasets() if not data.dataset_info(n).is_sequence] == ALL
  for name in ALL:
    info = data.dataset_info(name)
    assert info.name == name
    h, w, c = info.image_shape
    assert len(info.mean) == len(info.std) == c
    assert info.train_split in info.splits and info.eval_split in info.splits
    assert all(s > 0 for s in info.std)
  assert data.dataset_info("cifar10").image_shape == (32, 32, 3)
  assert data.dataset_info("cifar100").num_classes == 100
  assert data.dataset_info("mnist").image_shape == (28, 28, 1)
  assert data.dataset_info("imagenet2012").eval_split == "validation"
  assert data.dataset_info("imagenet2012").num_examples("train") == 1281167
  assert data.dataset_info("digits").num_examples("test") == 300
  assert 120 < data.dataset_info("cifar10").mean[0] < 130


def test_dataset_info_validation():
  with pytest.raises(ValueError, match="per channel"):
    data.DatasetInfo("x", 10, (4, 4, 3), mean=(0.0,), std=(1.0,))
  with pytest.raises(ValueError, match="eval_split"):
    data.DatasetInfo("x", 10, (4, 4, 1), mean=(0.0,), std=(1.0,), eval_split="validation")
  with pytest.raises(ValueError, match="std"):
    data.DatasetInfo("x", 10, (4, 4, 1), mean=(0.0,), std=(0.0,))


def test_unknown_dataset_names_close_matches_and_choices():
  with pytest.raises(ValueError) as exc:
    data.get_source("cifar", "train")
  msg = str(exc.value)
  assert "'cifar10'" in msg and "Did you mean" in msg and "imagenet2012" in msg  # full list too
  with pytest.raises(ValueError, match="fashion_mnist"):
    data.dataset_info("fashion-mnist")
  with pytest.raises(ValueError, match="Available datasets"):
    data.get_source("no_such_thing", "train")


def test_bad_split_lists_valid_splits():
  with pytest.raises(ValueError) as exc:
    data.get_source("digits", "validation")
  assert "'train'" in str(exc.value) and "'test'" in str(exc.value)
  # tfds datasets: checked statically, before looking for files.
  with pytest.raises(ValueError, match="'validation'"):
    data.get_source("imagenet2012", "test", data_dir="/nonexistent")
  with pytest.raises(ValueError, match="valid splits"):
    data.get_source("cifar10", "train[:x]", data_dir="/nonexistent")


# ---------------------------------------------------------------------------------------------
# offline datasets


def test_digits():
  train, test = data.get_source("digits", "train"), data.get_source("digits", "test")
  assert (len(train), len(test)) == (1497, 300)
  info = train.info
  assert info == data.dataset_info("digits")
  ex = train[0]
  assert ex["image"].dtype == np.uint8 and ex["image"].shape == (8, 8, 1)
  assert isinstance(ex["label"], int)
  images = np.stack([train[i]["image"] for i in range(len(train))])
  labels = np.array([train[i]["label"] for i in range(len(train))])
  test_labels = np.array([test[i]["label"] for i in range(len(test))])
  assert images.max() == 255 and images.min() == 0
  assert set(labels) == set(range(10)) and set(test_labels) == set(range(10))
  # stratified: every class has 29..31 test images (about 1/6 of ~180)
  assert np.bincount(test_labels, minlength=10).min() >= 29
  assert np.bincount(test_labels, minlength=10).max() <= 31
  # static stats match the train split
  np.testing.assert_allclose(images.mean(), info.mean[0], atol=1e-3)
  np.testing.assert_allclose(images.std(), info.std[0], atol=1e-3)
  # train and test are disjoint and together are load_digits
  from sklearn.datasets import load_digits
  full = np.round(load_digits().images * (255 / 16)).astype(np.uint8)
  test_images = np.stack([test[i]["image"][..., 0] for i in range(len(test))])
  both = np.concatenate([images[..., 0], test_images]).reshape(1797, -1)
  assert sorted(map(bytes, both)) == sorted(map(bytes, full.reshape(1797, -1)))
  # the cached arrays cannot be modified through the source
  with pytest.raises(ValueError):
    train[0]["image"][0, 0, 0] = 1


def test_digits32_is_digits_upsampled_4x():
  for split in ("train", "test"):
    small, big = data.get_source("digits", split), data.get_source("digits32", split)
    assert len(small) == len(big) and big.info == data.dataset_info("digits32")
    for i in (0, 7, len(small) - 1):
      assert big[i]["image"].shape == (32, 32, 1) and big[i]["label"] == small[i]["label"]
      np.testing.assert_array_equal(big[i]["image"][::4, ::4], small[i]["image"])
      np.testing.assert_array_equal(big[i]["image"][3::4, 1::4], small[i]["image"])
  train = data.get_source("digits32", "train")  # the static stats are the train split's
  images = np.stack([train[i]["image"] for i in range(len(train))])
  np.testing.assert_allclose(images.mean(), train.info.mean[0], atol=1e-3)
  np.testing.assert_allclose(images.std(), train.info.std[0], atol=1e-3)


def test_mnist1d_generated_offline_and_cached(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXCONV_CACHE_DIR", str(tmp_path))
  # The generator reseeds the global RNGs; get_source must leave them as they were.
  np.random.seed(1234)
  random.seed(1234)
  np_before, py_before = np.random.get_state()[1].copy(), random.getstate()
  train = data.get_source("mnist1d", "train")
  test = data.get_source("mnist1d", "test")
  assert np.array_equal(np.random.get_state()[1], np_before) and random.getstate() == py_before
  assert (len(train), len(test)) == (4000, 1000)
  ex = train[0]
  assert ex["image"].dtype == np.float32 and ex["image"].shape == (1, 40, 1)
  assert ex["image"].shape == train.info.image_shape
  x = np.stack([train[i]["image"] for i in range(len(train))]).astype(np.float64)
  labels = np.array([train[i]["label"] for i in range(len(train))])
  assert labels.min() == 0 and labels.max() == 9 and len(set(labels)) == 10
  np.testing.assert_allclose(x.mean(), train.info.mean[0], atol=1e-3)
  np.testing.assert_allclose(x.std(), train.info.std[0], atol=1e-3)
  # written to the disk cache; reading it back gives the same arrays
  assert any(f.endswith(".npz") for f in os.listdir(tmp_path))
  sources._mnist1d_arrays.cache_clear()
  again = data.get_source("mnist1d", "train")
  assert np.array_equal(again[123]["image"], train[123]["image"])
  assert again[123]["label"] == train[123]["label"]


def test_split_slicing():
  train = data.get_source("digits", "train")
  head = data.get_source("digits", "train[:100]")
  tail = data.get_source("digits", "train[90%:]")
  last = data.get_source("digits", "test[-10:]")
  assert len(head) == 100 and len(tail) == 1497 - 1347 and len(last) == 10
  assert np.array_equal(head[5]["image"], train[5]["image"])
  assert np.array_equal(tail[0]["image"], train[1347]["image"])
  assert np.array_equal(tail[-1]["image"], train[1496]["image"])
  assert last.info is train.info
  with pytest.raises(IndexError):
    head[100]


# ---------------------------------------------------------------------------------------------
# tfds


def test_unprepared_tfds_dataset_fails_fast_with_instructions(tmp_path):
  start = time.perf_counter()
  with pytest.raises(FileNotFoundError) as exc:
    data.get_source("cifar10", "train", data_dir=str(tmp_path))
  assert time.perf_counter() - start < 5
  assert isinstance(exc.value, data.DatasetNotPreparedError)
  msg = str(exc.value)
  assert "'cifar10'" in msg and str(tmp_path) in msg
  assert "download_and_prepare" in msg and "array_record" in msg and "tensorflow" in msg

  with pytest.raises(data.DatasetNotPreparedError) as exc:
    data.get_source("imagenet2012", "validation", data_dir=str(tmp_path))
  msg = str(exc.value)
  assert "ILSVRC2012_img_train.tar" in msg
  assert os.path.join(str(tmp_path), "downloads", "manual") in msg


def test_tfrecord_only_dataset_gets_a_clear_error(tmp_path):
  root = _prepare_fake_tfds_dir(tmp_path, "mnist", "3.0.1", ["train", "test"], fmt="tfrecord")
  start = time.perf_counter()
  with pytest.raises(data.DatasetNotPreparedError, match="TFRecord"):
    data.get_source("mnist", "test", data_dir=root)
  assert time.perf_counter() - start < 5


def test_default_data_dir_from_env(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  assert data.default_data_dir() == str(tmp_path / "tfds")
  with pytest.raises(data.DatasetNotPreparedError, match="tfds"):
    data.get_source("fashion_mnist", "train")


def test_cifar10_through_tfds_data_source_with_mock_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  root = _prepare_fake_tfds_dir(tmp_path, "cifar10", "3.0.2", ["train", "test"])
  with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
    src = data.get_source("cifar10", "train", data_dir=root)
    assert isinstance(src, data.TfdsSource) and len(src) == 24
    assert src.info == data.dataset_info("cifar10")
    ex = src[3]
    assert set(ex) == {"image", "label"}
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (32, 32, 3)
    assert isinstance(ex["label"], int) and 0 <= ex["label"] < 10

    it = data.train_iterator(src, global_batch_size=8, seed=0,
                             augment=data.AugmentConfig(crop_padding=4, flip=True, cutout=8))
    batch = next(it)
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32
    assert np.isfinite(batch["image"]).all()

    test = data.get_source("cifar10", "test[:10]", data_dir=root)
    batches = list(data.eval_iterator(test, global_batch_size=4))
    assert [int(b["mask"].sum()) for b in batches] == [4, 4, 2]
    # normalized with the static cifar10 statistics
    info = test.info
    first = batches[0]["image"][0] * np.array(info.std, np.float32) + np.array(info.mean)
    np.testing.assert_allclose(first, test[0]["image"], atol=1e-3)


def test_imagenet_variable_size_with_mock_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  root = _prepare_fake_tfds_dir(tmp_path, "imagenet2012", "5.1.0", ["train", "validation"])
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    train = data.get_source("imagenet2012", "train", data_dir=root)
    shapes = {train[i]["image"].shape for i in range(len(train))}
    assert len(shapes) > 1  # mock images have varying sizes
    batch = next(data.train_iterator(train, global_batch_size=4, seed=0,
                                     augment=data.AugmentConfig(flip=True)))
    assert batch["image"].shape == (4, 224, 224, 3)
    assert 0 <= batch["label"].min() and batch["label"].max() < 1000
    val = data.get_source("imagenet2012", "validation", data_dir=root)
    batches = list(data.eval_iterator(val, global_batch_size=4))
    assert [b["image"].shape for b in batches] == [(4, 224, 224, 3)] * 2
    assert [int(b["mask"].sum()) for b in batches] == [4, 2]
