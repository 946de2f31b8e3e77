"""Sequence datasets (issue 12): static info, generators, sequence views, UCR files, pipeline."""

import importlib.util

import numpy as np
import pytest

from jaxconv import data
from jaxconv.data import sequences, ucr
from jaxconv.data.info import family_of

HAS_AEON = importlib.util.find_spec("aeon") is not None
needs_aeon = pytest.mark.skipif(not HAS_AEON, reason="aeon wheel not installed "
                                "(pip install --no-deps aeon==1.6.0)")


def _examples(name, split, indices):
  src = data.get_source(name, split)
  return [src[i] for i in indices]


# ---------------------------------------------------------------------------------------------
# static info and names


def test_sequence_infos_and_name_patterns():
  info = data.dataset_info("assoc_recall_1024_v30")
  assert (info.image_shape, info.vocab_size, info.num_classes, info.task) == (
      (1024,), 30, 30, "per_position")
  assert info.label_shape == (1024,) and info.is_sequence
  assert data.dataset_info("assoc_recall_256").vocab_size == 20
  assert data.dataset_info("listops").image_shape == (2000,)
  assert data.dataset_info("listops_300").label_shape == ()
  adding = data.dataset_info("adding_600")
  assert (adding.image_shape, adding.task, adding.label_shape, adding.label_dtype) == (
      (600, 2), "regression", (1,), "float32")
  assert data.dataset_info("copy_memory_1000").image_shape == (1020,)
  assert data.dataset_info("seq_digits").image_shape == (64, 1)
  assert data.dataset_info("perm_digits32").image_shape == (1024, 1)
  assert data.dataset_info("ucr_basicmotions").image_shape == (100, 6)
  assert not data.dataset_info("digits").is_sequence
  assert data.dataset_info("digits").label_shape == ()
  assert family_of("assoc_recall_131072") == ("assoc_recall", (131072, 20))
  assert family_of("cifar10") is None
  for name in data.list_datasets():  # every listed name resolves
    assert data.dataset_info(name).name == name


@pytest.mark.parametrize("name, match", [
    ("assoc_recall_255", "even"), ("assoc_recall_2", r"\[4, 131072\]"),
    ("assoc_recall_262144", r"\[4, 131072\]"), ("assoc_recall_64_v3", "vocabulary"),
    ("listops_10", "maximum length"), ("adding_1", "T must be"), ("copy_memory_0", "T must be"),
    ("assoc_recal_256", "assoc_recall_<L>"),
])
def test_bad_sequence_names(name, match):
  with pytest.raises(ValueError, match=match):
    data.dataset_info(name)


def test_sequence_info_validation():
  with pytest.raises(ValueError, match="token datasets"):
    data.DatasetInfo("x", 4, (8,), mean=(), std=(), image_dtype="float32")
  with pytest.raises(ValueError, match="token datasets"):
    data.DatasetInfo("x", 4, (8,), mean=(), std=(), image_dtype="int32")  # no vocab_size
  with pytest.raises(ValueError, match="task must be one of"):
    data.DatasetInfo("x", 4, (8, 1), mean=(0.,), std=(1.,), task="segmentation")
  with pytest.raises(ValueError, match="needs a sequence"):
    data.DatasetInfo("x", 4, (8, 8, 1), mean=(0.,), std=(1.,), task="per_position")
  with pytest.raises(ValueError, match="per channel"):
    data.DatasetInfo("x", 4, (8, 2), mean=(0.,), std=(1.,))


# ---------------------------------------------------------------------------------------------
# generators: pure functions of (name, split, index), and correct tasks


@pytest.mark.parametrize("name", ["assoc_recall_64", "listops_60", "adding_20", "copy_memory_8"])
def test_generated_examples_are_pure_functions_of_split_and_index(name):
  a = _examples(name, "train", [5, 0, 3])
  b = _examples(name, "train", [3, 5, 0])
  for x, y in zip(a, [b[1], b[2], b[0]]):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  assert not np.array_equal(a[0]["image"], a[1]["image"])
  test = _examples(name, "test", [5])[0]
  assert not np.array_equal(test["image"], a[0]["image"])  # splits draw different examples


def test_assoc_recall_structure():
  vocab, length = 12, 64
  keys = (vocab - 2) // 2
  for split in ("train", "test"):
    for ex in _examples(f"assoc_recall_{length}_v{vocab}", split, range(20)):
      x, y = ex["image"], ex["label"]
      assert x.dtype == y.dtype == np.int32 and x.shape == y.shape == (length,)
      pairs = x[:-2].reshape(-1, 2)
      assert (pairs[:, 0] < keys).all() and (pairs[:, 1] >= keys).all() and (x < vocab - 1).all()
      mapping = {}
      for k, v in pairs:  # one value per key within an example
        assert mapping.setdefault(k, v) == v
      assert x[-2] == vocab - 2 and x[-1] in mapping  # "=>", then a key that occurred
      assert y[-1] == mapping[x[-1]]
      if split == "train":
        np.testing.assert_array_equal(y[:-1], x[1:])  # next token everywhere
      else:
        assert (y[:-1] == -1).all()


def _eval_listops(tokens):
  """Independent evaluator: a stack machine over the token ids."""
  ops = {11: min, 12: max, 13: lambda a: int(np.median(a)), 14: lambda a: sum(a) % 10}
  stack = []
  for t in tokens:
    if t == 0:
      break
    if 1 <= t <= 10:
      stack.append(t - 1)
    elif t in ops:
      stack.append(("op", t))
    else:  # "]": reduce to the last operator
      args = []
      while not (isinstance(stack[-1], tuple)):
        args.append(stack.pop())
      _, op = stack.pop()
      stack.append(ops[op](args[::-1]))
  assert len(stack) == 1
  return stack[0]


def test_listops_values_lengths_and_padding():
  for ex in _examples("listops_100", "train", range(15)):
    x = ex["image"]
    n = int((x != 0).sum())
    assert x.shape == (100,) and 25 <= n <= 100 and (x[n:] == 0).all() and (x[:n] != 0).all()
    assert _eval_listops(x) == ex["label"]
    assert 0 <= ex["label"] <= 9


def test_adding_and_copy_memory():
  for ex in _examples("adding_9", "train", range(10)):
    x, y = ex["image"], ex["label"]
    marks = np.flatnonzero(x[:, 1])
    assert len(marks) == 2 and marks[0] < 4 <= marks[1]
    np.testing.assert_allclose(y, [x[marks, 0].sum()], rtol=1e-6)
    assert y.dtype == np.float32 and ((0 <= x[:, 0]) & (x[:, 0] < 1)).all()
  train, test = _examples("copy_memory_5", "train", [0])[0], _examples("copy_memory_5", "test",
                                                                        [0])[0]
  for ex in (train, test):
    x = ex["image"]
    assert x.shape == (25,) and ((1 <= x[:10]) & (x[:10] <= 8)).all()
    assert (x[10:14] == 0).all() and (x[14:] == 9).all()
    np.testing.assert_array_equal(ex["label"][-10:], x[:10])
  assert (train["label"][:-10] == 0).all() and (test["label"][:-10] == -1).all()


# ---------------------------------------------------------------------------------------------
# sequence views of offline sets, UCR


def test_sequential_and_permuted_digits():
  images = data.get_source("digits", "train")
  seq, perm = data.get_source("seq_digits", "train"), data.get_source("perm_digits", "train")
  order = np.random.default_rng(0).permutation(64)
  for i in (0, 7, 100):
    flat = np.asarray(images[i]["image"]).reshape(64, 1)
    np.testing.assert_array_equal(seq[i]["image"], flat)
    np.testing.assert_array_equal(perm[i]["image"], flat[order])
    assert seq[i]["label"] == perm[i]["label"] == images[i]["label"]
  d32 = data.get_source("seq_digits32", "test")
  np.testing.assert_array_equal(d32[3]["image"],
                                np.asarray(data.get_source("digits32", "test")[3]["image"])
                                .reshape(1024, 1))


@pytest.mark.parametrize("name", ["seq_digits", "seq_digits32", "seq_mnist1d", "ucr_gunpoint",
                                  "ucr_arrowhead", "ucr_osuleaf", "ucr_acsf1",
                                  "ucr_italypowerdemand", "ucr_basicmotions",
                                  "ucr_japanesevowels", "ucr_pickupgesturewiimotez"])
def test_fixed_sequence_sets_match_their_static_info(name):
  if name.startswith("ucr_") and not HAS_AEON:
    pytest.skip("aeon wheel not installed")
  info = data.dataset_info(name)
  for split, size in zip(info.splits, info.split_sizes):
    src = data.get_source(name, split)
    assert len(src) == size
  src = data.get_source(name, "train")
  x = np.stack([np.asarray(src[i]["image"], np.float64) for i in range(len(src))])
  labels = np.array([src[i]["label"] for i in range(len(src))])
  assert x.shape[1:] == info.image_shape
  assert set(np.unique(labels)) == set(range(info.num_classes))
  np.testing.assert_allclose(x.mean(axis=(0, 1)), info.mean, atol=2e-4)
  np.testing.assert_allclose(x.std(axis=(0, 1)), info.std, rtol=2e-4, atol=2e-4)


@needs_aeon
def test_ts_parser(tmp_path):
  path = tmp_path / "Toy_TRAIN.ts"
  path.write_text("# comment\n@problemName Toy\n@univariate false\n@dimensions 2\n"
                  "@classLabel true b a\n@data\n1,2,3:4,5,6:a\n7,8,9:1,1,1:b\n")
  x, y, classes = ucr.read_ts(str(path))
  assert classes == ["b", "a"] and y.tolist() == [1, 0]
  np.testing.assert_array_equal(x[0], [[1, 4], [2, 5], [3, 6]])  # [L, C]
  path.write_text("@classLabel true a\n@data\n1,2:a\n1,2,3:a\n")
  with pytest.raises(ValueError, match="unequal"):
    ucr.read_ts(str(path))
  path.write_text("@classLabel true a\n@data\n1,2:c\n")
  with pytest.raises(ValueError, match="not in @classLabel"):
    ucr.read_ts(str(path))


def test_missing_aeon_says_how_to_install(monkeypatch):
  from importlib import metadata

  def missing(name):
    raise metadata.PackageNotFoundError(name)
  monkeypatch.setattr(metadata, "distribution", missing)
  with pytest.raises(FileNotFoundError, match="pip install --no-deps aeon"):
    ucr.aeon_data_dir()


# ---------------------------------------------------------------------------------------------
# the pipeline over sequence sets


def _batches(src, steps, **kwargs):
  it = data.train_iterator(src, global_batch_size=4, seed=3, num_threads=0, **kwargs)
  return [next(it) for _ in range(steps)]


@pytest.mark.parametrize("name", ["assoc_recall_32", "adding_12", "seq_digits"])
def test_sequence_batches_resume_mid_epoch_and_shard(name):
  src = data.get_source(name, "train[:10]")  # 10 examples, batch 4: epochs straddle batches
  run = _batches(src, 6)
  info = data.dataset_info(name)
  b = run[0]
  assert b["image"].shape == (4, *info.image_shape)
  assert b["image"].dtype == (np.int32 if info.vocab_size else np.float32)
  assert b["label"].shape == (4, *info.label_shape)
  assert b["label"].dtype == np.dtype(info.label_dtype)
  resumed = _batches(src, 3, start_step=3)
  for got, want in zip(resumed, run[3:]):
    for key in ("image", "label"):
      np.testing.assert_array_equal(got[key], want[key])
  halves = [_batches(src, 2, process_index=i, process_count=2) for i in (0, 1)]
  for step in range(2):
    for key in ("image", "label"):
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step][key], halves[1][step][key]]), run[step][key])


def test_sequence_float_inputs_are_normalized_and_tokens_untouched():
  src = data.get_source("seq_digits", "train")
  b = _batches(src, 1)[0]
  info = src.info
  perm = data.epoch_permutation(3, 0, len(src))
  raw = np.asarray(src[int(perm[0])]["image"], np.float32)
  np.testing.assert_allclose(b["image"][0], (raw - info.mean[0]) / info.std[0], rtol=1e-6)
  tokens = data.get_source("assoc_recall_16", "train")
  b = _batches(tokens, 1)[0]
  np.testing.assert_array_equal(b["image"][0],
                                tokens[int(data.epoch_permutation(3, 0, 2000)[0])]["image"])


def test_sequence_eval_padding_rows_are_unlabelled():
  src = data.get_source("assoc_recall_16", "test[:5]")
  batches = list(data.eval_iterator(src, global_batch_size=4, num_threads=0))
  last = batches[-1]
  assert last["mask"].tolist() == [True, False, False, False]
  assert (last["label"][1:] == -1).all() and last["label"][0, -1] >= 0


def test_sequence_sets_reject_image_augmentation():
  with pytest.raises(ValueError, match="sequence dataset"):
    data.train_iterator(data.get_source("seq_digits", "train"), global_batch_size=4, seed=0,
                        augment=data.AugmentConfig(crop_padding=2))


def test_input_dtype_is_what_the_model_sees():
    """Stored uint8 pixels reach the model normalized (float32); token ids stay int32. The loop
    and the sweep's cost rows initialise models with this dtype."""
    assert data.dataset_info("seq_digits").image_dtype == "uint8"
    assert data.dataset_info("seq_digits").input_dtype == "float32"
    assert data.dataset_info("digits").input_dtype == "float32"
    assert data.dataset_info("assoc_recall_256").input_dtype == "int32"
