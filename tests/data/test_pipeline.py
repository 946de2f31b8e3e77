"""Tests for jaxconv.data pipelines: determinism, resume, multi-process slicing, augmentations."""

import dataclasses
import itertools

import numpy as np
import pytest

from jaxconv import data
from jaxconv.data import augment as aug_lib

ALL_AUG = data.AugmentConfig(crop_padding=2, flip=True, cutout=3)


def tiny_source(n=10, shape=(6, 7, 3), mean=None, std=None, dtype=np.uint8, seed=0):
  """n distinct random images; label i == index i, so labels identify examples."""
  rng = np.random.default_rng(seed)
  if dtype == np.uint8:
    images = rng.integers(1, 256, size=(n, *shape), dtype=np.uint8)  # no zeros: see cutout test
  else:
    images = rng.normal(size=(n, *shape)).astype(dtype)
  c = shape[2]
  info = data.DatasetInfo(
      name="tiny", num_classes=n, image_shape=shape,
      mean=mean if mean is not None else (100.0,) * c, std=std if std is not None else (50.0,) * c,
      image_dtype="uint8" if dtype == np.uint8 else "float32")
  return data.ArraySource(images, np.arange(n), info)


def take(it, k):
  return list(itertools.islice(it, k))


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ---------------------------------------------------------------------------------------------
# train_iterator


def test_train_batch_format_and_normalization():
  src = tiny_source()
  batch = next(data.train_iterator(src, global_batch_size=4, seed=0))
  assert batch["image"].shape == (4, 6, 7, 3) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
  for row, label in enumerate(batch["label"]):  # no augmentation: exactly (x - mean) / std
    expected = (src[int(label)]["image"].astype(np.float32) - 100.0) / 50.0
    np.testing.assert_allclose(batch["image"][row], expected, rtol=1e-6)


def test_same_seed_same_batches_different_seed_different():
  src = tiny_source()
  run = lambda seed: take(data.train_iterator(src, global_batch_size=4, seed=seed,
                                              augment=ALL_AUG), 6)
  assert_batches_equal(run(3), run(3))
  a, b = run(3), run(4)
  assert any(not np.array_equal(x["label"], y["label"]) for x, y in zip(a, b))
  assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(a, b))


def test_every_element_once_per_epoch_and_fresh_permutations():
  n, batch = 10, 4
  src = tiny_source(n)
  labels = np.concatenate([b["label"] for b in take(
      data.train_iterator(src, global_batch_size=batch, seed=7), 15)])  # 60 positions = 6 epochs
  epochs = labels.reshape(6, n)
  for epoch in epochs:
    assert sorted(epoch) == list(range(n))
  assert len({tuple(e) for e in epochs}) > 1  # a fresh permutation each epoch
  np.testing.assert_array_equal(epochs[2], data.epoch_permutation(7, 2, n))
  assert data.steps_per_epoch(n, batch) == 2.5


@pytest.mark.parametrize("augment", [data.AugmentConfig(), ALL_AUG])
def test_start_step_resumes_exactly_across_epoch_boundaries(augment):
  src = tiny_source(10)
  reference = take(data.train_iterator(src, global_batch_size=4, seed=5, augment=augment), 8)
  for start in range(1, 8):  # steps 2 and 4 straddle epoch boundaries (positions 10 and 20)
    resumed = take(data.train_iterator(src, global_batch_size=4, seed=5, augment=augment,
                                       start_step=start), 8 - start)
    assert_batches_equal(resumed, reference[start:])


@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_concatenate_to_the_one_process_batch(process_count):
  src = tiny_source(10)
  single = take(data.train_iterator(src, global_batch_size=8, seed=1, augment=ALL_AUG), 4)
  parts = [take(data.train_iterator(src, global_batch_size=8, seed=1, augment=ALL_AUG,
                                    process_index=p, process_count=process_count), 4)
           for p in range(process_count)]
  for step in range(4):
    assert parts[0][step]["image"].shape[0] == 8 // process_count
    for key in ("image", "label"):
      joined = np.concatenate([parts[p][step][key] for p in range(process_count)])
      np.testing.assert_array_equal(joined, single[step][key])


def test_threads_and_task_size_do_not_change_the_data():
  src = tiny_source(10)
  kwargs = dict(global_batch_size=6, seed=2, augment=ALL_AUG)
  reference = take(data.train_iterator(src, num_threads=0, **kwargs), 5)
  for threads, rows in [(1, None), (3, 1), (4, 2), (2, 6)]:
    other = take(data.train_iterator(src, num_threads=threads, rows_per_task=rows, **kwargs), 5)
    assert_batches_equal(other, reference)


def test_element_rng_is_philox_keyed_by_seed_and_position():
  from jaxconv.data import pipeline
  for seed, position in [(0, 0), (3, 17), (2**64 - 1, 2**61)]:
    fresh = np.random.Generator(np.random.Philox(key=np.array([seed, position], np.uint64)))
    expected = (fresh.random(5), fresh.random((10, 4)))
    pipeline._element_rng(seed + 1 if seed < 5 else 0, 99).random(7)  # dirty the reused state
    rng = pipeline._element_rng(seed, position)
    np.testing.assert_array_equal(rng.random(5), expected[0])
    np.testing.assert_array_equal(rng.random((10, 4)), expected[1])


def test_aux_rng_is_a_separate_philox_stream_of_seed_and_position():
  """The recipe ops' generator: same key, counter from 2**192; it does not disturb (or equal)
  the element generator, so the existing draws are unchanged when the recipe ops are on."""
  from jaxconv.data import pipeline
  for seed, position in [(0, 0), (3, 17), (2**64 - 1, 2**61)]:
    key = np.array([seed, position], np.uint64)
    fresh = np.random.Generator(np.random.Philox(key=key,
                                                 counter=np.array([0, 0, 0, 1], np.uint64)))
    expected = fresh.random(9)
    main = np.random.Generator(np.random.Philox(key=key)).random(5)
    pipeline._aux_rng(seed + 1 if seed < 5 else 0, 99).random(3)  # dirty the reused state
    rng = pipeline._element_rng(seed, position)
    aux = pipeline._aux_rng(seed, position)
    np.testing.assert_array_equal(aux.random(9), expected)
    np.testing.assert_array_equal(rng.random(5), main)  # interleaving leaves the first intact
    assert not np.isin(expected, main).any()


def test_argument_validation():
  src = tiny_source(10)
  with pytest.raises(ValueError, match="divisible"):
    data.train_iterator(src, global_batch_size=6, seed=0, process_count=4)
  with pytest.raises(ValueError, match="divisible"):
    data.eval_iterator(src, global_batch_size=5, process_count=2)
  with pytest.raises(ValueError, match="process_index"):
    data.train_iterator(src, global_batch_size=4, seed=0, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="seed"):
    data.train_iterator(src, global_batch_size=4, seed=-1)
  with pytest.raises(ValueError, match="global_batch_size"):
    data.train_iterator(src, global_batch_size=0, seed=0)
  with pytest.raises(TypeError, match="AugmentConfig"):
    data.train_iterator(src, global_batch_size=4, seed=0, augment={"flip": True})
  with pytest.raises(TypeError, match="info"):
    data.train_iterator([{"image": np.zeros((2, 2, 1)), "label": 0}], global_batch_size=1, seed=0)


def test_float_sources_are_normalized_too():
  src = tiny_source(8, shape=(1, 12, 1), mean=(0.5,), std=(2.0,), dtype=np.float32)
  batch = next(data.train_iterator(src, global_batch_size=8, seed=0,
                                   augment=data.AugmentConfig(crop_padding=3, flip=True)))
  assert batch["image"].dtype == np.float32 and batch["image"].shape == (8, 1, 12, 1)
  ev = next(data.eval_iterator(src, global_batch_size=8))
  np.testing.assert_allclose(ev["image"][3], (src[3]["image"] - 0.5) / 2.0, rtol=1e-6)


def test_digits_pipeline_end_to_end():
  train = data.get_source("digits", "train")
  batch = next(data.train_iterator(train, global_batch_size=32, seed=0,
                                   augment=data.AugmentConfig(crop_padding=1, flip=True)))
  assert batch["image"].shape == (32, 8, 8, 1)
  assert 0 <= batch["label"].min() and batch["label"].max() <= 9
  # normalized over a large batch: roughly zero mean, unit std
  big = next(data.train_iterator(train, global_batch_size=512, seed=0))
  assert abs(float(big["image"].mean())) < 0.1 and 0.9 < float(big["image"].std()) < 1.1


# ---------------------------------------------------------------------------------------------
# augmentations


def _rows(src, augment, steps=5, batch=6, seed=11):
  return np.concatenate([b["image"] for b in take(
      data.train_iterator(src, global_batch_size=batch, seed=seed, augment=augment), steps)])


def test_flip_only_flips():
  src = tiny_source(10)
  plain = _rows(src, data.AugmentConfig())
  flipped = _rows(src, data.AugmentConfig(flip=True))
  same = [np.array_equal(f, p) for f, p in zip(flipped, plain)]
  mirrored = [np.array_equal(f, p[:, ::-1]) for f, p in zip(flipped, plain)]
  assert all(s or m for s, m in zip(same, mirrored))
  assert 5 <= sum(mirrored) <= 25  # about half of 30


def test_pad_and_crop_shifts_with_zero_fill():
  pad = 2
  src = tiny_source(10, mean=(0.0,) * 3, std=(1.0,) * 3)  # normalized == stored values
  plain = _rows(src, data.AugmentConfig())
  cropped = _rows(src, data.AugmentConfig(crop_padding=pad))
  assert cropped.shape == plain.shape
  h, w = plain.shape[1:3]
  shifts = []
  for c, p in zip(cropped, plain):
    padded = np.pad(p, ((pad, pad), (pad, pad), (0, 0)))
    found = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
             if np.array_equal(padded[dy:dy + h, dx:dx + w], c)]
    assert found, "a crop is not a zero-padded shift of the image"
    shifts.append(found[0])
  assert len(set(shifts)) > 3


def test_pad_and_crop_leaves_size_one_dims_alone():
  x = np.arange(10, dtype=np.float32).reshape(1, 10, 1) + 1
  for u in (0.0, 0.3, 0.99):
    y = aug_lib.pad_and_crop(x, 3, u, u)
    assert y.shape == x.shape and np.count_nonzero(y) >= 10 - 3  # only a shift along W


def test_cutout_zeroes_one_square_after_normalization():
  size = 3
  src = tiny_source(10, shape=(8, 8, 2), mean=(0.0, 0.0), std=(1.0, 1.0))  # no zero pixels
  out = _rows(src, data.AugmentConfig(cutout=size))
  plain = _rows(src, data.AugmentConfig())
  full_squares = 0
  for o, p in zip(out, plain):
    zero = o == 0
    assert np.array_equal(zero[..., 0], zero[..., 1])  # all channels
    ys, xs = np.nonzero(zero[..., 0])
    assert len(ys) > 0
    box = zero[ys.min():ys.max() + 1, xs.min():xs.max() + 1, 0]
    assert box.all() and box.shape[0] <= size and box.shape[1] <= size  # one clipped square
    np.testing.assert_array_equal(o[~zero], p[~zero])  # nothing else changed
    full_squares += box.shape == (size, size)
  assert full_squares > 0
  # with a nonzero mean the hole is still 0 in normalized space (= the mean in pixel space)
  shifted = tiny_source(10, shape=(8, 8, 2), mean=(100.0, 100.0), std=(50.0, 50.0))
  out = _rows(shifted, data.AugmentConfig(cutout=size))
  assert all((o == 0).any() for o in out)


def test_enabling_flip_does_not_change_crop_offsets():
  src = tiny_source(10)
  crop = _rows(src, data.AugmentConfig(crop_padding=2))
  both = _rows(src, data.AugmentConfig(crop_padding=2, flip=True))
  assert all(np.array_equal(b, c) or np.array_equal(b, c[:, ::-1]) for b, c in zip(both, crop))


@pytest.mark.parametrize("augment", [data.AugmentConfig(), data.AugmentConfig(flip=True),
                                     data.AugmentConfig(crop_padding=3),
                                     data.AugmentConfig(cutout=4), ALL_AUG,
                                     data.AugmentConfig(crop_padding=9, cutout=20)])
def test_vectorized_batch_path_equals_per_element_reference(augment):
  from jaxconv.data import pipeline
  for shape, dtype in [((6, 7, 3), np.uint8), ((1, 12, 1), np.float32)]:
    src = tiny_source(10, shape=shape, dtype=dtype)
    batches = take(data.train_iterator(src, global_batch_size=5, seed=9, augment=augment), 4)
    transform = aug_lib.make_transform(src.info, augment, train=True)
    for step, batch in enumerate(batches):
      for row in range(5):
        position = step * 5 + row
        index = data.epoch_permutation(9, position // 10, 10)[position % 10]
        assert batch["label"][row] == index
        expected = transform(src[index]["image"], pipeline._element_rng(9, position))
        np.testing.assert_array_equal(batch["image"][row], expected)


def test_augment_config_validation():
  assert data.AugmentConfig() == data.AugmentConfig(0, False, 0)
  for bad in [dict(crop_padding=-1), dict(cutout=-2), dict(crop_padding=1.5),
              dict(cutout=True), dict(flip=1), dict(flip="yes")]:
    with pytest.raises(ValueError):
      data.AugmentConfig(**bad)
  with pytest.raises(dataclasses.FrozenInstanceError):
    data.AugmentConfig().flip = True


def test_variable_size_random_resized_crop_and_center_crop():
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            for h, w in [(40, 30), (20, 50), (64, 64), (9, 13), (33, 31)]]
  images.append(rng.integers(0, 256, size=(25, 25), dtype=np.uint8))  # grayscale
  info = data.DatasetInfo("var", 6, (16, 16, 3), mean=(120.0,) * 3, std=(60.0,) * 3,
                          variable_size=True)
  src = data.ArraySource(images, np.arange(6), info)
  batches = take(data.train_iterator(src, global_batch_size=6, seed=0,
                                     augment=data.AugmentConfig(flip=True)), 2)
  again = take(data.train_iterator(src, global_batch_size=6, seed=0,
                                   augment=data.AugmentConfig(flip=True)), 2)
  assert_batches_equal(batches, again)
  assert batches[0]["image"].shape == (6, 16, 16, 3)
  ev = list(data.eval_iterator(src, global_batch_size=4))
  assert [b["image"].shape for b in ev] == [(4, 16, 16, 3)] * 2
  # center crop of a uniform image is uniform
  flat = np.full((30, 60, 3), 200, np.uint8)
  np.testing.assert_array_equal(aug_lib.resize_center_crop(flat, (16, 16)), 200)
  draws = np.random.default_rng(1).random((aug_lib.RRC_ATTEMPTS, 4))
  assert aug_lib.random_resized_crop(images[0], (16, 16), draws).shape == (16, 16, 3)


# ---------------------------------------------------------------------------------------------
# eval_iterator


@pytest.mark.parametrize("n,batch,processes", [(10, 4, 1), (10, 6, 3), (7, 3, 3), (2, 6, 3),
                                               (12, 4, 2)])
def test_eval_counts_every_example_once(n, batch, processes):
  src = tiny_source(n)
  seen = []
  lengths = set()
  for p in range(processes):
    it = data.eval_iterator(src, global_batch_size=batch, process_index=p,
                            process_count=processes)
    batches = list(it)
    lengths.add(len(batches))
    assert len(it) == len(batches) == -(-n // batch)
    for b in batches:
      assert b["image"].shape == (batch // processes, 6, 7, 3)
      assert b["mask"].dtype == np.bool_ and b["label"].dtype == np.int32
      seen.extend(b["label"][b["mask"]].tolist())
      assert (b["image"][~b["mask"]] == 0).all()
  assert len(lengths) == 1  # every process runs the same number of eval steps
  assert sorted(seen) == list(range(n))


def test_eval_order_and_process_rows():
  src = tiny_source(10)
  single = list(data.eval_iterator(src, global_batch_size=4))
  assert np.concatenate([b["label"][b["mask"]] for b in single]).tolist() == list(range(10))
  halves = [list(data.eval_iterator(src, global_batch_size=4, process_index=p, process_count=2))
            for p in range(2)]
  for k, b in enumerate(single):
    for key in ("image", "label", "mask"):
      np.testing.assert_array_equal(np.concatenate([halves[0][k][key], halves[1][k][key]]), b[key])
